"""The `stability` table."""

from cwa.schemas import FLOAT, INT, STR, Column, Schema

STABILITY_TABLE = Schema(
    "stability",
    "artifacts/stability/stability.parquet",
    "Agreement of the top-k sets of two calibration seeds.",
    (
        Column("metric", STR, "sensitivity metric"),
        Column("mode", STR, "ranking mode"),
        Column("k", INT, "size of the top set"),
        Column("seed_a", INT, "first seed"),
        Column("seed_b", INT, "second seed"),
        Column("jaccard", FLOAT, "|A ∩ B| / |A ∪ B| of the two top-k coordinate sets"),
        Column("overlap", FLOAT, "|A ∩ B| / k: the share of one top-k set the other holds"),
        Column(
            "spearman",
            FLOAT,
            "Spearman ρ of the two seeds' scores over A ∪ B (biased low "
            "when the sets barely overlap: each seed's picks score lower under the other)",
        ),
        Column(
            "spearman_pool",
            FLOAT,
            "Spearman ρ over a fixed uniform sample of 100k pool weights",
        ),
        Column("union", INT, "|A ∪ B|"),
    ),
    ("k", "seed_a", "seed_b"),
)
