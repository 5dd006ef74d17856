"""The CUDA path: scores on the GPU against the CPU, a device_map-loaded model, bf16 scoring.

Skipped without a CUDA device (CI has none); run on a GPU machine with `pytest -m gpu`.
"""

import pytest
import torch

from cwa.evaluation.perplexity import evaluate
from cwa.models.anatomy import describe, pool
from cwa.models.loading import load_model
from cwa.models.memory import check, estimate
from cwa.scoring.metrics import compute_scores, get_metric
from tests.conftest import VOCAB, save_with_tokenizer, tiny_llama
from tests.tolerance import assert_close_scaled

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

DETERMINISTIC = ("magnitude", "grad_x_weight", "grad_squared", "obd", "wanda", "super_weight")

# float32 on CUDA vs the CPU: cuBLAS and CUDA reductions sum in other orders (blocked and split-K
# GEMMs, tree reductions, atomics) and exp/log/rsqrt are approximated to a few ulp, so errors are
# larger than between two CPU passes: 10x the CPU tolerances of tests/tolerance.py. A wrong
# factor or sign moves the largest scores by O(1); bf16 accumulators (4e-3 a rounding) also fail.
GPU_RTOL, GPU_FLOOR = 1e-3, 1e-4


@pytest.fixture
def windows():
    return torch.randint(0, VOCAB, (6, 16), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("metric", DETERMINISTIC)
def test_gpu_scores_equal_cpu_scores(metric, windows):
    cpu = tiny_llama(seed=2)
    gpu = tiny_llama(seed=2).cuda()
    infos = pool(describe(cpu))
    m = get_metric(metric)
    a = compute_scores(cpu, infos, m, windows, 4)
    b = compute_scores(gpu, infos, m, windows, 4)
    for name in a:
        assert b[name].device.type == "cpu" and b[name].dtype == torch.float32
        # GPU vs CPU float32 (GPU_RTOL); super_weight's all-zero tensors must stay exactly 0
        assert_close_scaled(b[name], a[name], rtol=GPU_RTOL, floor=GPU_FLOOR, name=name)


def test_hutchinson_layer_groups_on_gpu(windows):
    model = tiny_llama(seed=2, layers=3).cuda()
    infos = pool(describe(model))
    m = get_metric("hutchinson_diag")
    whole = compute_scores(model, infos, m, windows, 3, probes=2)
    grouped = compute_scores(model, infos, m, windows, 3, probes=2, layer_group=1)
    for name, ref in whole.items():
        # float32 on CUDA, summed per block in another order: GPU_RTOL (CUDA kernels' rounding)
        assert_close_scaled(grouped[name], ref, rtol=GPU_RTOL, floor=GPU_FLOOR, name=name)


def test_layer_groups_bound_gpu_memory():
    """One block at a time the Hutchinson pass holds one block's activations: the peak of an
    8-block model falls below half of the one-pass peak (bf16, as big runs use)."""
    model = tiny_llama(seed=2, hidden=128, layers=8, kv_heads=4).cuda().to(torch.bfloat16)
    infos = pool(describe(model))
    windows = torch.randint(0, VOCAB, (16, 64), generator=torch.Generator().manual_seed(1))
    m = get_metric("hutchinson_diag")

    def peak(layer_group):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        compute_scores(model, infos, m, windows, 16, probes=1, layer_group=layer_group)
        return torch.cuda.max_memory_allocated() - start

    assert peak(1) < 0.5 * peak(0)


def test_device_map_model_scores_and_evaluates_on_the_gpu(tmp_path, windows):
    reference = tiny_llama(seed=2)
    save_with_tokenizer(reference, tmp_path)
    model, _ = load_model(str(tmp_path), "unused", device_map="auto")
    assert {p.device.type for p in model.parameters()} == {"cuda"}
    infos = pool(describe(model))
    assert check(estimate(model, infos, "backward", 4, 16), "test")["batch"] == 4
    on_gpu = evaluate(model, windows, 4)
    on_cpu = evaluate(reference, windows, 4)
    # float32 token NLLs (~4.2 each) on CUDA vs the CPU, summed in float64: a few ulp of 4.2
    # (~1e-6) per token moves ppl by ~1e-6 relative; rel 1e-4 leaves room for CUDA's kernels
    assert on_gpu.ppl == pytest.approx(on_cpu.ppl, rel=1e-4)
    scores = compute_scores(model, infos, get_metric("grad_x_weight"), windows, 4)
    ref = compute_scores(reference, infos, get_metric("grad_x_weight"), windows, 4)
    for name in ref:
        # a device_map model on CUDA vs the CPU, float32: GPU_RTOL
        assert_close_scaled(scores[name], ref[name], rtol=GPU_RTOL, floor=GPU_FLOOR, name=name)


def test_bf16_model_accumulates_in_fp32(windows):
    model = tiny_llama(seed=2).cuda().to(torch.bfloat16)
    reference = tiny_llama(seed=2)
    infos = pool(describe(model))
    for metric in ("grad_x_weight", "grad_squared"):
        scores = compute_scores(model, infos, get_metric(metric), windows, 4)
        ref = compute_scores(reference, infos, get_metric(metric), windows, 4)
        for name in ref:
            assert scores[name].dtype == torch.float32
            # bf16 forward/backward: scores agree with fp32 in bulk (rank correlation)
            a, b = scores[name].flatten(), ref[name].flatten()
            ranks = torch.stack([a.argsort().argsort(), b.argsort().argsort()]).float()
            assert torch.corrcoef(ranks)[0, 1] > 0.9, (metric, name)
