"""The `layer_sweep` table."""

from cwa.schemas import BOOL, FLOAT, INT, STR, Column, Schema

LAYER_SWEEP_TABLE = Schema(
    "layer_sweep",
    "artifacts/layer_sweep/layers.parquet",
    "The headline perturbation on the top-k of each transformer block alone (ranked within the "
    "block, first seed's scores), against random draws from the same block.",
    (
        Column("layer", INT, "transformer block perturbed (the only one)"),
        Column("perturbation", STR, "the headline perturbation"),
        Column("setting", STR, "its first strength, as a label"),
        Column(
            "k",
            INT,
            "the block's top-k by |score|: `headline_k`, or half the block's smallest pool "
            "tensor where that is fewer (the draws keep the top set's per-tensor counts)",
        ),
        Column("weights", INT, "weights perturbed (k)"),
        Column("delta_ppl", FLOAT, "ΔPPL of the block's top set"),
        Column("ci_low", FLOAT, "2.5% paired-bootstrap quantile of delta_ppl (resampling texts)"),
        Column("ci_high", FLOAT, "97.5% paired-bootstrap quantile of delta_ppl"),
        Column("draws", INT, "random_k draws from the block, same per-tensor counts"),
        Column("control_delta_ppl", FLOAT, "ΔPPL of the random draws (mean)"),
        Column("separation", FLOAT, "delta_ppl / the draws' mean |ΔPPL| (as in `comparisons`)"),
        Column("separation_ci_low", FLOAT, "2.5% paired-bootstrap quantile of the separation"),
        Column("separation_ci_high", FLOAT, "97.5% quantile of the separation"),
        Column("p_value", FLOAT, "one-sided paired permutation test of top > random over texts"),
        Column("diverged", BOOL, "the top-set experiment diverged"),
    ),
    ("layer",),
)
