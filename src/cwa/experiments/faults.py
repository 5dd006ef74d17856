"""Fault-injection campaign: random bit flips over the whole pool at a bit error rate, with and
without protecting (not flipping) a set of weights, to price protection per protected weight.

Each bit of each pool weight's storage flips independently with probability `rate`; the same
fault draw is evaluated unprotected, with the top set protected and with a random set of the
same size (uniform over the rest of the pool) protected, so the three arms are paired.

A protected fraction is large (10% of an 8B pool is 800M weights) and a draw flips few (about
`rate` x 16 x the pool's size), so neither set is ever listed: the top set is a score threshold
and the random set a seeded hash cut-off (ProtectedSets), and only the flipped weights are tested
against them. Memory stays one score tensor plus a chunk; time is a few streaming passes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl
import torch

from cwa import CwaError
from cwa.core.progress import progress
from cwa.evaluation.perplexity import EvalResult, Reference, evaluate
from cwa.experiments.perturbations import edited, int_view, xor_mask
from cwa.models.memory import Estimate, Need, check, estimate
from cwa.selection.ranking import sizes_of


def draw_faults(sizes: list[int], width: int, rate: float, rng: np.random.Generator):
    """(global weight index, bit) of every flipped bit, in draw order; weights are numbered by
    tensor, then flat index, across `sizes`."""
    total = sum(sizes) * width
    count = int(rng.binomial(total, rate))
    bits = (
        np.unique(rng.choice(total, size=count, replace=False)) if count else np.empty(0, np.int64)
    )
    return bits // width, bits % width


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
    cells = [(r, t) for r in rates for t in range(trials)]
    draws = {
        (rate, trial): draw_faults(
            sizes, width, rate, np.random.default_rng([seed, trial, rates.index(rate)])
        )
        for rate, trial in cells
    }
    flipped = np.unique(np.concatenate([np.empty(0, np.int64)] + [w for w, _ in draws.values()]))
    sets = ProtectedSets(scores, sizes, flipped) if fractions else None
    protected = {0.0: {"none": Protected(0, np.zeros(len(flipped), bool))}}
    protected |= {frac: sets.pair(frac, seed) for frac in fractions}
    rows = []
    for rate, trial in progress(cells, desc="faults"):
        weights, bits = draws[rate, trial]
        at = np.searchsorted(flipped, weights)
        for frac, arms in protected.items():
            for arm, guarded in arms.items():
                keep = ~guarded.holds[at]
                flips = masks(weights[keep], bits[keep], offsets, names)
                with edited(params, flips, lambda v, t, mask: xor_mask(v, mask)):
                    res = evaluate(model, windows, batch_size, ref=ref)
                rows.append(
                    {
                        "rate": rate,
                        "trial": trial,
                        "protect": frac,
                        "arm": arm,
                        "protected": guarded.size,
                        "flips": len(weights),
                        "blocked": int((~keep).sum()),
                        "ppl": res.ppl,
                        "delta_ppl": res.ppl - base.ppl,
                        **distribution(res),
                        "diverged": res.diverged,
                    }
                )
    return pl.DataFrame(rows)


# --- protected sets: a score threshold and a seeded hash, checked only where a draw flips -------

_CHUNK = 1 << 22  # weights hashed at a time: bounds the pass's memory whatever the tensor's size
# Host bytes of a protected-set pass (measured: docs/benchmarks.md, session 18): per weight of the
# largest score tensor, its read from the store and |score| (8), the float32 copy and two masks
# (6); per weight of a chunk, its global index, the two priority arrays and the masks (34).
_PER_SCORE, _PER_CHUNK = 14, 34
_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_MIX1, _MIX2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def priority(index: np.ndarray, key: int) -> np.ndarray:
    """The index-th output of a SplitMix64 stream seeded with `key` (Steele, Lea & Flood 2014):
    a bijection of uint64, so distinct weights never share a priority."""
    z = index.astype(np.uint64)  # a copy, then in place: two arrays of the index's length
    z *= _GAMMA  # uint64 arithmetic wraps, as meant
    z += np.uint64(key)
    for shift, mix in ((30, _MIX1), (27, _MIX2), (31, None)):
        z ^= z >> np.uint64(shift)
        if mix is not None:
            z *= mix
    return z


def score_bits(score: torch.Tensor) -> torch.Tensor:
    """|score| as the int32 view of its float32: for non-negative floats the integers order as
    the values, so a threshold is found by counting over bit patterns."""
    flat = score.reshape(-1).float().abs()  # abs also turns -0.0 into +0.0
    if torch.isnan(flat).any():
        raise CwaError("NaN scores in the ranking pool: sensitivity diverged")
    return flat.view(torch.int32)


def histogram(bits: torch.Tensor, digit) -> np.ndarray:
    """Counts of the 16-bit values `digit` takes over the bit patterns, a chunk at a time
    (bincount widens its input to int64: a whole tensor would take 8 bytes a weight)."""
    counts = np.zeros(1 << 16, np.int64)
    for start in range(0, len(bits), _CHUNK):
        counts += np.bincount(digit(bits[start : start + _CHUNK]).numpy(), minlength=1 << 16)
    return counts


def kth_bin(hist: np.ndarray, k: int) -> tuple[int, int]:
    """The bin that holds the k-th largest value, and how many values lie in higher bins."""
    above = np.cumsum(hist[::-1])
    j = int(np.searchsorted(above, k))
    return len(hist) - 1 - j, int(above[j] - hist[len(hist) - 1 - j])


@dataclass(frozen=True)
class Protected:
    """A protected set: its size and, per flipped weight (the campaign's union), whether it
    is in the set."""

    size: int
    holds: np.ndarray  # bool, aligned with the campaign's sorted unique flipped weights


class ProtectedSets:
    """The top-k weights of the pool by |score| (ties by tensor, then flat index: the set
    cwa.selection.ranking.extreme_k selects) and k random others, found in a few streaming passes
    over the scores with O(1) memory per weight, tested only for the weights a draw flips.

    The top set is a threshold: the k-th largest score, found by a radix select over the bit
    patterns (high 16 bits, then low 16), and within each tensor the last tied weight admitted.
    The random set is the k weights outside the top set with the smallest SplitMix64 priority
    of their global index under a key drawn from (seed, k): a uniform k-subset of the rest,
    whose cut-off priority is selected exactly in one pass that counts the priorities below a
    bracket around the expected quantile and keeps the few inside it (widened if it missed)."""

    def __init__(self, scores, sizes: list[int], flipped: np.ndarray, margin: float = 8.0):
        self.scores, self.sizes, self.flipped, self.margin = scores, sizes, flipped, margin
        self.offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        self.tensor = np.searchsorted(self.offsets, flipped, side="right") - 1
        self.hist = np.zeros(1 << 16, np.int64)
        self.bits = np.empty(len(flipped), np.int64)
        for t, score in enumerate(scores):
            bits = score_bits(score)
            self.hist += histogram(bits, lambda chunk: chunk >> 16)
            at = self.tensor == t
            self.bits[at] = bits[torch.from_numpy(flipped[at] - self.offsets[t])].numpy()

    def threshold(self, k: int) -> tuple[int, int]:
        """The k-th largest score's bit pattern, and how many of the top k tie with it."""
        high, above = kth_bin(self.hist, k)
        low = np.zeros(1 << 16, np.int64)
        for score in self.scores:
            bits = score_bits(score)
            low += histogram(bits, lambda chunk: chunk[(chunk >> 16) == high] & 0xFFFF)
        low_bin, above_low = kth_bin(low, k - above)
        return (high << 16) | low_bin, k - above - above_low

    def pair(self, fraction: float, seed: int) -> dict[str, Protected]:
        """{"top": the top fraction of the pool, "random": as many others, uniform}; at most
        half the pool each, so that the random set fits beside the top set."""
        total = sum(self.sizes)
        k = max(1, min(round(fraction * total), total // 2))
        if 2 * k > total:
            raise CwaError(
                f"params: `fault_protect` {fraction} protects {k} of {total} weights, leaving "
                f"fewer than {k} to draw the random arm from"
            )
        cut, tied = self.threshold(k)
        key = int(np.random.SeedSequence([seed, k]).generate_state(1, np.uint64)[0])
        margin = self.margin
        while True:
            last_tie, below, inside = self._count(cut, tied, k, key, margin)
            need = k - below
            if 0 < need <= len(inside):
                break
            margin *= 16
        limit = np.partition(inside, need - 1)[need - 1]
        flat = self.flipped - self.offsets[self.tensor]
        top = (self.bits > cut) | ((self.bits == cut) & (flat <= last_tie[self.tensor]))
        rest = ~top & (priority(self.flipped, key) <= limit)
        return {"top": Protected(k, top), "random": Protected(k, rest)}

    def _count(self, cut: int, tied: int, k: int, key: int, margin: float):
        """One pass: per tensor, the last tied weight in the top set; outside it, how many
        priorities fall below the bracket and which fall inside."""
        rest = sum(self.sizes) - k
        p = k / rest
        spread = margin * (np.sqrt(rest * p * (1 - p)) + 1) / rest
        lo = int(max(0.0, p - spread) * 2.0**64)
        hi = min(2**64 - 1, int(min(1.0, p + spread) * 2.0**64))
        last_tie = np.full(len(self.sizes), -1, np.int64)
        below, inside = 0, []
        for t, score in enumerate(self.scores):
            bits = score_bits(score)
            top = bits > cut
            ties = torch.nonzero(bits == cut).flatten()[:tied]
            if len(ties):
                top[ties] = True
                last_tie[t], tied = int(ties[-1]), tied - len(ties)
            for start in range(0, len(bits), _CHUNK):
                index = torch.nonzero(~top[start : start + _CHUNK]).flatten().numpy()
                index += start + self.offsets[t]  # in place: the global index
                pr = priority(index, key)
                below += int((pr < np.uint64(lo)).sum())
                inside.append(pr[(pr >= np.uint64(lo)) & (pr <= np.uint64(hi))])
        return last_tie, below, np.concatenate(inside)


def campaign_estimate(model, sizes: list[int], batch_size: int, seq_len: int) -> Estimate:
    """The campaign's memory: an evaluation pass per arm (cwa.models.memory) and, on the host,
    the protected-set passes over the largest score tensor (counted as accumulators). The
    passes run before the arms, so the host needs the larger of the two, not their sum."""
    est = estimate(model, [], "forward", batch_size, seq_len)
    largest = max(sizes, default=0)
    host = _PER_SCORE * largest + _PER_CHUNK * min(largest, _CHUNK)
    cpu = est.devices.setdefault("cpu", Need())
    cpu.accumulators += max(0, host - cpu.beyond_weights)
    return est


def guard_campaign(model, sizes: list[int], batch_size: int, seq_len: int) -> dict:
    """Refuses a campaign that cannot fit, before the reference pass; the manifest's `memory`."""
    return check(campaign_estimate(model, sizes, batch_size, seq_len), "the fault campaign")


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
