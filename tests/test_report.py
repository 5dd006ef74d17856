"""The report: section functions over typed inputs, the headline and figures before the tables."""

import dataclasses
import math
from pathlib import Path

import polars as pl
import pytest

from cwa.config.params import load_params
from cwa.report import plots
from cwa.report.sections import (
    ReportInputs,
    clusters_section,
    comparisons_section,
    correlation_section,
    criteria_section,
    figures_section,
    finetune_section,
    headline_section,
    render_markdown,
    run_summary,
    stability_section,
    superweight_section,
    tasks_section,
    units_section,
)

ROOT = Path(__file__).resolve().parents[1]


SOURCE = {
    "key": "eval_data",
    "spec": "builtin:kjv",
    "kind": "builtin",
    "sha256": "ab" * 32,
    "bytes": 1000,
    "documents": 10,
    "characters": 990,
    "part": "eval split",
}


FITS = pl.DataFrame(
    {
        "statistic": ["top_share", "separation"],
        "slope": [0.31, -0.2],
        "r2": [0.97, 0.5],
        "loo_mean_error": [0.08, None],
        "loo_max_error": [0.15, None],
        "breakpoint": [None, None],
        "slope_below": [None, None],
        "slope_above": [None, None],
        "breakpoint_p": [None, None],
        "note": ["3 models: a two-segment fit needs 5 models", "2 models: leave-one-out needs 3"],
    }
)
SHARES = pl.DataFrame(
    {
        "label": ["a", "a", "b", "b"],
        "axis": ["component"] * 4,
        "group": ["attn_q", "mlp_down", "attn_q", "mlp_down"],
        "depth": [None] * 4,
        "topk_share": [0.25, 0.75, 0.5, 0.5],
        "score_share": [0.4, 0.6, 0.5, 0.5],
    }
)


STUDY = pl.DataFrame(
    {
        "label": ["a", "b", "b-60"],
        "kind": ["dense", "moe", "dense"],
        "tuning": ["base"] * 3,
        "step": [480, None, 60],
        "final": ["yes", "yes", "no"],
        **{c: [1.0, 2.0, 3.0] for c in ("params", "active_params", "baseline_ppl", "top_share")},
        **{c: [1.0, 2.0, 3.0] for c in ("max_over_median", "delta_ppl_top", "delta_ppl_top_rel")},
        "separation": [5.0, 6.0, 7.0],
        "superweight_candidates": [1, 0, 1],
    }
)
GROUPS = pl.DataFrame(
    {
        "tag": ["kind"],
        "share": ["score_share"],
        "part": ["attn_q"],
        "group_a": ["dense"],
        "group_b": ["moe"],
        "members_a": [1],
        "members_b": [1],
        "mean_a": [0.4],
        "mean_b": [0.5],
        "difference": [-0.1],
        "p_value": [None],
        "note": ["dense has 1 member; moe has 1 member: a test needs 2 in each group"],
    }
)
EXPERTS = pl.DataFrame(
    {
        "label": ["b"] * 2,
        "layer": [0, 0],
        "expert": [0, 1],
        "score_share": [0.1, 0.2],
        "tokens": [5, 195],
        "token_share": [0.025, 0.975],
        "few_tokens": [True, False],
    }
)
DRIFT = pl.DataFrame(
    {
        "model": ["builtin:b"] * 3,
        "label": ["b-60", "b-120", "b-120"],
        "step": [60, 120, 120],
        "against": ["last", "last", "previous"],
        "other": ["b", "b", "b-60"],
        "other_step": [480, 480, 60],
        "k": [100] * 3,
        "jaccard": [0.2, 0.6, 0.3],
        "spearman": [0.5, 0.9, 0.6],
    }
)


PRUNING = pl.DataFrame(
    {
        "pattern": ["unstructured"] * 3,
        "allocation": ["uniform"] * 3,
        "target": [0.5] * 3,
        "method": ["sparsegpt", "grad_x_weight", "magnitude"],
        "ppl": [48.2, 55.0, 49.1],
        "gain vs magnitude": [0.019, -0.12, 0.0],
        "CI low ": [0.014, -0.13, 0.0],
        "CI high ": [0.023, -0.11, 0.0],
    }
)


