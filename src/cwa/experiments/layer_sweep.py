"""The layer sweep: the headline perturbation on the top-k of one transformer block at a time,
against random draws of the same size from the same block, so ΔPPL by layer comes from one run.

Each block is its own pool: its top-k is ranked among its own weights (not the global top-k's
share of it), and its random_k control keeps the top set's per-tensor counts within the block.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import polars as pl
import torch

from cwa.evaluation.perplexity import EvalResult
from cwa.experiments.summaries import compare, summarize
from cwa.experiments.sweep import Experiment, Spec, experiments, stream_seed
from cwa.models.anatomy import ParamInfo
from cwa.selection.ranking import rank, target

CONTROL = "random_k"


def layer_experiments(
    infos: list[ParamInfo],
    scores: Mapping[str, torch.Tensor],
    k: int,
    spec: Spec,
    draws: int,
    seed: int,
    metric: str,
) -> dict[int, list[Experiment]]:
    """Block index -> the top-k of that block's pool tensors and `draws` random_k controls, each
    under `spec` at its first strength. Where k exceeds half the block's smallest tensor, half
    of that instead: the draws keep the top set's per-tensor counts beside it, so k always fits
    (`k` in the table says how many)."""
    perturbation, strengths = spec
    out = {}
    for layer in sorted({i.layer for i in infos if i.layer >= 0}):
        mine = target(infos, layers=(layer,))
        fits = min(k, min(i.numel for i in mine) // 2)
        ranking = rank(mine, scores, "global", (fits,), (CONTROL,), draws, seed, metric)
        out[layer] = experiments(ranking, [(perturbation, strengths[:1])], seed=seed)
    return out


def by_layer(
    exps: dict[int, list[Experiment]],
    results: dict[int, list[EvalResult]],
    base: EvalResult,
    boot_idx: np.ndarray,
    resamples: int,
    seed: int,
) -> pl.DataFrame:
    """One row per block (schema `layer_sweep`): the top set's ΔPPL with its paired-bootstrap
    CI, the random draws' mean ΔPPL, and the top against random comparison."""
    rows = []
    for layer, mine in exps.items():
        effects, _ = summarize(mine, results[layer], base, boot_idx, seed)
        top = effects.filter(pl.col("selection") == "top").row(0, named=True)
        stream = stream_seed(seed, "layer", layer)  # each block's permutations its own
        versus = compare(mine, results[layer], base, boot_idx, resamples, stream).row(0, named=True)
        rows.append(
            {
                "layer": layer,
                "perturbation": top["perturbation"],
                "setting": top["setting"],
                "k": top["k"],
                "weights": top["weights"],
                "delta_ppl": top["delta_ppl"],
                "ci_low": top["ci_low"],
                "ci_high": top["ci_high"],
                "draws": versus["draws"],
                "control_delta_ppl": versus["control_delta_ppl"],
                "separation": versus["separation"],
                "separation_ci_low": versus["separation_ci_low"],
                "separation_ci_high": versus["separation_ci_high"],
                "p_value": versus["p_value"],
                "diverged": top["diverged"],
            }
        )
    return pl.DataFrame(rows)
