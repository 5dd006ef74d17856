"""The `spikes` table."""

from cwa.schemas import BOOL, FLOAT, INT, STR, Column, Schema

SPIKES_TABLE = Schema(
    "spikes",
    "artifacts/superweight/spikes.parquet",
    "Super-weight detector (Yu et al. 2024): the strongest activation spike of every MLP down "
    "projection, and what zeroing that one weight does.",
    (
        Column("param", STR, "down projection weight"),
        Column("layer", INT, "transformer block index"),
        Column("row", INT, "output channel i* with the largest |output| (weight row)"),
        Column("col", INT, "input channel j* with the largest |input| (weight column)"),
        Column("flat_index", INT, "storage index of weight[row, col]"),
        Column("weight", FLOAT, "value of weight[row, col]"),
        Column("in_max", FLOAT, "max |input activation| on channel j* over all tokens"),
        Column("out_max", FLOAT, "max |output activation| on channel i* over all tokens"),
        Column("in_ratio", FLOAT, "in_max / median |input activation| of the layer"),
        Column("out_ratio", FLOAT, "out_max / median |output activation| of the layer"),
        Column("candidate", BOOL, "both ratios >= spike_ratio: a super-weight candidate"),
        Column("ppl", FLOAT, "perplexity with that single weight zeroed"),
        Column("delta_ppl", FLOAT, "ppl − baseline ppl"),
        Column("ci_low", FLOAT, "2.5% paired-bootstrap quantile of delta_ppl"),
        Column("ci_high", FLOAT, "97.5% paired-bootstrap quantile of delta_ppl"),
    ),
    ("layer",),
)
