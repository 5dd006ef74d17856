"""Units (neurons, heads, experts, channels) against a brute-force construction on every
architecture: each weight's (output, input) feature decides its unit, written out per kind."""

import numpy as np
import polars as pl
import pytest
import torch

from cwa import CwaError
from cwa.experiments.perturbations import int_view
from cwa.models.anatomy import ParamInfo, describe, pool
from cwa.selection.units import matched_random, ranked, unit_scores, units_of, weights_of
from tests.test_architectures import CONFIGS, build, expected_head_features

READS = ("attn_q", "attn_k", "attn_v", "attn_qkv", "mlp_up", "mlp_gate", "mlp_gate_up", "router")
WRITES = ("attn_o", "mlp_down", "moe_down")


def coordinates(info: ParamInfo) -> tuple[np.ndarray, ...]:
    """(expert, out feature, in feature) of every flat storage index, by unravelling the
    storage shape (GPT-2's Conv1D stores [in, out]); expert 0 for 2-D tensors."""
    grid = np.unravel_index(np.arange(info.numel), info.shape)
    if len(info.shape) == 3:
        return grid
    out, inp = (grid[1], grid[0]) if info.transposed else (grid[0], grid[1])
    return np.zeros(info.numel, dtype=np.int64), out, inp


def brute(info: ParamInfo, kind: str, layer: int, index: int, ff: int, arch: str) -> set:
    """The flat indices of `info` that belong to the unit, from each kind's definition."""
    if len(info.shape) < 2:
        return set()
    expert, out, inp = coordinates(info)
    c = info.component
    if kind == "neuron":
        if info.layer != layer:
            return set()
        hit = {
            "mlp_up": out == index,
            "mlp_gate": out == index,
            "mlp_gate_up": (out == index) | (out == ff + index),
            "mlp_down": inp == index,
        }.get(c, np.zeros_like(out, dtype=bool))
    elif kind == "head":
        if info.layer != layer or not c.startswith("attn_"):
            return set()
        f = expected_head_features(arch, c, index, info.heads, info.kv_heads, info.head_dim)
        hit = np.isin(inp if c == "attn_o" else out, sorted(f))
    elif kind == "expert":
        hit = (expert == index) if info.layer == layer and c.startswith("moe_") else out < 0
    else:  # channel
        reads = (*READS, "moe_gate_up")
        hit = (out == index) if c in WRITES else (inp == index) if c in reads else out < 0
    return set(np.nonzero(hit)[0].tolist())


KIND_ARCHS = [("neuron", a) for a in sorted(CONFIGS) if a != "mixtral"]
KIND_ARCHS += [("head", a) for a in sorted(CONFIGS)] + [("expert", "mixtral")]
KIND_ARCHS += [("channel", a) for a in sorted(CONFIGS)]


# The configs' MLP widths and key/value heads where they differ from 64 and 2 (GQA): 4 x hidden by
# default; no GQA (one unit per head), CodeGen's 8 heads, multi-query's one key/value head.
FF_WIDTH = dict.fromkeys(
    ("gpt2", "gptj", "codegen", "gpt_bigcode", "gpt_neo", "falcon", "falcon_gqa"), 128
)
KV_HEADS = {"gpt2": 4, "gpt_neox": 4, "opt": 4, "gptj": 4, "gpt_neo": 4, "phi": 4, "codegen": 8}
KV_HEADS |= {"gpt_bigcode": 1, "falcon": 1}


