"""The `scaling_model` table."""

from cwa.schemas import FLOAT, INT, STR, Column, Schema

SCALING_MODEL_TABLE = Schema(
    "scaling_model",
    "artifacts/scaling/models/<model>.parquet, artifacts/scaling/scaling.parquet",
    "Concentration and headline damage for each model of the built-in family.",
    (
        Column("model", STR, "built-in model name"),
        Column("params", INT, "parameter count"),
        Column("pool", INT, "weights in the ranking pool"),
        Column("metric", STR, "sensitivity metric"),
        Column("baseline_ppl", FLOAT, "perplexity of the unperturbed model"),
        Column("top_share", FLOAT, "share of the pool's total score held by its top 0.1% weights"),
        Column("max_over_median", FLOAT, "largest score / median score in the pool"),
        Column("k", INT, "size of the zeroed sets"),
        Column("delta_ppl_top", FLOAT, "ΔPPL from zeroing the global top-k"),
        Column(
            "delta_ppl_random",
            FLOAT,
            "mean ΔPPL from zeroing k random weights (matched per tensor)",
        ),
        Column("separation", FLOAT, "delta_ppl_top / mean |ΔPPL| of the random draws"),
    ),
    ("params", "model"),
)
