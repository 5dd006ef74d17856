"""The `comparisons` table."""

from cwa.schemas import BOOL, FLOAT, INT, STR, Column, Schema
from cwa.schemas.experiment import EXPERIMENT

COMPARISONS_TABLE = Schema(
    "comparisons",
    "artifacts/perturb/comparisons.parquet",
    "The top set against each control kind, for each seed's ranking: one row per seed, "
    "perturbation setting, k, mask ratio and control. Unit of the tests: per-text differences "
    "d = ΔNLL/token(top) − mean over draws of ΔNLL/token(control), on the same windows.",
    (
        Column("metric", STR, "sensitivity metric the selection came from"),
        Column("mode", STR, "ranking mode"),
        Column("seed", INT, "calibration seed of the ranking"),
        *(c for c in EXPERIMENT if c.name not in ("selection", "draw")),
        Column("control", STR, "`random_k`, `magnitude_matched_k` or `bottom_k`"),
        Column("draws", INT, "control draws averaged"),
        Column("top_delta_ppl", FLOAT, "ΔPPL of the top set"),
        Column("control_delta_ppl", FLOAT, "ΔPPL of the control (mean over draws)"),
        Column(
            "separation",
            FLOAT,
            "top_delta_ppl / mean over draws |control ΔPPL| (NaN: diverged)",
        ),
        Column(
            "separation_ci_low",
            FLOAT,
            "2.5% paired-bootstrap quantile of the separation (texts resampled jointly)",
        ),
        Column("separation_ci_high", FLOAT, "97.5% quantile of the separation"),
        Column("effect_size", FLOAT, "Cohen's d_z = mean(d) / sd(d)"),
        Column(
            "p_value",
            FLOAT,
            "one-sided sign-flip permutation test of mean(d) > 0 (`bootstrap` resamples; "
            "exact for few texts); NaN when a side diverged",
        ),
        Column(
            "p_floor",
            FLOAT,
            "the smallest p_value the test can return (2^-n when it enumerates every sign "
            "pattern of n texts, else 1 / (`bootstrap` + 1)): a p_value there means only "
            "'at most this'",
        ),
        Column(
            "q_value",
            FLOAT,
            "Benjamini-Hochberg q-value of p_value over every comparison of the run, each "
            "seed's and the pooled ones (schema `pooled`): one family of tests; NaN where "
            "p_value is",
        ),
        Column("p_wilcoxon", FLOAT, "one-sided Wilcoxon signed-rank test of d > 0"),
        Column("top_diverged", BOOL, "the top-set experiment diverged"),
        Column("control_diverged", INT, "control draws that diverged"),
    ),
    ("seed", "perturbation", "strength", "setting", "k", "mask_ratio", "control"),
)
