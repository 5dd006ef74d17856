"""The layer sweep against plain torch: each block's own top-k by a sort, its zeroing evaluated by
hand, random draws from the same block with the top set's per-tensor counts."""

import math

import numpy as np
import torch

from cwa.core.stats import bootstrap_indices
from cwa.evaluation.perplexity import evaluate
from cwa.experiments.layer_sweep import by_layer, layer_experiments
from cwa.experiments.perturbations import get_perturbation
from cwa.experiments.sweep import run as run_experiments
from cwa.models.anatomy import describe, pool
from tests.conftest import tiny_llama, window_nll


def test_each_block_alone_by_hand():
    model = tiny_llama(seed=4, layers=3)
    infos = pool(describe(model))
    params = dict(model.named_parameters())
    gen = torch.Generator().manual_seed(0)
    scores = {i.name: torch.randn(i.shape, generator=gen) for i in infos}  # signed: by |s|
    windows = torch.randint(1, 64, (6, 12), generator=gen)
    k, draws = 7, 2
    exps = layer_experiments(infos, scores, k, (get_perturbation("zero"), (None,)), draws, 0, "m")
    assert list(exps) == [0, 1, 2]
    base = evaluate(model, windows, 3)
    results = {
        layer: run_experiments(model, mine, windows, 3, None) for layer, mine in exps.items()
    }
    idx = bootstrap_indices(len(windows), 200, 0)
    table = by_layer(exps, results, base, idx, 200, 0)
    tokens = windows.shape[0] * (windows.shape[1] - 1)
    base_ppl = math.exp(float(window_nll(model, windows).sum()) / tokens)

    def ppl_without(weights: dict[str, torch.Tensor]) -> float:
        kept = {n: params[n].detach().clone() for n in weights}
        with torch.no_grad():
            for n, flat in weights.items():
                params[n].view(-1)[flat] = 0.0
        nll = float(window_nll(model, windows).sum())
        with torch.no_grad():
            for n in weights:
                params[n].copy_(kept[n])
        return math.exp(nll / tokens)

    for row in table.iter_rows(named=True):
        layer = row["layer"]
        mine = [i for i in infos if i.layer == layer]
        flat = torch.cat([scores[i.name].abs().flatten() for i in mine])
        where = [(i.name, j) for i in mine for j in range(i.numel)]
        want = {where[j] for j in flat.argsort(descending=True)[:k].tolist()}
        top = next(e for e in exps[layer] if e.selection == "top")
        assert {(n, j) for n, f in top.weights.items() for j in f.tolist()} == want
        # float32 forwards in batches of 3 against one of 6: perplexities agree to ~1e-8 of
        # themselves (observed), 1e-6 allowed; ΔPPL here is ~1e-4 of the perplexity
        assert np.isclose(row["delta_ppl"] + base.ppl, ppl_without(top.weights), rtol=1e-6)
        assert np.isclose(base.ppl, base_ppl, rtol=1e-6)
        assert row["ci_low"] <= row["delta_ppl"] <= row["ci_high"]
        controls = [e for e in exps[layer] if e.selection == "random_k"]
        assert len(controls) == row["draws"] == draws
        deltas = []
        for c in controls:
            assert {n: len(f) for n, f in c.weights.items()} == {
                n: len(f) for n, f in top.weights.items()
            }  # the same block, tensor for tensor
            chosen = {(n, j) for n, f in c.weights.items() for j in f.tolist()}
            assert not chosen & want
            deltas.append(ppl_without(c.weights) - base_ppl)
        got = row["control_delta_ppl"] + base.ppl
        assert np.isclose(got, base_ppl + np.mean(deltas), rtol=1e-6)
        index = {(e.selection, e.draw): n for n, e in enumerate(exps[layer])}
        own = [results[layer][index["random_k", d]].ppl - base.ppl for d in range(draws)]
        assert row["separation"] == row["delta_ppl"] / np.mean(np.abs(own))
        assert 0 < row["p_value"] <= 1 and not row["diverged"]
    for n, p in model.named_parameters():  # restored
        assert torch.equal(p, tiny_llama(seed=4, layers=3).get_parameter(n)), n


def test_k_beyond_half_the_smallest_tensor_perturbs_half_of_it():
    """k_proj and v_proj (8 x 8 here) bound what random_k can match tensor for tensor."""
    model = tiny_llama(seed=4, hidden=8, layers=1, heads=2, kv_heads=2)
    infos = pool(describe(model))
    gen = torch.Generator().manual_seed(1)
    scores = {i.name: torch.rand(i.shape, generator=gen) for i in infos}
    spec = (get_perturbation("zero"), (None,))
    (exps,) = layer_experiments(infos, scores, 1000, spec, 1, 0, "m").values()
    assert sorted((e.selection, e.size) for e in exps) == [("random_k", 32), ("top", 32)]
    (small,) = layer_experiments(infos, scores, 5, spec, 1, 0, "m").values()
    assert [e.size for e in small] == [5, 5]
