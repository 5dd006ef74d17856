"""The `cluster_members` table."""

from cwa.schemas import BOOL, FLOAT, INT, STR, Column, Schema

CLUSTER_MEMBERS_TABLE = Schema(
    "cluster_members",
    "artifacts/clusters/members.parquet",
    "Every clustered weight (the top `cluster_top` by the first seed's scores and a seeded "
    "uniform sample of `cluster_sample` others): its raw features and its cluster under "
    "K-means and DBSCAN (cwa.analysis.clusters).",
    (
        Column("param", STR, "parameter name"),
        Column("flat_index", INT, "flat storage index"),
        Column("top", BOOL, "one of the top `cluster_top` weights"),
        Column("layer", INT, "transformer block"),
        Column("component", STR, "component class"),
        Column("log_score", FLOAT, "log10 |score| (first seed)"),
        Column("log_abs_w", FLOAT, "log10 |w|"),
        Column("seed_spread", FLOAT, "standard deviation of log10 |score| over the seeds"),
        Column("depth", FLOAT, "normalised block depth (0 first, 1 last)"),
        Column("kmeans", INT, "K-means cluster"),
        Column("dbscan", INT, "DBSCAN cluster (-1: noise)"),
    ),
    ("param", "flat_index"),
)
