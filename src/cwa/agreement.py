"""Do metrics agree? Overlap of top-k sets and rank correlation for every pair of metrics."""

from __future__ import annotations

import itertools

import polars as pl
import torch

from cwa.ranking import extreme_k
from cwa.scores import pool_sample, sampled_scores
from cwa.stats import jaccard, spearman


def top_set(scores: dict[str, torch.Tensor], names: list[str], k: int) -> set[tuple[int, int]]:
    sel = extreme_k([scores[n].abs() for n in names], k)
    return set(zip(sel.tensor.tolist(), sel.flat.tolist(), strict=True))


def metric_agreement(
    by_metric: dict[str, dict[str, torch.Tensor]], ks: tuple[int, ...]
) -> pl.DataFrame:
    """One row per metric pair and k: Jaccard of global top-k sets, Spearman over a 100k sample."""
    metrics = sorted(by_metric)
    names = sorted(next(iter(by_metric.values())))
    sample = pool_sample({n: t.numel() for n, t in by_metric[metrics[0]].items()})
    bulk = {m: abs(sampled_scores(by_metric[m], sample)) for m in metrics}
    tops = {(m, k): top_set(by_metric[m], names, k) for m in metrics for k in ks}
    rows = [
        {
            "metric_a": a,
            "metric_b": b,
            "k": k,
            "jaccard": jaccard(tops[a, k], tops[b, k]),
            "spearman_pool": spearman(bulk[a], bulk[b]),
        }
        for a, b in itertools.combinations(metrics, 2)
        for k in ks
    ]
    schema = {
        "metric_a": pl.String,
        "metric_b": pl.String,
        "k": pl.Int64,
        "jaccard": pl.Float64,
        "spearman_pool": pl.Float64,
    }
    return pl.DataFrame(rows, schema=schema)
