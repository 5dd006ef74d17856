"""Statistics against scipy and closed forms."""

import dataclasses
import math

import numpy as np
import pytest
from scipy import stats as sps

from cwa.core.stats import (
    bh_q_values,
    bootstrap_indices,
    fit_power_law,
    jaccard,
    paired_delta_ci,
    paired_test,
    percentile_interval,
    permutation_floor,
    pooled_cis,
    ppl,
    separation_ci,
    spearman,
)

# Unless noted, the comparisons are float64 against scipy or closed forms over a handful of values:
# rounding ~1e-15 relative, so pytest.approx's default rel=1e-6 is loose for rounding and still
# fails a formula error (a wrong weighting, ddof or tail moves these values by percents).


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
    # Monte Carlo: two independent 20,000-resample draws; each percentile endpoint has a relative
    # sd of ~0.3% over seeds, so 3% is ~8 sd of their difference
    assert lo == pytest.approx(ref.confidence_interval.low, rel=0.03)
    assert hi == pytest.approx(ref.confidence_interval.high, rel=0.03)
    assert lo < stat(base, pert, tokens) < hi


def test_paired_ci_of_identical_runs_is_zero_and_diverged_is_nan():
    idx = bootstrap_indices(5, 100, 0)
    nll, tok = np.arange(1.0, 6.0), np.ones(5, dtype=int) * 3
    assert paired_delta_ci(nll, nll, tok, idx) == (0.0, 0.0)  # exact: x − x
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


def test_permutation_p_value_equals_full_sign_flip_enumeration():
    diff = np.array([0.8, -0.2, 0.5, 1.1, 0.05, -0.6, 0.9, 0.3])
    signs = np.array(np.meshgrid(*[[-1, 1]] * len(diff))).reshape(len(diff), -1).T  # (256, 8)
    # 1e-12: the observed pattern's own mean, recomputed, may round ~1e-16 below diff.mean()
    exact = np.mean((signs * diff).mean(axis=1) >= diff.mean() - 1e-12)
    got = paired_test(diff, resamples=1000, seed=0)  # 2^8 <= 1000: scipy enumerates
    assert got.p_permutation == pytest.approx(exact)
    assert got.effect_size == pytest.approx(diff.mean() / diff.std(ddof=1))
    assert got.p_wilcoxon == pytest.approx(sps.wilcoxon(diff, alternative="greater").pvalue)


def test_paired_test_hand_checked_values():
    # Five positive differences: one sign pattern of 32 is as extreme => p = 1/32 for both tests.
    t = paired_test(np.array([1.0, 2.0, 3.0, 4.0, 5.0]), resamples=1000, seed=0)
    assert t.p_permutation == pytest.approx(1 / 32) and t.p_wilcoxon == pytest.approx(1 / 32)
    assert t.effect_size == pytest.approx(3 / math.sqrt(2.5))
    assert paired_test(np.zeros(4), 100, 0).p_wilcoxon == 1.0
    assert math.isnan(paired_test(np.array([1.0, np.inf]), 100, 0).p_permutation)


def test_separation_ci_on_the_identity_resample_is_the_point_ratio():
    tokens = np.array([10, 10, 10])
    base = np.array([30.0, 31.0, 29.0])
    top = base + np.array([5.0, 4.0, 6.0])
    controls = np.stack([base + 0.1, base - 0.2])
    idx = np.arange(3)[None, :]
    lo, hi = separation_ci(base, top, controls, tokens, idx)
    p = lambda nll: math.exp(nll.sum() / 30)  # noqa: E731
    want = (p(top) - p(base)) / np.mean([abs(p(c) - p(base)) for c in controls])
    assert lo == pytest.approx(want) and hi == pytest.approx(want)
    wide = separation_ci(base, top, controls, tokens, bootstrap_indices(3, 500, 0))
    assert wide[0] <= want <= wide[1]


