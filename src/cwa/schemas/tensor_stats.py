"""The `tensor_stats` table."""

from cwa.schemas import FLOAT, INT, STR, Column, Schema

TENSOR_STATS_TABLE = Schema(
    "tensor_stats",
    "artifacts/sensitivity/tensor_stats.parquet",
    "Per seed and scored tensor: how the sensitivity score is distributed.",
    (
        Column("metric", STR, "sensitivity metric"),
        Column("seed", INT, "calibration seed"),
        Column("param", STR, "parameter name (`named_parameters`)"),
        Column("layer", INT, "transformer block index, -1 outside the blocks"),
        Column("component", STR, "attn_q/attn_k/attn_v/attn_o/mlp_gate/mlp_up/mlp_down/embed/..."),
        Column("numel", INT, "weights in the tensor"),
        Column("score_sum", FLOAT, "sum of scores"),
        Column("score_mean", FLOAT, "mean score"),
        Column("score_median", FLOAT, "median score"),
        Column("score_max", FLOAT, "largest score"),
        Column("zeros", INT, "weights with score exactly 0"),
    ),
    ("seed", "param"),
)