FINETUNE = pl.DataFrame(
    {
        "arm": [
            "full",
            "freeze_top",
            "freeze_random",
            "only_top",
            "only_random",
            "freeze_top",
            "only_top",
        ],
        "against": ["", "", "", "", "", "freeze_random", "only_random"],
        "seeds": [3] * 7,
        "gain": [44.8, 44.8, 44.8, 3.99, 1.30, 0.0166, 2.69],
        "gain_ci_low": [43.9, 43.9, 43.9, 3.86, 0.92, -0.0177, 2.30],
        "gain_ci_high": [45.7, 45.7, 45.7, 4.12, 1.67, 0.0508, 3.08],
        "p_gain": [math.nan] * 5 + [0.173, 0.00114],
        "forgetting": [9.02, 8.97, 9.01, 0.0846, 0.0087, -0.0368, 0.0759],
        "forgetting_ci_low": [8.37, 8.31, 8.35, 0.0661, -0.0118, -0.0498, 0.0372],
        "forgetting_ci_high": [9.67, 9.63, 9.66, 0.103, 0.0292, -0.0238, 0.115],
        "p_forgetting": [math.nan] * 5 + [0.00669, 0.0137],
    }
)

PAIRS = pl.DataFrame(
    {
        "level": ["layer", "component", "component"],
        "a": ["L0", "L0 mlp_gate", "L0 attn_q"],
        "b": ["L1", "L0 mlp_up", "L1 attn_q"],
        "windows": [64] * 3,
        **{c: [0.9, 0.99, 0.5] for c in ("r", "r_ci_low", "r_ci_high", "r_q")},
        "share_r": [-0.2, 0.9, -0.95],
        **{c: [0.1] * 3 for c in ("share_r_ci_low", "share_r_ci_high", "share_r_q")},
    }
)

UNITS = pl.DataFrame(
    {
        "kind": ["neuron", "neuron", "head"],
        "unit": ["", "layer 0, neuron 221", "layer 3, head 3"],
        "rank": [-1, 0, 0],
        "perturbation": ["zero"] * 3,
        "setting": [""] * 3,
        "k": [5, 1, 1],
        "score": [None, 0.0148, 0.0999],
        "weights": [None, 384, 16384],
        **{c: [0.7, 0.494, 1.63] for c in ("top_delta_ppl", "ci_low", "ci_high")},
        "control_delta_ppl": [0.11, 0.0044, 0.21],
        **{c: [6.3, 82.9, 7.83] for c in ("separation", "separation_ci_low", "separation_ci_high")},
        "q_value": [0.0018] * 3,
    }
)


CLUSTERS = pl.DataFrame(
    {
        "method": ["kmeans", "kmeans", "dbscan", "dbscan"],
        "cluster": [0, 1, -1, 0],
        "size": [15000, 6000, 100, 20900],
        "top_share": [0.9, 0.1, 0.0, 1.0],
    }
)
CLUSTER_EFFECTS = pl.DataFrame(
    {
        "cluster": [0, 1],
        "size": [15000, 6000],
        "k": [100, 100],
        **{c: [0.2, 0.01] for c in ("top_delta_ppl", "ci_low", "ci_high", "control_delta_ppl")},
        **{c: [20.0, 1.0] for c in ("separation", "separation_ci_low", "separation_ci_high")},
        "q_value": [0.002, 0.5],
    }
)


