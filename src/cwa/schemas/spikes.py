"""The `spikes` table."""

from cwa.schemas import BOOL, FLOAT, INT, STR, Column, Schema

SPIKES_TABLE = Schema(
    "spikes",
    "artifacts/superweight/spikes.parquet",
    "Super-weight detector (after Yu et al. 2024): per MLP down projection, where its output "
    "spikes and the weight contributing most to that spike, ranked by contribution, and what "
    "setting that one weight to 0 or to its row's mean does.",
    (
        Column("param", STR, "down projection weight"),
        Column("layer", INT, "transformer block index"),
        Column("row", INT, "output channel i* of the largest |output| (weight row)"),
        Column(
            "col",
            INT,
            "input channel j* with the largest term |W[i*, j]·x[t*, j]| at the spike token",
        ),
        Column("flat_index", INT, "storage index of weight[row, col]"),
        Column("weight", FLOAT, "value of weight[row, col]"),
        Column("window", INT, "window of the probe batch holding the spike"),
        Column("token", INT, "token position t* of the spike in that window"),
        Column("token_id", INT, "the token id at t*"),
        Column("in_act", FLOAT, "|x[t*, j*]|: the input on channel j* at the spike token"),
        Column("out_act", FLOAT, "|y[t*, i*]|: the spike, the layer's largest |output|"),
        Column("in_ratio", FLOAT, "in_act / median |input activation| of the layer"),
        Column("out_ratio", FLOAT, "out_act / median |output activation| of the layer"),
        Column("contribution", FLOAT, "|W[i*, j*]·x[t*, j*]|"),
        Column("share", FLOAT, "contribution / Σ_j |W[i*, j]·x[t*, j]|"),
        Column("candidate", BOOL, "both ratios >= spike_ratio: a super-weight candidate"),
        Column("row_mean", FLOAT, "mean of W[i*, :], the mean-ablation value"),
        Column("delta_ppl_zero", FLOAT, "ΔPPL with that single weight set to 0"),
        Column("ci_low_zero", FLOAT, "2.5% paired-bootstrap quantile of delta_ppl_zero"),
        Column("ci_high_zero", FLOAT, "97.5% paired-bootstrap quantile of delta_ppl_zero"),
        Column("delta_ppl_mean", FLOAT, "ΔPPL with that single weight set to row_mean"),
        Column("ci_low_mean", FLOAT, "2.5% paired-bootstrap quantile of delta_ppl_mean"),
        Column("ci_high_mean", FLOAT, "97.5% paired-bootstrap quantile of delta_ppl_mean"),
    ),
    ("layer",),
)
