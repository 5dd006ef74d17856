"""Ranking against brute-force sorts; controls against their definitions."""

import numpy as np
import pytest
import torch

from cwa import CwaError
from cwa.models.anatomy import ParamInfo, describe, pool
from cwa.selection.ranking import extreme_k, rank, sample_excluding, select


def brute_force(scores, k, largest=True):
    """Every (score, tensor, flat) triple sorted in Python: the definition of the answer."""
    triples = [(float(v), t, i) for t, s in enumerate(scores) for i, v in enumerate(s.reshape(-1))]
    triples.sort(key=lambda x: ((-x[0] if largest else x[0]), x[1], x[2]))
    return triples[:k]


def tie_heavy_scores(seed=0):
    gen = torch.Generator().manual_seed(seed)
    # Small integer range: many exact ties, including across tensors and at the cut-off.
    return [torch.randint(0, 7, shape, generator=gen).float() for shape in [(5, 4), (3, 9), (11,)]]


@pytest.mark.parametrize("k", [1, 3, 10, 25, 58])
@pytest.mark.parametrize("largest", [True, False])
def test_extreme_k_equals_brute_force_with_ties(k, largest):
    scores = tie_heavy_scores()
    sel = extreme_k(scores, k, largest)
    expected = brute_force(scores, k, largest)
    got = list(zip(sel.score.tolist(), sel.tensor.tolist(), sel.flat.tolist(), strict=True))
    assert got == expected
    boundary = expected[-1][0]
    all_values = torch.cat([s.reshape(-1) for s in scores])
    in_pool = int((all_values == boundary).sum())
    assert sel.cutoff_ties == in_pool - sum(1 for v, _, _ in expected if v == boundary)


def test_extreme_k_on_continuous_scores_matches_global_sort():
    gen = torch.Generator().manual_seed(3)
    scores = [torch.rand(200, 50, generator=gen), torch.rand(1000, generator=gen)]
    sel = extreme_k(scores, 100)
    flat = torch.cat([s.reshape(-1) for s in scores])
    # exact: selected scores are float32 values copied into float64, no arithmetic
    assert np.array_equal(np.sort(sel.score)[::-1], torch.sort(flat, descending=True).values[:100])
    assert sel.cutoff_ties == 0


def test_k_larger_than_pool_is_a_clear_error():
    with pytest.raises(CwaError, match="exceeds the 58 weights"):
        extreme_k(tie_heavy_scores(), 59)


def test_nan_scores_are_refused():
    scores = [torch.tensor([1.0, float("nan")])]
    with pytest.raises(CwaError, match="NaN"):
        extreme_k(scores, 1)


def test_random_control_matches_top_counts_and_avoids_top():
    gen = torch.Generator().manual_seed(0)
    scores = [torch.rand(40, 30, generator=gen), torch.rand(20, 10, generator=gen)]
    chosen = select(scores, 50, ("random_k", "bottom_k"), draws=3, seed=7)
    top = chosen[0][2]
    randoms = [sel for name, _, sel in chosen if name == "random_k"]
    assert len(randoms) == 3
    top_coords = set(zip(top.tensor.tolist(), top.flat.tolist(), strict=True))
    for sel in randoms:
        coords = set(zip(sel.tensor.tolist(), sel.flat.tolist(), strict=True))
        assert len(coords) == 50 and not coords & top_coords
        assert (
            np.bincount(sel.tensor, minlength=2).tolist()
            == np.bincount(top.tensor, minlength=2).tolist()
        )
        for t, i, s in zip(sel.tensor, sel.flat, sel.score, strict=True):
            assert s == float(scores[t].reshape(-1)[i])  # exact: a copy of the score
    first, second = randoms[0], randoms[1]
    assert set(zip(first.tensor, first.flat, strict=True)) != set(
        zip(second.tensor, second.flat, strict=True)
    )
    again = select(scores, 50, ("random_k",), draws=3, seed=7)
    assert all(
        np.array_equal(a[2].flat, b[2].flat) for a, b in zip(chosen[2:], again[1:], strict=True)
    )


