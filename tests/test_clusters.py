"""Clusters: planted clusters recovered, the clustered weights and their features against
direct computations, the per-cluster summary on a hand-built table."""

import numpy as np
import polars as pl
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from cwa.analysis.clusters import chosen_weights, dbscan, features, kmeans, matrix, summary
from cwa.models.anatomy import ParamInfo


def _blobs(seed=0, n=300):
    rng = np.random.default_rng(seed)
    centres = np.array([[0, 0, 0, 0], [8, 0, 0, 0], [0, 8, 8, 0]], dtype=float)
    truth = np.repeat(np.arange(3), n)
    return centres[truth] + rng.normal(scale=0.5, size=(3 * n, 4)), truth


def test_kmeans_chooses_the_planted_k_by_silhouette_and_recovers_the_clusters():
    x, truth = _blobs()
    labels, k, quality = kmeans(x, 6, seed=0)
    assert k == 3 and max(quality, key=quality.get) == 3 and set(quality) == {2, 3, 4, 5, 6}
    assert adjusted_rand_score(truth, labels) == 1.0


def test_dbscan_recovers_the_planted_clusters_with_little_noise():
    x, truth = _blobs(1)
    labels, eps = dbscan(x)
    found = labels >= 0
    assert len(set(labels[found])) == 3 and found.mean() > 0.9 and eps > 0
    assert adjusted_rand_score(truth[found], labels[found]) == 1.0


def test_chosen_weights_are_the_exact_top_and_a_disjoint_seeded_sample():
    scores = [torch.arange(10.0), torch.arange(100.0, 106.0).view(2, 3)]
    chosen = chosen_weights(scores, [10, 6], top=3, sample=5, seed=0)
    pairs = list(zip(chosen.tensor.tolist(), chosen.flat.tolist(), strict=True))
    assert pairs[:3] == [(1, 5), (1, 4), (1, 3)]  # the three highest, highest first
    assert len(set(pairs)) == 8 and not set(pairs[3:]) & set(pairs[:3])
    again = chosen_weights(scores, [10, 6], top=3, sample=5, seed=0)
    assert np.array_equal(again.flat, chosen.flat)
    everything = chosen_weights(scores, [10, 6], top=3, sample=100, seed=0)
    assert len(everything.flat) == 16  # a sample larger than the pool takes all of it


def test_features_equal_direct_computation():
    infos = [
        ParamInfo("a", 0, "attn_q", (2, 2), False),
        ParamInfo("b", 2, "mlp_down", (3,), False),
    ]
    s0 = {"a": torch.tensor([[1.0, -10.0], [0.0, 2.0]]), "b": torch.tensor([5.0, 1.0, 3.0])}
    s1 = {"a": torch.tensor([[10.0, -10.0], [1.0, 2.0]]), "b": torch.tensor([5.0, 1.0, 30.0])}
    weights = {"a": torch.tensor([[0.5, 2.0], [1.0, 4.0]]), "b": torch.tensor([1.0, 0.1, 3.0])}
    from cwa.selection.ranking import Selected

    chosen = Selected(np.array([0, 1, 0]), np.array([1, 2, 0]), np.zeros(3))
    table = features(infos, chosen, 1, weights, [s0, s1]).sort("param", "flat_index")
    assert table["top"].to_list() == [False, True, False]  # the first chosen is the top one
    a0 = table.row(0, named=True)
    assert a0["log_score"] == pytest.approx(0.0) and a0["log_abs_w"] == pytest.approx(np.log10(0.5))
    assert a0["seed_spread"] == pytest.approx(np.std([0.0, 1.0]))  # log10 1 and log10 10
    b2 = table.row(2, named=True)
    assert b2["depth"] == 1.0 and b2["log_score"] == pytest.approx(np.log10(3.0))
    x, names = matrix(table)
    assert names[-2:] == ["is_attn_q", "is_mlp_down"] and x[:, -1].tolist() == [0, 0, 1]
    assert np.allclose(x[:, :2].mean(axis=0), 0)


def test_summary_counts_top_members_and_locations():
    table = pl.DataFrame(
        {
            "top": [True, True, False, False, True],
            "layer": [0, 0, 1, 1, 1],
            "component": ["mlp_up", "mlp_up", "attn_q", "mlp_up", "attn_q"],
            "log_score": [1.0, 3.0, 0.0, 0.0, 2.0],
            "log_abs_w": [0.0] * 5,
            "seed_spread": [0.0] * 5,
            "depth": [0.0, 0.0, 1.0, 1.0, 1.0],
            "kmeans": [0, 0, 1, 1, 1],
        }
    )
    rows = summary(table, "kmeans", "kmeans", top=3)
    first, second = rows.row(0, named=True), rows.row(1, named=True)
    assert (first["size"], first["top_members"], first["top_share"]) == (2, 2, pytest.approx(2 / 3))
    assert first["log_score"] == 2.0 and first["main_component"] == "mlp_up"
    assert (second["main_layer"], second["main_layer_share"]) == (1, 1.0)
    assert (second["main_component"], second["main_component_share"]) == ("attn_q", 2 / 3)
