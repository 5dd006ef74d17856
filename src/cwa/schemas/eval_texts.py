"""The `eval_texts` table."""

from cwa.schemas import FLOAT, INT, Column, Schema
from cwa.schemas.experiment import EXPERIMENT, EXPERIMENT_ORDER

EVAL_TEXTS_TABLE = Schema(
    "eval_texts",
    "artifacts/baseline/texts.parquet, artifacts/perturb/texts.parquet",
    "Per evaluation text (window) results: the unit of every paired statistic.",
    (
        Column(
            "seed",
            INT,
            "calibration seed of the ranking perturbed; null for the unperturbed model",
        ),
        *EXPERIMENT,
        Column("text", INT, "evaluation window index"),
        Column("nll", FLOAT, "summed next-token negative log-likelihood (nats)"),
        Column("tokens", INT, "predicted tokens in the window"),
        Column("correct", INT, "tokens whose greedy prediction is right"),
    ),
    ("seed", *EXPERIMENT_ORDER, "text"),
)
