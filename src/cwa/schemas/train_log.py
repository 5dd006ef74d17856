"""The `train_log` table."""

from cwa.schemas import FLOAT, INT, STR, Column, Schema

TRAIN_LOG_TABLE = Schema(
    "train_log",
    "artifacts/train/<model>.parquet",
    "Training curve of a built-in model.",
    (
        Column("model", STR, "built-in model name"),
        Column("step", INT, "optimizer step (1-based)"),
        Column("loss", FLOAT, "training loss (mean token cross-entropy) of that step's batch"),
        Column("lr", FLOAT, "learning rate used at that step"),
    ),
    ("step",),
)