LAYER_SWEEP = pl.DataFrame(
    {
        "layer": [0, 1, 2],
        "perturbation": ["scale"] * 3,
        "setting": ["α=2"] * 3,
        "k": [100] * 3,
        "weights": [100] * 3,
        "delta_ppl": [0.5, 0.02, -0.001],
        "ci_low": [0.3, 0.01, -0.002],
        "ci_high": [0.7, 0.03, 0.0],
        "draws": [2] * 3,
        "control_delta_ppl": [0.001, 0.0005, 0.0001],
        "separation": [500.0, 40.0, -10.0],
        "separation_ci_low": [300.0, 20.0, -20.0],
        "separation_ci_high": [700.0, 60.0, 0.0],
        "p_value": [0.001, 0.01, 0.9],
        "diverged": [False] * 3,
    }
)


def inputs(**changes) -> ReportInputs:
    one = pl.DataFrame({"a": [1.0]})
    values = {
        "params": load_params(ROOT / "params.yaml"),
        "metrics": {
            "headline_k": 100,
            "baseline_ppl": 46.774,
            "delta_ppl_top": 0.19162,
            "delta_ppl_top_ci_low": 0.105,
            "delta_ppl_top_ci_high": 0.31,
            "delta_ppl_random": 0.0036674,
            "delta_ppl_bottom": -8.5e-05,
            "separation": 37.923,
            "separation_ci_low": 16.05,
            "separation_ci_high": 93.03,
            "p_value": 0.000999,
            "q_value": 0.0021,
            "comparisons": 130,
            "comparisons_fdr05": 57,
            "kl_top": 0.0042,
            "kl_random": 6.1e-05,
            "top1_same_top": 0.981,
            "delta_ppl_magnitude": 0.012,
            "q_value_magnitude": 0.004,
            "jaccard_top": 0.101,
            "seeds_perturbed": 3,
            "seeds_fdr05": 2.0,
        },
        "baseline": pl.DataFrame({"texts": [64], "tokens": [8128], "params": [2098304]}),
        "pool_weights": 1048576,
        "pool_tensors": 28,
        "top": one,
        "headline": pl.DataFrame({"perturbation": ["zero"], "ΔPPL": [0.19162]}),
        "seeds": pl.DataFrame({"seed": ["0", "pooled"], "ΔPPL top": [0.2, 0.19162]}),
        "comparisons": pl.DataFrame({"p perm.": [0.5], "p floor": [0.001]}),
        "tasks": one,
        "effects": one,
        "faults": one,
        "pruning": PRUNING,
        "prune_tasks": pl.DataFrame(),
        "finetune": FINETUNE,
        "correlation": PAIRS,
        "units": UNITS,
        "clusters": CLUSTERS,
        "cluster_effects": CLUSTER_EFFECTS,
        "perturbation_docs": [("zero", "w → 0")],
        "stability": one,
        "agreement": one,
        "modes": one,
        "layer_sweep": LAYER_SWEEP.drop("k", "diverged"),
        "spikes": pl.DataFrame({"candidate": [True, False, False]}),
        "study": STUDY,
        "fits": FITS,
        "shares": SHARES,
        "groups": GROUPS,
        "experts": EXPERTS,
        "drift": DRIFT,
        "has_training": True,
        "setting": {"zero": ""},
        "criteria": pl.DataFrame(
            {
                "criterion": ["seed_jaccard", "separation", "pruning_gain"],
                "status": ["not met", "met", "not measured"],
            }
        ),
        "sources": (SOURCE | {"key": "calib_data", "part": "calib split"}, SOURCE),
    }
    return ReportInputs(**(values | changes))