@pytest.mark.parametrize(("kind", "arch"), KIND_ARCHS)
def test_unit_index_sets_equal_the_brute_force_construction(kind, arch):
    infos = pool(describe(build(arch)))
    units = units_of(infos, kind)
    table = units.table
    ff = FF_WIDTH.get(arch, 64)
    kv = KV_HEADS.get(arch, 2)
    expected_count = {"neuron": 2 * ff, "head": 2 * kv, "expert": 2 * 4, "channel": 32}[kind]
    assert len(table) == expected_count
    last = len(table) - 1
    for u in sorted({0, min(len(table) // 2 + 1, last), last}):
        layer, index = table.row(u, named=True)["layer"], table.row(u, named=True)["index"]
        got = weights_of(units, [u])
        for info in infos:
            want = brute(info, kind, layer, index, ff, arch)
            assert set(got.get(info.name, torch.empty(0)).tolist()) == want, (info.name, u)
    ones = unit_scores(units, {i.name: torch.ones(i.shape) for i in infos}, "sum")
    sizes = [sum(len(v) for v in weights_of(units, [u]).values()) for u in range(len(table))]
    assert ones["weights"].to_list() == sizes and ones["score"].to_list() == sizes


@pytest.mark.parametrize("reduce", ["sum", "mean", "max"])
def test_unit_scores_reduce_each_units_own_weights(reduce):
    infos = pool(describe(build("llama")))
    gen = torch.Generator().manual_seed(0)
    scores = {i.name: torch.randn(i.shape, generator=gen) for i in infos}
    for kind in ("neuron", "head", "channel"):
        units = units_of(infos, kind)
        table = unit_scores(units, scores, reduce)
        for u in (0, len(table) // 2, len(table) - 1):
            values = torch.cat(
                [scores[n].reshape(-1)[f].abs() for n, f in weights_of(units, [u]).items()]
            ).double()
            want = {"sum": values.sum(), "mean": values.mean(), "max": values.max()}[reduce]
            assert table["score"][u] == pytest.approx(float(want), rel=1e-6), (kind, u)


def test_labels_name_units_as_researchers_do():
    infos = pool(describe(build("llama")))
    assert units_of(infos, "neuron").table["label"][65] == "layer 1, neuron 1"
    assert units_of(infos, "head").table["label"][3] == "layer 1, kv head 1"  # GQA: kv groups
    assert units_of(infos, "channel").table["label"][7] == "channel 7"
    mixtral = pool(describe(build("mixtral")))
    assert units_of(mixtral, "expert").table["label"][5] == "layer 1, expert 1"
    with pytest.raises(CwaError, match="`units` expert: the pool holds none"):
        units_of(infos, "expert")
    gpt2 = pool(describe(build("gpt2")))
    assert units_of(gpt2, "head").table["label"][5] == "layer 1, head 1"


def test_ranking_and_random_units_matched_per_layer():
    layers, scores = [0, 0, 0, 0, 1, 1, 1, 1], [5.0, 1, 9, 1, 7, 0, 0, 2]
    table = pl.DataFrame(
        {
            "unit": range(8),
            "layer": layers,
            "index": [0, 1, 2, 3] * 2,
            "label": [""] * 8,
            "score": scores,
        }
    )
    order = ranked(table)
    assert order["unit"].to_list()[:4] == [2, 4, 0, 7] and order["rank"][0] == 0
    assert order.filter(pl.col("score") == 1.0)["unit"].to_list() == [1, 3]  # ties: lower id
    chosen = [2, 4, 0]
    for seed in range(5):
        drawn = matched_random(table, chosen, np.random.default_rng(seed))
        layers = table.filter(pl.col("unit").is_in(drawn))["layer"].sort().to_list()
        assert layers == [0, 0, 1] and not set(drawn) & set(chosen)
    # layer 0 keeps one free unit for three chosen: the other two come from layer 1
    drawn = matched_random(table, [0, 1, 2], np.random.default_rng(0))
    assert len(drawn) == 3 and 3 in drawn and set(drawn) - {3} <= {4, 5, 6, 7}
    with pytest.raises(CwaError, match="`unit_topk`: 5 units leave too few of the 8"):
        matched_random(table, [0, 1, 2, 3, 4], np.random.default_rng(0))


def _planted(arch: str, kind: str, plant) -> None:
    """Plant a critical unit (its weights scaled up), score by grad_x_weight, rank the units:
    it comes first; zeroing it moves the windows' losses far more than zeroing random units of
    its layer (an untrained model: the loss moves both ways), and restores bit for bit."""
    from cwa.evaluation.perplexity import evaluate
    from cwa.experiments.perturbations import get_perturbation
    from cwa.experiments.sweep import grid, selection_set
    from cwa.experiments.sweep import run as run_experiments
    from cwa.scoring.metrics import compute_scores, get_metric

    model = build(arch)
    infos = pool(describe(model))
    units = units_of(infos, kind)
    target = int(units.table["unit"][len(units.table) // 2 + 1])
    with torch.no_grad():
        weights = dict(model.named_parameters())
        for name, flat in weights_of(units, [target]).items():
            weights[name].view(-1)[flat] *= plant
    windows = torch.randint(1, 64, (6, 12), generator=torch.Generator().manual_seed(0))
    scores = compute_scores(model, infos, get_metric("grad_x_weight"), windows, 3)
    table = ranked(unit_scores(units, scores, "sum"))
    assert table["unit"][0] == target
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    rng = np.random.default_rng(0)
    sets = [selection_set(weights_of(units, [target]), "top", 1, 0)] + [
        selection_set(weights_of(units, matched_random(table, [target], rng)), "random_k", 1, d)
        for d in range(3)
    ]
    exps = grid(sets, [(get_perturbation("zero"), (None,))])
    results = run_experiments(model, exps, windows, 3, desc=None)
    base = evaluate(model, windows, 3).nll
    pairs = zip(exps, results, strict=True)
    moved = {(e.selection, e.draw): np.abs(r.nll - base).sum() for e, r in pairs}
    top = moved.pop(("top", 0))  # how far the windows' losses moved
    assert top > 5 * max(moved.values())
    for n, p in model.named_parameters():
        assert torch.equal(int_view(p.detach()), int_view(before[n])), n


def test_a_planted_critical_neuron_is_ranked_first_and_restored_bit_for_bit():
    _planted("llama", "neuron", 8.0)


def test_a_planted_critical_expert_is_ranked_first_and_restored_bit_for_bit():
    _planted("mixtral", "expert", 4.0)
