"""The score store read back lazily: contents, sizes from the header, coordinate lookups."""

import numpy as np
import torch

from cwa.scoring.store import StoredScores, bulk, pool_sample, save_scores, scores_at


def test_stored_scores_read_tensor_by_tensor(tmp_path):
    gen = torch.Generator().manual_seed(0)
    scores = {
        "b.weight": torch.randn(3, 5, generator=gen),
        "a.weight": torch.randn(7, generator=gen),
    }
    save_scores(scores, tmp_path, 4, "grad_x_weight", windows=[0, 3, 9])
    store = StoredScores(tmp_path, 4)
    assert store.record == {"metric": "grad_x_weight", "seed": 4, "windows": [0, 3, 9]}
    assert sorted(store) == ["a.weight", "b.weight"] and len(store) == 2
    assert store.sizes() == {"a.weight": 7, "b.weight": 15}
    for name, t in scores.items():
        assert torch.equal(store[name], t)
    coords = [("b.weight", 14), ("a.weight", 0), ("b.weight", 2), ("a.weight", 6)]
    expected = [float(scores[n].reshape(-1)[i]) for n, i in coords]
    assert scores_at(store, coords).tolist() == expected  # in the given order
    sample = pool_sample(store.sizes(), size=10)
    assert sum(len(i) for i in sample.values()) == 10
    assert pool_sample({n: t.numel() for n, t in scores.items()}, size=10).keys() == sample.keys()
    sizes = store.sizes()  # 22 weights: the 100k-weight sample covers all, in name order
    want = [abs(float(v)) for n in sorted(scores) for v in scores[n].reshape(-1)]
    assert bulk(store, sizes).tolist() == want
    np.testing.assert_array_equal(bulk(store, sizes), bulk(scores, sizes))  # lazy store = dict


def test_identical_scores_give_identical_bytes(tmp_path):
    """DVC compares files by hash: the same scores must write the same store, every time."""
    from cwa.scoring.store import save_scores, store_path

    scores = {"b.weight": torch.arange(6.0).reshape(2, 3), "a.weight": torch.ones(4)}
    written = set()
    for i in range(8):
        save_scores(scores, tmp_path / str(i), 0, "magnitude")
        written.add(store_path(tmp_path / str(i), 0).read_bytes())
    assert len(written) == 1


def test_shares_by_component_and_depth_on_a_hand_built_score_set():
    import polars as pl

    from cwa.models.anatomy import ParamInfo
    from cwa.scoring.store import shares

    infos = [
        ParamInfo("b0.q", 0, "attn_q", (2, 2), False),
        ParamInfo("b0.down", 0, "mlp_down", (2, 2), False),
        ParamInfo("b2.down", 2, "mlp_down", (2, 2), False),
        ParamInfo("embed", -1, "embed", (2, 2), False),
    ]
    scores = {
        "b0.q": torch.tensor([[1.0, -1.0], [0.0, 0.0]]),  # |score| sums: 2
        "b0.down": torch.tensor([[3.0, 0.0], [0.0, 1.0]]),  # 4
        "b2.down": torch.tensor([[0.0, 0.0], [0.0, 3.0]]),  # 3
        "embed": torch.tensor([[1.0, 0.0], [0.0, 0.0]]),  # 1, total 10
    }
    top = pl.DataFrame(
        {"component": ["mlp_down", "mlp_down", "attn_q", "mlp_down"], "layer": [0, 2, 0, 0]}
    )
    got = {(r["axis"], r["group"]): r for r in shares(infos, scores, top).iter_rows(named=True)}
    assert got[("component", "mlp_down")]["topk_share"] == 0.75
    assert got[("component", "mlp_down")]["score_share"] == 0.7
    assert got[("component", "embed")]["topk_share"] == 0.0
    assert got[("component", "embed")]["score_share"] == 0.1
    assert got[("depth", "0")]["depth"] == 0.0 and got[("depth", "2")]["depth"] == 1.0
    assert got[("depth", "0")]["topk_share"] == 0.75 and got[("depth", "0")]["score_share"] == 0.6
    assert got[("depth", "2")]["score_share"] == 0.3
    assert ("depth", "-1") not in got  # outside the blocks: no depth
