"""The `study_top` table."""

from cwa.schemas import FLOAT, INT, STR, Column, Schema

STUDY_TOP_TABLE = Schema(
    "study_top",
    "artifacts/study/members/<label>/top.parquet",
    "A member's top max(topk) pool weights by |score| (`metric`, first seed): the sets whose "
    "overlap between checkpoints the drift analysis measures.",
    (
        Column("label", STR, "study member"),
        Column("rank", INT, "0-based rank by |score|"),
        Column("tensor", STR, "parameter name"),
        Column("flat_index", INT, "index into the tensor's storage"),
        Column("score", FLOAT, "|score|"),
    ),
    ("label", "rank"),
)
