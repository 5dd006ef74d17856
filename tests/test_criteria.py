"""The success criteria: each against a hand-computed case, its threshold never softened."""

import math

import numpy as np
import polars as pl
import pytest
from scipy import stats as sps

from cwa.report import criteria


def test_seed_stability_is_the_mean_jaccard_with_the_range_over_pairs():
    stability = pl.DataFrame({"k": [100, 100, 100, 10], "jaccard": [0.3, 0.5, 0.7, 0.0]})
    check = criteria.seed_stability(stability, 100)
    assert (check.value, check.low, check.high) == pytest.approx((0.5, 0.3, 0.7))
    assert check.status == "met"  # 0.5 > 0.4
    assert criteria.seed_stability(stability, 10).status == "not met"
    assert criteria.seed_stability(stability, 1000).status == "not measured"


def test_metric_overlap_is_the_shared_fraction_of_k():
    from cwa.core.stats import agreement as agree

    # A and B of k = 10 sharing 6: |A ∪ B| = 14, so J = 6/14 and the overlap is 6/10
    both = agree(set(range(10)), set(range(4, 14)), np.arange(5.0), np.arange(5.0))
    assert both["jaccard"] == 6 / 14 and both["overlap"] == 0.6
    pair = {"metric_a": ["grad_squared"], "metric_b": ["grad_x_weight"], "k": [10]}
    agreement = pl.DataFrame(pair | {"jaccard": [6 / 14], "overlap": [0.6]})
    check = criteria.metric_overlap(agreement, 10)
    assert check.value == pytest.approx(0.6) and check.status == "not met"  # > 60% is required
    assert criteria.metric_overlap(agreement, 100).status == "not measured"


def test_concentration_is_the_99th_percentile_over_the_median():
    sample = np.concatenate([np.ones(990), np.full(10, 50.0)])  # q99 interpolates to ~1.49
    check = criteria.concentration(sample)
    assert check.value == pytest.approx(np.quantile(sample, 0.99) / 1.0)
    assert check.status == "not met"
    assert criteria.concentration(np.concatenate([np.ones(980), np.full(20, 50.0)])).met


def test_separation_needs_both_its_size_and_the_corrected_q():
    m = {"separation": 56.8, "separation_ci_low": 18.1, "separation_ci_high": 115, "q_value": 0.002}
    assert criteria.separation(m).status == "met"
    assert criteria.separation(m | {"q_value": 0.02}).status == "not met"
    assert criteria.separation(m | {"separation": 4.9}).status == "not met"
    assert criteria.separation(m | {"q_value": math.nan}).status == "not measured"


def test_dose_response_is_pages_trend_test_over_windows():
    rng = np.random.default_rng(0)
    base = rng.normal(100, 5, 12)
    rows = []
    for k, extra in ((10, 0.0), (100, 0.5), (1000, 2.0)):
        for text, nll in enumerate(base + extra + rng.normal(0, 0.3, 12)):
            rows.append(
                {
                    "perturbation": "zero",
                    "setting": "",
                    "selection": "top",
                    "mask_ratio": 1.0,
                    "k": k,
                    "text": text,
                    "nll": nll,
                }
            )
    texts = pl.DataFrame(rows)
    check = criteria.dose_response(texts, {"zero": ""})
    data = texts.pivot(on="k", index="text", values="nll").sort("text").select("10", "100", "1000")
    assert check.value == sps.page_trend_test(data.to_numpy()).pvalue
    assert check.status == "met"
    reversed_ = texts.with_columns(k=pl.col("k").replace_strict({10: 1000, 100: 100, 1000: 10}))
    assert criteria.dose_response(reversed_, {"zero": ""}).status == "not met"
    two = texts.filter(pl.col("k") != 1000)
    assert criteria.dose_response(two, {"zero": ""}).status == "not measured"


def test_scaling_criteria_read_the_fit_and_say_when_there_is_none():
    fits = pl.DataFrame(
        {"statistic": ["top_share"], "r2": [0.83], "loo_mean_error": [0.30], "loo_max_error": [0.5]}
    )
    r2, loo = criteria.scaling(fits, "top_share")
    assert (r2.status, loo.status) == ("met", "not met")  # the guide's 20% is not softened
    none = pl.DataFrame(
        {
            "statistic": ["top_share"],
            "r2": [math.nan],
            "loo_mean_error": [None],
            "loo_max_error": [None],
        }
    )
    assert {c.status for c in criteria.scaling(none, "top_share")} == {"not measured"}


def test_flat_keys_count_what_was_measured():
    checks = [
        criteria.Check("a", "", met=True),
        criteria.Check("b", "", met=False),
        criteria.pruning(pl.DataFrame(), "magnitude", 0.5),  # magnitude against itself
    ]
    keys = criteria.flat_keys(checks)
    assert keys["criterion_a"] == 1.0 and keys["criterion_b"] == 0.0
    assert math.isnan(keys["criterion_pruning_gain"])
    assert (keys["criteria_met"], keys["criteria_measured"]) == (1, 2)
    table = criteria.table(checks)
    assert table["status"].to_list() == ["met", "not met", "not measured"]


def test_pruning_reads_the_metrics_gain_over_magnitude_at_the_sparsity():
    table = pl.DataFrame(
        {
            "pattern": ["unstructured", "unstructured", "unstructured", "2:4"],
            "allocation": ["uniform"] * 4,
            "target": [0.5, 0.5, 0.3, 0.5],
            "method": ["magnitude", "obd", "obd", "obd"],
            "ppl": [60.0, 48.0, 47.0, 50.0],
            "gain_magnitude": [0.0, 0.2, 0.01, 0.1],
            "gain_magnitude_ci_low": [0.0, 0.16, 0.0, 0.05],
            "gain_magnitude_ci_high": [0.0, 0.24, 0.02, 0.15],
        }
    )
    check = criteria.pruning(table, "obd", 0.5)
    assert (check.value, check.low, check.high, check.status) == (0.2, 0.16, 0.24, "met")
    assert (
        criteria.pruning(table.with_columns(gain_magnitude=pl.lit(0.15)), "obd", 0.5).met is False
    )
    assert criteria.pruning(table, "magnitude", 0.5).status == "not measured"
    missing = criteria.pruning(table, "wanda", 0.5)
    assert missing.status == "not measured" and "needs wanda and magnitude" in missing.note
