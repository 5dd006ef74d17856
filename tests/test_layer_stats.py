"""Per-layer sensitivity statistics against numpy over the concatenated scores, and the report's
one read of the score store against the functions it replaces."""

import numpy as np
import polars as pl
import pytest
import torch

from cwa.report.layer_stats import by_layer, summed_grid
from cwa.report.score_pass import read_once
from cwa.scoring.store import bulk


def test_layer_statistics_and_the_summed_grid_equal_a_direct_computation():
    gen = torch.Generator().manual_seed(0)
    shapes = {"b0.q": (4, 8), "b0.up": (16, 8), "b1.q": (4, 8), "b1.up": (16, 8), "emb": (10, 8)}
    layers = {"b0.q": 0, "b0.up": 0, "b1.q": 1, "b1.up": 1, "emb": -1}
    comps = {
        "b0.q": "attn_q",
        "b0.up": "mlp_up",
        "b1.q": "attn_q",
        "b1.up": "mlp_up",
        "emb": "embed",
    }
    scores = {n: (torch.randn(s, generator=gen) * 1e3 + 5e6).float() for n, s in shapes.items()}
    scores["b1.q"] = -scores["b1.q"]  # statistics of |score|
    pool = pl.DataFrame(
        {
            "position": range(len(shapes)),
            "param": list(shapes),
            "layer": [layers[n] for n in shapes],
            "component": [comps[n] for n in shapes],
            "shape": [list(s) for s in shapes.values()],
        }
    )
    stats = by_layer(read_once(scores, pool).moments)
    values = {n: scores[n].double().abs().numpy().ravel() for n in shapes}
    total = sum(v.sum() for v in values.values())
    assert stats["layer"].to_list() == ["-1", "0", "1", "all"]
    for layer in (-1, 0, 1, "all"):
        v = np.concatenate([values[n] for n in shapes if layer == "all" or layers[n] == layer])
        row = stats.filter(pl.col("layer") == str(layer)).row(0, named=True)
        assert row["weights"] == v.size
        assert row["mean"] == pytest.approx(v.mean(), rel=1e-12)
        # |s| near 5e6 with a spread of 1e3: E[x²] − E[x]² would lose ~half the digits here
        assert row["std"] == pytest.approx(v.std(), rel=1e-9)
        assert row["max"] == v.max()
        assert row["share"] == pytest.approx(v.sum() / total, rel=1e-12)
    grid = summed_grid(read_once(scores, pool).moments)
    cell = grid.filter((pl.col("layer") == 1) & (pl.col("component") == "mlp_up"))["share"][0]
    assert cell == pytest.approx(values["b1.up"].sum() / total, rel=1e-12)
    assert grid["share"].sum() == pytest.approx(1.0)


class CountingStore(dict):
    """A score store that counts how often each tensor is read."""

    def __init__(self, tensors):
        super().__init__(tensors)
        self.reads = dict.fromkeys(tensors, 0)

    def __getitem__(self, name):
        self.reads[name] += 1
        return super().__getitem__(name)


def test_one_read_of_each_tensor_gives_the_bulk_the_log_range_and_the_count():
    gen = torch.Generator().manual_seed(1)
    shapes = {"b0.q": (300, 200), "b0.up": (50, 40), "b1.q": (7,)}
    scores = {n: torch.randn(s, generator=gen) for n, s in shapes.items()}
    scores["b0.up"][0, :5] = 0.0  # zeros have no log
    pool = pl.DataFrame(
        {
            "position": [2, 0, 1],  # the pool's order, not the store's
            "param": list(shapes),
            "layer": [0, 0, 1],
            "component": ["attn_q", "mlp_up", "attn_q"],
            "shape": [list(s) for s in shapes.values()],
        }
    )
    store = CountingStore(scores)
    read = read_once(store, pool)
    assert store.reads == dict.fromkeys(shapes, 1)
    sizes = {n: scores[n].numel() for n in shapes}
    np.testing.assert_array_equal(read.bulk, bulk(scores, sizes))
    logs = np.concatenate(
        [
            np.log10(np.abs(v.double().numpy().ravel()[v.numpy().ravel() != 0]))
            for v in scores.values()
        ]
    )
    assert read.log_range == (logs.min(), logs.max())
    assert read.weights == 60_000 + 2_000 + 7
    assert read.moments["weights"].to_list() == [2_000, 7, 60_000]  # by position
