"""The `agreement` table."""

from cwa.schemas import FLOAT, INT, STR, Column, Schema

AGREEMENT_TABLE = Schema(
    "agreement",
    "artifacts/agreement/agreement.parquet",
    "Agreement between metrics on the first seed's calibration draw (global pool).",
    (
        Column("metric_a", STR, "first metric"),
        Column("metric_b", STR, "second metric"),
        Column("k", INT, "size of the top sets"),
        Column("jaccard", FLOAT, "Jaccard |A ∩ B| / |A ∪ B| of the two global top-k sets"),
        Column("overlap", FLOAT, "|A ∩ B| / k: the share of one top-k set the other holds"),
        Column("spearman_pool", FLOAT, "Spearman ρ of |scores| over a fixed 100k-weight sample"),
    ),
    ("metric_a", "metric_b", "k"),
)
