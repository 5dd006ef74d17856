"""Metric agreement: overlap@k and rank correlation against hand-built cases."""

import pytest
import torch

from cwa.analysis.agreement import metric_agreement, mode_agreement, summarize


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


def test_global_against_per_layer_top_sets_by_brute_force():
    """Against sorts: each tensor's top-k (all of a smaller one), the global top-k and the global
    top set of the per-layer union's size, from distinct random |scores|."""
    gen = torch.Generator().manual_seed(1)
    scores = {
        "big": torch.randn(40, 30, generator=gen) * 5,  # louder: most global picks sit here
        "mid": torch.randn(200, generator=gen),
        "small": torch.randn(3, 4, generator=gen),  # 12 weights: all of it at k = 50
    }
    ks = (5, 50)
    table = mode_agreement({"m": summarize(scores, ks)}, ks)
    flat = {n: s.abs().flatten() for n, s in sorted(scores.items())}
    everything = sorted(
        ((float(v), n, i) for n, s in flat.items() for i, v in enumerate(s.tolist())),
        reverse=True,
    )
    for row in table.iter_rows(named=True):
        k = row["k"]
        per_layer = {
            (n, i) for n, s in flat.items() for i in s.argsort(descending=True)[:k].tolist()
        }
        even = {
            (n, i)
            for n, s in flat.items()
            for i in s.argsort(descending=True)[: -(-k // 3)].tolist()
        }
        top = {(n, i) for _, n, i in everything[:k]}
        same = {(n, i) for _, n, i in everything[: len(per_layer)]}
        assert top <= per_layer  # why the table leaves that share out
        assert row["tensors"] == 3
        assert row["per_layer_weights"] == len(per_layer) == {5: 15, 50: 112}[k]
        assert row["jaccard_equal_size"] == len(same & per_layer) / len(same | per_layer)
        assert row["global_in_even_split"] == len(top & even) / k
        assert 0 < row["jaccard_equal_size"] < 1  # the layers' tops differ from the global
        assert 0 < row["global_in_even_split"] < 1
