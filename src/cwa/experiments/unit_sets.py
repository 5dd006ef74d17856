"""Perturbation experiments on sets chosen outside the rank stage (whole units, clusters): a top
set against its random sets, through the same sweep, restore and statistics as single weights
(cwa.experiments.sweep); a set of units becomes the selection of all their weights."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl
import torch

from cwa.core.stats import bootstrap_indices
from cwa.evaluation.perplexity import EvalResult, Reference
from cwa.experiments.summaries import compare, summarize
from cwa.experiments.sweep import (
    SelectionSet,
    Spec,
    SweepConfig,
    first_settings,
    grid,
    headline_setting,
    selection_set,
    specs,
    stream_seed,
)
from cwa.experiments.sweep import run as run_experiments
from cwa.selection.units import Units, matched_random, weights_of

EFFECT_COLUMNS = (
    "perturbation",
    "setting",
    "selection",
    "draw",
    "k",
    "weights",
    "ppl",
    "delta_ppl",
    "ci_low",
    "ci_high",
    "kl",
    "top1_same",
    "diverged",
)
COMPARISON_COLUMNS = (
    "perturbation",
    "setting",
    "k",
    "control",
    "draws",
    "top_delta_ppl",
    "control_delta_ppl",
    "separation",
    "separation_ci_low",
    "separation_ci_high",
    "effect_size",
    "p_value",
    "q_value",
)


@dataclass(frozen=True)
class Bench:
    """What every unit experiment is measured against: the model, the evaluation windows and
    the baseline's results on them, the reference distributions and the bootstrap indices."""

    model: torch.nn.Module
    windows: torch.Tensor
    base: EvalResult
    ref: Reference
    boot_idx: np.ndarray
    batch_size: int
    resamples: int
    seed: int  # the first calibration seed: whose scores ranked the units
    draws: int  # random sets per comparison

    @classmethod
    def of(cls, ev, ref: Reference, params) -> Bench:
        """The bench of a stage's Evaluation, with the perturb stage's bootstrap indices."""
        seed = params.seeds[0]
        idx = bootstrap_indices(len(ev.windows), params.bootstrap, seed)
        return cls(
            ev.model,
            ev.windows,
            ev.base,
            ref,
            idx,
            params.batch_size,
            params.bootstrap,
            seed,
            params.random_draws,
        )


def unit_sets(
    units: Units, ranked: pl.DataFrame, top: list[int], draws: int, seed: int
) -> list[SelectionSet]:
    """The top units `top` (ids) and `draws` random sets matched to them per layer."""
    k, sets = len(top), [selection_set(weights_of(units, top), "top", len(top), 0)]
    for d in range(draws):
        rng = np.random.default_rng(stream_seed(seed, units.kind, tuple(top), d))
        drawn = weights_of(units, matched_random(ranked, top, rng))
        sets.append(selection_set(drawn, "random_k", k, d))
    return sets


def measure(bench: Bench, sets: list[SelectionSet], sweeps: list[Spec], stream: int, desc: str):
    """(effects, comparisons) of a top set against its random sets, every perturbation of
    `sweeps` at its first strength; `stream` seeds the perturbations' random numbers."""
    ordered = sorted(sets, key=lambda s: s[:3])  # (selection, k, draw), as a table's sets are
    exps = grid(ordered, sweeps, seed=stream)
    results = run_experiments(bench.model, exps, bench.windows, bench.batch_size, desc, bench.ref)
    effects, _ = summarize(exps, results, bench.base, bench.boot_idx, bench.seed)
    comparisons = compare(exps, results, bench.base, bench.boot_idx, bench.resamples, bench.seed)
    return effects.select(EFFECT_COLUMNS), comparisons.select(COMPARISON_COLUMNS)


def measure_units(bench: Bench, units: Units, ranked: pl.DataFrame, top: list[int], sweeps):
    """`measure` of the units `top` (ids) against random units matched per layer."""
    sets = unit_sets(units, ranked, top, bench.draws, bench.seed)
    stream = stream_seed(bench.seed, units.kind, len(top))
    return measure(bench, sets, sweeps, stream, f"{units.kind} x{len(top)}")


def headline_sweep(config: SweepConfig) -> list[Spec]:
    """The headline perturbation (cwa.experiments.sweep.headline_setting) with its strength
    sweep."""
    name = next(iter(headline_setting(first_settings(config))))
    return [s for s in specs(config) if s[0].name == name]
