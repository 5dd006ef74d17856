"""Statistics over texts, seeds and models: paired bootstrap, set overlap, power-law fits."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def bootstrap_indices(n_texts: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, n_texts) text indices; shared by all experiments so CIs are paired."""
    return np.random.default_rng(seed).integers(0, n_texts, size=(resamples, n_texts))


def ppl(nll: np.ndarray, tokens: np.ndarray) -> float:
    """exp(Σ NLL / Σ tokens); inf past float range (a mean NLL above ~709.8 nats, which a
    perturbed model with huge finite logits reaches) as for a non-finite NLL."""
    mean = float(nll.sum()) / float(tokens.sum())
    try:
        return math.exp(mean) if math.isfinite(mean) else math.inf
    except OverflowError:
        return math.inf


def percentile_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The (1 − level)/2 and (1 + level)/2 quantiles of the resampled statistic (numpy's linear
    rule). Infinite resamples order as the extremes they are: a quantile between two equal
    values is that value, and one next to an infinity is that infinity (numpy's interpolation
    gives NaN there: inf − inf); NaN when a resample is undefined or the neighbours are −inf
    and +inf."""
    tail = (1 - level) / 2
    probs = [tail, 1 - tail]
    with np.errstate(invalid="ignore"):
        linear = np.quantile(values, probs)
    out = []
    for q, a, b in zip(
        linear,
        np.quantile(values, probs, method="lower"),
        np.quantile(values, probs, method="higher"),
        strict=True,
    ):
        if a == b:
            out.append(float(a))
        elif math.isinf(a) and math.isinf(b):
            out.append(math.nan)
        elif math.isinf(a) or math.isinf(b):
            out.append(float(a if math.isinf(a) else b))
        else:
            out.append(float(q))
    return out[0], out[1]


def paired_delta_ci(
    base_nll: np.ndarray, nll: np.ndarray, tokens: np.ndarray, idx: np.ndarray, level: float = 0.95
) -> tuple[float, float]:
    """Percentile CI of ppl(perturbed) − ppl(base), resampling the same texts for both."""
    if not np.isfinite(nll).all():
        return math.nan, math.nan
    tok = tokens[idx].sum(axis=1)
    with np.errstate(over="ignore"):
        delta = np.exp(nll[idx].sum(axis=1) / tok) - np.exp(base_nll[idx].sum(axis=1) / tok)
    return percentile_interval(delta, level)


def per_token_ci(
    per_text: np.ndarray, tokens: np.ndarray, idx: np.ndarray, level: float = 0.95
) -> tuple[float, float]:
    """Percentile CI of a per-token mean Σ per_text / Σ tokens (a KL, a fraction of tokens),
    resampling texts (rows of idx); NaN when a text's value is not finite."""
    if not np.isfinite(per_text).all():
        return math.nan, math.nan
    means = per_text[idx].sum(axis=1) / tokens[idx].sum(axis=1)
    return percentile_interval(means, level)


