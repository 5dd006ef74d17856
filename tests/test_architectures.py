"""Every supported architecture, as a tiny random model from its config (no hub): each parameter
classified, layers indexed, and a sensitivity -> rank -> perturb round trip restored exactly."""

import contextlib
import functools
from pathlib import Path

import pytest
import torch
import transformers as T

from cwa.experiments.perturbations import get_perturbation
from cwa.experiments.pruning import (
    LAYER_PRUNERS,
    InputStats,
    Sparsity,
    matrix,
    prune_by_activations,
)
from cwa.experiments.sweep import experiments
from cwa.experiments.sweep import run as run_experiments
from cwa.models.anatomy import (
    ARCHITECTURES,
    block_stack,
    describe,
    head_chunks,
    owning_modules,
    pool,
)
from cwa.scoring.metrics import compute_scores, get_metric
from cwa.selection.ranking import rank
from tests.conftest import window_nll
from tests.tolerance import FLOOR32, assert_close_scaled

SMALL = {"vocab_size": 64, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4}
GQA = {**SMALL, "num_key_value_heads": 2, "intermediate_size": 64}
CONFIGS = {
    "gpt2": (
        T.GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4),
        {"attn_qkv", "attn_o", "mlp_up", "mlp_down"},
    ),
    "gpt_neox": (
        T.GPTNeoXConfig(**SMALL, intermediate_size=64),
        {"attn_qkv", "attn_o", "mlp_up", "mlp_down"},
    ),
    "opt": (
        T.OPTConfig(**SMALL, ffn_dim=64, word_embed_proj_dim=32),
        {"attn_q", "attn_k", "attn_v", "attn_o", "mlp_up", "mlp_down"},
    ),
    "llama": (
        T.LlamaConfig(**GQA),
        {"attn_q", "attn_k", "attn_v", "attn_o", "mlp_gate", "mlp_up", "mlp_down"},
    ),
    "mistral": (
        T.MistralConfig(**GQA),
        {"attn_q", "attn_k", "attn_v", "attn_o", "mlp_gate", "mlp_up", "mlp_down"},
    ),
    "phi3": (
        T.Phi3Config(**GQA, pad_token_id=0),
        {"attn_qkv", "attn_o", "mlp_gate_up", "mlp_down"},
    ),
    "qwen2": (
        T.Qwen2Config(**GQA),
        {"attn_q", "attn_k", "attn_v", "attn_o", "mlp_gate", "mlp_up", "mlp_down"},
    ),
    "gemma": (
        T.GemmaConfig(**GQA, head_dim=8),
        {"attn_q", "attn_k", "attn_v", "attn_o", "mlp_gate", "mlp_up", "mlp_down"},
    ),
    "mixtral": (
        T.MixtralConfig(**GQA, num_local_experts=4, num_experts_per_tok=2),
        {"attn_q", "attn_k", "attn_v", "attn_o", "router", "moe_gate_up", "moe_down"},
    ),
    "gptj": (
        T.GPTJConfig(vocab_size=64, n_embd=32, n_layer=2, n_head=4, rotary_dim=4, n_positions=64),
        {"attn_q", "attn_k", "attn_v", "attn_o", "mlp_up", "mlp_down"},
    ),
    "codegen": (  # 8 heads: 2 per partition of the fused qkv_proj
        T.CodeGenConfig(
            vocab_size=64, n_embd=32, n_layer=2, n_head=8, rotary_dim=4, n_positions=64, n_ctx=64
        ),
        {"attn_qkv", "attn_o", "mlp_up", "mlp_down"},
    ),
    "gpt_bigcode": (  # StarCoder: multi-query attention in a fused c_attn
        T.GPTBigCodeConfig(vocab_size=64, n_embd=32, n_layer=2, n_head=4, multi_query=True),
        {"attn_qkv", "attn_o", "mlp_up", "mlp_down"},
    ),
    "gpt_neo": (  # TinyStories: global and local (windowed) attention alternate
        T.GPTNeoConfig(
            vocab_size=64,
            hidden_size=32,
            num_layers=2,
            num_heads=4,
            attention_types=[[["global", "local"], 1]],
            window_size=8,
            max_position_embeddings=64,
        ),
        {"attn_q", "attn_k", "attn_v", "attn_o", "mlp_up", "mlp_down"},
    ),
    "phi": (
        T.PhiConfig(**SMALL, intermediate_size=64),
        {"attn_q", "attn_k", "attn_v", "attn_o", "mlp_up", "mlp_down"},
    ),
    "falcon": (  # Falcon-7B: multi-query, [every q head, k, v] in query_key_value
        T.FalconConfig(**SMALL, multi_query=True),
        {"attn_qkv", "attn_o", "mlp_up", "mlp_down"},
    ),
    "falcon_gqa": (  # Falcon-40B: new decoder architecture, per key/value group [q..., k, v]
        T.FalconConfig(**SMALL, multi_query=False, new_decoder_architecture=True, num_kv_heads=2),
        {"attn_qkv", "attn_o", "mlp_up", "mlp_down"},
    ),
    "olmo": (
        T.OlmoConfig(**GQA),
        {"attn_q", "attn_k", "attn_v", "attn_o", "mlp_gate", "mlp_up", "mlp_down"},
    ),
    "qwen3": (
        T.Qwen3Config(**GQA, head_dim=8),
        {"attn_q", "attn_k", "attn_v", "attn_o", "mlp_gate", "mlp_up", "mlp_down"},
    ),
    "gemma2": (
        T.Gemma2Config(**GQA, head_dim=8),
        {"attn_q", "attn_k", "attn_v", "attn_o", "mlp_gate", "mlp_up", "mlp_down"},
    ),
}


