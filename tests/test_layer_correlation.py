"""Layer correlations against numpy on hand-built per-window scores, and the per-window
sensitivities against a direct computation."""

import math

import numpy as np
import polars as pl
import pytest
import torch
from scipy import stats

from cwa.analysis.layer_correlation import correlation_matrix, group_matrix, pairs, window_scores
from cwa.models.anatomy import describe, pool
from tests.conftest import VOCAB, tiny_llama


def _scores(matrix: np.ndarray, components=("attn_q", "mlp_up")) -> pl.DataFrame:
    """Per-window rows for layers 0..L-1, each with the given components; `matrix` is windows
    x (layers * components), layer-major."""
    rows = []
    for w, values in enumerate(matrix):
        for g, v in enumerate(values):
            layer, comp = divmod(g, len(components))
            name = f"model.layers.{layer}.{components[comp]}"
            rows.append(
                {
                    "window": w,
                    "param": name,
                    "layer": layer,
                    "component": components[comp],
                    "score": float(v),
                }
            )
    return pl.DataFrame(rows)


def test_pairs_equal_numpy_correlations_and_fisher_intervals():
    rng = np.random.default_rng(0)
    base = rng.gamma(2.0, size=(40, 1))
    matrix = base * rng.uniform(0.5, 1.5, size=(40, 6))  # 3 layers x 2 components, shared scale
    matrix[:, 4] += 3 * matrix[:, 0]  # layer 2 attn_q moves with layer 0 attn_q
    table = pairs(_scores(matrix))
    layers = matrix.reshape(40, 3, 2).sum(axis=2)
    assert len(table.filter(pl.col("level") == "layer")) == 3
    assert len(table.filter(pl.col("level") == "component")) == 15
    row = table.filter((pl.col("a") == "L0") & (pl.col("b") == "L2")).row(0, named=True)
    assert row["r"] == pytest.approx(np.corrcoef(layers[:, 0], layers[:, 2])[0, 1])
    scipy_test = stats.pearsonr(layers[:, 0], layers[:, 2])
    assert row["r_p"] == pytest.approx(scipy_test.pvalue, rel=1e-9)
    assert (row["r_ci_low"], row["r_ci_high"]) == pytest.approx(
        tuple(scipy_test.confidence_interval(0.95)), rel=1e-9
    )
    z, half = math.atanh(row["r"]), stats.norm.ppf(0.975) / math.sqrt(40 - 3)
    assert (row["r_ci_low"], row["r_ci_high"]) == pytest.approx(
        (math.tanh(z - half), math.tanh(z + half))
    )
    shares = layers / layers.sum(axis=1, keepdims=True)
    assert row["share_r"] == pytest.approx(np.corrcoef(shares[:, 0], shares[:, 2])[0, 1])
    comp = table.filter((pl.col("a") == "L0 attn_q") & (pl.col("b") == "L2 attn_q"))
    assert comp["r"][0] == pytest.approx(np.corrcoef(matrix[:, 0], matrix[:, 4])[0, 1])
    strongest = table.filter(pl.col("level") == "component").sort("share_r", descending=True)
    assert (strongest["a"][0], strongest["b"][0]) == ("L0 attn_q", "L2 attn_q")
    p = table.filter(pl.col("level") == "layer")["r_p"].to_numpy()
    q = table.filter(pl.col("level") == "layer")["r_q"].to_numpy()
    order = np.argsort(p)  # Benjamini-Hochberg step-up by hand
    by_hand = np.minimum.accumulate((p[order] * 3 / np.arange(1, 4))[::-1])[::-1]
    assert q[order] == pytest.approx(np.minimum(by_hand, 1))


def test_sums_do_not_depend_on_the_order_of_their_terms():
    """The same scores in another row order give the same bytes: math.fsum is correctly rounded,
    where a float sum of terms this far apart in size depends on their order."""
    rng = np.random.default_rng(1)
    matrix = rng.lognormal(0.0, 3.0, size=(12, 8))  # values across many orders of magnitude
    scores = _scores(matrix, components=("attn_q", "attn_k", "mlp_up", "mlp_down"))
    shuffled = scores.sample(fraction=1.0, shuffle=True, seed=3)
    assert pairs(scores).equals(pairs(shuffled))
    assert (
        group_matrix(scores, "layer")[1].tobytes() == group_matrix(shuffled, "layer")[1].tobytes()
    )
    terms = matrix[0, :4]
    assert math.fsum(terms) == math.fsum(terms[::-1])