def test_headline_states_the_numbers_of_metrics_json():
    text = "\n".join(headline_section(inputs()))
    assert "Pooled over the rankings of 3 calibration seeds" in text
    assert (
        "changes perplexity by **0.192** (95% CI 0.105 – 0.31, resampling seeds and windows;"
        in text
    )
    assert "baseline 46.77)" in text
    assert "on its own, 2 of 3 seeds pass at q < 0.05" in text
    assert "| pooled | 0.192 |" in text  # the seed table
    assert "**37.9** (95% CI 16.1 – 93)" in text
    assert (
        "p-value of top > random: 0.000999, Benjamini-Hochberg q-value over the run's 130" in text
    )
    assert "comparisons **0.0021**: significant at a 5% false discovery rate" in text
    assert "mean KL of **0.0042** nats per token for the top set against 6.1e-05" in text
    assert "98.1% of top-1 predictions stay the same" in text
    assert "matched in magnitude (magnitude_matched_k) ΔPPL is 0.012, and the top set's q" in text
    assert "| zero | 0.192 |" in text  # the headline table
    no_test = "\n".join(headline_section(inputs(metrics=inputs().metrics | {"q_value": math.nan})))
    assert "**–**: no test" in no_test
    top_k = inputs(
        params=dataclasses.replace(
            inputs().params, registered=inputs().params.registered | {"kl_topk": 64}
        )
    )
    assert (
        "mean KL (over the unperturbed model's top 64 tokens and the rest as one outcome: a lower "
        "bound of the full-vocabulary KL) of **0.0042** nats" in "\n".join(headline_section(top_k))
    )


def test_the_comparisons_say_how_many_sit_at_the_permutation_floor():
    table = pl.DataFrame(
        {
            "control": ["random_k", "bottom_k"],
            "p perm.": [0.000999, 0.31],
            "q (BH)": [0.002, 0.4],
            "p floor": [1 / 1001, 1 / 1001],
        }
    )
    text = "\n".join(comparisons_section(inputs(comparisons=table)))
    assert "all 130 comparisons of the run (each seed's and the pooled ones" in text
    assert "57 have q < 0.05" in text
    assert "1 of these p-values sit at the permutation test's floor (0.000999" in text
    assert "p floor" not in text  # the note says it; the table does not repeat it


def test_figures_come_before_every_long_table():
    text = render_markdown(inputs())
    headline, figures, tables = (text.index(h) for h in ("## Headline", "## Figures", "## Tables"))
    assert headline < figures < tables
    assert text.index("![") > headline and text.rindex("![") < tables  # every figure up front
    assert text.rindex("### Every experiment") > text.index("### Top set against the controls")


def test_the_criteria_section_names_what_was_met_failed_and_not_measured():
    text = "\n".join(criteria_section(inputs()))
    assert "**1 of 2 measured are met** (separation); not met: seed_jaccard; not measured: " in text
    assert "pruning_gain" in text and "| seed_jaccard | not met |" in text


def test_training_figure_only_when_there_are_training_logs():
    assert "training.png" in "\n".join(figures_section(inputs()))
    assert "training.png" not in "\n".join(figures_section(inputs(has_training=False)))


def test_sections_say_what_they_counted():
    assert "**1 of 3** down projections hold a candidate" in "\n".join(
        superweight_section(inputs())
    )
    assert "kjv_lambada, kjv_hellaswag: 128 items each" in "\n".join(tasks_section(inputs()))


def test_scaling_verdict_says_what_the_fits_support_and_what_they_cannot():
    from cwa.report.sections import scaling_verdict

    text = "\n".join(scaling_verdict(FITS))
    assert "top_share: slope 0.31 (R² 0.97)" in text
    assert "misses by 8% on average, 15% at most: prediction within 20% holds" in text
    assert "3 models: a two-segment fit needs 5 models." in text
    assert "- separation: 2 models: leave-one-out needs 3." in text


def test_architecture_section_puts_models_side_by_side():
    from cwa.report.sections import architecture_section

    text = "\n".join(architecture_section(inputs()))
    assert "| component | a | b |" in text and "| mlp_down | 0.75 | 0.5 |" in text
    assert "moe has 1 member: a test needs 2 in each group." in text
    assert "1 of 2 experts saw fewer than a tenth of a uniform share" in text
    assert "Spearman ρ of score share against token share over the experts: 1." in text
    # b-120 reaches 0.6 with the last step, b-60 only 0.2
    assert "`builtin:b`: from step 120 on, the top-100 shares Jaccard ≥ 0.5 with the last" in text
    bare = inputs(experts=EXPERTS.clear(), drift=DRIFT.clear(), groups=GROUPS.clear())
    text = "\n".join(architecture_section(bare))
    assert "experts" not in text and "Checkpoints" not in text and "Group comparison" not in text


