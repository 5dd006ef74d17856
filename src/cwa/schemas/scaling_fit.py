"""The `scaling_fit` table."""

from cwa.schemas import FLOAT, INT, STR, Column, Schema

SCALING_FIT_TABLE = Schema(
    "scaling_fit",
    "artifacts/scaling/fit.parquet",
    "Power law statistic = a · params^slope, fitted by least squares in log-log space.",
    (
        Column("statistic", STR, "column of the scaling table that was fitted"),
        Column("slope", FLOAT, "exponent"),
        Column("intercept", FLOAT, "log10 a"),
        Column("r2", FLOAT, "coefficient of determination in log-log space"),
        Column("slope_ci_low", FLOAT, "95% CI of the slope (t distribution, n − 2 dof)"),
        Column("slope_ci_high", FLOAT, "upper end of that CI"),
        Column("models", INT, "points in the fit"),
    ),
    ("statistic",),
)