def build(name):
    torch.manual_seed(0)
    config = CONFIGS[name][0]
    config.eos_token_id = config.bos_token_id = 0
    return T.AutoModelForCausalLM.from_config(config).eval()


@pytest.mark.parametrize("arch", sorted(CONFIGS))
def test_every_parameter_is_classified_and_indexed(arch):
    model = build(arch)
    infos = describe(model)
    assert {i.name for i in infos} == {n for n, _ in model.named_parameters()}
    blocks = [i for i in infos if i.layer >= 0]
    assert {i.layer for i in blocks} == {0, 1}
    assert all(i.layer == -1 for i in infos if i.component in ("embed", "lm_head", "pos_embed"))
    assert {i.component for i in pool(infos)} == CONFIGS[arch][1]


@pytest.mark.parametrize("arch", sorted(CONFIGS))
def test_sensitivity_rank_perturb_round_trip(arch):
    """grad_x_weight equals |∂L/∂w · w| from one plain backward of the mean token loss; the top 5
    are the pool's 5 largest scores; each window's NLL after zeroing them, or flipping their sign
    bit, equals the NLL with the same weights edited by hand; the model is restored bit for bit."""
    model = build(arch)
    infos = pool(describe(model))
    names = [i.name for i in infos]
    params = dict(model.named_parameters())
    windows = torch.randint(1, 64, (4, 10), generator=torch.Generator().manual_seed(0))
    scores = compute_scores(model, infos, get_metric("grad_x_weight"), windows, 2)
    logits = model(input_ids=windows).logits[:, :-1]
    loss = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), windows[:, 1:].reshape(-1)
    )
    grads = torch.autograd.grad(loss, [params[n] for n in names])
    for n, g in zip(names, grads, strict=True):
        # float32: batches of 2 summed vs one pass over 4 windows (tests/tolerance.py)
        assert_close_scaled(scores[n], (g * params[n].detach()).abs(), name=n)
    table = rank(infos, scores, "global", (5,), ("random_k", "bottom_k"), 1, 0, "grad_x_weight")
    flat = torch.cat([scores[n].flatten() for n in names])
    where = [(n, i) for n in names for i in range(scores[n].numel())]
    top = table.filter(table["selection"] == "top")
    assert set(zip(top["param"], top["flat_index"], strict=True)) == {
        where[i] for i in flat.topk(5).indices.tolist()
    }
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    base = window_nll(model, windows)
    sweeps = [(get_perturbation("zero"), (None,)), (get_perturbation("bit_flip"), (31,))]
    exps = experiments(table, sweeps)
    results = run_experiments(model, exps, windows, 4, desc=None)
    assert len(results) == 2 * 3
    for exp, res in zip(exps, results, strict=True):
        with torch.no_grad():
            for n, idx in exp.weights.items():  # bit 31: the sign; negation flips only it
                data = params[n].data.view(-1)
                data[idx] = 0.0 if exp.perturbation.name == "zero" else -data[idx]
        want = window_nll(model, windows)
        with torch.no_grad():
            for n in exp.weights:
                params[n].data.copy_(before[n])
        assert torch.allclose(torch.from_numpy(res.nll), want, rtol=1e-5, atol=0), exp.ident
        if exp.selection == "top":
            assert not torch.equal(want, base)  # the top 5 matter
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), n


