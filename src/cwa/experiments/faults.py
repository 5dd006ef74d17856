"""Fault-injection campaign: random bit flips over the whole pool at a bit error rate, with and
without protecting (not flipping) a set of weights, to price protection per protected weight.

Each bit of each pool weight's storage flips independently with probability `rate`; the same
fault draw is evaluated unprotected, with the top set protected and with a random set of the
same size (uniform over the rest of the pool) protected, so the three arms are paired.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import torch

from cwa.core.progress import progress
from cwa.evaluation.perplexity import EvalResult, Reference, evaluate
from cwa.experiments.perturbations import edited, int_view, xor_mask
from cwa.selection.ranking import Selected, extreme_k, sample_excluding, sizes_of


def draw_faults(sizes: list[int], width: int, rate: float, rng: np.random.Generator):
    """(global weight index, bit) of every flipped bit, in draw order; weights are numbered by
    tensor, then flat index, across `sizes`."""
    total = sum(sizes) * width
    count = int(rng.binomial(total, rate))
    bits = (
        np.unique(rng.choice(total, size=count, replace=False)) if count else np.empty(0, np.int64)
    )
    return bits // width, bits % width


def global_index(sel: Selected, offsets: np.ndarray) -> np.ndarray:
    return offsets[sel.tensor] + sel.flat


def masks(weights: np.ndarray, bits: np.ndarray, offsets: np.ndarray, names: list[str]):
    """{param: (flat indices, int64 XOR masks)}: several flips in one weight share one mask."""
    out = {}
    tensor = np.searchsorted(offsets, weights, side="right") - 1
    for t in np.unique(tensor):
        at = tensor == t
        flat, mask = weights[at] - offsets[t], np.int64(1) << bits[at].astype(np.int64)
        uniq, inverse = np.unique(flat, return_inverse=True)
        combined = np.zeros(len(uniq), np.int64)
        np.bitwise_xor.at(combined, inverse, mask)
        out[names[t]] = (torch.from_numpy(uniq), torch.from_numpy(combined))
    return out


def campaign(
    model,
    names: list[str],
    scores: list[torch.Tensor],
    windows: torch.Tensor,
    base: EvalResult,
    rates: tuple[float, ...],
    trials: int,
    fractions: tuple[float, ...],
    seed: int,
    batch_size: int,
    ref: Reference | None = None,
) -> pl.DataFrame:
    """One row per (rate, trial, protected fraction, arm): flips drawn and blocked, ΔPPL, and
    with `ref` the mean KL to the unperturbed next-token distribution and unchanged top-1s.

    scores: |score| per pool tensor, flat (a lazy cwa.selection.ranking.MemberScores reads them from
    the store one tensor at a time)."""
    params = dict(model.named_parameters())
    sizes = sizes_of(scores)
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    width = int_view(params[names[0]].data).element_size() * 8
    protected = {0.0: {"none": np.empty(0, np.int64)}}
    for frac in fractions:
        top = global_index(extreme_k(scores, max(1, round(frac * sum(sizes)))), offsets)
        rng = np.random.default_rng([seed, len(top)])
        protected[frac] = {"top": top, "random": sample_excluding(rng, sum(sizes), len(top), top)}
    rows = []
    cells = [(r, t) for r in rates for t in range(trials)]
    for rate, trial in progress(cells, desc="faults"):
        weights, bits = draw_faults(
            sizes, width, rate, np.random.default_rng([seed, trial, rates.index(rate)])
        )
        for frac, arms in protected.items():
            for arm, guarded in arms.items():
                keep = ~np.isin(weights, guarded)
                flips = masks(weights[keep], bits[keep], offsets, names)
                with edited(params, flips, lambda v, t, mask: xor_mask(v, mask)):
                    res = evaluate(model, windows, batch_size, ref=ref)
                rows.append(
                    {
                        "rate": rate,
                        "trial": trial,
                        "protect": frac,
                        "arm": arm,
                        "protected": len(guarded),
                        "flips": len(weights),
                        "blocked": int((~keep).sum()),
                        "ppl": res.ppl,
                        "delta_ppl": res.ppl - base.ppl,
                        **distribution(res),
                        "diverged": res.diverged,
                    }
                )
    return pl.DataFrame(rows)


def distribution(res: EvalResult) -> dict:
    """Per-token means of the KL to the reference and of unchanged top-1 predictions (NaN
    without a reference or when the loss diverged: the KL of a non-finite model is none)."""
    if res.kl is None or res.diverged:
        return {"kl": float("nan"), "top1_same": float("nan")}
    tokens = res.tokens.sum()
    return {"kl": float(res.kl.sum() / tokens), "top1_same": float(res.same_top1.sum() / tokens)}


def summary(rows: pl.DataFrame) -> pl.DataFrame:
    """Per rate, protected fraction and arm: divergence share, median ΔPPL over trials (a
    diverged trial counts as +inf) and what protection buys against the unprotected arm."""
    none = rows.filter(pl.col("arm") == "none").select(
        "rate", "trial", pl.col("ppl").alias("ppl_none")
    )
    joined = rows.join(none, on=["rate", "trial"])
    return (
        joined.with_columns(
            gain=pl.when(pl.col("ppl_none") == pl.col("ppl"))
            .then(0.0)
            .otherwise(pl.col("ppl_none") - pl.col("ppl"))
        )
        .group_by("rate", "protect", "arm")
        .agg(
            pl.len().alias("trials"),
            pl.col("protected").first(),
            pl.col("flips").mean().alias("mean_flips"),
            pl.col("blocked").mean().alias("mean_blocked"),
            pl.col("diverged").mean().alias("diverged_share"),
            pl.col("delta_ppl").median().alias("median_delta_ppl"),
            pl.col("kl").median().alias("median_kl"),
            pl.col("top1_same").median().alias("median_top1_same"),
            pl.col("gain").median().alias("median_gain"),
        )
        .with_columns(
            gain_per_weight=pl.when(pl.col("protected") > 0)
            .then(pl.col("median_gain") / pl.col("protected"))
            .otherwise(None)
        )
        .sort("rate", "protect", "arm")
    )