def test_percentile_interval_is_numpys_linear_rule_with_infinities_as_extremes():
    """On finite values exactly np.quantile (the hand-written rule below agrees too); infinite
    resamples give the infinity they stand next to, not numpy's NaN from inf − inf."""
    rng = np.random.default_rng(3)
    for n in (1, 2, 7, 40, 1000):
        values = rng.normal(size=n)
        tail = (1 - 0.95) / 2  # as every CI has computed it: 0.025000000000000022
        want = tuple(float(v) for v in np.quantile(values, [tail, 1 - tail]))
        assert percentile_interval(values) == want
        assert percentile_interval(values) == pytest.approx(resample_quantiles(list(values), 0.95))
    assert percentile_interval(np.full(50, np.inf)) == (math.inf, math.inf)
    with np.errstate(invalid="ignore"):  # what numpy alone gives
        assert np.isnan(np.quantile(np.full(50, np.inf), [0.025, 0.975])).all()
    some = np.concatenate([np.arange(10.0), np.full(3, np.inf)])  # 13 resamples, 3 infinite
    lo, hi = percentile_interval(some)
    assert lo == pytest.approx(resample_quantiles(list(range(10)) + [99.0] * 3, 0.95)[0])
    assert hi == math.inf  # 0.975 · 12 = 11.7: between two infinities
    assert percentile_interval(np.array([0.0] * 20 + [np.inf])) == (0.0, math.inf)
    assert percentile_interval(np.array([-np.inf] * 20 + [1.0])) == (-math.inf, -math.inf)
    both = percentile_interval(np.array([-np.inf, np.inf]), level=0.5)  # quartiles of two
    assert math.isnan(both[0]) and math.isnan(both[1])
    assert all(math.isnan(v) for v in percentile_interval(np.array([1.0, np.nan, 2.0])))


def test_separation_ci_follows_separations_rule_when_the_controls_never_move():
    """Controls that leave every text exactly unchanged: separation is +inf (top moved up),
    −inf (down) or NaN (neither moved); its CI says the same (it said (NaN, NaN), and +inf
    for a top set that lowered perplexity)."""
    from cwa.core.stats import separation

    tokens = np.array([10, 10, 10])
    base = np.array([30.0, 31.0, 29.0])
    controls = np.stack([base, base])
    idx = bootstrap_indices(3, 200, 0)
    for shift, want in ((1.0, math.inf), (-1.0, -math.inf)):
        top = base + shift
        point = separation(math.exp(top.sum() / 30) - math.exp(base.sum() / 30), [0.0, 0.0])
        assert point == want
        assert separation_ci(base, top, controls, tokens, idx) == (want, want)
        seed_idx = np.zeros((200, 1), dtype=int)
        pooled = pooled_cis(base, top[None], controls[None], tokens, idx, seed_idx)
        assert pooled.separation == (want, want)
    assert math.isnan(separation(0.0, [0.0, 0.0]))
    assert all(math.isnan(v) for v in separation_ci(base, base, controls, tokens, idx))


def test_perplexity_past_float_range_is_inf_not_a_crash():
    from cwa.core.stats import ppl

    tokens = np.array([10, 10])
    assert ppl(np.array([20.0, 40.0]), tokens) == pytest.approx(math.exp(3.0))
    assert ppl(np.array([8000.0, 8000.0]), tokens) == math.inf  # mean 800 nats: finite, huge
    assert ppl(np.array([np.inf, 1.0]), tokens) == math.inf


def test_separation_is_one_rule_with_its_non_finite_cases():
    from cwa.core.stats import separation

    assert separation(0.2, [0.01, -0.03]) == pytest.approx(0.2 / 0.02)  # |draws| averaged
    assert separation(0.2, [0.0, 0.0]) == math.inf  # random weights changed nothing at all
    assert separation(-0.2, [0.0, 0.0]) == -math.inf
    assert math.isnan(separation(0.0, [0.0, 0.0]))  # neither moved: an exact symmetry
    assert math.isnan(separation(0.2, []))  # no control draw: no ratio
    assert math.isnan(separation(math.inf, [0.1]))  # the top set diverged
    assert math.isnan(separation(0.2, [0.1, math.inf]))  # a control draw diverged


