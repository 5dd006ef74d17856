"""Metric agreement: overlap@k and rank correlation against hand-built cases."""

import pytest
import torch

from cwa.analysis.agreement import metric_agreement, summarize


def test_identical_reversed_and_unrelated_metrics():
    gen = torch.Generator().manual_seed(0)
    a = {"t1": torch.rand(50, 40, generator=gen), "t2": torch.rand(300, generator=gen)}
    same = {n: t * 3.0 for n, t in a.items()}  # a monotone transform: same ranking
    reverse = {n: 1.0 - t for n, t in a.items()}
    signed = {n: -t for n, t in a.items()}  # signed metrics compare by |score|
    ks = (10, 100)
    summaries = {
        m: summarize(s, ks) for m, s in {"a": a, "b": same, "c": reverse, "d": signed}.items()
    }
    table = metric_agreement(summaries, ks)
    row = {(r["metric_a"], r["metric_b"], r["k"]): r for r in table.iter_rows(named=True)}
    assert len(table) == 6 * 2
    # jaccard: exact ratios of set sizes. spearman: float64 over ranks of exact monotone
    # transforms (3t and 1 − t may round a few near-equal float32 scores into ties): approx's
    # rel=1e-6; an unrelated ranking would give |rho| << 1
    assert row["a", "b", 10]["jaccard"] == 1.0
    assert row["a", "b", 100]["spearman_pool"] == pytest.approx(1.0)
    assert row["a", "d", 100]["jaccard"] == 1.0
    assert row["a", "c", 10]["jaccard"] == 0.0
    assert row["a", "c", 10]["spearman_pool"] == pytest.approx(-1.0)
