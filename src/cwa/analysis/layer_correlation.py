"""Layers that move together: per calibration window, each pool tensor's first-order
sensitivity on that window alone, and the correlation of those sensitivities across windows
between every two layers (and every two layer components).

A window's sensitivity of tensor W is s(W) = Σ_ij |∂ℓₙ/∂W_ij · W_ij|, ℓₙ the window's mean token
loss: the |g·w| score of `grad_x_weight` measured on one window (the metric uses the gradient of
the mean loss over the draw; the sum over windows of these is not that score). A layer's is the
sum over its pool tensors. Every window moves every layer's sensitivity the same way when its
loss is high, so two correlations are reported per pair: r of the sensitivities themselves, and
r of their shares of the window's total (the common scale divided out), each with its Fisher-z
95% CI and p-value (Student's t with n - 2 degrees of freedom, as scipy.stats.pearsonr), and
Benjamini-Hochberg q-values over the pairs of a level.

Every sum here is math.fsum (correctly rounded, so independent of the order of its terms): numpy's
and BLAS's reductions pick SIMD kernels by CPU, and a table must come out byte-identical on any
x86-64 machine.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import polars as pl
import torch

from cwa.core.hooks import grads_for
from cwa.core.progress import progress
from cwa.core.stats import bh_q_values
from cwa.evaluation.perplexity import token_nll
from cwa.models.anatomy import ParamInfo
from cwa.models.memory import Estimate, check, estimate

LEVELS = ("layer", "component")


@torch.no_grad()
def _abs_products(weights: list[torch.Tensor], grads: tuple[torch.Tensor, ...]) -> list[float]:
    return [float((g.float() * w.float()).abs().sum()) for w, g in zip(weights, grads, strict=True)]


def correlation_estimate(model, infos: list[ParamInfo], seq_len: int) -> Estimate:
    """window_scores' memory: a backward pass over one window, holding every pool tensor's
    gradient at once (autograd.grad) but no fp32 accumulator or host copy per weight (a sum per
    tensor is all it keeps), plus the product |g·w| of the largest pool tensor on its device (two
    fp32 temporaries; two more when the dtype is narrower than fp32 and both are upcast)."""
    est = estimate(model, infos, "backward", 1, seq_len)
    for need in est.devices.values():
        need.accumulators = 0
    params = dict(model.named_parameters())
    for info in infos:
        p = params[info.name]
        temporaries = 4 * p.numel() * (2 if p.element_size() >= 4 else 4)
        need = est.devices[str(p.device)]
        need.accumulators = max(need.accumulators, temporaries)
    return est


def guard_correlation(model, infos: list[ParamInfo], seq_len: int) -> dict:
    """Refuses a per-window gradient pass that cannot fit; the manifest's `memory`."""
    return check(correlation_estimate(model, infos, seq_len), "the per-window gradient pass")


def window_scores(model, infos: list[ParamInfo], windows: torch.Tensor, desc=None) -> pl.DataFrame:
    """One row per window and pool tensor: the tensor's Σ|g·w| on that window alone."""
    params = dict(model.named_parameters())
    targets = {i.name: params[i.name] for i in infos}
    weights = list(targets.values())
    device = weights[0].device
    rows = []
    with grads_for(model, targets):
        for n, window in enumerate(progress(windows, desc=desc, total=len(windows))):
            x = window[None].to(device)
            loss = token_nll(model(input_ids=x, use_cache=False).logits, x).mean()
            sums = _abs_products(weights, torch.autograd.grad(loss, weights))
            rows += [
                {
                    "window": n,
                    "param": i.name,
                    "layer": i.layer,
                    "component": i.component,
                    "score": s,
                }
                for i, s in zip(infos, sums, strict=True)
            ]
    return pl.DataFrame(rows)


def group_matrix(scores: pl.DataFrame, level: str) -> tuple[list[str], np.ndarray]:
    """(group labels, windows × groups sums): `layer` groups by block, `component` by block and
    component class (experts of one class summed)."""
    keys = ["layer"] if level == "layer" else ["layer", "component"]
    label = pl.format("L{}", "layer") if level == "layer" else pl.format("L{} {}", *keys)
    table = (
        scores.group_by("window", *keys)
        .agg(pl.col("score"))
        .with_columns(
            pl.col("score").map_elements(math.fsum, return_dtype=pl.Float64),
            label.alias("group"),
        )
        .sort(*keys)
    )
    groups = table["group"].unique(maintain_order=True).to_list()
    wide = table.pivot(on="group", index="window", values="score").sort("window")
    return groups, wide.select(groups).to_numpy()


def pairs(scores: pl.DataFrame) -> pl.DataFrame:
    """Every pair of groups at each level: r of the sensitivities and of their shares."""
    rows = []
    for level in LEVELS:
        groups, matrix = group_matrix(scores, level)
        shares = matrix / np.array([[math.fsum(row)] for row in matrix])
        found = []
        for a, b in itertools.combinations(range(len(groups)), 2):
            raw, share = _pearson(matrix[:, a], matrix[:, b]), _pearson(shares[:, a], shares[:, b])
            found.append(
                {"level": level, "a": groups[a], "b": groups[b], "windows": len(matrix)}
                | {f"r{k}": v for k, v in raw.items()}
                | {f"share_r{k}": v for k, v in share.items()}
            )
        if found:
            q = bh_q_values(np.array([f["r_p"] for f in found]))
            q_share = bh_q_values(np.array([f["share_r_p"] for f in found]))
            for f, qa, qb in zip(found, q, q_share, strict=True):
                f |= {"r_q": float(qa), "share_r_q": float(qb)}
        rows += found
    return pl.DataFrame(rows)


def _pearson(x: np.ndarray, y: np.ndarray) -> dict:
    """Pearson r with its Fisher-z 95% CI and two-sided p; NaN where either is constant or there
    are fewer than 4 windows."""
    from scipy import stats

    n = len(x)
    if n < 4 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return {"": np.nan, "_ci_low": np.nan, "_ci_high": np.nan, "_p": np.nan}
    dx, dy = x - math.fsum(x) / n, y - math.fsum(y) / n
    r = math.fsum(dx * dy) / math.sqrt(math.fsum(dx * dx) * math.fsum(dy * dy))
    r = min(max(r, -1.0), 1.0)
    if abs(r) == 1.0:
        return {"": r, "_ci_low": r, "_ci_high": r, "_p": 0.0}
    z, half = math.atanh(r), stats.norm.ppf(0.975) / math.sqrt(n - 3)
    t = r * math.sqrt((n - 2) / (1 - r * r))
    p = 2 * stats.t.sf(abs(t), n - 2)
    return {"": r, "_ci_low": math.tanh(z - half), "_ci_high": math.tanh(z + half), "_p": float(p)}


def correlation_matrix(table: pl.DataFrame, level: str, column: str = "r"):
    """(labels, symmetric matrix with 1 on the diagonal) of one level's pairs, for the heatmap."""
    rows = table.filter(pl.col("level") == level)
    labels = list(dict.fromkeys([*rows["a"], *rows["b"]]))
    index = {g: i for i, g in enumerate(labels)}
    matrix = np.eye(len(labels))
    for a, b, r in rows.select("a", "b", column).iter_rows():
        matrix[index[a], index[b]] = matrix[index[b], index[a]] = r
    return labels, matrix