def test_leave_one_out_predicts_each_point_from_the_others_by_hand():
    from cwa.core.stats import leave_one_out

    x, y = np.array([10.0, 100.0, 1000.0]), np.array([1.0, 3.0, 4.0])
    errors = leave_one_out(x, y)
    # without point 0 the line through (2, log 3) and (3, log 4) predicts log y at log x = 1
    slope = (np.log10(4) - np.log10(3)) / 1.0
    predicted = 10 ** (np.log10(3) - slope)
    assert errors[0] == pytest.approx(abs(predicted - 1.0) / 1.0, rel=1e-12)
    # without point 1: through (1, 0) and (3, log 4), at log x = 2
    predicted = 10 ** (np.log10(4) / 2)
    assert errors[1] == pytest.approx(abs(predicted - 3.0) / 3.0, rel=1e-12)
    exact = leave_one_out(np.geomspace(1e3, 1e9, 6), 2 * np.geomspace(1e3, 1e9, 6) ** -0.4)
    assert np.allclose(exact, 0, atol=1e-12)  # a true power law predicts itself
    assert np.isnan(leave_one_out(x[:2], y[:2])).all()  # 2 points: nothing left to fit


def test_two_segment_fit_finds_a_planted_breakpoint_and_not_a_false_one():
    from cwa.core.stats import two_segment_fit

    x = np.geomspace(1e5, 1e10, 11)  # a point at 10^7.5 ≈ 3.16e7
    at = x[5]
    y = np.where(x <= at, (x / at) ** 0.5, (x / at) ** -0.3)  # continuous at the breakpoint
    noise = np.random.default_rng(0).normal(0, 0.01, len(x))
    fit = two_segment_fit(x, y * 10**noise)
    assert fit.at == pytest.approx(at, rel=1e-9)
    assert fit.below == pytest.approx(0.5, abs=0.02) and fit.above == pytest.approx(-0.3, abs=0.02)
    assert fit.p_value < 1e-6
    straight = two_segment_fit(x, 3 * x**0.2 * 10 ** np.random.default_rng(1).normal(0, 0.05, 11))
    assert straight.p_value > 0.05  # one line explains it: no threshold claimed
    assert np.isnan(two_segment_fit(x[:4], y[:4]).at)  # too few points for 4 parameters


def test_bh_q_values_against_the_step_up_rule_by_hand():
    """q_(i) = min over j >= i of p_(j) * m / j (sorted p, 1-based ranks), capped at 1; NaN p
    (a diverged comparison) stays NaN and does not count in m."""
    p = np.array([0.01, np.nan, 0.04, 0.03, 0.5, 0.001, 0.04])
    finite = p[~np.isnan(p)]
    m = len(finite)
    order = np.argsort(finite)
    ranked = finite[order] * m / np.arange(1, m + 1)
    q_sorted = np.minimum(np.minimum.accumulate(ranked[::-1])[::-1], 1.0)
    expected = np.empty(m)
    expected[order] = q_sorted
    q = bh_q_values(p)
    assert np.isnan(q[1])
    np.testing.assert_allclose(q[~np.isnan(p)], expected, rtol=1e-12)
    # by hand: m = 6, sorted p 0.001 0.01 0.03 0.04 0.04 0.5 -> 0.006 0.03 0.048 0.048 0.048 0.5
    np.testing.assert_allclose(
        q[[5, 0, 3, 2, 6, 4]], [0.006, 0.03, 0.048, 0.048, 0.048, 0.5], rtol=1e-12
    )
    assert np.isnan(bh_q_values(np.array([np.nan]))).all() and len(bh_q_values(np.array([]))) == 0


def test_the_permutation_floor_is_exact_enumeration_or_one_over_resamples_plus_one():
    assert permutation_floor(windows=5, resamples=1000) == 2**-5  # 32 patterns enumerated
    assert permutation_floor(windows=64, resamples=1000) == 1 / 1001
    rng = np.random.default_rng(0)
    diff = rng.normal(5, 1, 64)  # far beyond any sign flip: the test returns its floor
    assert paired_test(diff, 1000, seed=0).p_permutation == pytest.approx(1 / 1001)
    few = np.array([3.0, 2.0, 4.0, 1.0, 5.0])
    assert paired_test(few, 1000, seed=0).p_permutation == pytest.approx(2**-5)


