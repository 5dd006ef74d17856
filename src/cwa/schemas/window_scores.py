"""The `window_scores` table."""

from cwa.schemas import FLOAT, INT, STR, Column, Schema

WINDOW_SCORES_TABLE = Schema(
    "window_scores",
    "artifacts/correlation/windows.parquet",
    "Per calibration window (the first seed's draw) and pool tensor: the tensor's first-order "
    "sensitivity on that window alone, Σ|∂ℓₙ/∂w · w| with ℓₙ the window's mean token loss.",
    (
        Column("window", INT, "position in the first seed's calibration draw"),
        Column("param", STR, "parameter name"),
        Column("layer", INT, "transformer block (-1 outside the blocks)"),
        Column("component", STR, "component class (attn_q, mlp_down, ...)"),
        Column("score", FLOAT, "Σ over the tensor's weights of |g·w| on this window"),
    ),
    ("window", "param"),
)
