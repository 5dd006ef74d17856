"""Perturbation experiments: the sweep grid, evaluation with exact restore, and the summaries
against the baseline (paired CIs over texts) and against the controls (p-values, effect sizes,
separation CIs).

The grid: every perturbation at its first strength for every k; at headline_k every strength,
and every mask ratio (a seeded random fraction of each selection) at the first strength.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import numpy as np
import polars as pl
import torch

from cwa import CwaError
from cwa.core.progress import progress
from cwa.core.stats import (
    bootstrap_indices,
)
from cwa.evaluation.perplexity import Reference, evaluate
from cwa.evaluation.tasks import Task, TaskResult
from cwa.experiments.perturbations import (
    Perturbation,
    Strength,
    check,
    fingerprint,
    get_perturbation,
    perturbed,
    sweeps,
)

# (perturbation, strengths to sweep); (None,) for a perturbation without a strength.
Spec = tuple[Perturbation, tuple[Strength, ...]]


@dataclass(frozen=True)
class Experiment:
    perturbation: Perturbation
    strength: Strength
    selection: str
    draw: int
    k: int
    mask_ratio: float
    weights: dict[str, torch.Tensor]  # param name -> flat storage indices
    seed: int  # the perturbation's random stream: shared by a top set and its controls

    @property
    def size(self) -> int:
        return sum(len(v) for v in self.weights.values())

    @property
    def ident(self) -> dict:
        """The columns that identify this experiment in every table."""
        s = self.strength
        return {
            "perturbation": self.perturbation.name,
            "strength": float(s) if isinstance(s, int | float) else math.nan,
            "setting": self.perturbation.label(s),
            "selection": self.selection,
            "draw": self.draw,
            "k": self.k,
            "mask_ratio": self.mask_ratio,
        }


@dataclass(frozen=True)
class SweepConfig:
    """What the perturbation sweep runs: the perturbations listed and every strength sweep
    (params: perturb and SWEEP_KEYS)."""

    perturb: tuple[str, ...]
    strengths: dict[str, tuple]

    @classmethod
    def of(cls, params) -> SweepConfig:
        """The sweep of params, each strength resolved for `dtype` (a named bit to its number;
        a value that resolves to one already listed runs once)."""
        dtype = getattr(torch, params.dtype)
        strengths = {
            s.key: tuple(dict.fromkeys(s.resolve(v, dtype) for v in getattr(params, s.key)))
            for s in sweeps()
        }
        return cls(tuple(params.perturb), strengths)


def specs(config: SweepConfig) -> list[Spec]:
    """The listed perturbations with their strength sweeps ((None,): no strength)."""
    out = []
    for name in config.perturb:
        p = get_perturbation(name)
        out.append((p, config.strengths[p.sweep.key] if p.sweep else (None,)))
    return out


def first_settings(config: SweepConfig) -> dict[str, str]:
    """perturbation -> the setting label of its first strength: the one swept over k."""
    return {p.name: p.label(strengths[0]) for p, strengths in specs(config)}


def headline_setting(first: dict[str, str]) -> dict[str, str]:
    """The headline perturbation at its first strength, as {name: setting}: `zero` when run,
    else the first perturbation listed (`first`: first_settings, in params order)."""
    name = "zero" if "zero" in first else next(iter(first))
    return {name: first[name]}


def stream_seed(*parts) -> int:
    """A stable 31-bit seed from the parts that identify a random stream."""
    return zlib.crc32("|".join(map(str, parts)).encode()) & 0x7FFFFFFF


# (selection, k, draw, {param: sorted flat indices}): one set of weights an experiment perturbs.
SelectionSet = tuple[str, int, int, dict[str, torch.Tensor]]


def selection_sets(ranking: pl.DataFrame) -> list[SelectionSet]:
    """Every set of the ranking table: params in name order, flat indices sorted."""
    out = []
    keys = ["selection", "k", "draw"]
    for (selection, k, draw), rows in ranking.sort([*keys, "param", "flat_index"]).group_by(
        keys, maintain_order=True
    ):
        weights = {
            name: torch.from_numpy(group["flat_index"].to_numpy().copy())
            for (name,), group in rows.group_by("param", maintain_order=True)
        }
        out.append((selection, k, draw, weights))
    return out


def selection_set(
    weights: dict[str, torch.Tensor], selection: str, k: int, draw: int
) -> SelectionSet:
    """A set chosen outside the rank stage (units, clusters) in selection_sets' order, which
    decides which weight gets which of a perturbation's random numbers: no table of one row per
    weight (a unit of an 8B model holds millions)."""
    ordered = {name: weights[name].reshape(-1).sort().values for name in sorted(weights)}
    return selection, k, draw, ordered


def masked(weights: dict[str, torch.Tensor], ratio: float, seed: int) -> dict[str, torch.Tensor]:
    """A random fraction `ratio` of a selection; the positions depend on `seed` and the set's
    layout only, so a top set and its matched control keep the same per-tensor counts."""
    sizes = [len(v) for v in weights.values()]
    n = sum(sizes)
    keep = max(1, round(ratio * n))
    chosen = np.zeros(n, dtype=bool)
    chosen[np.random.default_rng(seed).permutation(n)[:keep]] = True
    out, start = {}, 0
    for (name, flat), size in zip(weights.items(), sizes, strict=True):
        mine = chosen[start : start + size]
        if mine.any():
            out[name] = flat[torch.from_numpy(mine)]
        start += size
    return out


def experiments(
    ranking: pl.DataFrame,
    sweeps: list[Spec],
    headline_k: int | None = None,
    mask_ratios: tuple[float, ...] = (),
    seed: int = 0,
) -> list[Experiment]:
    """The sweep grid over every selection set of the ranking table (see the module doc)."""
    return grid(selection_sets(ranking), sweeps, headline_k, mask_ratios, seed)


def grid(
    sets: list[SelectionSet],
    sweeps: list[Spec],
    headline_k: int | None = None,
    mask_ratios: tuple[float, ...] = (),
    seed: int = 0,
) -> list[Experiment]:
    """The sweep grid over the given selection sets."""
    out = []
    for selection, k, draw, weights in sets:
        for p, strengths in sweeps:
            grid = [(s, 1.0) for s in (strengths if k == headline_k else strengths[:1])]
            if k == headline_k:
                grid += [(strengths[0], r) for r in mask_ratios]
            for strength, ratio in grid:
                chosen = (
                    weights if ratio == 1.0 else masked(weights, ratio, stream_seed(seed, k, ratio))
                )
                stream = stream_seed(seed, k, p.name, strength, ratio)
                out.append(Experiment(p, strength, selection, draw, k, ratio, chosen, stream))
    return out


def sweep(model, exps: list[Experiment], measure, desc: str | None) -> list:
    """measure(model) under each experiment's perturbation; proves the touched tensors are
    bit-identical afterwards (each experiment's restore is checked on its own as well)."""
    params = dict(model.named_parameters())
    touched = sorted({n for e in exps for n in e.weights})
    cells = {(e.perturbation.name, str(e.strength)): e for e in exps}.values()
    for e in cells:
        for dtype in {params[n].dtype for n in touched}:
            check(e.perturbation, e.strength, dtype)
    before = fingerprint([params[n] for n in touched])
    results = []
    for exp in progress(exps, desc=desc):
        with perturbed(params, exp.weights, exp.perturbation, exp.strength, exp.seed):
            results.append(measure(model))
    if fingerprint([params[n] for n in touched]) != before:
        raise CwaError("model weights differ from the start of the sweep after restoring")
    return results


def run(
    model,
    exps: list[Experiment],
    windows: torch.Tensor,
    batch_size: int,
    desc="perturb",
    ref: Reference | None = None,
):
    """Perplexity of every experiment on the evaluation windows (and the KL to `ref`)."""
    return sweep(model, exps, lambda m: evaluate(m, windows, batch_size, ref=ref), desc)


def task_rows(
    ident: dict,
    results: dict[str, TaskResult],
    base: dict[str, TaskResult],
    tasks: list[Task],
    seed: int,
    resamples: int,
) -> list[dict]:
    """One row per task: accuracy, acc_norm and target PPL against the unperturbed model, with a
    paired bootstrap CI over items of Δaccuracy."""
    rows = []
    for task in tasks:
        res, ref = results[task.name], base[task.name]
        n = len(res.correct)
        idx = bootstrap_indices(n, resamples, stream_seed(seed, task.name))
        delta = (res.correct - ref.correct)[idx].mean(axis=1)
        lo, hi = np.quantile(delta, [0.025, 0.975])
        rows.append(
            {
                **ident,
                "task": task.name,
                "kind": task.kind,
                "items": n,
                "accuracy": res.accuracy,
                "acc_norm": res.acc_norm if task.kind != "last_word" else math.nan,
                "target_ppl": res.target_ppl,
                "delta_accuracy": res.accuracy - ref.accuracy,
                "ci_low": float(lo),
                "ci_high": float(hi),
                "delta_acc_norm": res.acc_norm - ref.acc_norm
                if task.kind != "last_word"
                else math.nan,
                "delta_target_ppl": res.target_ppl - ref.target_ppl,
            }
        )
    return rows