def test_sample_excluding_is_uniform_and_exact():
    rng = np.random.default_rng(0)
    exclude = np.array([0, 1, 2])
    counts = np.zeros(10)
    for _ in range(2000):
        got = sample_excluding(rng, 10, 3, exclude)
        assert len(set(got)) == 3 and not set(got) & {0, 1, 2}
        counts[got] += 1
    assert counts[:3].sum() == 0
    # Monte Carlo: each share is Binomial(2000, 3/7) / 2000, sd 0.011; 0.05 is 4.5 sd (seeded)
    assert np.allclose(counts[3:] / 2000, 3 / 7, rtol=0, atol=0.05)
    with pytest.raises(CwaError, match="cannot draw 8 random weights from a tensor of 10 minus 3"):
        sample_excluding(rng, 10, 8, exclude)
    everything = sample_excluding(rng, 10, 7, exclude)  # exactly the free ones: allowed
    assert sorted(everything.tolist()) == list(range(3, 10))


def test_sample_excluding_keeps_its_random_stream():
    """The committed rankings' random controls depend on this exact stream (same seed, same
    draws, byte-identical tables across versions): a change of batch size or order shows here."""
    got = sample_excluding(np.random.default_rng(7), 50, 6, np.array([3, 4, 5]))
    assert got.tolist() == [47, 31, 34, 44, 28, 38]


def test_row_col_follow_linear_convention_for_linear_and_conv1d(llama, gpt2):
    for model in (llama, gpt2):
        params = dict(model.named_parameters())
        for info in pool(describe(model)):
            w = params[info.name].detach()
            flat = torch.arange(0, w.numel(), 7)
            rows, cols = info.row_col(flat)
            as_linear = w.T if info.transposed else w  # [out, in]
            assert torch.equal(as_linear[rows, cols], w.reshape(-1)[flat])


def test_gpt2_conv1d_is_detected_by_module_type(gpt2):
    infos = {i.name: i for i in describe(gpt2)}
    assert infos["transformer.h.0.attn.c_attn.weight"].transposed
    assert infos["transformer.h.0.mlp.c_proj.weight"].component == "mlp_down"
    assert infos["transformer.h.0.attn.c_proj.weight"].component == "attn_o"
    assert not infos["transformer.wte.weight"].transposed


def test_rank_table_per_layer_and_global():
    infos = [
        ParamInfo("a.layers.0.mlp.down_proj.weight", 0, "mlp_down", (4, 5), False),
        ParamInfo("a.layers.1.self_attn.q_proj.weight", 1, "attn_q", (3, 3), False),
    ]
    gen = torch.Generator().manual_seed(0)
    scores = {i.name: torch.rand(i.shape, generator=gen) for i in infos}
    table = rank(infos, scores, "per_layer", (2, 3), ("random_k", "bottom_k"), 2, 0, "magnitude")
    # per group and k: top + bottom + 2 random draws, each k rows
    assert len(table) == 2 * (2 + 3) * 4
    top = table.filter((table["selection"] == "top") & (table["k"] == 3))
    for name, s in scores.items():
        mine = top.filter(top["group"] == name).sort("rank")
        # exact: the table's scores are the float32 scores copied into float64
        assert (
            mine["score"].to_list()
            == torch.sort(s.reshape(-1), descending=True).values[:3].tolist()
        )
    glob = rank(infos, scores, "global", (4,), ("bottom_k",), 1, 0, "magnitude")
    assert sorted(glob["selection"].unique().to_list()) == ["bottom_k", "top"]
    w = scores[glob["param"][0]]
    assert float(w[glob["row"][0], glob["col"][0]]) == glob["score"][0]  # exact: a copy


