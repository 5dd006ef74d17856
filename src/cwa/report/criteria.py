"""The old guide's success criteria, each checked against what the run measured.

Every criterion keeps its published threshold: a model that fails one fails it, and the report
says so. The table has one row per criterion: the measured value, an interval where one exists
(and what it is), and `met`, `not met` or `not measured` (with the reason).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import polars as pl
from scipy import stats as sps

from cwa.experiments.pruning_summary import at

NOT_MEASURED, MET, NOT_MET = "not measured", "met", "not met"


@dataclass(frozen=True)
class Check:
    key: str  # metrics.json: criterion_<key>
    rule: str  # the criterion as the guide states it
    value: float = math.nan
    low: float = math.nan
    high: float = math.nan
    interval: str = ""  # what low/high are
    met: bool | None = None  # None: not measured
    note: str = ""

    @property
    def status(self) -> str:
        return NOT_MEASURED if self.met is None else MET if self.met else NOT_MET


def seed_stability(stability: pl.DataFrame, k: int) -> Check:
    rule = f"top-{k} sets of different calibration seeds overlap: mean Jaccard > 0.4"
    pairs = stability.filter(pl.col("k") == k)["jaccard"]
    if not len(pairs):
        return Check("seed_jaccard", rule, note="one seed: no pair to compare")
    mean = float(pairs.mean())
    lo, hi = float(pairs.min()), float(pairs.max())
    return Check("seed_jaccard", rule, mean, lo, hi, "range over seed pairs", mean > 0.4)


def metric_overlap(agreement: pl.DataFrame, k: int) -> Check:
    """|A ∩ B| / k of the two gradient metrics' global top-k (the agreement stage's overlap)."""
    rule = f"grad_x_weight and grad_squared share > 60% of their top-{k} (|A ∩ B| / k)"
    pair = {"grad_x_weight", "grad_squared"}
    rows = agreement.filter(
        (pl.col("k") == k) & pl.col("metric_a").is_in(pair) & pl.col("metric_b").is_in(pair)
    )
    if not len(rows):
        return Check("metric_overlap", rule, note="needs both in `compare_metrics`")
    overlap, j = float(rows["overlap"][0]), float(rows["jaccard"][0])
    return Check("metric_overlap", rule, overlap, met=overlap > 0.6, note=f"Jaccard {j:.3g}")


def concentration(sample: np.ndarray) -> Check:
    """q99 / median of |score| over a uniform pool sample (scores.bulk: 100,000 weights)."""
    rule = "the top 1% of scores exceed 10x the median (99th percentile / median of |score|)"
    q99, median = np.quantile(sample, [0.99, 0.5])
    ratio = float(q99 / median) if median > 0 else math.inf
    note = f"over a uniform sample of {len(sample):,} pool weights, first seed"
    return Check("concentration", rule, ratio, met=ratio > 10, note=note)


def separation(m: dict) -> Check:
    rule = "separation (top / mean |random| ΔPPL) >= 5 with q < 0.01 (BH over the run)"
    sep, q = m.get("separation", math.nan), m.get("q_value", math.nan)
    if math.isnan(q):
        return Check("separation", rule, sep, note="no random_k comparison")
    lo, hi = m["separation_ci_low"], m["separation_ci_high"]
    met = sep >= 5 and q < 0.01
    return Check("separation", rule, sep, lo, hi, "95% CI", met, f"q = {q:.3g}")


def dose_response(texts: pl.DataFrame, setting: dict[str, str]) -> Check:
    """Page's trend test over k: windows are blocks, the top set's NLL at each k (mean over
    seeds) the ordered treatments (H1: damage grows with k), for the headline perturbation on
    whole selections."""
    ((name, label),) = setting.items()
    rule = f"damage grows with k (Page's trend test over windows, {name} of the top set, p < 0.05)"
    rows = texts.filter(
        (pl.col("perturbation") == name)
        & (pl.col("setting") == label)
        & (pl.col("selection") == "top")
        & (pl.col("mask_ratio") == 1.0)
    )
    ks = sorted(rows["k"].unique())
    if len(ks) < 3:
        return Check("dose_response", rule, note=f"needs 3 or more k in `topk`, got {ks}")
    # Every seed's top set on the same windows: the NLL per window is averaged over seeds.
    table = rows.pivot(on="k", index="text", values="nll", aggregate_function="mean").sort("text")
    data = table.select([str(k) for k in ks]).to_numpy()
    if not np.isfinite(data).all():
        return Check("dose_response", rule, note="an experiment diverged")
    p = float(sps.page_trend_test(data).pvalue)
    return Check("dose_response", rule, p, met=p < 0.05, note=f"p-value; k = {ks}")


def scaling(fits: pl.DataFrame, statistic: str) -> list[Check]:
    r2_rule = f"a power law fits the study's {statistic} against parameter count with R² > 0.8"
    loo_rule = "each member is predicted from the others within 20% (leave-one-out)"
    rows = fits.filter(pl.col("statistic") == statistic)
    if not len(rows) or rows["r2"][0] is None or math.isnan(rows["r2"][0]):
        why = "too few final dense members for a fit"
        return [Check("scaling_r2", r2_rule, note=why), Check("scaling_loo", loo_rule, note=why)]
    row = rows.row(0, named=True)
    r2 = Check("scaling_r2", r2_rule, row["r2"], met=row["r2"] > 0.8)
    loo = row["loo_mean_error"]
    if loo is None or math.isnan(loo):
        return [r2, Check("scaling_loo", loo_rule, note="too few members to leave one out")]
    note = f"mean relative error; worst {row['loo_max_error']:.3g}"
    return [r2, Check("scaling_loo", loo_rule, loo, met=loo < 0.2, note=note)]


def pruning(table: pl.DataFrame, metric: str, sparsity: float) -> Check:
    """The sensitivity metric's pruning against magnitude pruning at `sparsity` (unstructured,
    both in `prune_group`): gain = 1 − PPL(metric) / PPL(magnitude), with its paired CI."""
    rule = (
        f"pruning by sensitivity beats magnitude pruning by > 15% "
        f"(1 − PPL / PPL(magnitude) at {sparsity:.0%})"
    )
    if metric == "magnitude":
        return Check("pruning_gain", rule, note="`metric` is magnitude itself")
    rows = at(table, sparsity).filter(pl.col("method") == metric)
    if not len(rows) or rows["gain_magnitude"][0] is None or math.isnan(rows["gain_magnitude"][0]):
        why = f"needs {metric} and magnitude in `prune_methods` and {sparsity} in `sparsities`"
        return Check("pruning_gain", rule, note=why)
    r = rows.row(0, named=True)
    note = f"{metric} pruned to PPL {r['ppl']:.4g} (pruning table: every method)"
    lo, hi = r["gain_magnitude_ci_low"], r["gain_magnitude_ci_high"]
    gain = r["gain_magnitude"]
    return Check("pruning_gain", rule, gain, lo, hi, "95% paired CI", gain > 0.15, note)


def table(checks: list[Check]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "criterion": [c.key for c in checks],
            "rule": [c.rule for c in checks],
            "value": [c.value for c in checks],
            "low": [c.low for c in checks],
            "high": [c.high for c in checks],
            "interval": [c.interval for c in checks],
            "status": [c.status for c in checks],
            "note": [c.note for c in checks],
        },
        schema_overrides={"value": pl.Float64, "low": pl.Float64, "high": pl.Float64},
    )


def flat_keys(checks: list[Check]) -> dict:
    """metrics.json: criterion_<key> is 1 (met), 0 (not met) or NaN (not measured), and the
    counts, so `dvc exp show` can compare runs by them."""
    out = {f"criterion_{c.key}": math.nan if c.met is None else float(c.met) for c in checks}
    measured = [c for c in checks if c.met is not None]
    return out | {"criteria_met": sum(c.met for c in measured), "criteria_measured": len(measured)}