def test_pooled_cis_against_a_loop_over_resamples():
    """The two-way bootstrap written out by hand: for each resample, the resampled seeds' mean
    of ΔPPL on the resampled texts (texts and seeds drawn independently, with replacement)."""
    rng = np.random.default_rng(3)
    seeds, draws, n, resamples = 3, 2, 7, 400
    tokens = rng.integers(5, 15, n)
    base = tokens * rng.normal(3.0, 0.2, n)
    top = base + tokens * rng.normal(0.3, 0.1, (seeds, n))
    control = base + tokens * rng.normal(0.0, 0.05, (seeds, draws, n))
    idx = bootstrap_indices(n, resamples, 1)
    seed_idx = bootstrap_indices(seeds, resamples, 2)
    got = pooled_cis(base, top, control, tokens, idx, seed_idx)

    def ppl_of(nll, texts):
        return math.exp(nll[texts].sum() / tokens[texts].sum())

    tops, controls, ratios = [], [], []
    for texts, picked in zip(idx, seed_idx, strict=True):
        b = ppl_of(base, texts)
        t = np.mean([ppl_of(top[s], texts) - b for s in picked])
        c = [[ppl_of(control[s, d], texts) - b for d in range(draws)] for s in picked]
        tops.append(t)
        controls.append(np.mean(c))
        ratios.append(t / np.mean(np.abs(c)))
    for (lo, hi), values in (
        (got.top, tops),
        (got.control, controls),
        (got.separation, ratios),
    ):
        want = np.quantile(values, [0.025, 0.975])
        # float64 sums in another order: ~1e-15 relative; approx's rel=1e-6 is loose for that
        assert (lo, hi) == pytest.approx(tuple(want))


def test_pooled_cis_on_the_identity_resample_are_the_pooled_point_values():
    tokens = np.array([10, 10])
    base = np.array([30.0, 31.0])
    top = np.stack([base + 2.0, base + 4.0])  # two seeds
    control = np.stack([np.stack([base + 0.5, base - 0.5]), np.stack([base + 1.0, base])])
    idx, seed_idx = np.arange(2)[None, :], np.arange(2)[None, :]
    got = pooled_cis(base, top, control, tokens, idx, seed_idx)
    p = lambda nll: math.exp(nll.sum() / 20)  # noqa: E731
    deltas = [p(c) - p(base) for seed in control for c in seed]
    want_top = np.mean([p(t) - p(base) for t in top])
    assert got.top == pytest.approx((want_top, want_top))
    assert got.control == pytest.approx((np.mean(deltas),) * 2)
    assert got.separation == pytest.approx((want_top / np.mean(np.abs(deltas)),) * 2)
    # a seed drawn twice counts twice
    twice = pooled_cis(base, top, control, tokens, idx, np.array([[1, 1]]))
    assert twice.top == pytest.approx((p(top[1]) - p(base),) * 2)
    assert math.isnan(pooled_cis(base, top + np.inf, control, tokens, idx, seed_idx).top[0])


def resample_quantiles(values: list[float], level: float) -> tuple[float, float]:
    """The percentile interval by hand: sorted values, linear interpolation between order
    statistics at (n − 1)·q (numpy's default rule, written out)."""
    v = sorted(values)

    def at(q):
        pos = (len(v) - 1) * q
        low = math.floor(pos)
        high = min(low + 1, len(v) - 1)
        return v[low] + (v[high] - v[low]) * (pos - low)

    tail = (1 - level) / 2
    return at(tail), at(1 - tail)


def test_separation_and_relative_gain_cis_against_a_loop_over_resamples():
    """Each resample's ratio (or gain) from its own token-weighted perplexities, then the
    interval's order statistics, at two levels; one non-finite side gives no interval."""
    from cwa.core.stats import relative_gain_ci

    rng = np.random.default_rng(4)
    n, draws = 9, 3
    tokens = rng.integers(5, 20, n)
    base = tokens * rng.normal(3.0, 0.2, n)
    top = base + tokens * rng.normal(0.3, 0.2, n)
    controls = np.stack([base + tokens * rng.normal(0.0, 0.05, n) for _ in range(draws)])
    idx = bootstrap_indices(n, 300, 1)
    for level in (0.95, 0.8):
        ratios, gains = [], []
        for row in idx:
            t = tokens[row].sum()
            p = lambda nll, row=row, t=t: math.exp(nll[row].sum() / t)  # noqa: E731
            spread = np.mean([abs(p(c) - p(base)) for c in controls])
            ratios.append((p(top) - p(base)) / spread)
            gains.append(1 - p(top) / p(base))
        got = separation_ci(base, top, controls, tokens, idx, level)
        assert got == pytest.approx(resample_quantiles(ratios, level), rel=1e-9)
        got = relative_gain_ci(top, base, tokens, idx, level)
        assert got == pytest.approx(resample_quantiles(gains, level), rel=1e-9)
    diverged = top.copy()
    diverged[2] = np.inf
    for args in ((diverged, base), (top, diverged)):
        assert all(math.isnan(v) for v in relative_gain_ci(*args, tokens, idx))
    assert all(math.isnan(v) for v in separation_ci(base, diverged, controls, tokens, idx))


