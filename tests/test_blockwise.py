"""Hessian-vector products a group of blocks at a time: exact products, bounded peak memory, and
refusals for models whose blocks cannot be recomputed on their own."""

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, jvp
from torch.nn.attention import SDPBackend, sdpa_kernel

from cwa import CwaError
from cwa.evaluation.perplexity import token_nll
from cwa.models.anatomy import describe, group_ranges, pool
from cwa.scoring.blockwise import Segments
from cwa.scoring.metrics import compute_scores, get_metric
from tests.conftest import VOCAB, tiny_gpt2, tiny_llama
from tests.tolerance import assert_close_scaled


def _exact_hvp(model, targets, batch, z):
    """Hz by forward-over-reverse through the whole model at once (torch.func)."""

    def loss(p):
        out = functional_call(model, p, (), {"input_ids": batch, "use_cache": False})
        return token_nll(out.logits, batch).sum()

    with sdpa_kernel(SDPBackend.MATH):
        return jvp(grad(loss), (targets,), (z,))[1]


@pytest.mark.parametrize("build", [tiny_llama, tiny_gpt2])
@pytest.mark.parametrize("size", [1, 2])
def test_products_sum_to_the_hessian_vector_product(build, size):
    """The parts (head, groups top-down, embedding) of a Gaussian direction's product add up to
    Hz of the whole model, embeddings (tied on GPT-2), norms and biases included."""
    model = build()
    params = dict(model.named_parameters())
    infos = pool(describe(model), include_embeddings=True, include_1d=True)
    targets = {i.name: params[i.name].detach() for i in infos}
    gen = torch.Generator().manual_seed(1)
    z = {n: torch.randn(t.shape, generator=gen) for n, t in targets.items()}
    batch = torch.randint(0, VOCAB, (3, 12), generator=gen)
    total = {n: torch.zeros_like(t) for n, t in targets.items()}

    def add(part):
        for n, h in part.items():
            total[n] += h

    Segments(model, targets, batch, size, verify=True).products(z, add)
    exact = _exact_hvp(model, targets, batch, z)
    for n, ref in exact.items():
        # float32, two algorithms: forward-over-reverse through recomputed groups of blocks,
        # parts added up, vs one jvp(grad) through the whole model (tests/tolerance.py)
        assert_close_scaled(total[n], ref, name=n)


def _assert_one_block_at_a_time_equals_one_pass(model, infos, metric, windows):
    m = get_metric(metric)
    whole = compute_scores(model, infos, m, windows, 2, probes=2)
    grouped = compute_scores(model, infos, m, windows, 2, probes=2, layer_group=1)
    for name, ref in whole.items():
        # float32: the same products, summed per block in another order (tests/tolerance.py)
        assert_close_scaled(grouped[name], ref, name=name)


def test_padding_rows_are_constant_as_in_the_all_at_once_pass():
    """nn.Embedding's gradient skips padding_idx; the grouped products treat that row the same
    way when a padding token occurs in the calibration text."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        pad_token_id=3,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config).eval()
    infos = pool(describe(model), include_embeddings=True)
    windows = torch.randint(0, VOCAB, (4, 12), generator=torch.Generator().manual_seed(2))
    windows[:, 5] = 3
    _assert_one_block_at_a_time_equals_one_pass(model, infos, "hutchinson_diag", windows)


@pytest.mark.parametrize("layers", [(0,), (2,)])
@pytest.mark.parametrize("embeddings", [False, True])
def test_a_partial_pool_keeps_the_blocks_around_it(layers, embeddings):
    """Unscored blocks still carry the tangent up and the adjoint down (and blocks below the
    lowest scored one need no reverse pass unless the embeddings are scored)."""
    model = tiny_llama(layers=4)
    infos = pool(describe(model), include_embeddings=embeddings, layers=layers)
    windows = torch.randint(0, VOCAB, (5, 10), generator=torch.Generator().manual_seed(0))
    _assert_one_block_at_a_time_equals_one_pass(model, infos, "obd_hutchinson", windows)


_PEAK = """
import json, re, sys, torch
from cwa.scoring.metrics import compute_scores, get_metric
from cwa.models.anatomy import describe, pool
from tests.conftest import tiny_llama
torch.set_num_threads(1)
model = tiny_llama(hidden=128, layers=8, heads=4, kv_heads=4)
infos = pool(describe(model))
windows = torch.randint(0, 64, (16, 64), generator=torch.Generator().manual_seed(0))
open("/proc/self/clear_refs", "w").write("5")
rss = lambda key: int(re.search(key + r":\\s+(\\d+)", open("/proc/self/status").read()).group(1))
before = rss("VmRSS")
compute_scores(model, infos, get_metric("hutchinson_diag"), windows, 16, probes=1,
               layer_group=int(sys.argv[1]))
