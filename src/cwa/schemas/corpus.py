"""The `corpus` table."""

from cwa.schemas import INT, STR, Column, Schema

CORPUS_TABLE = Schema(
    "corpus",
    "data/corpus.parquet",
    "The built-in texts: one row per paragraph of the King James Bible (splits `train`, `calib`, "
    "`eval`), then of the World English Bible (split `finetune`).",
    (
        Column("doc", INT, "paragraph number in reading order (the WEB's follow the KJV's)"),
        Column("split", STR, "`train`, `calib` or `eval` (the KJV, disjoint); `finetune` (WEB)"),
        Column("text", STR, "paragraph text, translators' brackets removed (WEB: ` written as ')"),
    ),
    ("doc",),
)
