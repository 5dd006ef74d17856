"""The `effects` table."""

from cwa.schemas import BOOL, FLOAT, INT, STR, Column, Schema
from cwa.schemas.experiment import EXPERIMENT, EXPERIMENT_ORDER

EFFECTS_TABLE = Schema(
    "effects",
    "artifacts/perturb/effects.parquet",
    "One row per perturbation experiment (every seed's ranking): damage against the baseline, "
    "with a paired CI. Each experiment's touched weights are compared bit for bit after the "
    "restore and the whole sweep's by checksum; a mismatch stops the stage, so no row comes "
    "from a model left perturbed.",
    (
        Column("metric", STR, "sensitivity metric the selection came from"),
        Column("mode", STR, "ranking mode"),
        Column("seed", INT, "calibration seed of the ranking"),
        *EXPERIMENT,
        Column("weights", INT, "weights perturbed"),
        Column("ppl", FLOAT, "perplexity after the perturbation (inf when diverged)"),
        Column("delta_ppl", FLOAT, "ppl − baseline ppl"),
        Column("ci_low", FLOAT, "2.5% paired-bootstrap quantile of delta_ppl (resampling texts)"),
        Column("ci_high", FLOAT, "97.5% paired-bootstrap quantile of delta_ppl"),
        Column("rel_delta", FLOAT, "delta_ppl / baseline ppl"),
        Column("accuracy", FLOAT, "greedy next-token accuracy after the perturbation"),
        Column("delta_accuracy", FLOAT, "accuracy − baseline accuracy"),
        Column(
            "kl",
            FLOAT,
            "mean over predicted tokens of KL(p_ref ‖ p), nats: the unperturbed model's "
            "next-token distribution against the perturbed one, over the whole vocabulary",
        ),
        Column("kl_ci_low", FLOAT, "2.5% bootstrap quantile of kl (resampling texts)"),
        Column("kl_ci_high", FLOAT, "97.5% bootstrap quantile of kl"),
        Column("kl_p99", FLOAT, "99th percentile of the per-token KL over every token"),
        Column("top1_same", FLOAT, "fraction of tokens whose top-1 prediction is unchanged"),
        Column("top1_ci_low", FLOAT, "2.5% bootstrap quantile of top1_same (resampling texts)"),
        Column("top1_ci_high", FLOAT, "97.5% bootstrap quantile of top1_same"),
        Column("diverged", BOOL, "the loss became inf or NaN"),
    ),
    ("seed", *EXPERIMENT_ORDER),
)
