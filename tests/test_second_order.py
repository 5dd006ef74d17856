"""Hutchinson, OBD and Wanda against exact or direct computations on micro models."""

import pytest
import torch
from torch.func import functional_call, jacrev

from cwa import CwaError
from cwa.models.anatomy import describe, pool
from cwa.scoring.metrics import compute_scores, get_metric, rademacher
from tests.conftest import tiny_gpt2, tiny_llama
from tests.tolerance import assert_close_scaled


@pytest.fixture(scope="module")
def micro():
    model = tiny_llama(seed=3, hidden=8, layers=1, heads=2, kv_heads=2)
    windows = torch.randint(0, 64, (4, 6), generator=torch.Generator().manual_seed(5))
    infos = pool(describe(model))
    return model, windows, infos


def exact_hessian(model, windows, infos):
    """Full Hessian of the mean token loss over every pool weight, by reverse-over-reverse."""
    params = {n: p.detach() for n, p in model.named_parameters()}
    shapes = [params[i.name].shape for i in infos]
    sizes = [s.numel() for s in shapes]

    def loss(theta):
        parts = dict(
            zip(
                [i.name for i in infos],
                [t.view(s) for t, s in zip(theta.split(sizes), shapes, strict=True)],
                strict=True,
            )
        )
        logits = functional_call(model, {**params, **parts}, (windows,)).logits[:, :-1]
        return torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), windows[:, 1:].reshape(-1)
        )

    theta = torch.cat([params[i.name].reshape(-1) for i in infos])
    return jacrev(jacrev(loss))(theta), sizes


def flat(scores, infos):
    return torch.cat([scores[i.name].reshape(-1) for i in infos])


def test_hutchinson_equals_its_probes_applied_to_the_exact_hessian(micro):
    model, windows, infos = micro
    hess, _ = exact_hessian(model, windows, infos)
    probes = 5
    scores = compute_scores(
        model, infos, get_metric("hutchinson_diag"), windows, batch_size=3, probes=probes, seed=2
    )
    params = [dict(model.named_parameters())[i.name] for i in infos]
    expected = torch.zeros(hess.shape[0])
    for s in range(probes):
        z = torch.cat([t.reshape(-1) for t in rademacher(params, 2 * 1_000_003 + s)])
        expected += z * (hess @ z) / probes
    # float32, two algorithms: double-backward products of batches 3 + 1 vs the 640 x 640 Hessian
    # (jacrev of jacrev) times z. (H z)_i sums 640 terms whose |.| add up to <= 3.1x the largest
    # score: n · eps32 · 3.1 = 2.4e-4 of it at worst (observed 3e-7). Another probe, seed or a
    # factor of 2 changes the largest scores by O(1).
    assert_close_scaled(flat(scores, infos), expected, rtol=1e-3, floor=3e-4)


def test_hutchinson_converges_to_the_exact_diagonal_like_one_over_sqrt_probes(micro):
    model, windows, infos = micro
    hess, _ = exact_hessian(model, windows, infos)
    exact = torch.diagonal(hess)
    errors = {}
    for probes in (16, 256):
        est = flat(
            compute_scores(
                model, infos, get_metric("hutchinson_diag"), windows, 4, probes=probes, seed=0
            ),
            infos,
        )
        errors[probes] = (est - exact).norm() / exact.norm()
    # Monte Carlo, not rounding (float32 rounding is ~1e-7 of these errors): 16x the probes
    # should cut the error ~4x; allow slack for one random draw.
    assert errors[256] < errors[16] / 2.5
    # Theory: E‖est − diag‖² = Σ_{i≠j} H_ij² / S. One draw of 256 probes scatters around that
    # expectation; ±50% is slack for it (the seed is fixed), a missing 1/S is off 16-256x.
    off = (hess.square().sum() - exact.square().sum()).sqrt() / exact.norm()
    assert errors[256] == pytest.approx(off / 16, rel=0.5)
    assert (exact < 0).any()  # the sign matters: negative curvature exists and is kept


def test_obd_is_half_fisher_times_weight_squared(micro):
    model, windows, infos = micro
    fisher = compute_scores(model, infos, get_metric("grad_squared"), windows, 2)
    obd = compute_scores(model, infos, get_metric("obd"), windows, 2)
    params = dict(model.named_parameters())
    for i in infos:
        expected = 0.5 * fisher[i.name] * params[i.name].detach().square()
        # obd runs the same deterministic grad_squared pass, then these float32 operations in
        # this order: bit-identical. (assert_close's default atol=1e-5 exceeded every score.)
        assert torch.equal(obd[i.name], expected), i.name


