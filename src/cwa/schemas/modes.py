"""The `modes` table."""

from cwa.schemas import FLOAT, INT, STR, Column, Schema

MODES_TABLE = Schema(
    "modes",
    "artifacts/agreement/modes.parquet",
    "Each metric's global top set against its per-layer top sets (the `per_layer` mode: the "
    "top-k of each pool tensor), on the first seed's calibration draw.",
    (
        Column("metric", STR, "metric"),
        Column("k", INT, "top-k: of the whole pool (global) and of each pool tensor (per layer)"),
        Column("tensors", INT, "pool tensors, each ranked on its own in the per-layer mode"),
        Column(
            "per_layer_weights",
            INT,
            "size of the per-layer union: k per tensor (a tensor smaller than k, all of it)",
        ),
        Column(
            "jaccard_equal_size",
            FLOAT,
            "Jaccard of the per-layer union and the global top set of the same size (the global "
            "top-k itself always lies inside the per-layer sets)",
        ),
        Column(
            "global_in_even_split",
            FLOAT,
            "share of the global top-k found by k spread evenly: each tensor's top-⌈k/tensors⌉",
        ),
    ),
    ("metric", "k"),
)
