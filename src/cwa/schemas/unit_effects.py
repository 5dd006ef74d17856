"""The `unit_effects` table."""

from cwa.schemas import BOOL, FLOAT, INT, STR, Column, Schema

UNIT_EFFECTS_TABLE = Schema(
    "unit_effects",
    "artifacts/units/effects.parquet",
    "One row per unit experiment: a set of top units (`rank` -1: the top k of the kind) or one "
    "top unit alone (`rank` r, `unit` its label), or a random set of units matched to it per "
    "layer, under one perturbation. Columns as in `effects`.",
    (
        Column("kind", STR, "unit kind"),
        Column("unit", STR, "the single unit's label; empty for a top-k set"),
        Column("rank", INT, "the single unit's rank; -1 for a top-k set"),
        Column("perturbation", STR, "perturbation name"),
        Column("setting", STR, "its strength as a label"),
        Column("selection", STR, "`top` or `random_k` (random units matched per layer)"),
        Column("draw", INT, "random draw index (0 for top)"),
        Column("k", INT, "units in the set"),
        Column("weights", INT, "weights perturbed"),
        Column("ppl", FLOAT, "perplexity after the perturbation"),
        Column("delta_ppl", FLOAT, "ppl − baseline ppl"),
        Column("ci_low", FLOAT, "95% paired bootstrap CI of delta_ppl, low"),
        Column("ci_high", FLOAT, "95% paired bootstrap CI of delta_ppl, high"),
        Column("kl", FLOAT, "mean KL per token to the unperturbed next-token distribution"),
        Column("top1_same", FLOAT, "share of tokens whose top-1 prediction is unchanged"),
        Column("diverged", BOOL, "loss became inf/NaN"),
    ),
    ("kind", "rank", "k", "perturbation", "setting", "selection", "draw"),
)