def test_bootstrap_indices_draw_every_text_and_repeat_with_the_seed():
    """Every text can be drawn (0 and n − 1 included, nothing outside), the same seed gives the
    same resamples (paired CIs across stages depend on it) and another seed others."""
    idx = bootstrap_indices(7, 400, 3)
    assert idx.shape == (400, 7) and set(np.unique(idx)) == set(range(7))
    assert np.array_equal(idx, bootstrap_indices(7, 400, 3))
    assert not np.array_equal(idx, bootstrap_indices(7, 400, 4))


def test_a_nan_loss_has_infinite_perplexity():
    assert ppl(np.array([np.nan, 1.0]), np.array([5, 5])) == math.inf


def test_the_permutation_floor_switches_to_resampling_exactly_past_2_to_the_n_patterns():
    """At n = 10 windows, 1,024 resamples enumerate all 2^10 sign patterns and 1,023 cannot: the
    floor and the test's own p-value agree on either side."""
    diff = np.arange(1.0, 11.0)  # all positive: only the identity pattern is as extreme
    for resamples, floor in ((1024, 2**-10), (1023, 1 / 1024)):
        assert permutation_floor(windows=10, resamples=resamples) == floor
        assert paired_test(diff, resamples, seed=0).p_permutation == pytest.approx(floor)


def test_per_token_ci_against_a_loop_over_resamples():
    from cwa.core.stats import per_token_ci

    rng = np.random.default_rng(5)
    tokens = rng.integers(5, 20, 8)
    per_text = tokens * rng.gamma(2.0, 0.1, 8)
    idx = bootstrap_indices(8, 250, 2)
    means = [per_text[row].sum() / tokens[row].sum() for row in idx]
    assert per_token_ci(per_text, tokens, idx) == pytest.approx(
        resample_quantiles(means, 0.95), rel=1e-12
    )
    assert per_token_ci(per_text, tokens, idx, 0.8) == pytest.approx(
        resample_quantiles(means, 0.8), rel=1e-12
    )
    per_text[3] = np.inf
    assert all(math.isnan(v) for v in per_token_ci(per_text, tokens, idx))


def test_pooled_cis_edge_cases():
    """A non-finite run gives no interval; a control that never moves perplexity has a zero
    control interval."""
    tokens = np.array([10, 12, 9])
    base = np.array([30.0, 31.0, 29.0])
    top = np.stack([base + 2.0, base + 3.0])
    still = np.stack([np.stack([base, base]), np.stack([base, base])])  # (seeds, draws, texts)
    idx, seed_idx = bootstrap_indices(3, 50, 0), bootstrap_indices(2, 50, 1)
    got = pooled_cis(base, top, still, tokens, idx, seed_idx)
    assert got.control == (0.0, 0.0) and got.top[0] > 0
    bad_top, bad_control = top.copy(), still.copy()
    bad_top[0, 1] = np.inf
    bad_control[1, 0, 2] = np.nan
    for cis in (
        pooled_cis(base, bad_top, still, tokens, idx, seed_idx),
        pooled_cis(base, top, bad_control, tokens, idx, seed_idx),
    ):
        assert all(math.isnan(v) for pair in (cis.top, cis.control, cis.separation) for v in pair)


def test_paired_test_edge_cases():
    """Two windows are enough; one is not. A constant difference has no spread: Cohen's d_z is ±inf
    with its sign, 0 when it is zero, and all-zero differences give Wilcoxon no evidence."""
    assert all(math.isnan(v) for v in dataclasses.astuple(paired_test(np.array([1.0]), 100, 0)))
    two = paired_test(np.array([1.0, 2.0]), 100, 0)
    assert two.p_permutation == pytest.approx(0.25)  # 4 sign patterns, only + + as large
    assert paired_test(np.full(5, 0.3), 100, 0).effect_size == math.inf
    assert paired_test(np.full(5, -0.3), 100, 0).effect_size == -math.inf
    zero = paired_test(np.zeros(5), 100, 0)
    assert zero.effect_size == 0.0 and zero.p_wilcoxon == 1.0


