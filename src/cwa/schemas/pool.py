"""The `pool` table."""

import polars as pl

from cwa.schemas import BOOL, INT, STR, Column, Schema

POOL_TABLE = Schema(
    "pool",
    "artifacts/sensitivity/pool.parquet",
    "The ranking pool: every scored tensor, where it sits and how its storage is laid out.",
    (
        Column("position", INT, "order of the tensor in named_parameters (the tie-break order)"),
        Column("param", STR, "parameter name (`named_parameters`, tied parameters once)"),
        Column("layer", INT, "transformer block index, -1 outside the blocks"),
        Column("component", STR, "attn_q/attn_k/attn_v/attn_o/mlp_gate/mlp_up/mlp_down/embed/..."),
        Column("shape", pl.List(pl.Int64()), "storage shape"),
        Column("transposed", BOOL, "storage is [in, out] (GPT-2 Conv1D) rather than [out, in]"),
        Column("heads", INT, "query heads of the model, on attention weights; 0 elsewhere"),
        Column("kv_heads", INT, "key/value heads (GQA), on attention weights; 0 elsewhere"),
        Column("head_dim", INT, "width of one head, on attention weights; 0 elsewhere"),
        Column(
            "qkv_layout",
            STR,
            "a fused q/k/v weight's output order: split [q heads | k heads | v heads], grouped "
            "(per key/value head: its query heads, k, v) or codegen (4 partitions of [q | v | k]); "
            "empty elsewhere or when unknown (per_head mode then refuses)",
        ),
    ),
    ("position",),
)
