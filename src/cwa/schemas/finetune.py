"""The `finetune` table."""

from cwa.schemas import FLOAT, INT, STR, Column, Schema

FINETUNE_TABLE = Schema(
    "finetune",
    "artifacts/finetune/summary.parquet",
    "The fine-tuning arms over seeds: one row per arm (`against` empty), then one per contrast "
    "(the arm minus `against`, paired by seed). CIs: Student's t over the fine-tuning seeds "
    "(NaN with one seed); the windows are fixed, so they state the spread of fine-tuning runs, "
    "not of the evaluation sample.",
    (
        Column("arm", STR, "fine-tuning arm (see `finetune_runs`)"),
        Column("against", STR, "the contrast's other arm; empty for an arm's own row"),
        Column("seeds", INT, "fine-tuning seeds"),
        Column("gain", FLOAT, "mean gain (PPL points on the new text), or mean paired difference"),
        Column("gain_ci_low", FLOAT, "95% CI of it, low"),
        Column("gain_ci_high", FLOAT, "95% CI of it, high"),
        Column("p_gain", FLOAT, "contrasts: paired t-test over seeds, two-sided (arms: NaN)"),
        Column(
            "forgetting",
            FLOAT,
            "mean forgetting (PPL points on the evaluation text), or mean paired difference",
        ),
        Column("forgetting_ci_low", FLOAT, "95% CI of it, low"),
        Column("forgetting_ci_high", FLOAT, "95% CI of it, high"),
        Column("p_forgetting", FLOAT, "contrasts: paired t-test over seeds, two-sided"),
    ),
    ("against", "arm"),
)