def test_spearman_and_power_law_edge_cases():
    """Spearman is NaN when either side is constant; points a power law cannot take (≤ 0 or
    not finite, on either axis) are dropped; two points fit exactly with no CI."""
    from cwa.core.stats import loglog

    varying = np.array([1.0, 2.0, 3.0])
    assert math.isnan(spearman(np.ones(3), varying))
    assert math.isnan(spearman(varying, np.ones(3)))
    assert math.isnan(spearman(varying[:1], varying[:1]))
    x = np.array([1.0, 10.0, -1.0, 100.0, np.inf, 1000.0, 0.0])
    y = np.array([2.0, 20.0, 5.0, np.nan, 7.0, 0.0, 3.0])
    lx, ly, keep = loglog(x, y)
    assert keep.tolist() == [0, 1] and lx.tolist() == [0.0, 1.0]
    assert ly.tolist() == pytest.approx([math.log10(2), math.log10(20)])
    fit = fit_power_law(x, y)
    assert fit.slope == pytest.approx(1.0) and fit.intercept == pytest.approx(math.log10(2))
    assert all(math.isnan(v) for v in fit.slope_ci)


def _hinge_fit_by_normal_equations(x, y, min_side=2):
    """two_segment_fit written out: every admissible hinge (the min_side-th point from either
    end, both included), its three-column least squares by the normal equations, the smallest
    residual sum, and F's upper tail as the regularised incomplete beta function."""
    from scipy.special import betainc

    lx, ly = np.log10(x), np.log10(y)
    n = len(lx)

    def rss(design):
        coef = np.linalg.solve(design.T @ design, design.T @ ly)
        return float(((design @ coef - ly) ** 2).sum()), coef

    one, _ = rss(np.column_stack([np.ones(n), lx]))
    fits = [
        (*rss(np.column_stack([np.ones(n), lx, np.maximum(0.0, lx - lx[i])])), i)
        for i in range(min_side - 1, n - min_side + 1)
    ]
    two, coef, i = min(fits, key=lambda fit: fit[0])
    dof = n - 4
    f = ((one - two) / 2) / (two / dof)
    p = betainc(dof / 2, 1.0, dof / (dof + 2 * f))  # P(F(2, dof) > f)
    return 10 ** lx[i], coef[1], coef[1] + coef[2], f, p


@pytest.mark.parametrize("bend", [1, 3, 5])  # both edges of the admissible hinges and the middle
def test_two_segment_fit_against_every_hinge_by_the_normal_equations(bend):
    from cwa.core.stats import two_segment_fit

    x = np.geomspace(1e3, 1e9, 7)
    lx = np.log10(x)
    noise = np.random.default_rng(bend).normal(0, 0.02, 7)
    y = 10 ** (0.3 + 0.8 * lx - 1.5 * np.maximum(0.0, lx - lx[bend]) + noise)
    fit = two_segment_fit(x[::-1], y[::-1])  # sorted inside: any order of the points
    at, below, above, f, p = _hinge_fit_by_normal_equations(x, y)
    assert fit.at == pytest.approx(x[bend], rel=1e-12) and at == pytest.approx(x[bend])
    assert (fit.below, fit.above) == pytest.approx((below, above), rel=1e-9)
    assert (fit.f, fit.p_value) == pytest.approx((f, p), rel=1e-7)
    assert 0 < p < 0.05


def test_two_segment_fit_keeps_min_side_points_on_each_side():
    """With min_side 3 the bend at the second point is out of reach: the fit takes the best hinge
    among the third to the fifth of seven points, as the written-out fit does."""
    from cwa.core.stats import two_segment_fit

    x = np.geomspace(1e3, 1e9, 7)
    lx = np.log10(x)
    noise = np.random.default_rng(7).normal(0, 0.02, 7)
    y = 10 ** (0.8 * lx - 1.5 * np.maximum(0.0, lx - lx[1]) + noise)
    fit = two_segment_fit(x, y, min_side=3)
    at, below, above, f, p = _hinge_fit_by_normal_equations(x, y, min_side=3)
    assert at != pytest.approx(x[1])
    assert (fit.at, fit.below, fit.above) == pytest.approx((at, below, above), rel=1e-9)
    assert (fit.f, fit.p_value) == pytest.approx((f, p), rel=1e-7)