def wanda_scaler(x: torch.Tensor, batch_size: int) -> torch.Tensor:
    """The original Wanda code's running mean over calibration samples (its `add_batch`): per
    batch of `tmp` samples, scaler *= n / (n + tmp); n += tmp; scaler += ‖X_batch‖² / n."""
    scaler, n = torch.zeros(x.shape[-1], dtype=torch.float64), 0
    for batch in x.double().split(batch_size):
        tmp = len(batch)
        scaler *= n / (n + tmp)
        n += tmp
        scaler += batch.reshape(-1, x.shape[-1]).square().sum(0) / n
    return scaler


def test_wanda_matches_direct_input_norms_on_llama():
    model = tiny_llama(seed=1)
    windows = torch.randint(0, 64, (5, 9), generator=torch.Generator().manual_seed(0))
    infos = pool(describe(model))
    scores = compute_scores(model, infos, get_metric("wanda"), windows, batch_size=2)
    with torch.no_grad():  # layer 0 attention input: RMSNorm(embeddings), known directly
        x = model.model.layers[0].input_layernorm(model.model.embed_tokens(windows))
    norm = wanda_scaler(x, batch_size=2).sqrt().float()  # the original's normalisation
    # the same as every token's squares over the number of windows (N = 5)
    torch.testing.assert_close(norm, (x.square().sum((0, 1)) / 5).sqrt(), rtol=1e-6, atol=0)
    for proj in ("q_proj", "k_proj", "v_proj"):
        name = f"model.layers.0.self_attn.{proj}.weight"
        w = dict(model.named_parameters())[name].detach()
        # float32 sums of 45 squares (no cancellation) in batches 2 + 2 + 1 against the float64
        # running mean: relative error <= 45 · eps32 = 5e-6, halved by the square root
        torch.testing.assert_close(scores[name], w.abs() * norm[None, :], rtol=1e-5, atol=1e-7)
    assert get_metric("act_mag") is get_metric("wanda")


def test_wanda_uses_rows_for_gpt2_conv1d():
    model = tiny_gpt2(seed=2)
    windows = torch.randint(0, 64, (3, 7), generator=torch.Generator().manual_seed(1))
    infos = pool(describe(model))
    scores = compute_scores(model, infos, get_metric("wanda"), windows, batch_size=3)
    with torch.no_grad():
        pos = torch.arange(windows.shape[1])
        x = model.transformer.h[0].ln_1(model.transformer.wte(windows) + model.transformer.wpe(pos))
    norm = wanda_scaler(x, batch_size=3).sqrt().float()
    name = "transformer.h.0.attn.c_attn.weight"  # Conv1D: weight is [in, out]
    w = dict(model.named_parameters())[name].detach()
    # float32 sum of 21 squares, in one batch as here: relative error <= 21 · eps32 = 2.5e-6
    torch.testing.assert_close(scores[name], w.abs() * norm[:, None], rtol=1e-5, atol=1e-7)


def test_wanda_refuses_embeddings():
    model = tiny_llama()
    infos = pool(describe(model), include_embeddings=True)
    with pytest.raises(CwaError, match="linear-layer weights only"):
        compute_scores(model, infos, get_metric("wanda"), torch.zeros(1, 4, dtype=torch.long), 1)


def test_signed_scores_rank_by_magnitude():
    from cwa.models.anatomy import ParamInfo
    from cwa.selection.ranking import rank

    info = ParamInfo("m.layers.0.mlp.down_proj.weight", 0, "mlp_down", (1, 4), False)
    table = rank(
        [info],
        {info.name: torch.tensor([[0.1, -5.0, 2.0, -0.01]])},
        "global",
        (2,),
        ("bottom_k",),
        1,
        0,
        "hutchinson_diag",
    )
    top = table.filter(table["selection"] == "top")
    assert top["flat_index"].to_list() == [1, 2] and top["score"].to_list() == [5.0, 2.0]
    bottom = table.filter(table["selection"] == "bottom_k")
    assert bottom["flat_index"].to_list() == [3, 0]


def _sdpa_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(4)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        attn_implementation="sdpa",  # the built-in family's attention
    )
    return LlamaForCausalLM(config).eval()


@pytest.mark.parametrize("build", [tiny_gpt2, _sdpa_llama])
@pytest.mark.parametrize("metric", ["hutchinson_diag", "obd_hutchinson"])
def test_layer_groups_equal_the_all_at_once_pass(build, metric):
    """Grouped forward-over-reverse products keep the cross-group Hessian terms: same scores."""
    model = build()
    infos = pool(describe(model), include_embeddings=True, include_1d=True)  # + outside group
    windows = torch.randint(0, 64, (5, 10), generator=torch.Generator().manual_seed(6))
    m = get_metric(metric)
    whole = compute_scores(model, infos, m, windows, 2, probes=3, seed=1)
    for size in (1, 2):
        grouped = compute_scores(model, infos, m, windows, 2, probes=3, seed=1, layer_group=size)
        for name, ref in whole.items():
            # float32: the same products from recomputed blocks, summed per group (and per
            # tangent) in another order: tests/tolerance.py; observed <= 4.6e-7 of the largest
            assert_close_scaled(grouped[name], ref, name=name)
