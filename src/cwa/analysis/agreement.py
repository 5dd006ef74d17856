"""Do metrics agree? Overlap of top-k sets and rank correlation for every pair of metrics; and
does a metric's global top set agree with its per-layer (per pool tensor) top sets?

Each metric's scores are reduced to what the comparison needs (its top-k sets and its scores at a
fixed pool sample) as soon as they exist, so one metric's scores are in memory at a time.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import polars as pl
import torch

from cwa.core.stats import agreement
from cwa.scoring.store import bulk
from cwa.selection.ranking import extreme_k


@dataclass(frozen=True)
class Summary:
    """One metric's part of the comparison: |score| at the pool sample, top-k sets by k, and its
    global against per-layer overlap by k (mode_overlap)."""

    bulk: np.ndarray
    tops: dict[int, set[tuple[int, int]]]
    modes: dict[int, dict[str, float]]


def top_set(scores: dict[str, torch.Tensor], names: list[str], k: int) -> set[tuple[int, int]]:
    sel = extreme_k([scores[n].abs() for n in names], k)
    return set(zip(sel.tensor.tolist(), sel.flat.tolist(), strict=True))


def per_layer_top(scores: dict[str, torch.Tensor], names: list[str], k: int) -> set:
    """The per_layer mode's top set: the top-k of each pool tensor (all of a smaller one)."""
    chosen = set()
    for t, n in enumerate(names):
        flat = extreme_k([scores[n].abs()], min(k, scores[n].numel())).flat
        chosen |= {(t, f) for f in flat.tolist()}
    return chosen


def mode_overlap(scores: dict[str, torch.Tensor], k: int) -> dict[str, float]:
    """The global top set against the per-layer mode's, two ways. Per-layer top-k in every one
    of the T tensors against the global top set of the same size: their Jaccard. (The global
    top-k itself always lies inside them: at most k - 1 weights of its tensor outrank any of
    it.) And k spread evenly, top-⌈k/T⌉ per tensor: the share of the global top-k it finds."""
    names = sorted(scores)
    per_layer = per_layer_top(scores, names, k)
    same_size = top_set(scores, names, len(per_layer))
    even = per_layer_top(scores, names, math.ceil(k / len(names)))
    return {
        "tensors": len(names),
        "per_layer_weights": len(per_layer),
        "jaccard_equal_size": len(same_size & per_layer) / len(same_size | per_layer),
        "global_in_even_split": len(top_set(scores, names, k) & even) / k,
    }


def summarize(scores: dict[str, torch.Tensor], ks: tuple[int, ...]) -> Summary:
    """The same pool sample for every metric: it depends on the tensor names and sizes only."""
    names = sorted(scores)
    sizes = {n: scores[n].numel() for n in names}
    return Summary(
        bulk(scores, sizes),
        {k: top_set(scores, names, k) for k in ks},
        {k: mode_overlap(scores, k) for k in ks},
    )


def metric_agreement(by_metric: dict[str, Summary], ks: tuple[int, ...]) -> pl.DataFrame:
    """One row per metric pair and k: Jaccard of global top-k sets, Spearman over a 100k sample."""
    metrics = sorted(by_metric)
    bulks = {m: by_metric[m].bulk for m in metrics}
    tops = {(m, k): by_metric[m].tops[k] for m in metrics for k in ks}
    rows = [
        {
            "metric_a": a,
            "metric_b": b,
            "k": k,
            **agreement(tops[a, k], tops[b, k], bulks[a], bulks[b]),
        }
        for a, b in itertools.combinations(metrics, 2)
        for k in ks
    ]
    schema = {
        "metric_a": pl.String,
        "metric_b": pl.String,
        "k": pl.Int64,
        "jaccard": pl.Float64,
        "overlap": pl.Float64,
        "spearman_pool": pl.Float64,
    }
    return pl.DataFrame(rows, schema=schema)


def mode_agreement(by_metric: dict[str, Summary], ks: tuple[int, ...]) -> pl.DataFrame:
    """One row per metric and k: its global top set against its per-layer top sets."""
    rows = [{"metric": m, "k": k, **by_metric[m].modes[k]} for m in sorted(by_metric) for k in ks]
    schema = {
        "metric": pl.String,
        "k": pl.Int64,
        "tensors": pl.Int64,
        "per_layer_weights": pl.Int64,
        "jaccard_equal_size": pl.Float64,
        "global_in_even_split": pl.Float64,
    }
    return pl.DataFrame(rows, schema=schema)
