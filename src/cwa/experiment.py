"""Perturbation experiments: apply to a selection, evaluate, restore, and summarise against the
baseline with paired statistics over texts."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl
import torch

from cwa import CwaError
from cwa.evaluation import EvalResult, evaluate
from cwa.perturbations import Perturbation, Settings, fingerprint, perturbed
from cwa.progress import progress
from cwa.stats import paired_delta_ci


@dataclass(frozen=True)
class Experiment:
    perturbation: Perturbation
    selection: str
    draw: int
    k: int
    weights: dict[str, torch.Tensor]  # param name -> flat storage indices

    @property
    def size(self) -> int:
        return sum(len(v) for v in self.weights.values())


def experiments(ranking: pl.DataFrame, perturbations: list[Perturbation]) -> list[Experiment]:
    """One experiment per perturbation and (selection, draw, k) set of the ranking table."""
    out = []
    keys = ["selection", "k", "draw"]
    for (selection, k, draw), rows in ranking.sort([*keys, "param", "flat_index"]).group_by(
        keys, maintain_order=True
    ):
        weights = {
            name: torch.from_numpy(group["flat_index"].to_numpy().copy())
            for (name,), group in rows.group_by("param", maintain_order=True)
        }
        out += [Experiment(p, selection, draw, k, weights) for p in perturbations]
    return out


def run(
    model,
    exps: list[Experiment],
    windows: torch.Tensor,
    batch_size: int,
    settings: Settings,
    desc: str | None = "perturb",
) -> list[EvalResult]:
    """Evaluates each experiment; proves the model is bit-identical afterwards."""
    params = dict(model.named_parameters())
    touched = sorted({n for e in exps for n in e.weights})
    before = fingerprint([params[n] for n in touched])
    results = []
    for exp in progress(exps, desc=desc):
        s = Settings(
            settings.noise_sigma,
            settings.flip_bit,
            seed=settings.seed * 1_000_003 + exp.k * 1_009 + exp.draw,
        )
        with perturbed(params, exp.weights, exp.perturbation, s):
            results.append(evaluate(model, windows, batch_size))
    if fingerprint([params[n] for n in touched]) != before:
        raise CwaError("model weights differ from the start of the sweep after restoring")
    return results


def summarize(
    exps: list[Experiment],
    results: list[EvalResult],
    base: EvalResult,
    settings: Settings,
    boot_idx: np.ndarray,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(effects, texts) tables without the metric/mode/seed columns the caller adds."""
    effects, texts = [], []
    base_ppl = base.ppl
    for exp, res in zip(exps, results, strict=True):
        ident = {
            "perturbation": exp.perturbation.name,
            "strength": exp.perturbation.strength(settings),
            "selection": exp.selection,
            "draw": exp.draw,
            "k": exp.k,
        }
        lo, hi = paired_delta_ci(base.nll, res.nll, res.tokens, boot_idx)
        effects.append(
            {
                **ident,
                "weights": exp.size,
                "ppl": res.ppl,
                "delta_ppl": res.ppl - base_ppl,
                "ci_low": lo,
                "ci_high": hi,
                "rel_delta": (res.ppl - base_ppl) / base_ppl,
                "accuracy": res.accuracy,
                "delta_accuracy": res.accuracy - base.accuracy,
                "diverged": res.diverged,
                "restored": True,
            }
        )
        texts.append(text_rows(ident, res))
    return pl.DataFrame(effects), pl.concat(texts)


def text_rows(ident: dict, res: EvalResult) -> pl.DataFrame:
    n = len(res.nll)
    return pl.DataFrame(
        {
            **{k: [v] * n for k, v in ident.items()},
            "text": np.arange(n),
            "nll": res.nll,
            "tokens": res.tokens,
            "correct": res.correct,
        }
    )


BASELINE = {"perturbation": "none", "strength": 0.0, "selection": "none", "draw": 0, "k": 0}


def headline(effects: pl.DataFrame, k: int) -> dict:
    """ΔPPL of zeroing the top-k, random_k (mean over draws) and bottom_k, and their separation."""
    zero = effects.filter((pl.col("perturbation") == "zero") & (pl.col("k") == k))

    def mean(selection, col="delta_ppl"):
        vals = zero.filter(pl.col("selection") == selection)[col]
        return float(vals.mean()) if len(vals) else float("nan")

    random_abs = zero.filter(pl.col("selection") == "random_k")["delta_ppl"].abs()
    top = mean("top")
    random_scale = float(random_abs.mean()) if len(random_abs) else float("nan")
    return {
        "delta_ppl_top": top,
        "delta_ppl_random": mean("random_k"),
        "delta_ppl_bottom": mean("bottom_k"),
        "separation": top / random_scale if random_scale > 0 else float("inf"),
    }
