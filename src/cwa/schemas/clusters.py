"""The `clusters` table."""

from cwa.schemas import FLOAT, INT, STR, Column, Schema

CLUSTERS_TABLE = Schema(
    "clusters",
    "artifacts/clusters/clusters.parquet",
    "One row per cluster of each method: its size, how much of the top set it holds, its mean "
    "features and where it sits.",
    (
        Column("method", STR, "`kmeans` (k chosen by silhouette) or `dbscan` (-1: noise)"),
        Column("cluster", INT, "cluster label"),
        Column("size", INT, "clustered weights in it"),
        Column("top_members", INT, "of them in the top `cluster_top`"),
        Column("top_share", FLOAT, "top_members / cluster_top: where the top set falls"),
        Column("log_score", FLOAT, "mean log10 |score|"),
        Column("log_abs_w", FLOAT, "mean log10 |w|"),
        Column("seed_spread", FLOAT, "mean seed-to-seed spread of log10 |score|"),
        Column("depth", FLOAT, "mean normalised depth"),
        Column("main_layer", INT, "the block most of its weights sit in"),
        Column("main_layer_share", FLOAT, "their share of the cluster"),
        Column("main_component", STR, "the component class most of its weights belong to"),
        Column("main_component_share", FLOAT, "their share of the cluster"),
    ),
    ("method", "cluster"),
)
