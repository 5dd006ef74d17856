"""The `unit_scores` table."""

from cwa.schemas import FLOAT, INT, STR, Column, Schema

UNIT_SCORES_TABLE = Schema(
    "unit_scores",
    "artifacts/units/scores.parquet",
    "Every structural unit of each kind of `units` (cwa.selection.units), with its score: the "
    "|scores| of its weights (`metric`, the first seed's) reduced by `unit_reduce`.",
    (
        Column("kind", STR, "`neuron`, `head`, `expert` or `channel`"),
        Column("rank", INT, "0 = highest score within the kind (ties: lower unit id first)"),
        Column("unit", INT, "unit id within the kind (block order, then index)"),
        Column("layer", INT, "transformer block (-1 for a channel: it spans every block)"),
        Column("index", INT, "neuron, head (key/value group under GQA), expert or dimension"),
        Column("label", STR, "the unit as researchers name it, e.g. `layer 2, neuron 17`"),
        Column("weights", INT, "pool weights the unit holds"),
        Column("score", FLOAT, "the unit's score"),
    ),
    ("kind", "rank"),
)
