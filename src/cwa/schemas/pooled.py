"""The `pooled` table."""

from cwa.schemas import FLOAT, INT, STR, Column, Schema
from cwa.schemas.experiment import EXPERIMENT

POOLED_TABLE = Schema(
    "pooled",
    "artifacts/perturb/pooled.parquet",
    "The top set against each control kind pooled over every seed in `seeds`: one row per "
    "perturbation setting, k, mask ratio and control. ΔPPLs are means over seeds (and draws); "
    "the test is on per-text differences d averaged over seeds; the CIs come from a two-way "
    "bootstrap that resamples seeds and texts independently (docs/science.md). The headline "
    "numbers in metrics.json are these rows'.",
    (
        Column("metric", STR, "sensitivity metric the selections came from"),
        Column("mode", STR, "ranking mode"),
        *(c for c in EXPERIMENT if c.name not in ("selection", "draw")),
        Column("control", STR, "`random_k`, `magnitude_matched_k` or `bottom_k`"),
        Column("seeds", INT, "seeds pooled (one top set and its control draws each)"),
        Column("draws", INT, "control draws per seed"),
        Column("top_delta_ppl", FLOAT, "mean over seeds of the top set's ΔPPL"),
        Column("top_ci_low", FLOAT, "2.5% two-way bootstrap quantile of top_delta_ppl"),
        Column("top_ci_high", FLOAT, "97.5% two-way bootstrap quantile of top_delta_ppl"),
        Column("control_delta_ppl", FLOAT, "mean over seeds and draws of the control's ΔPPL"),
        Column("control_ci_low", FLOAT, "2.5% two-way bootstrap quantile of control_delta_ppl"),
        Column("control_ci_high", FLOAT, "97.5% two-way bootstrap quantile of control_delta_ppl"),
        Column(
            "separation",
            FLOAT,
            "top_delta_ppl / mean over seeds and draws |control ΔPPL| (NaN: diverged)",
        ),
        Column("separation_ci_low", FLOAT, "2.5% two-way bootstrap quantile of the separation"),
        Column("separation_ci_high", FLOAT, "97.5% two-way bootstrap quantile"),
        Column("effect_size", FLOAT, "Cohen's d_z = mean(d) / sd(d), d averaged over seeds"),
        Column(
            "p_value",
            FLOAT,
            "one-sided sign-flip permutation test over texts of mean(d) > 0, d averaged over "
            "seeds (conditional on these seeds: the CIs carry the seed-to-seed spread)",
        ),
        Column("p_floor", FLOAT, "the smallest p_value the test can return"),
        Column(
            "q_value",
            FLOAT,
            "Benjamini-Hochberg q-value over every comparison of the run (each seed's and the "
            "pooled ones)",
        ),
        Column("p_wilcoxon", FLOAT, "one-sided Wilcoxon signed-rank test of d > 0"),
        Column(
            "seeds_fdr05", INT, "seeds whose own comparison (schema `comparisons`) has q < 0.05"
        ),
        Column("top_diverged", INT, "seeds whose top-set experiment diverged"),
        Column("control_diverged", INT, "control draws that diverged, over every seed"),
    ),
    ("perturbation", "strength", "setting", "k", "mask_ratio", "control"),
)
