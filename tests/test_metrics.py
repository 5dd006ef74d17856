"""Every metric against an independent computation."""

import pytest
import torch
from torch.func import functional_call, grad, vmap

from cwa import CwaError
from cwa.models.anatomy import describe, pool
from cwa.scoring.metrics import compute_scores, get_metric
from tests.tolerance import FLOOR32, assert_close_scaled


def _scores(model, name, windows, batch_size=4):
    infos = pool(describe(model))
    return infos, compute_scores(model, infos, get_metric(name), windows, batch_size)


def test_magnitude_is_abs_weight(llama, windows):
    infos, scores = _scores(llama, "magnitude", windows)
    params = dict(llama.named_parameters())
    for info in infos:  # |w| of float32 weights: exact
        assert torch.equal(scores[info.name], params[info.name].detach().abs())


def test_grad_x_weight_matches_full_batch_mean_loss_gradient(llama, windows):
    infos, scores = _scores(llama, "grad_x_weight", windows, batch_size=4)  # 4 + 2: uneven batches
    # Independent path: HF's own loss (mean over all predicted tokens) on the whole draw at once.
    llama.zero_grad()
    llama(input_ids=windows, labels=windows).loss.backward()
    params = dict(llama.named_parameters())
    for info in infos:
        p = params[info.name]
        expected = (p.grad * p.detach()).abs()
        # float32: summed NLL of batches 4 + 2 over the token count vs HF's mean over all 6
        # windows in one pass; gradients sum the tokens in another order (tests/tolerance.py)
        assert_close_scaled(scores[info.name], expected, name=info.name)


@pytest.mark.parametrize("model", ["llama", "gpt2"])
@pytest.mark.parametrize("wide_pool", [False, True])
def test_grad_squared_is_per_sample_fisher_from_torch_func(model, wide_pool, windows, request):
    """Linear weights get per-window gradients from batched passes (hooks); with embeddings,
    norms and biases in the pool those take one backward per window: both against vmap."""
    llama = request.getfixturevalue(model)
    infos = pool(describe(llama), include_embeddings=wide_pool, include_1d=wide_pool)
    scores = compute_scores(llama, infos, get_metric("grad_squared"), windows, 4)
    names = [i.name for i in infos]
    params = {n: p.detach() for n, p in llama.named_parameters()}

    def sample_loss(scored, ids):
        out = functional_call(llama, {**params, **scored}, (ids[None],))
        logits = out.logits[0, :-1]
        return torch.nn.functional.cross_entropy(logits, ids[1:])  # mean over the window's tokens

    per_sample = vmap(grad(sample_loss), in_dims=(None, 0))({n: params[n] for n in names}, windows)
    for n in names:
        fisher = per_sample[n].square().mean(dim=0)  # square per sample, then average
        # float32: hooked per-window products of a batched pass (or one backward per window) vs
        # vmap(grad): other summation orders over tokens and features (tests/tolerance.py)
        assert_close_scaled(scores[n], fisher, name=n)
        squared_mean = per_sample[n].mean(dim=0).square()  # the classic mistake, for contrast
        # it differs by the variance over windows, not by rounding: far outside the same floor
        floor = FLOOR32 * float(fisher.max())
        assert not torch.allclose(scores[n], squared_mean, rtol=1e-2, atol=floor)


def test_scores_do_not_depend_on_batch_size(llama, windows):
    _, a = _scores(llama, "grad_x_weight", windows, batch_size=1)
    _, b = _scores(llama, "grad_x_weight", windows, batch_size=6)
    for name in a:
        # float32: 6 one-window gradients summed vs one 6-window gradient (tests/tolerance.py)
        assert_close_scaled(a[name], b[name], name=name)


def test_calibration_pass_leaves_model_as_found(llama, windows):
    flags = {n: p.requires_grad for n, p in llama.named_parameters()}
    _scores(llama, "grad_squared", windows)
    assert {n: p.requires_grad for n, p in llama.named_parameters()} == flags
    assert all(p.grad is None for p in llama.parameters())
    assert not llama.training