class _Stop(Exception):
    pass


@functools.cache
def moved_heads(arch: str) -> dict[str, list[tuple[frozenset[int], bool]]]:
    """Brute force, independent of cwa's layouts: for each output feature of block 0's q/k/v
    (or fused qkv) weight, the query heads whose output (the input of o, head by head) changes
    when only that feature's weights change, and whether the first position's output changes:
    only a value can move it, the first token attending to itself alone. Six tokens, so keys and
    values matter too. (A query and a key feature of one head are symmetric here.)"""
    model = build(arch)
    attn = [i for i in describe(model) if i.layer == 0 and i.component.startswith("attn_")]
    attn = [i for i in attn if len(i.shape) == 2]
    owners = owning_modules(model, [i.name for i in attn])
    o_proj = next(owners[i.name] for i in attn if i.component == "attn_o")
    hd = attn[0].head_dim
    windows = torch.randint(1, 64, (1, 6), generator=torch.Generator().manual_seed(0))
    seen = []

    def capture(module, inputs):
        seen.append(inputs[0].detach().reshape(6, -1))
        raise _Stop

    def heads_out() -> torch.Tensor:
        with contextlib.suppress(_Stop), torch.no_grad():
            model(input_ids=windows, use_cache=False)
        return seen.pop()

    handle = o_proj.register_forward_pre_hook(capture)
    base = heads_out()
    moved = {}
    for info in (i for i in attn if i.component != "attn_o"):
        weight = dict(model.named_parameters())[info.name].data
        rows = weight.T if info.transposed else weight  # [out, in]
        moved[info.component] = []
        for f in range(rows.shape[0]):
            kept = rows[f].clone()
            rows[f] += torch.randn(rows.shape[1], generator=torch.Generator().manual_seed(f))
            change = (heads_out() - base).abs().reshape(6, -1, hd).amax(dim=2) > 1e-6
            rows[f] = kept
            heads = frozenset(torch.nonzero(change.any(dim=0))[:, 0].tolist())
            moved[info.component].append((heads, bool(change[0].any())))
    handle.remove()
    return moved


def expected_head_features(arch: str, component: str, g: int, heads: int, kv: int, hd: int):
    """Features of key/value group g (query heads g·r … (g+1)·r - 1, r = heads / kv), measured by
    moved_heads: o's input features of those query heads; the q/k/v features that move only
    them."""
    per_kv = heads // kv
    mine = set(range(g * per_kv, (g + 1) * per_kv))
    if component == "attn_o":
        return set(range(g * per_kv * hd, (g + 1) * per_kv * hd))
    return {f for f, (moved, _) in enumerate(moved_heads(arch)[component]) if moved <= mine}