def test_scaling_metrics_are_the_top_share_fit():
    from cwa.report.sections import scaling_metrics

    m = scaling_metrics(FITS)
    assert m == {"scaling_exponent": 0.31, "scaling_r2": 0.97, "scaling_loo_error": 0.08}


def test_no_downstream_tasks_is_said_not_tabled():
    from cwa.report.sections import tasks_section

    empty = pl.DataFrame(schema={"task": pl.String})
    assert "None were run (`tasks` and `lm_eval_tasks` are empty)." in tasks_section(
        inputs(tasks=empty)
    )


def test_no_controls_is_said_not_tabled():
    from cwa.report.sections import comparisons_section

    empty = pl.DataFrame(schema={"control": pl.String})
    text = "\n".join(comparisons_section(inputs(comparisons=empty)))
    assert "No controls were run (`controls` is empty)" in text


def test_seed_table_lists_each_seed_then_the_pooled_row():
    from cwa.report.sections import seed_table

    effects = pl.DataFrame(
        {
            "seed": [0, 0, 0, 1, 1, 1],
            "perturbation": ["zero"] * 6,
            "setting": [""] * 6,
            "k": [100] * 6,
            "mask_ratio": [1.0] * 6,
            "selection": ["top", "random_k", "random_k"] * 2,
            "delta_ppl": [0.3, 0.01, 0.03, 0.1, 0.02, 0.0],
            "ci_low": [0.2, 0.0, 0.0, 0.05, 0.0, 0.0],
            "ci_high": [0.4, 0.1, 0.1, 0.15, 0.1, 0.1],
        }
    )
    tests = {
        "perturbation": ["zero"],
        "setting": [""],
        "k": [100],
        "mask_ratio": [1.0],
        "control": ["random_k"],
        "separation": [15.0],
        "separation_ci_low": [5.0],
        "separation_ci_high": [30.0],
        "q_value": [0.01],
    }
    per_seed = pl.concat(
        [pl.DataFrame(tests | {"seed": [s], "separation": [v]}) for s, v in ((0, 15.0), (1, 10.0))]
    )
    pooled = pl.DataFrame(tests | {"separation": [12.5], "top_ci_low": [0.1], "top_ci_high": [0.3]})
    table = seed_table(effects, per_seed, pooled, 100, {"zero": ""})
    assert table["seed"].to_list() == ["0", "1", "pooled"]
    assert table["ΔPPL top"].to_list() == pytest.approx([0.3, 0.1, 0.2])
    assert table["ΔPPL random_k"].to_list() == pytest.approx([0.02, 0.01, 0.015])
    assert table["CI low"].to_list() == [0.2, 0.05, 0.1]
    assert table["separation"].to_list() == [15.0, 10.0, 12.5]
    assert math.isnan(table["q (top > magnitude_matched_k)"][0])  # that control did not run


def test_pruning_section_names_the_best_method_and_the_metrics_gain():
    from cwa.report.sections import pruning_section

    text = "\n".join(pruning_section(inputs()))
    assert "At 50%: sparsegpt prunes best (PPL 48.2); grad_x_weight (the ranking's metric)" in text
    assert "a gain over magnitude of -0.12 (95% CI -0.13 – -0.11)" in text


def test_one_finetune_seed_says_why_there_is_no_interval():
    one = inputs(params=dataclasses.replace(load_params(ROOT / "params.yaml"), finetune_seeds=(0,)))
    assert "no interval and no p-value" in "\n".join(finetune_section(one))
    assert "no interval and no p-value" not in "\n".join(finetune_section(inputs()))


def test_finetune_section_states_both_contrasts():
    text = "\n".join(finetune_section(inputs()))
    assert (
        "Protection: freezing the top 1,000 changed forgetting by -0.0368 PPL (95% CI -0.0498 – "
        "-0.0238, p 0.00669) against freezing a random 1,000, of 9.02 forgotten" in text
    )
    assert "training only the top 1,000 gained 3.99 PPL on the new text against 1.3" in text
    assert "(difference 2.69, 95% CI 2.3 – 3.08, p 0.00114), and forgot 0.0846" in text
    assert finetune_section(inputs(finetune=FINETUNE.head(0))) == []
    assert "Not run" not in text


