"""The `study_member` table."""

from cwa.schemas import FLOAT, INT, STR, Column, Schema

MEMBER_COLUMNS = (
    Column("label", STR, "the member's key in `models`"),
    Column("model", STR, "builtin:<name>, hub id or directory"),
    Column(
        "revision", STR, "hub revision or built-in checkpoint (`step-<n>`); empty: the final model"
    ),
    Column("architecture", STR, "the model's `model_type` in transformers (llama, mixtral, gpt2)"),
    Column("experts", INT, "experts per block (0: dense)"),
    Column("params", INT, "parameter count"),
    Column(
        "active_params",
        INT,
        "parameters one token uses: a mixture of experts less its unchosen experts' share",
    ),
    Column("pool", INT, "weights in the ranking pool"),
    Column("metric", STR, "sensitivity metric"),
    Column("baseline_ppl", FLOAT, "perplexity of the unperturbed model on the evaluation windows"),
    Column("top_share", FLOAT, "share of the pool's total |score| held by its top 0.1% weights"),
    Column("max_over_median", FLOAT, "largest |score| / median |score| in the pool"),
    Column("k", INT, "size of the zeroed sets (headline_k)"),
    Column("delta_ppl_top", FLOAT, "ΔPPL from zeroing the global top-k"),
    Column("delta_ppl_top_rel", FLOAT, "delta_ppl_top / baseline_ppl"),
    Column("delta_ppl_random", FLOAT, "mean ΔPPL of the random_k draws (NaN if not a control)"),
    Column(
        "delta_ppl_magnitude",
        FLOAT,
        "mean ΔPPL of the magnitude_matched_k draws (NaN if not a control)",
    ),
    Column("delta_ppl_bottom", FLOAT, "ΔPPL of zeroing the bottom_k (NaN if not a control)"),
    Column("separation", FLOAT, "delta_ppl_top / mean |ΔPPL| of the random_k draws"),
    Column(
        "p_value",
        FLOAT,
        "one-sided permutation p of the top set against the random_k draws (per-window ΔNLL "
        "per token, as the perturb stage's comparisons; NaN if random_k is not a control)",
    ),
    Column(
        "superweight_candidates",
        INT,
        "MLP down projections whose spike passes `spike_ratio` (the super-weight detector; 0 "
        "for a mixture of experts, whose experts have no dense down projection)",
    ),
    Column(
        "superweight_ratio",
        FLOAT,
        "largest min(input ratio, output ratio) of any down projection's spike (null: none)",
    ),
)

STUDY_MEMBER_TABLE = Schema(
    "study_member",
    "artifacts/study/members/<label>/member.parquet",
    "One study member's per-model analysis: sizes, concentration of the `metric` scores (first "
    "seed), the headline experiment (zeroing the global top-k against the controls) and the "
    "super-weight detector.",
    MEMBER_COLUMNS,
    ("label",),
)
