"""Statistics against scipy and closed forms."""

import math

import numpy as np
import pytest
from scipy import stats as sps

from cwa.stats import bootstrap_indices, fit_power_law, jaccard, paired_delta_ci, ppl, spearman


def test_ppl_is_token_weighted():
    nll, tokens = np.array([10.0, 1.0]), np.array([10, 1])
    assert ppl(nll, tokens) == pytest.approx(math.e)  # not the mean of per-text perplexities
    assert ppl(np.array([np.inf]), np.array([3])) == math.inf


def test_paired_bootstrap_matches_scipy_percentile_bootstrap():
    rng = np.random.default_rng(0)
    n = 60
    tokens = rng.integers(50, 150, n)
    base = tokens * rng.normal(3.0, 0.3, n)
    pert = base + tokens * rng.normal(0.05, 0.05, n)

    def stat(b, p, t, axis=-1):
        return np.exp(p.sum(axis) / t.sum(axis)) - np.exp(b.sum(axis) / t.sum(axis))

    ref = sps.bootstrap(
        (base, pert, tokens),
        stat,
        paired=True,
        vectorized=True,
        n_resamples=20000,
        method="percentile",
        random_state=1,
    )
    lo, hi = paired_delta_ci(base, pert, tokens, bootstrap_indices(n, 20000, 0))
    assert lo == pytest.approx(ref.confidence_interval.low, rel=0.03)
    assert hi == pytest.approx(ref.confidence_interval.high, rel=0.03)
    assert lo < stat(base, pert, tokens) < hi


def test_paired_ci_of_identical_runs_is_zero_and_diverged_is_nan():
    idx = bootstrap_indices(5, 100, 0)
    nll, tok = np.arange(1.0, 6.0), np.ones(5, dtype=int) * 3
    assert paired_delta_ci(nll, nll, tok, idx) == (0.0, 0.0)
    lo, hi = paired_delta_ci(nll, np.array([1, 2, np.nan, 4, 5.0]), tok, idx)
    assert math.isnan(lo) and math.isnan(hi)


def test_jaccard_and_spearman():
    assert jaccard({1, 2, 3}, {2, 3, 4}) == 0.5
    assert jaccard(set(), set()) == 1.0
    x = np.array([1.0, 2, 2, 5, 9])
    y = np.array([2.0, 1, 4, 4, 7])
    assert spearman(x, y) == pytest.approx(sps.spearmanr(x, y).statistic)
    assert math.isnan(spearman(np.ones(4), x[:4]))


def test_power_law_fit_recovers_exponent_and_ci():
    x = np.array([1e5, 1e6, 1e7, 1e8])
    fit = fit_power_law(x, 3.0 * x**-0.5)
    assert fit.slope == pytest.approx(-0.5) and fit.r2 == pytest.approx(1.0)
    assert fit.intercept == pytest.approx(math.log10(3.0))
    noisy = 3.0 * x**-0.5 * np.array([1.1, 0.9, 1.05, 0.97])
    fit = fit_power_law(noisy * 0 + x, noisy)
    ref = sps.linregress(np.log10(x), np.log10(noisy))
    half = sps.t.ppf(0.975, 2) * ref.stderr
    assert fit.slope_ci == pytest.approx((ref.slope - half, ref.slope + half))
