"""The memory estimate: its arithmetic on a known shape, and the guard's message and remedies."""

import pytest

from cwa import CwaError
from cwa.models.anatomy import describe, pool
from cwa.models.memory import check, estimate
from tests.conftest import tiny_llama


@pytest.fixture(scope="module")
def model_and_pool():
    model = tiny_llama()  # hidden 32, 2 blocks, 4 heads, intermediate 64, vocab 64, fp32
    return model, pool(describe(model))


def test_backward_pass_arithmetic(model_and_pool):
    model, infos = model_and_pool
    scored = sum(i.numel for i in infos)
    total = sum(p.numel() for p in model.parameters())
    need = estimate(model, infos, "backward", batch_size=3, seq_len=10).devices["cpu"]
    assert need.weights == 4 * total
    assert need.gradients == 4 * scored
    assert need.accumulators == 4 * scored  # fp32 on the CPU: to_host hands it over, no copy
    block = 3 * 10 * (10 * 32 + 4 * 64 + 2 * 4 * 10) * 4
    logits = 3 * 10 * 64 * (4 + 4 * 3)
    assert need.activations == 2 * block + logits


def test_scores_on_an_accelerator_add_their_host_copy(model_and_pool):
    """A pool on another device (meta here, as a GPU would be) holds its fp32 accumulators
    there and the fp32 score copy in CPU memory."""
    import copy

    model, infos = model_and_pool
    scored = sum(i.numel for i in infos)
    away = estimate(copy.deepcopy(model).to("meta"), infos, "backward", 3, 10).devices
    assert away["meta"].accumulators == 4 * scored
    assert away["cpu"].accumulators == 4 * scored


def test_pass_kinds_order_as_their_memory(model_and_pool):
    model, infos = model_and_pool

    def act(needs, **kw):
        return estimate(model, infos, needs, 8, 16, **kw).devices["cpu"].activations

    assert act("none") == 0
    assert act("forward") < act("backward") < act("hessian")
    # layer groups hold one group's activations (x7 for the products) and, per group, its
    # boundary state and tangent, instead of every block's
    block = 8 * 16 * (10 * 32 + 4 * 64 + 2 * 4 * 16) * 4
    logits = 8 * 16 * 64 * (4 + 4 * 3)
    boundaries = 2 * (2 * 8 * 16 * 32 * 4)  # two groups of one block
    assert act("hessian") == 2 * 7 * block + logits
    assert act("hessian", layer_group=1) == 7 * block + boundaries + logits
    assert act("hessian", layer_group=2) == 7 * 2 * block + boundaries // 2 + logits

    def grads(**kw):
        return estimate(model, infos, "hessian", 8, 16, **kw).devices["cpu"].gradients

    scored = 4 * sum(i.numel for i in infos)
    assert grads() == 3 * scored  # gradient graph, probe, product
    assert grads(layer_group=1) == scored + 2 * scored // 2  # probe whole, the rest per block
    assert act("per_window") == act("backward")  # batched passes; per-window gradients per layer
    per_window = estimate(model, infos, "per_window", 8, 16).devices["cpu"]
    backward = estimate(model, infos, "backward", 8, 16).devices["cpu"]
    assert per_window.gradients - backward.gradients == 8 * 8 * 64 * 32  # batch x largest x 8 B
    assert estimate(model, [], "forward", 8, 16).devices["cpu"].gradients == 0  # an evaluation


@pytest.mark.parametrize("needs", ["backward", "per_window"])
def test_guard_names_the_numbers_and_a_batch_that_fits(model_and_pool, needs):
    model, infos = model_and_pool
    est = estimate(model, infos, needs, 64, 32)
    need = est.devices["cpu"]
    tight = int((need.beyond_weights - need.per_batch / 2) / 0.9)
    with pytest.raises(CwaError) as err:
        check(est, "the grad_x_weight pass", free={"cpu": tight})
    message = str(err.value)
    assert message.startswith("memory: the grad_x_weight pass needs an estimated")
    assert "on cpu beyond the" in message and "for batch 64 x 32 tokens" in message
    suggested = int(message.split("batch_size: ")[1].split(" ")[0])
    assert 1 <= suggested < 64
    smaller = estimate(model, infos, needs, suggested, 32)
    assert check(smaller, "the grad_x_weight pass", free={"cpu": tight})["batch"] == suggested


def test_hessian_guard_suggests_layer_groups(model_and_pool):
    model, infos = model_and_pool
    with pytest.raises(CwaError, match=r"layer_group: 1 .*dtype: bfloat16.*device_map: auto"):
        check(estimate(model, infos, "hessian", 8, 16), "the hutchinson_diag pass", {"cpu": 1})


def test_unknown_pass_kind_is_refused(model_and_pool):
    model, infos = model_and_pool
    with pytest.raises(CwaError, match="valid: none, forward, backward, per_window, hessian"):
        estimate(model, infos, "sideways", 8, 16)