def test_finetune_section_names_the_arms_left_out_and_keeps_the_contrast_that_ran():
    sparse = FINETUNE.filter(pl.col("arm").is_in(["only_top", "only_random"]))
    text = "\n".join(finetune_section(inputs(finetune=sparse)))
    assert "Not run (left out of `finetune_arms`): full, freeze_top, freeze_random." in text
    assert "Protection:" not in text and "Sparse fine-tuning: training only the top" in text


def test_units_section_tables_each_kind_alone_and_together():
    text = "\n".join(units_section(inputs()))
    assert "Top neurons, each zeroed alone:" in text and "Top heads, each zeroed alone:" in text
    assert "| 0 | layer 0, neuron 221 | 0.0148 | 384 | 0.494 |" in text
    assert "The top neurons together:" in text and "| zero | 5 | 0.7 | 0.11 | 6.3 |" in text


def test_correlation_section_ranks_component_pairs_by_share_r():
    text = "\n".join(correlation_section(inputs()))
    assert "(64 windows of the first seed's draw)" in text
    strongest = text.split("largest |share r|:")[1]
    assert strongest.index("L0 attn_q") < strongest.index("L0 mlp_gate")  # |−0.95| > 0.9


def test_clusters_section_says_k_noise_and_where_the_top_set_falls():
    text = "\n".join(clusters_section(inputs()))
    assert "K-means with k = 2 (the best silhouette over 2..8)" in text
    assert "DBSCAN found 1 cluster and left 0.5% as noise" in text
    assert "| 0 | 15000 | 0.9 |" in text and "| 0 | 15000 | 100 | 0.2 |" in text


def test_one_seed_says_stability_is_not_measured_and_draws_no_empty_figure(tmp_path):
    """`seeds: [0]` leaves the stability table empty: the report says why there is no figure
    (an empty log-scaled plot raised "Data cannot be log-scaled" before), with two seeds it
    shows the figure."""
    empty = pl.DataFrame(
        schema={"k": pl.Int64, "jaccard": pl.Float64, "spearman": pl.Float64,
                "spearman_pool": pl.Float64}
    )  # fmt: skip
    single = inputs(stability=empty)
    figures = "\n".join(figures_section(single))
    assert "stability.png" not in figures and "stability across seeds is not measured" in figures
    assert "two or more seeds" in "\n".join(stability_section(single))
    assert "stability.png" in "\n".join(figures_section(inputs()))
    plots.stability(empty, tmp_path / "stability.png")
    assert not (tmp_path / "stability.png").exists()
    pairs = pl.DataFrame(
        {"k": [10, 100], "jaccard": [0.2, 0.4], "spearman": [0.5, 0.6], "spearman_pool": [0.7, 0.7]}
    )
    plots.stability(pairs, tmp_path / "stability.png")
    assert (tmp_path / "stability.png").stat().st_size > 0
    assert "| 100 | 0.4 |" in "\n".join(stability_section(inputs(stability=pairs)))


def test_run_summary_counts_experiments_and_names_the_largest_finite_damage():
    def row(perturbation, setting, selection, k, delta, seed=0, ratio=1.0):
        return {
            "perturbation": perturbation,
            "setting": setting,
            "selection": selection,
            "k": k,
            "mask_ratio": ratio,
            "seed": seed,
            "draw": 0,
            "delta_ppl": delta,
        }

    effects = pl.DataFrame(
        [
            row("zero", "", "top", 10, 0.5),
            row("bit_flip", "bit 30", "top", 10, math.inf),  # diverged: counted apart
            row("scale", "α=10", "top", 100, 29.9, seed=1),
            row("scale", "α=10", "top", 100, 29.9, seed=0, ratio=0.5),  # a tie: seed 0 first
            row("sign_flip", "", "random_k", 100, 3.0),
        ]
    )
    baseline = pl.DataFrame({"params": [1_574_016]})
    keys, cause = run_summary(baseline, effects)
    assert keys == {
        "model_params": 1_574_016,
        "experiments": 5,
        "experiments_diverged": 1,
        "largest_delta_ppl": 29.9,
    }
    assert cause == "scale α=10 on top, k = 100, 0.5 of the set, seed 0"
    keys, cause = run_summary(baseline, effects.filter(pl.col("delta_ppl").is_infinite()))
    assert math.isnan(keys["largest_delta_ppl"]) and cause == ""


