"""The `study_shares` table."""

from cwa.schemas import FLOAT, STR, Column, Schema

STUDY_SHARES_TABLE = Schema(
    "study_shares",
    "artifacts/study/members/<label>/shares.parquet, artifacts/study/shares.parquet",
    "Where each member's sensitivity sits: per component class and per transformer block, the "
    "share of the global top-k weights (k = headline_k) and of the pool's total |score| "
    "(`metric`, first seed). One row per member, axis and group.",
    (
        Column("label", STR, "study member"),
        Column("axis", STR, "`component` or `depth`"),
        Column(
            "group",
            STR,
            "component class (attn_q, attn_k, attn_v, attn_o, mlp_gate, mlp_up, mlp_down, moe_*, "
            "router, embed, lm_head, norm), or the block index",
        ),
        Column(
            "depth",
            FLOAT,
            "depth rows: block index / last block index of the pool (0 = first block, 1 = last); "
            "null on component rows",
        ),
        Column("topk_share", FLOAT, "fraction of the top-k weights in this group"),
        Column("score_share", FLOAT, "fraction of the pool's total |score| in this group"),
    ),
    ("label", "axis", "depth", "group"),
)