def test_training_guard_counts_adamw_moments_and_names_train_batch(model_and_pool):
    from cwa.models.memory import guard_training

    model, _ = model_and_pool
    total = sum(p.numel() for p in model.parameters())
    assert guard_training(model, 4, 16)["cpu"]["accumulators_gib"] == round(8 * total / 2**30, 3)
    est = estimate(model, describe(model), "backward", 64, 32)
    need = est.devices["cpu"]
    tight = int((need.beyond_weights - need.per_batch / 2) / 0.9)
    with pytest.raises(CwaError, match=r"Try: train_batch: \d+ .*; a smaller family member\.$"):
        check(est, "training", free={"cpu": tight}, training=True)


def test_finetuning_arms_count_gradients_and_moments_whole_or_by_their_free_weights(
    model_and_pool,
):
    """A tensor trained whole: its gradient and two AdamW moments per weight; one trained by
    its free entries: value, gradient, two moments and an int64 index per free weight, plus the
    largest such tensor's whole gradient; both on top of a backward pass's activations."""
    from cwa.models.memory import finetuning_estimate

    model, infos = model_and_pool
    a, b = infos[0], infos[1]
    backward = estimate(model, [], "backward", 4, 16).devices["cpu"]
    whole = finetuning_estimate(model, {a.name: (True, a.numel)}, 4, 16).devices["cpu"]
    assert whole.activations == backward.activations > 0
    assert whole.gradients == 4 * a.numel and whole.accumulators == 8 * a.numel
    sparse = {a.name: (False, 7), b.name: (False, 3)}
    need = finetuning_estimate(model, sparse, 4, 16).devices["cpu"]
    assert need.accumulators == (7 + 3) * (4 * 4 + 8)
    assert need.gradients == 4 * max(a.numel, b.numel)


def test_finetuning_guard_refuses_an_arm_that_cannot_fit_naming_those_that_do(model_and_pool):
    from cwa.models.memory import finetuning_estimate, guard_finetuning

    model, infos = model_and_pool
    plans = {
        "full": {i.name: (True, i.numel) for i in infos},
        "only_top": {infos[0].name: (False, 10)},
    }
    needs = {arm: finetuning_estimate(model, p, 2, 8).devices["cpu"] for arm, p in plans.items()}
    assert needs["only_top"].beyond_weights < needs["full"].beyond_weights
    between = int((needs["only_top"].beyond_weights + needs["full"].beyond_weights) / 2 / 0.9)
    with pytest.raises(
        CwaError,
        match=r"^memory: fine-tuning arm full needs .* Try: "
        r"finetune_arms: \[only_top\] \(the arms that fit\); dtype: bfloat16",
    ):
        guard_finetuning(model, plans, 2, 8, free={"cpu": between})
    roomy = int(needs["full"].beyond_weights / 0.9) + 1
    fits = guard_finetuning(model, plans, 2, 8, free={"cpu": roomy})
    assert set(fits) == {"full", "only_top"} and fits["full"]["pass"] == "backward"


def test_pruning_counts_the_draws_hidden_states_a_blocks_statistics_and_a_layers_copies(
    model_and_pool,
):
    """Written out for the tiny Llama's pool (per block: q and o 32x32, k and v 16x32, gate and
    up 64x32, down 32x64; 18,432 weights in 2 blocks), 6 windows of 10 tokens."""
    from cwa.models.memory import pruning_estimate

    model, infos = model_and_pool
    forward = estimate(model, [], "forward", 2, 10).devices["cpu"]
    weights = 18_432
    inputs = 6 * 32 + 64  # per block: six layers read the 32-wide residual, down reads 64
    squares = 6 * 32 * 32 + 64 * 64
    cases = {
        # Σx² of a block, fp32 scores and weights (8 B) and a mask (1 B) of the largest layer
        False: 4 * inputs + 9 * 2048,
        # also Σxxᵀ of each layer of a block, and down's five 64x64 solve matrices
        True: 4 * inputs + 4 * squares + 9 * 2048 + 5 * 4 * 64 * 64,
    }
    for hessian, block_and_layer in cases.items():
        need = pruning_estimate(model, infos, hessian, 6, 2, 10).devices["cpu"]
        # the draw's hidden states and cos/sin (head_dim 8) in fp32
        assert need.activations == forward.activations + 6 * 10 * (32 + 2 * 8) * 4
        # masks (1 B per weight) and the dense copy (4 B per weight)
        assert need.accumulators == block_and_layer + weights + 4 * weights
        assert need.gradients == 0 and need.weights == forward.weights


def test_pruning_guard_refuses_a_method_that_cannot_fit_and_says_what_would(model_and_pool):
    from cwa.models.memory import guard_pruning, pruning_estimate

    model, infos = model_and_pool
    wanda, sparsegpt = (
        pruning_estimate(model, infos, hessian, 6, 2, 10).devices["cpu"].beyond_weights
        for hessian in (False, True)
    )
    between = int((wanda + sparsegpt) / 2 / 0.9)
    methods = {"wanda": False, "sparsegpt": True}
    with pytest.raises(
        CwaError, match=r"^memory: pruning method sparsegpt needs .* Try: calib_samples lower"
    ):
        guard_pruning(model, infos, methods, 6, 2, 10, free={"cpu": between})
    assert set(guard_pruning(model, infos, {"wanda": False}, 6, 2, 10, free={"cpu": between}))
    fits = guard_pruning(model, infos, methods, 6, 2, 10, free={"cpu": int(sparsegpt / 0.9) + 1})
    assert set(fits) == {"wanda", "sparsegpt"}
