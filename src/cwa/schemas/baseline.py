"""The `baseline` table."""

from cwa.schemas import FLOAT, INT, STR, Column, Schema

BASELINE_TABLE = Schema(
    "baseline",
    "artifacts/baseline/summary.parquet",
    "The unperturbed model on the evaluation windows.",
    (
        Column("model", STR, "model spec from params (`builtin:<name>`, hub id or directory)"),
        Column("texts", INT, "evaluation windows"),
        Column("tokens", INT, "predicted tokens in all windows"),
        Column("nll", FLOAT, "total NLL (nats)"),
        Column("ppl", FLOAT, "token-weighted perplexity exp(Σ NLL / Σ tokens)"),
        Column("accuracy", FLOAT, "greedy next-token accuracy"),
        Column("params", INT, "parameter count (tied parameters once)"),
    ),
)
