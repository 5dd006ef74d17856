"""The `documents` table."""

from cwa.schemas import INT, STR, Column, Schema

DOCUMENTS_TABLE = Schema(
    "documents",
    "artifacts/data/{calibration,evaluation}/documents.parquet",
    "One role's text as the `sources` stage read it from `calib_data` or `eval_data`: one row "
    "per document, in source order. Beside it, `source.json` records the source (`key`, `spec`, "
    "`kind`, `sha256`, `bytes`, `documents`, `characters`, `part`).",
    (
        Column("doc", INT, "document number in source order (from 0)"),
        Column("text", STR, "the document's text, as read (a .txt paragraph, a JSONL field, ...)"),
    ),
    ("doc",),
)
