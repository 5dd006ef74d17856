"""Pruning methods against direct computations on hand-built layers and tiny models."""

import math

import numpy as np
import pytest
import torch

from cwa.experiments.pruning import (
    Sparsity,
    apply_masks,
    global_mask,
    in_group,
    input_stats,
    lowest,
    lowest_per_row,
    n_of_m,
    per_row,
    prune_by_activations,
    ria_scores,
    sparsegpt,
    wanda_scores,
)
from cwa.models.anatomy import describe, pool
from tests.conftest import VOCAB, tiny_gpt2, tiny_llama


def test_per_row_prunes_exactly_the_lowest_of_every_row():
    scores = torch.tensor([[5.0, 1.0, 3.0, 2.0], [0.5, 0.1, 0.9, 0.2]])
    mask = per_row(scores, 0.5)
    assert mask.tolist() == [[False, True, False, True], [False, True, False, True]]
    assert per_row(scores, 0.7).sum(dim=1).tolist() == [2, 2]  # ⌊0.7·4⌋ = 2 per row


def sorted_lowest(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Reference: the first `count` entries of every row's stable sort."""
    mask = torch.zeros_like(scores, dtype=torch.bool)
    return mask.scatter_(1, torch.sort(scores, dim=1, stable=True).indices[:, :count], True)


def test_selection_takes_the_same_weights_as_a_stable_sort_ties_and_nan_included():
    gen = torch.Generator().manual_seed(3)
    rows = torch.randint(0, 4, (64, 40), generator=gen).float()  # heavy ties, as after pruning
    rows[::7, ::3] = float("nan")
    rows[5] = 0.0  # a row of one value
    cases = [rows, torch.rand(16, 33, generator=gen), -rows]
    for scores in cases:
        for count in (0, 1, 7, 20, 39, 40):
            assert torch.equal(lowest_per_row(scores, count), sorted_lowest(scores, count))
        assert torch.equal(lowest(scores[1], 13), sorted_lowest(scores[1:2], 13)[0])
    want = sorted_lowest(rows.reshape(-1, 4), 2).reshape(rows.shape)
    assert torch.equal(n_of_m(rows, 2, 4), want)


def test_n_of_m_prunes_n_in_every_group_of_m_columns():
    scores = torch.rand(6, 16, generator=torch.Generator().manual_seed(0))
    mask = n_of_m(scores, 2, 4)
    groups = mask.reshape(6, 4, 4)
    assert (groups.sum(dim=2) == 2).all()
    for r in range(6):
        for g in range(4):
            block = scores[r, 4 * g : 4 * g + 4]
            assert set(torch.nonzero(groups[r, g]).flatten().tolist()) == set(
                torch.argsort(block)[:2].tolist()
            )


def test_global_mask_equals_a_stable_sort_of_the_concatenated_scores():
    gen = torch.Generator().manual_seed(1)
    scores = {
        "a": torch.randint(0, 20, (30,), generator=gen).float(),  # many ties
        "b": torch.randint(0, 20, (5, 7), generator=gen).float(),
        "c": torch.zeros(4),
    }
    for fraction in (0.0, 0.1, 0.37, 0.5, 0.99):
        masks = global_mask(scores, fraction)
        flat = torch.cat([s.flatten() for s in scores.values()])
        want = torch.zeros_like(flat, dtype=torch.bool)
        want[torch.argsort(flat, stable=True)[: int(len(flat) * fraction)]] = True
        got = torch.cat([masks[n].flatten() for n in scores])
        assert torch.equal(got, want), fraction


def test_wanda_and_ria_scores_against_their_formulas():
    gen = torch.Generator().manual_seed(2)
    w = torch.randn(3, 4, generator=gen, dtype=torch.float64)
    sq = torch.rand(4, generator=gen, dtype=torch.float64) * 10
    windows = 5
    wanda = wanda_scores(w, sq, windows).tolist()
    ria = ria_scores(w, sq, windows).tolist()
    w, sq = w.tolist(), sq.tolist()
    for i in range(3):
        for j in range(4):
            norm = math.sqrt(sq[j] / windows)
            assert wanda[i][j] == pytest.approx(abs(w[i][j]) * norm, rel=1e-12)
            col = sum(abs(w[k][j]) for k in range(3))
            row = sum(abs(w[i][k]) for k in range(4))
            want = (abs(w[i][j]) / col + abs(w[i][j]) / row) * norm**0.5
            assert ria[i][j] == pytest.approx(want, rel=1e-12)


def correlated_inputs(n: int, d: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=gen) / math.sqrt(d)
    return torch.randn(n, d, generator=gen) @ mix + 0.1 * torch.randn(n, d, generator=gen)


def test_sparsegpt_update_equals_the_dense_least_squares_solution_for_a_prefix_mask():
    """When the pruned weights of every row are its first columns, SparseGPT's sequential OBS
    updates reach the exact optimum: the kept weights minimise ‖(W − Ŵ) X‖² + damping, which a
    dense solve of the normal equations gives directly (float64)."""
    rows, cols, pruned = 3, 8, 3
    x = correlated_inputs(200, cols, 3).double()
    gen = torch.Generator().manual_seed(4)
    w = torch.randn(rows, cols, generator=gen, dtype=torch.float64) + 3.0
    w[:, :pruned] = 1e-3  # the smallest saliencies: SparseGPT prunes these columns
    h = x.T @ x
    new, mask = sparsegpt(w, h, Sparsity(pruned / cols), block=cols)
    assert mask[:, :pruned].all() and not mask[:, pruned:].any()
    damped = h + 0.01 * torch.diag(h).mean() * torch.eye(cols, dtype=torch.float64)
    keep = slice(pruned, cols)
    for r in range(rows):
        want = torch.linalg.solve(damped[keep, keep], damped[keep, :] @ w[r])
        assert new[r, :pruned].abs().max() == 0
        # fp32 algorithm against a float64 solve of a condition-number ~1e2 system
        torch.testing.assert_close(new[r, keep].double(), want, rtol=1e-4, atol=1e-4)


def test_sparsegpt_reconstructs_better_than_magnitude_at_the_same_sparsity():
    rows, cols = 16, 64
    x = correlated_inputs(500, cols, 5)
    w = torch.randn(rows, cols, generator=torch.Generator().manual_seed(6))
    h = x.T @ x
    for target in (Sparsity(0.5), Sparsity.pattern("2:4")):
        new, mask = sparsegpt(w, h, target, block=32)
        magnitude = w.clone()
        if target.nm:
            magnitude[n_of_m(w.abs(), 2, 4)] = 0
        else:
            magnitude[per_row(w.abs(), 0.5)] = 0
        error = ((w - new) @ x.T).square().sum()
        baseline = ((w - magnitude) @ x.T).square().sum()
        assert error < 0.8 * baseline, target
        assert int(mask.sum()) == rows * cols // 2 and (new[mask] == 0).all()
        if target.nm:
            assert (mask.reshape(rows, cols // 4, 4).sum(dim=2) == 2).all()
        else:  # exactly half of every 32-column block
            assert all(int(mask[:, b : b + 32].sum()) == rows * 16 for b in (0, 32))


def test_sparsegpt_zeroes_dead_inputs():
    x = correlated_inputs(100, 8, 7)
    x[:, 2] = 0  # an input that never fires
    w = torch.randn(4, 8, generator=torch.Generator().manual_seed(8))
    new, _ = sparsegpt(w, x.T @ x, Sparsity(0.25), block=8)
    assert (new[:, 2] == 0).all() and torch.isfinite(new).all()


@pytest.fixture()
def calibration():
    return torch.randint(0, VOCAB, (8, 12), generator=torch.Generator().manual_seed(9))


def test_wanda_prunes_block_by_block_on_the_pruned_model(calibration):
    """Exactly half of every row, and block 1's masks come from inputs measured with block 0
    already pruned: recomputed here from the final model (q/k/v read the residual stream, which
    block 1's own pruning does not touch)."""
    model = tiny_llama()
    infos = pool(describe(model))
    dense = {n: p.detach().clone() for n, p in model.named_parameters()}
    masks = prune_by_activations(model, infos, "wanda", Sparsity(0.5), calibration, 4)
    params = dict(model.named_parameters())
    for info in infos:
        rows = masks[info.name]
        assert (rows.sum(dim=1) == info.shape[1] // 2).all()
        assert (params[info.name][rows] == 0).all()
    q = "model.layers.1.self_attn.q_proj.weight"
    module = model.model.layers[1].self_attn.q_proj
    stats = input_stats(model, {q: module}, calibration, 4, False)[q]
    want = per_row(wanda_scores(dense[q], stats.sq, stats.windows), 0.5)
    assert torch.equal(masks[q], want)
    q0 = "model.layers.0.self_attn.q_proj.weight"
    dense_model = tiny_llama()
    module0 = dense_model.model.layers[0].self_attn.q_proj
    stats0 = input_stats(dense_model, {q0: module0}, calibration, 4, False)[q0]
    assert torch.equal(masks[q0], per_row(wanda_scores(dense[q0], stats0.sq, stats0.windows), 0.5))


def test_input_stats_equal_the_layer_inputs_rebuilt_from_the_hidden_states(calibration):
    """Σ x_j² and Σ x xᵀ (SparseGPT's H) of q_proj in each block against its inputs rebuilt
    without hooks: the block's normalised input hidden states (transformers' own
    output_hidden_states), summed over every token of every batch in float64."""
    model = tiny_llama()
    blocks = model.model.layers
    names = [f"model.layers.{b}.self_attn.q_proj.weight" for b in range(len(blocks))]
    modules = {n: blocks[b].self_attn.q_proj for b, n in enumerate(names)}
    got = input_stats(model, modules, calibration, 3, True)  # batches of 3, 3, 2
    with torch.no_grad():
        hidden = model(input_ids=calibration, output_hidden_states=True).hidden_states
    for b, name in enumerate(names):
        x = blocks[b].input_layernorm(hidden[b]).double().reshape(-1, hidden[b].shape[-1])
        assert got[name].windows == len(calibration)
        assert torch.allclose(got[name].sq.double(), x.square().sum(0), rtol=1e-5, atol=1e-6)
        assert torch.allclose(got[name].hessian.double(), x.T @ x, rtol=1e-5, atol=1e-5)


def test_activation_methods_read_gpt2_conv1d_in_the_linear_convention(calibration):
    model = tiny_gpt2()
    infos = pool(describe(model))
    masks = prune_by_activations(model, infos, "wanda", Sparsity(0.25), calibration, 4)
    for info in infos:
        assert info.transposed
        # Conv1D stores [in, out]: an output row is a storage column
        assert (masks[info.name].sum(dim=0) == info.shape[0] // 4).all()
    model = tiny_gpt2()
    masks = prune_by_activations(model, infos, "sparsegpt", Sparsity(0.5), calibration, 4)
    assert sum(int(m.sum()) for m in masks.values()) == sum(i.numel for i in infos) // 2


def lowest_by_sort(scores: dict[str, torch.Tensor], fraction: float) -> dict[str, torch.Tensor]:
    """Brute force: the ⌊fraction·n⌋ lowest of the concatenated scores (a stable sort), as masks
    shaped like each tensor."""
    flat = torch.cat([s.flatten() for s in scores.values()])
    chosen = torch.zeros(len(flat), dtype=torch.bool)
    chosen[torch.argsort(flat, stable=True)[: int(len(flat) * fraction)]] = True
    out, start = {}, 0
    for name, s in scores.items():
        out[name] = chosen[start : start + s.numel()].reshape(s.shape)
        start += s.numel()
    return out


def group_by_sort(scores, infos, target: Sparsity, group: str) -> dict[str, torch.Tensor]:
    """in_group's masks by brute force: every row, every tensor, or each block's pool part
    (`global` with a per-block target; the whole pool otherwise) at its block's fraction."""
    out = {}
    if group == "per_row":
        for i in infos:
            rows = [lowest_by_sort({"r": r}, target.at(i.layer))["r"] for r in scores[i.name]]
            out[i.name] = torch.stack(rows)
    elif group == "per_tensor":
        for i in infos:
            out |= lowest_by_sort({i.name: scores[i.name]}, target.at(i.layer))
    elif not target.by_layer:
        out = lowest_by_sort({i.name: scores[i.name] for i in infos}, target.fraction)
    else:
        for layer in sorted({i.layer for i in infos}):
            mine = {i.name: scores[i.name] for i in infos if i.layer == layer}
            out |= lowest_by_sort(mine, target.at(layer))
    return out


def test_metric_methods_prune_exactly_in_their_group():
    """The pruned weights are the lowest scores of each group, found by a brute-force sort (not
    only as many as the target asks)."""
    model = tiny_llama()
    infos = pool(describe(model))
    gen = torch.Generator().manual_seed(10)
    scores = {i.name: torch.rand(i.shape, generator=gen) for i in infos}
    total = sum(i.numel for i in infos)
    for group in ("global", "per_tensor", "per_row"):
        masks = in_group(scores, infos, Sparsity(0.3), group)
        want = group_by_sort(scores, infos, Sparsity(0.3), group)
        assert all(torch.equal(masks[i.name], want[i.name]) for i in infos), group
        if group == "per_row":
            assert all((masks[i.name].sum(dim=1) == int(i.shape[1] * 0.3)).all() for i in infos)
        if group == "global":
            assert sum(int(m.sum()) for m in masks.values()) == int(total * 0.3)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    masks = in_group(scores, infos, Sparsity.pattern("2:4"), "global")
    assert apply_masks(model, masks) == total // 2
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        assert (params[name][mask] == 0).all()
        assert torch.equal(params[name][~mask], before[name][~mask])


def test_relative_gain_ci_on_the_identity_resample_is_the_point_gain():
    from cwa.core.stats import relative_gain_ci

    tokens = np.array([10, 10])
    a, b = np.array([30.0, 32.0]), np.array([35.0, 36.0])
    lo, hi = relative_gain_ci(a, b, tokens, np.arange(2)[None, :])
    want = 1 - math.exp(62 / 20) / math.exp(71 / 20)
    assert lo == pytest.approx(want) and hi == pytest.approx(want)


def test_owl_allocation_against_the_reference_formula():
    from cwa.experiments.pruning import owl

    target = owl(0.5, {0: 0.01, 1: 0.03, 2: 0.02})
    # densities (D − min)/(max − min)·2λ = [0, 0.16, 0.08], shifted to mean 0.5
    assert dict(target.by_layer) == pytest.approx({0: 0.58, 1: 0.42, 2: 0.50})
    assert np.mean([f for _, f in target.by_layer]) == pytest.approx(0.5)
    assert target.allocation == "owl" and target.at(-1) == 0.5  # outside the blocks: the target
    assert owl(0.3, {0: 0.02, 1: 0.02}) == Sparsity(0.3)  # no spread: uniform


def test_outlier_ratios_count_wanda_scores_above_m_times_the_block_mean(calibration):
    from cwa.experiments.pruning import OWL_M, outlier_ratios

    model = tiny_llama()
    infos = pool(describe(model))
    ratios = outlier_ratios(model, infos, calibration, 4)
    params = dict(model.named_parameters())
    for layer in (0, 1):
        scores = []
        for info in (i for i in infos if i.layer == layer):
            module = model.get_submodule(info.name.removesuffix(".weight"))
            stats = input_stats(model, {info.name: module}, calibration, 4, False)[info.name]
            scores.append(wanda_scores(params[info.name].detach(), stats.sq, 8).flatten())
        s = torch.cat(scores)
        assert ratios[layer] == pytest.approx(float((s > OWL_M * s.mean()).double().mean()))


def test_owl_targets_prune_each_block_at_its_own_fraction(calibration):
    target = Sparsity(0.5, by_layer=((0, 0.25), (1, 0.75)))
    model = tiny_llama()
    infos = pool(describe(model))
    gen = torch.Generator().manual_seed(11)
    scores = {i.name: torch.rand(i.shape, generator=gen) for i in infos}
    for group in ("global", "per_tensor", "per_row"):
        masks = in_group(scores, infos, target, group)
        want = group_by_sort(scores, infos, target, group)
        assert all(torch.equal(masks[i.name], want[i.name]) for i in infos), group
        for layer, fraction in target.by_layer:
            mine = [i for i in infos if i.layer == layer]
            pruned = sum(int(masks[i.name].sum()) for i in mine)
            assert pruned == pytest.approx(fraction * sum(i.numel for i in mine), abs=len(mine))
    masks = prune_by_activations(model, infos, "sparsegpt", target, calibration, 4)
    for info in infos:
        assert int(masks[info.name].sum()) == int(info.numel * target.at(info.layer))


def test_a_registered_layer_pruner_is_a_valid_method_and_runs_block_by_block(
    calibration, monkeypatch
):
    """A pruning method is one registration: params accept its name and prune_by_activations
    calls it for every pool layer with that layer's own input statistics (no method chain)."""
    from dataclasses import replace
    from pathlib import Path

    from cwa import CwaError
    from cwa.config.params import load_params
    from cwa.experiments import pruning

    calls = []

    def lowest_input_norm(view, target, stats):  # prune the columns with the smallest ‖X_j‖
        calls.append(view.shape)
        mask = per_row(stats.sq.expand_as(view).clone(), target.fraction)
        view.masked_fill_(mask, 0)
        return mask

    method = pruning.LayerPruner("input_norm", "lowest input norm", False, lowest_input_norm)
    monkeypatch.setitem(pruning.LAYER_PRUNERS._items, method.name, method)  # registered here only
    model = tiny_llama()
    infos = pool(describe(model))
    masks = prune_by_activations(model, infos, "input_norm", Sparsity(0.5), calibration, 4)
    assert len(calls) == len(infos)
    for info in infos:
        assert (masks[info.name].sum(dim=1) == info.shape[1] // 2).all()
    defaults = load_params(Path(__file__).resolve().parents[1] / "params.yaml")
    assert replace(defaults, prune_methods=("input_norm",)).prune_methods == ("input_norm",)
    with pytest.raises(CwaError, match="input_norm"):  # listed among the valid names
        replace(defaults, prune_methods=("no_such",))