def test_per_component_ranks_each_component_across_layers():
    infos = [
        ParamInfo("m.layers.0.mlp.down_proj.weight", 0, "mlp_down", (2, 3), False),
        ParamInfo("m.layers.1.mlp.down_proj.weight", 1, "mlp_down", (2, 3), False),
        ParamInfo("m.layers.0.self_attn.q_proj.weight", 0, "attn_q", (2, 2), False),
    ]
    scores = {
        infos[0].name: torch.tensor([[1.0, 9.0, 2.0], [3.0, 0.5, 4.0]]),
        infos[1].name: torch.tensor([[8.0, 0.1, 0.2], [7.0, 0.3, 0.4]]),
        infos[2].name: torch.tensor([[100.0, 0.0], [0.0, 50.0]]),
    }
    table = rank(infos, scores, "per_component", (3,), (), 1, 0, "magnitude")
    down = table.filter(table["group"] == "mlp_down").sort("rank")
    assert down["score"].to_list() == [9.0, 8.0, 7.0]
    assert down["layer"].to_list() == [0, 1, 1]
    assert table.filter(table["group"] == "attn_q")["score"].to_list() == [100.0, 50.0, 0.0]
    with pytest.raises(CwaError, match="valid: global, per_component, per_head, per_layer"):
        rank(infos, scores, "per_head_row", (1,), (), 1, 0, "magnitude")


def brute_force_head(w_q, w_k, w_v, w_o, q_heads, kv_head, head_dim, k):
    """The top-k of one head's slices, ranked in plain Python over (score, tensor, flat)."""
    entries = []
    for t, (w, axis, heads) in enumerate(
        [(w_k, 0, [kv_head]), (w_o, 1, q_heads), (w_q, 0, q_heads), (w_v, 0, [kv_head])]
    ):
        for flat in range(w.numel()):
            r, c = divmod(flat, w.shape[1])
            if (r if axis == 0 else c) // head_dim in heads:
                entries.append((float(w.reshape(-1)[flat]), t, flat))
    entries.sort(key=lambda e: (-e[0], e[1], e[2]))
    return entries[:k]


def test_per_head_slices_rows_and_columns_gqa_aware():
    from tests.conftest import tiny_llama

    model = tiny_llama(seed=5, hidden=32, layers=1, heads=4, kv_heads=2)  # head_dim 8, 2 q per kv
    infos = pool(describe(model))
    scores = {
        i.name: torch.rand(i.shape, generator=torch.Generator().manual_seed(7)) for i in infos
    }
    table = rank(infos, scores, "per_head", (6,), ("random_k",), 1, 0, "magnitude")
    assert sorted(table["group"].unique()) == ["layers.0.head.0", "layers.0.head.1"]
    assert set(table["component"]) == {"attn_q", "attn_k", "attn_v", "attn_o"}  # no MLP
    name = {
        c: f"model.layers.0.self_attn.{c}.weight" for c in ("q_proj", "k_proj", "v_proj", "o_proj")
    }
    for g in (0, 1):
        top = table.filter((table["group"] == f"layers.0.head.{g}") & (table["selection"] == "top"))
        expected = brute_force_head(
            scores[name["q_proj"]],
            scores[name["k_proj"]],
            scores[name["v_proj"]],
            scores[name["o_proj"]],
            [2 * g, 2 * g + 1],
            g,
            8,
            6,
        )
        # exact: copies of float32 scores on both sides
        assert top.sort("rank")["score"].to_list() == [e[0] for e in expected]
        for r in top.iter_rows(named=True):  # every pick lies in this head's slice
            comp, row, col = r["component"], r["row"], r["col"]
            head = (col if comp == "attn_o" else row) // 8
            assert head in ([g] if comp in ("attn_k", "attn_v") else [2 * g, 2 * g + 1])
            assert float(scores[r["param"]].reshape(-1)[r["flat_index"]]) == r["score"]
        rand = table.filter(
            (table["group"] == f"layers.0.head.{g}") & (table["selection"] == "random_k")
        )
        for r in rand.iter_rows(named=True):
            head = (r["col"] if r["component"] == "attn_o" else r["row"]) // 8
            assert head in ([g] if r["component"] in ("attn_k", "attn_v") else [2 * g, 2 * g + 1])


def test_pool_options(llama):
    infos = describe(llama)
    only_1 = pool(infos, layers=(1,))
    assert {i.layer for i in only_1} == {1} and len(only_1) == 7
    with_1d = pool(infos, include_1d=True)
    assert {i.component for i in with_1d if len(i.shape) == 1} == {"norm"}
    assert "model.norm.weight" in {i.name for i in with_1d}
    with pytest.raises(CwaError, match=r"`layers` \[5\] do not exist; the model has layers 0..1"):
        pool(infos, layers=(5,))


