"""The `fault_trials` table."""

from cwa.schemas import BOOL, FLOAT, INT, STR, Column, Schema

FAULT_TRIALS_TABLE = Schema(
    "fault_trials",
    "artifacts/faults/trials.parquet",
    "Fault-injection campaign: one row per bit error rate, trial, protected fraction and arm. "
    "Every arm of a trial shares its fault draw.",
    (
        Column("rate", FLOAT, "bit error rate: each storage bit of each pool weight flips"),
        Column("trial", INT, "fault draw number"),
        Column("protect", FLOAT, "fraction of the pool protected (0 for the unprotected arm)"),
        Column("arm", STR, "`none`, `top` (top-scored weights protected) or `random`"),
        Column("protected", INT, "weights protected"),
        Column("flips", INT, "bits flipped in the draw"),
        Column("blocked", INT, "flips that landed in the protected set and were not applied"),
        Column("ppl", FLOAT, "perplexity with the applied flips (inf when diverged)"),
        Column("delta_ppl", FLOAT, "ppl − baseline ppl"),
        Column(
            "kl",
            FLOAT,
            "mean KL(p_ref ‖ p) per token to the unperturbed model's next-token distribution, "
            "nats (NaN when diverged)",
        ),
        Column("top1_same", FLOAT, "fraction of tokens whose top-1 prediction is unchanged"),
        Column("diverged", BOOL, "the loss became inf or NaN"),
    ),
    ("rate", "protect", "arm", "trial"),
)