print(json.dumps((rss("VmHWM") - before) * 1024))
"""


def _peak_bytes(layer_group: int) -> int:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
    out = subprocess.run(
        [sys.executable, "-c", _PEAK, str(layer_group)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # a subprocess or many drawn cases: `make test` only
@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="Linux peak RSS")
def test_layer_groups_bound_the_peak_memory():
    """One block at a time holds one block's activations (and the boundary states), not the
    whole stack's: the pass's peak memory on an 8-block model drops to well under half."""
    whole, one_block = _peak_bytes(0), _peak_bytes(1)
    assert whole > 100 * 2**20  # the measurement sees the activations
    assert one_block < 0.4 * whole, (one_block, whole)


def test_group_ranges_cover_every_block_once():
    assert group_ranges(5, 2) == [range(0, 2), range(2, 4), range(4, 5)]
    assert group_ranges(3, 8) == [range(0, 3)]


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(16, 16)

    def forward(self, hidden, scale):
        return hidden + torch.tanh(self.fc(hidden)) * scale


class _ToyLM(nn.Module):
    """Shaped like a transformers causal LM (model.layers, .logits); `between` rescales the
    hidden state between blocks, `scale_from_embedding` feeds the blocks a scored weight."""

    def __init__(self, between: float = 1.0, scale_from_embedding: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(VOCAB, 16)
        self.model = nn.Module()
        self.model.layers = nn.ModuleList([_Block() for _ in range(3)])
        self.head = nn.Linear(16, VOCAB)
        self.between = between
        self.scale_from_embedding = scale_from_embedding

    def forward(self, input_ids, use_cache=False):
        hidden = self.embed(input_ids)
        scale = self.embed.weight.norm() if self.scale_from_embedding else torch.ones(())
        for block in self.model.layers:
            hidden = block(hidden, scale=scale) * self.between
        return SimpleNamespace(logits=self.head(hidden))


def _targets(model):
    return {n: p.detach() for n, p in model.named_parameters()}


def test_a_toy_model_gets_exact_products():
    model = _ToyLM()
    batch = torch.randint(0, VOCAB, (2, 8), generator=torch.Generator().manual_seed(0))
    targets = _targets(model)
    z = {n: torch.ones_like(t) for n, t in targets.items()}
    total = {n: torch.zeros_like(t) for n, t in targets.items()}
    Segments(model, targets, batch, 2, verify=True).products(
        z, lambda part: [total[n].add_(h) for n, h in part.items()]
    )
    for n, ref in _exact_hvp(model, targets, batch, z).items():
        # float32, blockwise parts vs one jvp(grad), as above (tests/tolerance.py)
        assert_close_scaled(total[n], ref, name=n)


def test_block_inputs_computed_from_scored_weights_are_refused():
    model = _ToyLM(scale_from_embedding=True)
    batch = torch.zeros(1, 4, dtype=torch.long)
    with pytest.raises(CwaError, match=r"take inputs computed from scored weights.*layer_group: 0"):
        Segments(model, _targets(model), batch, 1)
    Segments(model, {k: v for k, v in _targets(model).items() if "embed" not in k}, batch, 1)


def test_a_forward_the_blocks_do_not_reproduce_is_refused():
    model = _ToyLM(between=2.0)
    batch = torch.zeros(1, 4, dtype=torch.long)
    with pytest.raises(CwaError, match=r"does not reproduce its forward pass.*layer_group: 0"):
        Segments(model, _targets(model), batch, 1, verify=True)