class CountingStore(dict):
    """A dict that records which tensors were read, in order."""

    def __init__(self, *args):
        super().__init__(*args)
        self.reads = []

    def __getitem__(self, name):
        self.reads.append(name)
        return super().__getitem__(name)


@pytest.mark.parametrize("mode", ["global", "per_head"])
def test_rank_reads_the_store_tensor_by_tensor_and_equals_the_in_memory_ranking(
    llama, tmp_path, mode
):
    from cwa.scoring.store import StoredScores, save_scores

    infos = pool(describe(llama))
    gen = torch.Generator().manual_seed(2)
    scores = {i.name: torch.randn(i.shape, generator=gen) for i in infos}
    save_scores(scores, tmp_path, 0, "hutchinson_diag")
    args = (mode, (3, 40), ("random_k", "bottom_k"), 2, 0, "hutchinson_diag")
    lazy = rank(infos, StoredScores(tmp_path, 0), *args)
    assert lazy.equals(rank(infos, scores, *args))
    counting = CountingStore(scores)
    rank(infos, counting, *args)
    # tensors are fetched one at a time as each is visited, never as one concatenated copy
    assert set(counting.reads) <= set(scores) and len(counting.reads) >= len(infos)


def test_magnitude_bins_split_each_tensor_into_256_quantiles_of_abs_w():
    from cwa.scoring.store import magnitude_bins

    w = torch.linspace(-1, 1, 2560)[
        torch.randperm(2560, generator=torch.Generator().manual_seed(0))
    ]
    bins = magnitude_bins(w.reshape(40, 64))
    assert bins.dtype == torch.uint8 and bins.shape == (2560,)
    order = torch.argsort(w.abs(), stable=True)
    assert (bins[order].diff() >= 0).all()  # bins follow |w|
    counts = torch.bincount(bins.long(), minlength=256)
    assert counts.min() >= 8 and counts.max() <= 12  # |w| pairs up: ~10 per bin of 2,560
    big = torch.randn(300_000, generator=torch.Generator().manual_seed(1))
    share = torch.bincount(magnitude_bins(big).long(), minlength=256).float() / big.numel()
    assert (share - 1 / 256).abs().max() < 1e-3  # edges from a 100k sample, ~1/256 each


def test_draw_in_bins_matches_the_bin_multiset_and_widens_to_neighbours():
    from cwa.selection.ranking import draw_in_bins

    bins = np.repeat(np.arange(10), 10)  # weights 0..99, bin = index // 10
    taken = np.array([90, 91, 92, 93, 94, 95, 96, 97, 5, 55])  # 8 in bin 9, one in 0 and 5
    drawn = draw_in_bins(np.random.default_rng(0), bins, taken)
    assert len(drawn) == 10 and len(set(drawn)) == 10 and not set(drawn) & set(taken)
    got = np.sort(bins[drawn])
    # bin 9 has 2 free: the other 6 come from bin 8 (the nearest), bins 0 and 5 match exactly
    assert got.tolist() == [0, 5, 8, 8, 8, 8, 8, 8, 9, 9]