def test_two_segment_fit_at_its_smallest_size_and_on_exact_lines():
    """Five points leave one degree of freedom for the F test (four do not fit); a straight
    line has nothing to gain (F 0, p 1), and an exact bend has no residual (F inf, p 0)."""
    from cwa.core.stats import two_segment_fit

    x = np.geomspace(10, 1e5, 5)
    lx = np.log10(x)
    y = 10 ** (0.5 * lx + 1.0 * np.maximum(0.0, lx - lx[2]) + [0.01, -0.02, 0.015, 0.0, -0.01])
    fit = two_segment_fit(x, y)
    at, below, above, f, p = _hinge_fit_by_normal_equations(x, y)
    assert (fit.at, fit.below, fit.above, fit.f, fit.p_value) == pytest.approx(
        (at, below, above, f, p), rel=1e-7
    )
    line = two_segment_fit(x, 3 * x**0.25)
    assert (line.f, line.p_value) == (0.0, 1.0) and line.below == pytest.approx(0.25)
    bend = two_segment_fit(x, 10 ** (0.5 * lx + np.maximum(0.0, lx - lx[2])))
    assert (bend.f, bend.p_value) == (math.inf, 0.0)
    assert (bend.at, bend.below, bend.above) == pytest.approx((x[2], 0.5, 1.5))


def test_rank_correlation_and_slope_interval_at_their_smallest_sizes():
    """Two points have a rank correlation of ±1; a power law through three points has a slope
    interval of t(0.975, 1) standard errors."""
    assert spearman(np.array([1.0, 2.0]), np.array([5.0, 7.0])) == pytest.approx(1.0)
    assert spearman(np.array([1.0, 2.0]), np.array([7.0, 5.0])) == pytest.approx(-1.0)
    x, y = np.array([1.0, 10.0, 100.0]), np.array([1.0, 20.0, 90.0])
    lx, ly = np.log10(x), np.log10(y)
    slope = np.polyfit(lx, ly, 1)[0]
    residual = ly - np.polyval(np.polyfit(lx, ly, 1), lx)
    stderr = math.sqrt((residual**2).sum() / 1 / ((lx - lx.mean()) ** 2).sum())
    half = 12.706204736174696 * stderr  # Student's t, 1 dof, 0.975 (tables)
    fit = fit_power_law(x, y)
    assert fit.slope == pytest.approx(slope, rel=1e-12)
    assert fit.slope_ci == pytest.approx((slope - half, slope + half), rel=1e-9)
    assert fit.r2 == pytest.approx(np.corrcoef(lx, ly)[0, 1] ** 2, rel=1e-12)
    narrow = fit_power_law(x, y, level=0.5)  # t(0.75, 1) = 1
    assert narrow.slope_ci == pytest.approx((slope - stderr, slope + stderr), rel=1e-9)