def _ppl_rows(nll: np.ndarray, tok: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Perplexity of each bootstrap resample (rows of idx), shape (resamples,)."""
    with np.errstate(over="ignore"):
        return np.exp(nll[idx].sum(axis=1) / tok)


def agreement(top_a: set, top_b: set, bulk_a: np.ndarray, bulk_b: np.ndarray) -> dict:
    """How two rankings of one pool agree (two seeds, two metrics): Jaccard of their top-k sets,
    the shared fraction |A ∩ B| / k, and Spearman of their |scores| at the same pool sample."""
    overlap = len(top_a & top_b) / max(len(top_a), len(top_b), 1)  # |A ∩ B| / k
    return {
        "jaccard": jaccard(top_a, top_b),
        "overlap": overlap,
        "spearman_pool": spearman(bulk_a, bulk_b),
    }


def separation(top_delta: float, control_deltas) -> float:
    """ΔPPL(top) / mean over draws |ΔPPL(control)|: absolute values, so a lucky negative draw
    cannot inflate it. NaN when a side is not finite (a diverged run has no ratio), there is
    no control draw, or neither side moved (an exact symmetry: a whole head's sign flip); ±inf
    when every draw left perplexity exactly unchanged and the top set did not."""
    deltas = np.abs(np.asarray(control_deltas, dtype=np.float64))
    if not (len(deltas) and math.isfinite(top_delta) and np.isfinite(deltas).all()):
        return math.nan
    scale = float(deltas.mean())
    if scale > 0:
        return top_delta / scale
    return math.copysign(math.inf, top_delta) if top_delta else math.nan


def _ratios(top: np.ndarray, size: np.ndarray) -> np.ndarray:
    """separation's rule on every resample: top / size; ±inf where size is 0 and top moved,
    NaN where neither moved."""
    with np.errstate(divide="ignore", invalid="ignore"):
        moved = np.where(top != 0, np.copysign(np.inf, top), np.nan)
        return np.where(size > 0, top / size, moved)


def separation_ci(
    base_nll: np.ndarray,
    top_nll: np.ndarray,
    control_nll: np.ndarray,
    tokens: np.ndarray,
    idx: np.ndarray,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile CI of ΔPPL(top) / mean over draws |ΔPPL(control)|, resampling texts once for
    the baseline, the top set and every control draw (control_nll: (draws, texts))."""
    if not (np.isfinite(top_nll).all() and np.isfinite(control_nll).all()):
        return math.nan, math.nan
    tok = tokens[idx].sum(axis=1)
    base = _ppl_rows(base_nll, tok, idx)
    top = _ppl_rows(top_nll, tok, idx) - base
    control = np.mean([np.abs(_ppl_rows(c, tok, idx) - base) for c in control_nll], axis=0)
    return percentile_interval(_ratios(top, control), level)


def relative_gain_ci(
    nll: np.ndarray,
    reference_nll: np.ndarray,
    tokens: np.ndarray,
    idx: np.ndarray,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile CI of 1 − ppl / ppl(reference) (the share of the reference's perplexity a
    method avoids), resampling the same texts for both."""
    if not (np.isfinite(nll).all() and np.isfinite(reference_nll).all()):
        return math.nan, math.nan
    tok = tokens[idx].sum(axis=1)
    with np.errstate(invalid="ignore"):
        gain = 1 - _ppl_rows(nll, tok, idx) / _ppl_rows(reference_nll, tok, idx)
    return percentile_interval(gain, level)


@dataclass(frozen=True)
class PooledCIs:
    """Percentile CIs of statistics pooled over seeds (see pooled_cis)."""

    top: tuple[float, float]  # mean over seeds of ΔPPL(top)
    control: tuple[float, float]  # mean over seeds and draws of ΔPPL(control)
    separation: tuple[float, float]  # pooled top ΔPPL / mean over seeds and draws |ΔPPL|


NO_CIS = PooledCIs((math.nan,) * 2, (math.nan,) * 2, (math.nan,) * 2)


def pooled_cis(
    base_nll: np.ndarray,
    top_nll: np.ndarray,
    control_nll: np.ndarray,
    tokens: np.ndarray,
    idx: np.ndarray,
    seed_idx: np.ndarray,
    level: float = 0.95,
) -> PooledCIs:
    """CIs of the pooled ΔPPLs and separation by a two-way bootstrap over seeds and texts.

    Seeds and texts are crossed (every seed's sets are evaluated on the same texts), so each
    resample b draws texts idx[b] and, independently, seeds seed_idx[b] (both with replacement:
    Owen's pigeonhole bootstrap), and recomputes the pooled statistic on that resample.
    top_nll: (seeds, texts); control_nll: (seeds, draws, texts); idx: (B, texts); seed_idx:
    (B, seeds)."""
    if not (np.isfinite(top_nll).all() and np.isfinite(control_nll).all()):
        return NO_CIS
    tok = tokens[idx].sum(axis=1)
    base = _ppl_rows(base_nll, tok, idx)
    top = np.stack([_ppl_rows(t, tok, idx) - base for t in top_nll])  # (seeds, B)
    draws = np.stack([[_ppl_rows(c, tok, idx) - base for c in seed] for seed in control_nll])
    pick = lambda per_seed: np.take_along_axis(per_seed.T, seed_idx, axis=1).mean(axis=1)  # noqa: E731
    top_b = pick(top)
    control_b = pick(draws.mean(axis=1))
    size_b = pick(np.abs(draws).mean(axis=1))
    return PooledCIs(
        percentile_interval(top_b, level),
        percentile_interval(control_b, level),
        percentile_interval(_ratios(top_b, size_b), level),
    )


@dataclass(frozen=True)
class PairedTest:
    """Top set against a control, on per-text differences d_i of ΔNLL per token."""

    p_permutation: float  # one-sided sign-flip permutation test of mean(d) > 0
    p_wilcoxon: float  # one-sided Wilcoxon signed-rank test of d > 0
    effect_size: float  # Cohen's d_z = mean(d) / sd(d)


def paired_test(diff: np.ndarray, resamples: int, seed: int) -> PairedTest:
    """Does the top set hurt more than the control? diff_i = top ΔNLL_i − control ΔNLL_i.

    Exact when 2^n <= resamples (scipy enumerates every sign pattern), Monte Carlo otherwise.
    """
    from scipy import stats as sps

    diff = np.asarray(diff, float)
    if len(diff) < 2 or not np.isfinite(diff).all():
        return PairedTest(math.nan, math.nan, math.nan)
    perm = sps.permutation_test(
        (diff,),
        lambda d, axis: np.mean(d, axis=axis),
        permutation_type="samples",
        alternative="greater",
        n_resamples=resamples,
        vectorized=True,
        rng=np.random.default_rng(seed),
    )
    nonzero = diff[diff != 0]
    wil = (
        sps.wilcoxon(nonzero, alternative="greater").pvalue if len(nonzero) else 1.0
    )  # all-zero differences: no evidence at all
    sd = diff.std(ddof=1)
    d_z = (
        diff.mean() / sd
        if sd > 0
        else (math.copysign(math.inf, diff.mean()) if diff.mean() else 0.0)
    )
    return PairedTest(float(perm.pvalue), float(wil), float(d_z))


def permutation_floor(windows: int, resamples: int) -> float:
    """The smallest p-value `paired_test` can return: 2^-n when it enumerates every sign pattern
    of n windows, else 1 / (resamples + 1). A p-value there says only "at least this small"."""
    return 2.0**-windows if 2**windows <= resamples else 1.0 / (resamples + 1)


def bh_q_values(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q-values) over the finite p-values (scipy); a NaN
    p-value (a diverged comparison, no test) stays NaN and does not count among the tests."""
    from scipy import stats as sps

    p = np.asarray(p, float)
    q = np.full(p.shape, math.nan)
    finite = np.isfinite(p)
    if finite.any():
        q[finite] = sps.false_discovery_control(p[finite], method="bh")
    return q


def jaccard(a: set, b: set) -> float:
    union = len(a | b)
    return len(a & b) / union if union else 1.0


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman ρ with average ranks for ties; NaN when either side is constant."""
    from scipy import stats as sps

    if len(x) < 2 or np.all(x == x[0]) or np.all(y == y[0]):
        return math.nan
    return float(sps.spearmanr(x, y).statistic)


@dataclass(frozen=True)
class PowerLaw:
    slope: float
    intercept: float  # log10 of the prefactor
    r2: float
    slope_ci: tuple[float, float]


def fit_power_law(x: np.ndarray, y: np.ndarray, level: float = 0.95) -> PowerLaw:
    """y = 10^intercept · x^slope by least squares on log10 values; t-based CI of the slope."""
    from scipy import stats as sps

    lx, ly, _ = loglog(x, y)
    if len(lx) < 2:
        return PowerLaw(math.nan, math.nan, math.nan, (math.nan, math.nan))
    fit = sps.linregress(lx, ly)
    # Two points fit exactly: no error estimate.
    half = sps.t.ppf(0.5 + level / 2, len(lx) - 2) * fit.stderr if len(lx) > 2 else math.nan
    return PowerLaw(
        float(fit.slope),
        float(fit.intercept),
        float(fit.rvalue**2),
        (float(fit.slope - half), float(fit.slope + half)),
    )


def loglog(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """log10 of the points a power law can fit (both positive and finite) and their indices."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    keep = np.flatnonzero((x > 0) & (y > 0) & np.isfinite(x) & np.isfinite(y))
    return np.log10(x[keep]), np.log10(y[keep]), keep


def leave_one_out(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Relative error |ŷ − y| / y of predicting each point from the power law fitted to the
    others (NaN where the point cannot be fitted, or where fewer than 3 points can)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    errors = np.full(len(x), math.nan)
    _, _, keep = loglog(x, y)
    if len(keep) < 3:
        return errors
    for i in keep:
        others = keep[keep != i]
        fit = fit_power_law(x[others], y[others])
        predicted = 10**fit.intercept * x[i] ** fit.slope
        errors[i] = abs(predicted - y[i]) / y[i]
    return errors


@dataclass(frozen=True)
class Breakpoint:
    """A continuous two-segment power law: slope `below` up to `at` (in x units), `above` after;
    `p_value` of the F test against one line. NaN where there are too few points."""

    at: float
    below: float
    above: float
    f: float
    p_value: float


NO_BREAKPOINT = Breakpoint(math.nan, math.nan, math.nan, math.nan, math.nan)
MIN_BREAKPOINT_POINTS = 5  # two slopes, an intercept and a breakpoint leave n − 4 dof


def two_segment_fit(x: np.ndarray, y: np.ndarray, min_side: int = 2) -> Breakpoint:
    """log y = a + b·log x + c·max(0, log x − log x_b), the hinge x_b at the data point that
    minimises the residual sum of squares (at least `min_side` points on each side, the hinge
    included in both). F test of the 2 extra parameters against one line with (2, n − 4) dof;
    the hinge is chosen from the data, so the p-value is optimistic (Davies 1987)."""
    from scipy import stats as sps

    lx, ly, _ = loglog(x, y)
    n = len(lx)
    if n < MIN_BREAKPOINT_POINTS:
        return NO_BREAKPOINT
    order = np.argsort(lx)
    lx, ly = lx[order], ly[order]

    def rss(design: np.ndarray) -> tuple[float, np.ndarray]:
        coef, *_ = np.linalg.lstsq(design, ly, rcond=None)
        return float(((design @ coef - ly) ** 2).sum()), coef

    one, _ = rss(np.column_stack([np.ones(n), lx]))
    best = None
    for hinge in lx[min_side - 1 : n - min_side + 1]:
        design = np.column_stack([np.ones(n), lx, np.maximum(0.0, lx - hinge)])
        two, coef = rss(design)
        if best is None or two < best[0]:
            best = (two, hinge, coef)
    two, hinge, coef = best
    dof = n - 4
    if one <= 1e-24:  # one line fits exactly: nothing to gain
        f, p = 0.0, 1.0
    else:
        f = ((one - two) / 2) / (two / dof) if two > 1e-24 else math.inf
        p = float(sps.f.sf(f, 2, dof)) if math.isfinite(f) else 0.0
    return Breakpoint(float(10**hinge), float(coef[1]), float(coef[1] + coef[2]), float(f), p)
