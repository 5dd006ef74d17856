"""The `corpus` table."""

from cwa.schemas import INT, STR, Column, Schema

CORPUS_TABLE = Schema(
    "corpus",
    "data/corpus.parquet",
    "The built-in corpus: one row per paragraph of the King James Bible.",
    (
        Column("doc", INT, "paragraph number in reading order"),
        Column("split", STR, "`train`, `calib` or `eval` (disjoint)"),
        Column("text", STR, "paragraph text, translators' brackets removed"),
    ),
    ("doc",),
)
