"""The `study_experts` table."""

from cwa.schemas import BOOL, FLOAT, INT, STR, Column, Schema

STUDY_EXPERTS_TABLE = Schema(
    "study_experts",
    "artifacts/study/members/<label>/experts.parquet, artifacts/study/experts.parquet",
    "Mixture-of-experts members: each expert's share of the pool's total |score| and the "
    "calibration tokens its router sent it (no rows for dense members).",
    (
        Column("label", STR, "study member"),
        Column("layer", INT, "transformer block"),
        Column("expert", INT, "expert index in the block"),
        Column("score_share", FLOAT, "the expert's weights' share of the pool's total |score|"),
        Column(
            "tokens",
            INT,
            "calibration tokens routed to it (a token counts for each of its top-k experts)",
        ),
        Column("token_share", FLOAT, "its share of the block's routed tokens"),
        Column(
            "few_tokens",
            BOOL,
            "token_share below 0.1 / experts (a tenth of a uniform share): its scores rest on "
            "few tokens",
        ),
    ),
    ("label", "layer", "expert"),
)
