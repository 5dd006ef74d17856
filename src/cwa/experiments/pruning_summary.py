"""The pruning comparison: each pruned model against the dense one and against magnitude and
Wanda pruning at the same target, with paired bootstrap CIs over the evaluation windows."""

from __future__ import annotations

import math

import numpy as np
import polars as pl

from cwa.core.stats import paired_delta_ci, relative_gain_ci
from cwa.evaluation.perplexity import EvalResult
from cwa.experiments.pruning import Sparsity
from cwa.experiments.summaries import distribution_damage
from cwa.experiments.sweep import task_rows
from cwa.schemas.prune_tasks import PRUNE_TASKS_TABLE

OWN_GROUPS = {"wanda": "per_row", "ria": "per_tensor", "sparsegpt": "block"}
REFERENCES = ("magnitude", "wanda")  # every method's gain is reported against these


def group_of(method: str, target: Sparsity, prune_group: str) -> str:
    """The comparison group a method prunes within (docs/science.md, Pruning)."""
    if target.nm:
        return "n:m"
    return OWN_GROUPS.get(method, prune_group)


def table(
    runs: list[tuple[str, Sparsity, int, EvalResult]],
    base: EvalResult,
    pool_size: int,
    idx: np.ndarray,
    prune_group: str,
) -> pl.DataFrame:
    """One row per (method, target): damage with CIs, and the gains over the references."""
    by_key = {(m, t): res for m, t, _, res in runs}
    rows = []
    for method, target, pruned, res in runs:
        lo, hi = paired_delta_ci(base.nll, res.nll, res.tokens, idx)
        row = {
            "method": method,
            "group": group_of(method, target, prune_group),
            "target": target.fraction,
            "pattern": target.label,
            "allocation": target.allocation,
            "pruned": pruned,
            "sparsity": pruned / pool_size,
            "ppl": res.ppl,
            "delta_ppl": res.ppl - base.ppl,
            "ci_low": lo,
            "ci_high": hi,
            "accuracy": res.accuracy,
            "delta_accuracy": res.accuracy - base.accuracy,
            "diverged": res.diverged,
        }
        damage = distribution_damage(res, idx)
        row |= {k: damage[k] for k in ("kl", "kl_ci_low", "kl_ci_high", "kl_p99", "top1_same")}
        for reference in REFERENCES:
            row |= _gain(res, by_key.get((reference, target)), base, idx, f"gain_{reference}")
        rows.append(row)
    return pl.DataFrame(rows)


def _gain(res: EvalResult, ref: EvalResult | None, base: EvalResult, idx, key: str) -> dict:
    if ref is None:
        return dict.fromkeys((key, f"{key}_ci_low", f"{key}_ci_high"), math.nan)
    with np.errstate(over="ignore", invalid="ignore"):
        gain = 1 - res.ppl / ref.ppl if math.isfinite(res.ppl + ref.ppl) else math.nan
    lo, hi = relative_gain_ci(res.nll, ref.nll, base.tokens, idx)
    return {key: gain, f"{key}_ci_low": lo, f"{key}_ci_high": hi}


def at(table: pl.DataFrame, target: float) -> pl.DataFrame:
    """Unstructured, uniformly allocated rows at `target` (metrics.json's 50%)."""
    return table.filter(
        (pl.col("pattern") == "unstructured")
        & (pl.col("allocation") == "uniform")
        & (pl.col("target") == target)
    )


HEADLINE_SPARSITY = 0.5  # metrics.json: the perplexity of every method at 50%


def metrics(table: pl.DataFrame) -> dict:
    """`prune_ppl50_<method>` for every method pruned at 50% unstructured."""
    rows = at(table, HEADLINE_SPARSITY)
    return {f"prune_ppl50_{m}": p for m, p in zip(rows["method"], rows["ppl"], strict=True)}


def task_table(
    measured: dict, tasks: list, target: float, seed: int, resamples: int
) -> pl.DataFrame:
    """Task rows (schema `prune_tasks`) of the dense model and of each method's pruned model at
    `target`, against the dense model (`measured`: method -> {task: TaskResult}, with `dense`)."""
    if not tasks:  # `tasks: []`: the schema's empty table
        return pl.DataFrame(schema={c.name: c.dtype for c in PRUNE_TASKS_TABLE.columns})
    dense = measured["dense"]
    rows = []
    for method, results in measured.items():
        pruned = method != "dense"
        ident = {
            "method": method,
            "target": target if pruned else 0.0,
            "pattern": "unstructured" if pruned else "dense",
            "allocation": "uniform" if pruned else "dense",
        }
        rows += task_rows(ident, results, dense, tasks, seed, resamples)
    return pl.DataFrame(rows)
