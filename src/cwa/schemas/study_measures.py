"""The `study_measures` table."""

from cwa.schemas import FLOAT, STR, Column, Schema

STUDY_MEASURES_TABLE = Schema(
    "study_measures",
    "artifacts/study/measures.parquet",
    "The study as a tidy table: one row per member and measure (every numeric column of "
    "`study_members`, and each part's top-k and score shares as `topk_share:<part>` and "
    "`score_share:<part>`, a part being a component class or a third of the depth, "
    "`depth:early`, `depth:middle`, `depth:late`).",
    (
        Column("label", STR, "study member"),
        Column("measure", STR, "what was measured"),
        Column("value", FLOAT, "its value"),
    ),
    ("label", "measure"),
)