def test_magnitude_matched_control_keeps_tensor_counts_and_bins():
    from cwa.scoring.store import magnitude_bins

    gen = torch.Generator().manual_seed(3)
    weights = [torch.randn(40, 30, generator=gen), torch.randn(20, 10, generator=gen)]
    scores = [w.abs() * torch.rand(w.shape, generator=gen) for w in weights]  # |w| matters
    bins = [magnitude_bins(w) for w in weights]
    chosen = select(scores, 60, ("magnitude_matched_k",), draws=2, seed=1, bins=bins)
    top = chosen[0][2]
    for name, _, sel in chosen[1:]:
        assert name == "magnitude_matched_k"
        coords = set(zip(sel.tensor.tolist(), sel.flat.tolist(), strict=True))
        assert len(coords) == 60 and not coords & set(zip(top.tensor, top.flat, strict=True))
        for t in (0, 1):
            mine, theirs = top.flat[top.tensor == t], sel.flat[sel.tensor == t]
            assert len(mine) == len(theirs)
            # the same |w| bins, up to the widening where a high bin runs out of free weights
            gap = np.abs(
                np.sort(bins[t][theirs].numpy().astype(int))
                - np.sort(bins[t][mine].numpy().astype(int))
            )
            assert gap.mean() < 3
        for t, i, s in zip(sel.tensor, sel.flat, sel.score, strict=True):
            assert s == float(scores[t].reshape(-1)[i])  # exact: a copy of the score
    random = select(scores, 60, ("random_k",), draws=1, seed=1)[1][2]

    def mean_w(sel):
        pairs = zip(sel.tensor, sel.flat, strict=True)
        return np.mean([float(weights[t].reshape(-1)[i].abs()) for t, i in pairs])

    assert abs(mean_w(chosen[1][2]) - mean_w(top)) < abs(mean_w(random) - mean_w(top))
    with pytest.raises(CwaError, match="magnitude_matched_k needs the score store's"):
        select(scores, 60, ("magnitude_matched_k",), draws=1, seed=1)


def test_a_matched_control_may_fill_half_a_tensor_and_comes_in_score_order():
    """random_k takes the top set's count from each tensor: up to half of it (the rest is then
    drawn whole), refused beyond with a message naming the control; its rows by score, highest
    first, as the ranking table lists every set."""
    from cwa.selection.ranking import Selected, matched_random

    scores = [torch.arange(10.0), torch.arange(100.0, 104.0)]
    sizes = [10, 4]
    top = Selected(
        np.array([0] * 5 + [1] * 2), np.array([9, 8, 7, 6, 5, 3, 2]), np.zeros(7)
    )  # exactly half of each tensor
    got = matched_random(top, sizes, np.random.default_rng(0), scores)
    assert set(zip(got.tensor.tolist(), got.flat.tolist(), strict=True)) == {
        (0, 0), (0, 1), (0, 2), (0, 3), (0, 4), (1, 0), (1, 1)
    }  # fmt: skip
    assert got.score.tolist() == [101.0, 100.0, 4.0, 3.0, 2.0, 1.0, 0.0]
    one_more = Selected(np.zeros(6, dtype=np.int64), np.arange(4, 10), np.zeros(6))
    with pytest.raises(CwaError, match="`controls` random_k cannot match the top 6: they hold 6"):
        matched_random(one_more, sizes, np.random.default_rng(0), scores)


def test_draw_in_bins_stays_in_a_bin_with_exactly_enough_and_draws_nothing_for_nothing():
    from cwa.selection.ranking import draw_in_bins

    bins = np.repeat(np.arange(10), 10)
    taken = np.arange(30, 35)  # 5 of bin 3's 10: exactly 5 free ones are left there
    drawn = draw_in_bins(np.random.default_rng(0), bins, taken)
    assert sorted(drawn.tolist()) == [35, 36, 37, 38, 39]
    nothing = draw_in_bins(np.random.default_rng(0), bins, np.empty(0, np.int64))
    assert nothing.shape == (0,)


def test_select_numbers_the_top_set_draw_zero_and_needs_bins_for_magnitude_matched():
    scores = [torch.rand(10, 10, generator=torch.Generator().manual_seed(0))]
    chosen = select(scores, 5, ("random_k",), draws=2, seed=0)
    assert [(name, draw) for name, draw, _ in chosen] == [
        ("top", 0),
        ("random_k", 0),
        ("random_k", 1),
    ]
    with pytest.raises(CwaError, match=r"^magnitude_matched_k needs the score store's \|w\| bins"):
        select(scores, 5, ("magnitude_matched_k",), draws=1, seed=0)
    bins = [torch.zeros(100, dtype=torch.uint8)]
    with pytest.raises(CwaError, match="`controls` magnitude_matched_k cannot match the top 60"):
        select(scores, 60, ("magnitude_matched_k",), draws=1, seed=0, bins=bins)
