"""The `fault_summary` table."""

from cwa.schemas import FLOAT, INT, STR, Column, Schema

FAULT_SUMMARY_TABLE = Schema(
    "fault_summary",
    "artifacts/faults/summary.parquet",
    "The campaign per rate, protected fraction and arm.",
    (
        Column("rate", FLOAT, "bit error rate"),
        Column("protect", FLOAT, "fraction of the pool protected"),
        Column("arm", STR, "`none`, `top` or `random`"),
        Column("trials", INT, "fault draws"),
        Column("protected", INT, "weights protected"),
        Column("mean_flips", FLOAT, "bits flipped per draw (mean)"),
        Column("mean_blocked", FLOAT, "flips blocked by protection per draw (mean)"),
        Column("diverged_share", FLOAT, "share of draws whose loss became inf/NaN"),
        Column("median_delta_ppl", FLOAT, "median ΔPPL over draws (a diverged draw is +inf)"),
        Column("median_kl", FLOAT, "median over draws of the mean KL per token (diverged: NaN)"),
        Column("median_top1_same", FLOAT, "median over draws of the unchanged top-1 fraction"),
        Column(
            "median_gain",
            FLOAT,
            "median over draws of ppl(unprotected) − ppl(this arm): what protection bought",
        ),
        Column("gain_per_weight", FLOAT, "median_gain / protected weights"),
    ),
    ("rate", "protect", "arm"),
)