def test_every_interval_is_taken_at_the_level_it_is_given():
    """At level 0.8 each interval is the 10th and 90th percentiles (numpy's linear rule) of its
    statistic on each resample, written out here."""
    from cwa.core.stats import per_token_ci, relative_gain_ci

    rng = np.random.default_rng(11)
    texts = 9
    tokens = rng.integers(5, 20, texts)
    base = rng.uniform(2, 3, texts) * tokens
    top = base + rng.uniform(0, 1, texts) * tokens
    controls = base + rng.uniform(-0.1, 0.3, (2, texts)) * tokens
    idx = bootstrap_indices(texts, 40, 2)

    def ppl_of(nll, rows):
        return np.exp(nll[rows].sum() / tokens[rows].sum())

    def quantiles(values):
        return tuple(np.quantile(values, [0.1, 0.9]))

    deltas = [ppl_of(top, r) - ppl_of(base, r) for r in idx]
    assert paired_delta_ci(base, top, tokens, idx, level=0.8) == pytest.approx(quantiles(deltas))
    gains = [1 - ppl_of(controls[0], r) / ppl_of(top, r) for r in idx]
    assert relative_gain_ci(controls[0], top, tokens, idx, level=0.8) == pytest.approx(
        quantiles(gains)
    )
    per_text = rng.uniform(0, 1, texts) * tokens
    means = [per_text[r].sum() / tokens[r].sum() for r in idx]
    assert per_token_ci(per_text, tokens, idx, level=0.8) == pytest.approx(quantiles(means))
    ratios = [
        (ppl_of(top, r) - ppl_of(base, r))
        / np.mean([abs(ppl_of(c, r) - ppl_of(base, r)) for c in controls])
        for r in idx
    ]
    assert separation_ci(base, top, controls, tokens, idx, level=0.8) == pytest.approx(
        quantiles(ratios)
    )
    seed_idx = bootstrap_indices(2, 40, 3)
    tops = np.stack([top, top + tokens * 0.2])
    draws = np.stack([controls, controls[::-1] + tokens * 0.05])
    pooled = pooled_cis(base, tops, draws, tokens, idx, seed_idx, level=0.8)
    top_b = [
        np.mean([ppl_of(tops[s], r) - ppl_of(base, r) for s in seeds])
        for r, seeds in zip(idx, seed_idx, strict=True)
    ]
    assert pooled.top == pytest.approx(quantiles(top_b))


def test_agreement_overlap_is_shared_over_the_larger_set():
    from cwa.core.stats import agreement

    bulk = np.array([1.0, 2.0, 3.0])
    unequal = agreement({1, 2, 3, 4}, {3, 4}, bulk, bulk)
    assert unequal["overlap"] == 0.5 and unequal["jaccard"] == 0.5
    assert unequal["spearman_pool"] == 1.0
    assert agreement({4, 5}, {5, 6, 7, 8}, bulk, bulk)["overlap"] == 0.25  # either side larger
    assert agreement({7}, {7}, bulk, bulk[::-1])["overlap"] == 1.0
    empty = agreement(set(), set(), bulk, bulk[::-1])
    assert empty["overlap"] == 0.0 and empty["jaccard"] == 1.0 and empty["spearman_pool"] == -1.0


def test_separation_by_hand_and_its_resampled_ratios():
    from cwa.core.stats import _ratios, separation

    assert separation(3.0, [1.0, -2.0]) == 2.0  # |−2| counts as a move of 2
    assert separation(-3.0, [0.0, 0.0]) == -math.inf
    assert math.isnan(separation(0.0, [0.0]))
    assert math.isnan(separation(1.0, []))
    got = _ratios(np.array([3.0, -2.0, 0.0, 4.0]), np.array([1.5, 0.0, 0.0, 0.0]))
    assert got[0] == 2.0 and got[1] == -math.inf and math.isnan(got[2]) and got[3] == math.inf


def test_the_statistics_raise_no_warning_on_the_edge_cases_they_handle():
    """Perplexities past float range, controls that never move, infinite resamples and constant
    samples are handled cases: none of them may leak a RuntimeWarning into a stage's log."""
    import warnings

    from cwa.core.stats import leave_one_out, relative_gain_ci, two_segment_fit

    tokens = np.array([1, 1, 1])
    huge = np.array([800.0, 900.0, 1000.0])  # exp overflows
    base = np.array([2.0, 2.5, 3.0])
    idx = bootstrap_indices(3, 30, 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert paired_delta_ci(base, huge, tokens, idx) == (math.inf, math.inf)
        assert all(math.isnan(v) for v in relative_gain_ci(huge, huge, tokens, idx))
        assert relative_gain_ci(huge, base, tokens, idx) == (-math.inf, -math.inf)
        still = separation_ci(base, base + 1, np.stack([base, base]), tokens, idx)
        assert still == (math.inf, math.inf)
        assert percentile_interval(np.array([-np.inf, 1.0, np.inf])) == pytest.approx(
            (-math.inf, math.inf)
        )
        assert math.isnan(spearman(np.ones(4), np.arange(4.0)))
        assert paired_test(np.zeros(4), 100, 0).effect_size == 0.0
        assert np.isnan(leave_one_out(np.ones(2), np.ones(2))).all()
        x = np.geomspace(1, 1e4, 5)
        assert two_segment_fit(x, x).p_value == 1.0
