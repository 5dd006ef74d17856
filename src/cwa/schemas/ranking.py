"""The `ranking` table."""

from cwa.schemas import FLOAT, INT, STR, Column, Schema

RANKING_TABLE = Schema(
    "ranking",
    "artifacts/rank/ranking.parquet",
    "Selected weights: the top set and every control, for each seed and k.",
    (
        Column("metric", STR, "sensitivity metric"),
        Column(
            "mode",
            STR,
            "ranking mode: `global`, `per_layer` or `per_component` (docs/params.md)",
        ),
        Column("seed", INT, "calibration seed whose scores were ranked"),
        Column("group", STR, "`global`, the tensor (per_layer) or the component (per_component)"),
        Column(
            "selection", STR, "`top` or a control: `bottom_k`, `random_k`, `magnitude_matched_k`"
        ),
        Column("draw", INT, "random draw number (0 for top and bottom_k)"),
        Column("k", INT, "size of the selection (per group)"),
        Column(
            "rank",
            INT,
            "0-based position in the selection, by score (desc for top, asc for bottom)",
        ),
        Column("param", STR, "parameter name"),
        Column("layer", INT, "transformer block index, -1 outside the blocks"),
        Column("component", STR, "component class of the tensor"),
        Column("flat_index", INT, "index into the tensor's storage, `param.view(-1)[flat_index]`"),
        Column(
            "row",
            INT,
            "output feature (nn.Linear convention, also for GPT-2 Conv1D); stacked MoE "
            "experts [E, out, in]: expert · out + output feature",
        ),
        Column("col", INT, "input feature (nn.Linear convention); 0 for 1-D tensors"),
        Column(
            "score",
            FLOAT,
            "|score|, the ranking key (signed metrics keep the sign in the store)",
        ),
        Column("cutoff_ties", INT, "unselected pool weights tied with the last selected score"),
    ),
    ("seed", "group", "selection", "k", "draw", "rank"),
)