def test_group_matrix_sums_a_layers_tensors_and_the_heatmap_is_symmetric():
    matrix = np.arange(24, dtype=float).reshape(4, 6) + 1
    groups, layers = group_matrix(_scores(matrix), "layer")
    assert groups == ["L0", "L1", "L2"]
    assert layers.tolist() == matrix.reshape(4, 3, 2).sum(axis=2).tolist()
    labels, heat = correlation_matrix(
        pairs(_scores(np.random.default_rng(1).random((9, 6)))), "layer"
    )
    assert labels == ["L0", "L1", "L2"] and np.allclose(heat, heat.T) and (np.diag(heat) == 1).all()


def test_window_scores_equal_one_backward_per_window_written_out():
    model = tiny_llama(seed=0)
    infos = pool(describe(model))
    windows = torch.randint(0, VOCAB, (3, 10), generator=torch.Generator().manual_seed(0))
    table = window_scores(model, infos, windows)
    assert len(table) == 3 * len(infos)
    weights = dict(model.named_parameters())
    w = weights[infos[1].name]
    x = windows[2:3]
    logits = model(input_ids=x).logits[0, :-1]
    loss = torch.nn.functional.cross_entropy(logits, x[0, 1:])  # the window's mean token loss
    (g,) = torch.autograd.grad(loss, [w])
    want = float((g * w.detach()).abs().sum())
    got = table.filter((pl.col("window") == 2) & (pl.col("param") == infos[1].name))["score"][0]
    assert got == pytest.approx(want, rel=1e-5)  # float32 sums in another order
    assert all(p.requires_grad for p in model.parameters())  # the flags restored


PAIRS_HASH = """
import hashlib, sys
import numpy as np, polars as pl
from cwa.analysis.layer_correlation import pairs
from tests.test_layer_correlation import _scores
matrix = np.random.default_rng(0).lognormal(0.0, 3.0, size=(64, 8))
table = pairs(_scores(matrix, components=("attn_q", "attn_k", "mlp_up", "mlp_down")))
print(hashlib.sha256(table.select(pl.col(pl.Float64)).to_numpy().tobytes()).hexdigest())
"""


@pytest.mark.slow  # two subprocesses: `make test` only
def test_pairs_are_the_same_bytes_whichever_blas_kernel_runs():
    """OpenBLAS picks its kernels by CPU; OPENBLAS_CORETYPE forces another core's. The pairs
    (scipy.stats.pearsonr and numpy sums before) must not depend on that choice."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]

    def digest(core: str) -> str:
        env = {**os.environ, "OPENBLAS_CORETYPE": core, "NPY_DISABLE_CPU_FEATURES": ""}
        if core == "Prescott":  # and numpy's own SIMD loops at their most basic
            env["NPY_DISABLE_CPU_FEATURES"] = "AVX2 FMA3"
        done = subprocess.run(
            [sys.executable, "-c", PAIRS_HASH], cwd=root, env=env, capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout.strip()

    assert digest("Haswell") == digest("Prescott")


def test_the_correlation_guard_is_a_backward_without_accumulators():
    """Written out for the tiny Llama: a backward pass of batch 1 less its fp32 accumulators and
    host score copy, plus the largest pool tensor's |g·w| temporaries (two fp32 arrays in fp32,
    four in bf16, where gradient and weight are both upcast)."""
    from cwa.analysis.layer_correlation import correlation_estimate
    from cwa.models.memory import estimate

    model = tiny_llama()
    infos = pool(describe(model))
    largest = max(i.numel for i in infos)
    for dtype, temporaries in ((torch.float32, 8 * largest), (torch.bfloat16, 16 * largest)):
        model = model.to(dtype)
        backward = estimate(model, infos, "backward", 1, 12).devices["cpu"]
        got = correlation_estimate(model, infos, 12).devices["cpu"]
        assert (got.gradients, got.activations) == (backward.gradients, backward.activations)
        assert got.accumulators == temporaries
        assert backward.accumulators == 4 * sum(i.numel for i in infos)  # the guard it replaces
