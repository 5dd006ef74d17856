"""The `scaling_fit` table."""

from cwa.schemas import FLOAT, INT, STR, Column, Schema

SCALING_FIT_TABLE = Schema(
    "scaling_fit",
    "artifacts/study/fit.parquet",
    "Power law statistic = a · params^slope over the study's final dense base members, fitted by "
    "least squares in log-log space; how well it predicts a held-out member; and whether a "
    "two-segment law (a critical parameter threshold) beats it.",
    (
        Column("statistic", STR, "column of `study_members` that was fitted"),
        Column("slope", FLOAT, "exponent"),
        Column("intercept", FLOAT, "log10 a"),
        Column("r2", FLOAT, "coefficient of determination in log-log space"),
        Column("slope_ci_low", FLOAT, "95% CI of the slope (t distribution, n − 2 dof)"),
        Column("slope_ci_high", FLOAT, "upper end of that CI"),
        Column("models", INT, "points in the fit"),
        Column(
            "loo_mean_error",
            FLOAT,
            "leave-one-out: mean over models of |predicted − actual| / actual, each model "
            "predicted by the power law fitted to the others (null below 3 models)",
        ),
        Column("loo_max_error", FLOAT, "the largest of those relative errors"),
        Column(
            "breakpoint",
            FLOAT,
            "two-segment fit: the parameter count where the slope changes (a data point; null "
            "below 5 models)",
        ),
        Column("slope_below", FLOAT, "two-segment fit: slope up to the breakpoint"),
        Column("slope_above", FLOAT, "two-segment fit: slope after it"),
        Column(
            "breakpoint_p",
            FLOAT,
            "F test of the two-segment fit against one line, (2, n − 4) dof; optimistic, since "
            "the breakpoint is chosen from the data",
        ),
        Column("note", STR, "what could not be computed with this many models, or empty"),
    ),
    ("statistic",),
)
