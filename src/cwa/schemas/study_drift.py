"""The `study_drift` table."""

from cwa.schemas import FLOAT, INT, STR, Column, Schema

STUDY_DRIFT_TABLE = Schema(
    "study_drift",
    "artifacts/study/drift.parquet",
    "Checkpoints: for each model with members at two or more training steps, how much the "
    "critical set of each step shares with the previous step's and with the last step's.",
    (
        Column("model", STR, "the model whose checkpoints are compared"),
        Column("label", STR, "member at this step"),
        Column("step", INT, "its training step"),
        Column("against", STR, "`previous` (the step before) or `last` (the last step)"),
        Column("other", STR, "the member compared with"),
        Column("other_step", INT, "its step"),
        Column("k", INT, "size of the top sets (each of `topk`)"),
        Column("jaccard", FLOAT, "|A ∩ B| / |A ∪ B| of the two top-k sets"),
        Column(
            "spearman",
            FLOAT,
            "Spearman ρ of the two |score| vectors at the fixed pool sample (the same for every k)",
        ),
    ),
    ("model", "against", "k", "step"),
)