def test_a_bf16_models_gradients_are_summed_in_fp32():
    """grad_x_weight of a bf16 model over 16 one-window batches: the same bf16 gradients, taken
    here with plain autograd and summed in float64, equal the scores to fp32 rounding. Summed in
    bf16 (8 significant bits), 16 terms drift by about 1e-2 relative."""
    from tests.conftest import tiny_llama

    model = tiny_llama().to(torch.bfloat16)
    windows = torch.randint(0, 64, (16, 10), generator=torch.Generator().manual_seed(3))
    infos, scores = _scores(model, "grad_x_weight", windows, batch_size=1)
    params = dict(model.named_parameters())
    names = [i.name for i in infos]
    total = {n: torch.zeros(params[n].shape, dtype=torch.float64) for n in names}
    for window in windows.split(1):
        logits = model(input_ids=window).logits[:, :-1].float()
        nll = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), window[:, 1:].reshape(-1), reduction="sum"
        )
        for n, g in zip(names, torch.autograd.grad(nll, [params[n] for n in names]), strict=True):
            assert g.dtype == torch.bfloat16
            total[n] += g.double()
    tokens = windows[:, 1:].numel()
    for n in names:
        want = (total[n] / tokens * params[n].detach().double()).abs()
        assert scores[n].dtype == torch.float32
        # fp32: a 16-term sum of exact bf16 values, one division, one product
        assert torch.allclose(scores[n].double(), want, rtol=1e-5, atol=1e-6 * float(want.max()))


def test_unknown_metric_lists_valid_ones():
    valid = "act_mag, grad_squared, grad_x_weight, hutchinson_diag, magnitude, obd, obd_hutchinson"
    with pytest.raises(
        CwaError, match=f"unknown metric 'fisher'; valid: {valid}, super_weight, wanda"
    ):
        get_metric("fisher")


def test_score_passes_the_configs_batch_probes_and_layer_groups():
    from types import SimpleNamespace

    from cwa.scoring.metrics import ScoringConfig, score
    from tests.conftest import tiny_llama

    model = tiny_llama()
    infos = pool(describe(model))
    windows = torch.randint(0, 64, (4, 10), generator=torch.Generator().manual_seed(0))
    m = get_metric("hutchinson_diag")
    params = SimpleNamespace(batch_size=3, seq_len=10, probes=2, layer_group=1, metric="unread")
    got = score(ScoringConfig.of(params), model, infos, m, windows, seed=5)
    want = compute_scores(model, infos, m, windows, 3, probes=2, seed=5, layer_group=1)
    assert all(torch.equal(got[n], want[n]) for n in want)  # the same call: bit-identical


def test_the_scoring_loss_gradient_is_as_accurate_as_plain_cross_entropy():
    """The gradient every gradient metric sums, against float64: its normalised max error is no
    larger than that of a plain F.cross_entropy on flattened logits (the same computation now;
    the transposed layout it replaced measured ~1.6x larger on kjv-base)."""
    import torch.nn.functional as F

    from cwa.scoring.metrics import _loss
    from tests.conftest import VOCAB, tiny_llama

    model = tiny_llama(seed=3, hidden=64)
    exact = tiny_llama(seed=3, hidden=64).double()
    windows = torch.randint(0, VOCAB, (8, 33), generator=torch.Generator().manual_seed(2))

    def grads(m, loss_of):
        m.zero_grad()
        loss_of(m).backward()
        return {n: p.grad.double() for n, p in m.named_parameters() if "layers" in n}

    def plain(m):
        logits = m(input_ids=windows, use_cache=False).logits[:, :-1]
        flat = logits.reshape(-1, logits.shape[-1])
        return F.cross_entropy(flat, windows[:, 1:].reshape(-1), reduction="sum")

    ref = grads(exact, plain)

    def error(g):
        return max(float((g[n] - ref[n]).abs().max() / ref[n].abs().max()) for n in ref)

    ours, baseline = error(grads(model, lambda m: _loss(m, windows))), error(grads(model, plain))
    assert ours <= baseline * 1.0001, (ours, baseline)