def test_the_effects_figure_draws_every_selection_that_ran():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cwa.report import plots

    selections = ["top", "random_k", "magnitude_matched_k", "bottom_k", "some_new_control"]
    rows = pl.DataFrame(
        {
            "selection": [s for s in selections for _ in (10, 100)],
            "k": [k for _ in selections for k in (10, 100)],
            "delta_ppl": [0.1, 0.2] * len(selections),
            "ci_low": [0.05, 0.1] * len(selections),
            "ci_high": [0.15, 0.3] * len(selections),
            "diverged": [False, False] * len(selections),
        }
    )
    fig, ax = plt.subplots()
    plots._selection_lines(ax, rows, "k")
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    plt.close(fig)
    assert labels == ["top", "random_k", "magnitude_matched_k", "bottom_k", "some_new_control"]


def test_the_tasks_figure_has_a_panel_per_task_and_a_bar_per_selection_and_experiment(
    monkeypatch,
):
    from matplotlib.container import BarContainer

    from cwa.report import plots

    saved = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: saved.append(fig))
    rows = [
        {"task": task, "perturbation": pert, "setting": setting, "selection": sel,
         "Δacc": d, "CI low": d - 0.01, "CI high": d + 0.01}
        for task in ("kjv_lambada", "kjv_hellaswag")
        for pert, setting, d in (("zero", "", -0.1), ("scale", "α=2", -0.2))
        for sel in ("top", "random_k", "bottom_k")
    ] + [{"task": "kjv_lambada", "perturbation": "none", "setting": "", "selection": "none",
          "Δacc": 0.0, "CI low": 0.0, "CI high": 0.0}]  # fmt: skip
    plots.tasks(pl.DataFrame(rows), "unused.png")
    (fig,) = saved
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == ["kjv_hellaswag", "kjv_lambada"]
    for ax in panels:
        bars = [c for c in ax.containers if isinstance(c, BarContainer)]
        assert [c.get_label() for c in bars] == ["top", "random_k", "bottom_k"]
        assert [len(c.patches) for c in bars] == [2, 2, 2]  # zero, scale α=2
        assert [t.get_text() for t in ax.get_xticklabels()] == ["zero", "scale α=2"]
        heights = sorted(p.get_height() for c in bars for p in c.patches)
        assert heights == pytest.approx([-0.2] * 3 + [-0.1] * 3)


def test_the_layer_sweep_section_and_figure_show_every_block(monkeypatch):
    from cwa.report import plots
    from cwa.report.sections import layer_sweep_section

    text = "\n".join(layer_sweep_section(inputs()))
    assert "`scale α=2` on the top-" in text
    assert "| 500 |" in text and "| -10 |" in text  # every block's separation, in order
    assert text.index("| 500 |") < text.index("| 40 |") < text.index("| -10 |")
    saved = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: saved.append(fig))
    plots.layer_sweep(LAYER_SWEEP, "unused.png")
    (ax,) = saved[0].axes
    top, control = ax.get_lines()[0], ax.get_lines()[-1]
    assert list(top.get_xdata()) == [0, 1, 2]
    assert list(top.get_ydata()) == [0.5, 0.02, -0.001]
    assert list(control.get_ydata()) == [0.001, 0.0005, 0.0001]
    assert ax.get_title() == "One block at a time: scale α=2"
