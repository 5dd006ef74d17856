"""The `pruning` table."""

from cwa.schemas import BOOL, FLOAT, INT, STR, Column, Schema

PRUNING_TABLE = Schema(
    "pruning",
    "artifacts/prune/pruning.parquet",
    "One row per pruning method and target: the pruned model against the dense one on the "
    "evaluation windows (paired CIs over texts), and against magnitude and Wanda pruning at the "
    "same target.",
    (
        Column(
            "method",
            STR,
            "a metric (`magnitude`, `grad_x_weight`, ...), `wanda`, `ria`, `sparsegpt` or `random`",
        ),
        Column(
            "group",
            STR,
            "comparison group: `per_row`, `per_tensor`, `global`, `block` (SparseGPT: 128-column "
            "blocks of each layer) or `n:m`",
        ),
        Column("target", FLOAT, "fraction of every group pruned (N/M for a pattern)"),
        Column("pattern", STR, "`unstructured` or the N:M pattern"),
        Column(
            "allocation",
            STR,
            "`uniform` (the target in every block) or `owl` (outlier-weighted block sparsities "
            "whose mean is the target)",
        ),
        Column("pruned", INT, "weights set to zero"),
        Column("sparsity", FLOAT, "pruned / pool weights"),
        Column("ppl", FLOAT, "perplexity of the pruned model (inf when diverged)"),
        Column("delta_ppl", FLOAT, "ppl − dense ppl"),
        Column("ci_low", FLOAT, "2.5% paired-bootstrap quantile of delta_ppl"),
        Column("ci_high", FLOAT, "97.5% paired-bootstrap quantile of delta_ppl"),
        Column("accuracy", FLOAT, "greedy next-token accuracy"),
        Column("delta_accuracy", FLOAT, "accuracy − dense accuracy"),
        Column("kl", FLOAT, "mean KL(p_dense ‖ p_pruned) per token, nats"),
        Column("kl_ci_low", FLOAT, "2.5% bootstrap quantile of kl"),
        Column("kl_ci_high", FLOAT, "97.5% bootstrap quantile of kl"),
        Column("kl_p99", FLOAT, "99th percentile of the per-token KL"),
        Column("top1_same", FLOAT, "fraction of tokens whose top-1 prediction is unchanged"),
        Column(
            "gain_magnitude",
            FLOAT,
            "1 − ppl / ppl(magnitude pruning at the same target and pattern): the share of "
            "magnitude pruning's perplexity this method avoids (NaN without magnitude)",
        ),
        Column("gain_magnitude_ci_low", FLOAT, "2.5% paired-bootstrap quantile of gain_magnitude"),
        Column("gain_magnitude_ci_high", FLOAT, "97.5% quantile of gain_magnitude"),
        Column("gain_wanda", FLOAT, "1 − ppl / ppl(wanda at the same target and pattern)"),
        Column("gain_wanda_ci_low", FLOAT, "2.5% paired-bootstrap quantile of gain_wanda"),
        Column("gain_wanda_ci_high", FLOAT, "97.5% quantile of gain_wanda"),
        Column("diverged", BOOL, "the loss became inf or NaN"),
    ),
    ("pattern", "allocation", "target", "method"),
)