@pytest.mark.parametrize("arch", sorted(CONFIGS))
def test_head_chunks_name_the_heads_each_feature_moves(arch):
    """Each head_dim slice of q/k/v/qkv output features: a query head's moves exactly that head,
    a key or value head's exactly its query heads (all of them under multi-query attention), and
    only a value's moves the first position."""
    infos = [i for i in pool(describe(build(arch))) if i.layer == 0 and i.component != "attn_o"]
    attn = [i for i in infos if i.component.startswith("attn_")]
    assert attn and all(i.head_dim for i in attn)
    for info in attn:
        per_kv, hd = info.heads // info.kv_heads, info.head_dim
        chunks = head_chunks(info)
        moved = moved_heads(arch)[info.component]
        assert len(chunks) * hd == len(moved), info.name
        for f, (heads, first) in enumerate(moved):
            role, head = chunks[f // hd]
            want = {head} if role == "q" else set(range(head * per_kv, (head + 1) * per_kv))
            assert (heads, first) == (want, role == "v"), (info.name, f, role, head)


def test_every_architecture_tested_is_named_in_the_error_and_docs():
    names = {
        "llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2", "olmo", "phi", "phi3",
        "gpt2", "gptj", "gpt_neo", "gpt_neox", "codegen", "gpt_bigcode", "falcon", "opt",
    }  # fmt: skip
    assert {a.removesuffix("_gqa") for a in CONFIGS} == names
    assert len(ARCHITECTURES) == len(names)
    usage = (Path(__file__).parents[1] / "docs" / "usage.md").read_text()
    assert all(a in usage for a in ARCHITECTURES)


@pytest.mark.parametrize("arch", sorted(CONFIGS))
def test_per_head_groups_follow_each_architecture_layout(arch):
    model = build(arch)
    infos = pool(describe(model))
    attn = [i for i in infos if i.component.startswith("attn_") and i.layer == 0]
    heads, kv, hd = attn[0].heads, attn[0].kv_heads, attn[0].head_dim
    g = kv - 1  # the last key/value group: offsets matter most there
    scores = {i.name: torch.ones(i.shape) for i in infos}
    size = sum(
        len(expected_head_features(arch, i.component, g, heads, kv, hd))
        * (i.shape[0] if i.transposed else i.shape[1])
        if i.component != "attn_o"
        else len(expected_head_features(arch, i.component, g, heads, kv, hd))
        * (i.shape[1] if i.transposed else i.shape[0])
        for i in attn
    )
    table = rank(infos, scores, "per_head", (size,), (), 1, 0, "magnitude")
    group = table.filter(table["group"] == f"layers.0.head.{g}")
    assert len(group) == size  # k = the whole group: every weight of the head, nothing else
    for comp, rows in group.group_by("component"):
        axis = rows["col"] if comp[0] == "attn_o" else rows["row"]
        assert set(axis.to_list()) == expected_head_features(arch, comp[0], g, heads, kv, hd)
    assert table["group"].n_unique() == 2 * kv


@pytest.mark.parametrize("arch", sorted(CONFIGS))
def test_batched_per_window_squares_equal_one_backward_per_window(arch):
    """grad_squared's hooked batched passes (Linear and Conv1D weights) and its fallback (fused
    experts, token-routed layers) against plain one-window-per-backward passes, every tensor."""
    from cwa.scoring.metrics import Calibration, gradient_sums, per_window_squares

    model = build(arch)
    infos = pool(describe(model), include_1d=True)
    windows = torch.randint(1, 64, (5, 10), generator=torch.Generator().manual_seed(0))
    cal = Calibration(model, infos, windows, batch_size=3)
    batched = per_window_squares(cal)
    reference = gradient_sums(cal, per_window=True, square=True)
    assert batched.keys() == reference.keys()
    for name, ref in reference.items():
        # float32: per-window weight gradients formed from hooked activations and output
        # gradients (einsum over tokens) vs autograd, one window per backward: other summation
        # orders (tests/tolerance.py); observed <= 6.2e-7 of the largest score, above the
        # former floor of 1e-6 of it where rtol did not cover
        assert_close_scaled(batched[name], ref, name=name)


@pytest.mark.parametrize("arch", sorted(CONFIGS))
def test_blockwise_hutchinson_equals_the_all_at_once_pass(arch):
    """layer_group recomputes the blocks from their recorded calls (masks, rotary embeddings,
    routers): the same Hessian-vector products as one pass, every tensor, embeddings and norms
    included, one block and two blocks at a time. (Key biases have a zero gradient and
    Hessian, softmax being shift-invariant: their scores are rounding, hence the global floor.)"""
    model = build(arch)
    infos = pool(describe(model), include_embeddings=True, include_1d=True)
    windows = torch.randint(1, 64, (5, 10), generator=torch.Generator().manual_seed(0))
    m = get_metric("hutchinson_diag")
    whole = compute_scores(model, infos, m, windows, 3, probes=2, seed=3)
    for size in (1, 2):
        grouped = compute_scores(model, infos, m, windows, 3, probes=2, seed=3, layer_group=size)
        # float32: the same products summed per group of blocks in another order
        # (tests/tolerance.py). Key-bias scores are 0 in exact arithmetic and rounding of
        # cancelling terms in float32: for them a floor of 0.1 · FLOOR32 (~8 eps32) of the
        # model's largest score, ~5,000x the ~2e-10 of it observed.
        model_floor = 0.1 * FLOOR32 * max(float(ref.abs().max()) for ref in whole.values())
        for name, ref in whole.items():
            assert_close_scaled(grouped[name], ref, name=name, atol_min=model_floor)


def sums_up_to(model, modules, windows, batch_size, block):
    """Σ x² and Σ x xᵀ of each module's inputs, each forward stopped after `block` (None: the
    whole model)."""
    sq, hs = {}, {}

    def hook(name, inputs):
        x = inputs[0].detach().float().reshape(-1, inputs[0].shape[-1])
        sq[name] = sq.get(name, 0) + x.square().sum(dim=0)
        hs[name] = hs.get(name, 0) + x.T @ x

    def stop(module, inputs, output):
        raise _Stop

    handles = [
        m.register_forward_hook(lambda _, inputs, out, n=n: hook(n, inputs))
        for n, m in modules.items()
    ]
    if block is not None:
        handles.append(block.register_forward_hook(stop))
    with torch.no_grad():
        for batch in windows.split(batch_size):
            with contextlib.suppress(_Stop):
                model(input_ids=batch, use_cache=False)
    for h in handles:
        h.remove()
    return sq, hs


def prune_block_by_block(model, infos, method, target, windows, batch_size):
    """The reference traversal (cwa's before the one-pass one): for each block, a forward of the
    whole model from its input, stopped after that block, with the blocks before it already
    pruned, measures that block's layers (about L²/2 block passes); layers outside the blocks
    last, from a full forward."""
    pruner, params = LAYER_PRUNERS.get(method), dict(model.named_parameters())
    owners = owning_modules(model, [i.name for i in infos])
    _, blocks = block_stack(model)
    masks = {}
    for layer in sorted({i.layer for i in infos}, key=lambda v: (v < 0, v)):
        mine = [i for i in infos if i.layer == layer]
        block = blocks[layer] if layer >= 0 else None
        modules = {i.name: owners[i.name] for i in mine}
        sq, hs = sums_up_to(model, modules, windows, batch_size, block)
        here = Sparsity(target.at(layer), target.nm)
        for info in mine:
            stats = InputStats(
                sq[info.name], hs[info.name] if pruner.hessian else None, len(windows)
            )
            with torch.no_grad():
                mask = pruner.prune(matrix(params[info.name].data, info), here, stats)
            masks[info.name] = (mask.T if info.transposed else mask).reshape(info.shape)
    return masks


def linear_pool(model):
    """The pool's linear layers, lm_head included where it is not tied to the embedding."""
    from transformers.pytorch_utils import Conv1D

    infos = pool(describe(model), include_embeddings=True)
    owners = owning_modules(model, [i.name for i in infos])
    return [i for i in infos if isinstance(owners[i.name], torch.nn.Linear | Conv1D)]


SLIDING = T.Qwen2Config(**GQA, use_sliding_window=True, sliding_window=3, max_window_layers=1)


@pytest.mark.parametrize("arch", [*sorted(CONFIGS), "qwen2_sliding"])
def test_one_pass_pruning_equals_pruning_each_block_from_the_model_input(arch):
    """Wanda, RIA and SparseGPT (unstructured, OWL-like per-block fractions, 2:4) prune exactly
    the same weights to exactly the same values in one pass over the blocks as with a forward
    from the model's input per block; qwen2_sliding's second block attends through a sliding
    window, so the blocks' masks differ and each must get its own."""
    windows = torch.randint(1, 64, (6, 12), generator=torch.Generator().manual_seed(1))
    targets = (
        Sparsity(0.5),
        Sparsity(0.5, by_layer=((0, 0.25), (1, 0.625))),
        Sparsity.pattern("2:4"),
    )
    for method in ("wanda", "ria", "sparsegpt"):
        for target in targets:
            model = build_sliding() if arch == "qwen2_sliding" else build(arch)
            infos = linear_pool(model)
            reference = build_sliding() if arch == "qwen2_sliding" else build(arch)
            want = prune_block_by_block(reference, infos, method, target, windows, 4)
            got = prune_by_activations(model, infos, method, target, windows, 4)
            assert got.keys() == want.keys()
            for name in want:
                assert torch.equal(got[name], want[name]), (method, target, name)
            ref_params = dict(reference.named_parameters())
            for name, p in model.named_parameters():
                assert torch.equal(p, ref_params[name]), (method, target, name)


def build_sliding():
    torch.manual_seed(0)
    SLIDING.eos_token_id = SLIDING.bos_token_id = 0
    return T.AutoModelForCausalLM.from_config(SLIDING).eval()
