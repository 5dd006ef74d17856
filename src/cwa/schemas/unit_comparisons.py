"""The `unit_comparisons` table."""

from cwa.schemas import FLOAT, INT, STR, Column, Schema

UNIT_COMPARISONS_TABLE = Schema(
    "unit_comparisons",
    "artifacts/units/comparisons.parquet",
    "Top units against random units matched per layer, per perturbation: the statistics of "
    "`comparisons` (separation with its joint bootstrap CI, one-sided permutation test over "
    "windows, effect size d_z), q-values by Benjamini-Hochberg over this table.",
    (
        Column("kind", STR, "unit kind"),
        Column("unit", STR, "the single unit's label; empty for a top-k set"),
        Column("rank", INT, "the single unit's rank; -1 for a top-k set"),
        Column("perturbation", STR, "perturbation name"),
        Column("setting", STR, "its strength as a label"),
        Column("k", INT, "units in the set"),
        Column("control", STR, "`random_k`"),
        Column("draws", INT, "random sets"),
        Column("top_delta_ppl", FLOAT, "ΔPPL of the top units"),
        Column("control_delta_ppl", FLOAT, "mean ΔPPL of the random sets"),
        Column("separation", FLOAT, "top ΔPPL / mean |random ΔPPL|"),
        Column("separation_ci_low", FLOAT, "95% CI of separation, low"),
        Column("separation_ci_high", FLOAT, "95% CI of separation, high"),
        Column("effect_size", FLOAT, "d_z of the per-window differences"),
        Column("p_value", FLOAT, "one-sided permutation p, top > random"),
        Column("q_value", FLOAT, "Benjamini-Hochberg q over this table"),
    ),
    ("kind", "rank", "k", "perturbation", "setting"),
)
