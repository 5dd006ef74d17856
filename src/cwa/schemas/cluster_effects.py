"""The `cluster_effects` table."""

from cwa.schemas import FLOAT, INT, STR, Column, Schema

CLUSTER_EFFECTS_TABLE = Schema(
    "cluster_effects",
    "artifacts/clusters/effects.parquet",
    "Clustered perturbation: each K-means cluster's highest-scored members (up to headline_k) "
    "zeroed by the headline perturbation against random sets with the same count in every "
    "tensor; the statistics of `comparisons`, q-values by Benjamini-Hochberg over the clusters.",
    (
        Column("cluster", INT, "K-means cluster"),
        Column("size", INT, "clustered weights in it"),
        Column("perturbation", STR, "the headline perturbation"),
        Column("setting", STR, "its first strength"),
        Column("k", INT, "weights perturbed (headline_k, or the whole smaller cluster)"),
        Column("control", STR, "`random_k`"),
        Column("draws", INT, "random sets"),
        Column("top_delta_ppl", FLOAT, "ΔPPL of the cluster's top members"),
        Column("ci_low", FLOAT, "95% paired bootstrap CI of it, low"),
        Column("ci_high", FLOAT, "95% paired bootstrap CI of it, high"),
        Column("control_delta_ppl", FLOAT, "mean ΔPPL of the random sets"),
        Column("separation", FLOAT, "top ΔPPL / mean |random ΔPPL|"),
        Column("separation_ci_low", FLOAT, "95% CI of separation, low"),
        Column("separation_ci_high", FLOAT, "95% CI of separation, high"),
        Column("effect_size", FLOAT, "d_z of the per-window differences"),
        Column("p_value", FLOAT, "one-sided permutation p, top > random"),
        Column("q_value", FLOAT, "Benjamini-Hochberg q over the clusters"),
    ),
    ("cluster",),
)
