"""The `layer_pairs` table."""

from cwa.schemas import FLOAT, INT, STR, Column, Schema

LAYER_PAIRS_TABLE = Schema(
    "layer_pairs",
    "artifacts/correlation/pairs.parquet",
    "Every pair of layers (level `layer`: a block's pool tensors summed) and of layer components "
    "(level `component`): the Pearson correlation over calibration windows of their per-window "
    "sensitivities (`window_scores`), and of their shares of the window's total (the common "
    "scale of a hard window divided out). CIs by Fisher's z; q-values by Benjamini-Hochberg over "
    "the pairs of one level and one column.",
    (
        Column("level", STR, "`layer` or `component`"),
        Column("a", STR, "first group (`L3`, or `L3 mlp_down`)"),
        Column("b", STR, "second group"),
        Column("windows", INT, "calibration windows correlated over"),
        Column("r", FLOAT, "Pearson r of the two sensitivities"),
        Column("r_ci_low", FLOAT, "95% CI of r, low"),
        Column("r_ci_high", FLOAT, "95% CI of r, high"),
        Column("r_p", FLOAT, "two-sided p of r = 0"),
        Column("r_q", FLOAT, "BH q-value of r_p"),
        Column("share_r", FLOAT, "Pearson r of the two shares of the window's total"),
        Column("share_r_ci_low", FLOAT, "95% CI of share_r, low"),
        Column("share_r_ci_high", FLOAT, "95% CI of share_r, high"),
        Column("share_r_p", FLOAT, "two-sided p of share_r = 0"),
        Column("share_r_q", FLOAT, "BH q-value of share_r_p"),
    ),
    ("level", "a", "b"),
)
