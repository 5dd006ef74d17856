"""The `study_sample` table."""

from cwa.schemas import FLOAT, INT, STR, Column, Schema

STUDY_SAMPLE_TABLE = Schema(
    "study_sample",
    "artifacts/study/members/<label>/sample.parquet",
    "A member's |score| at a fixed uniform sample of 100,000 pool coordinates (all of them in a "
    "smaller pool; the same coordinates for every model of one shape): the drift analysis's "
    "Spearman correlation between checkpoints.",
    (
        Column("label", STR, "study member"),
        Column("tensor", STR, "parameter name"),
        Column("flat_index", INT, "index into the tensor's storage"),
        Column("score", FLOAT, "|score|"),
    ),
    ("label", "tensor", "flat_index"),
)
