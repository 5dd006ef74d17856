"""The schema of every Parquet table cwa writes: column, type, meaning, and the row order.

`python -m cwa.schemas` prints docs/artifacts.md from these definitions, so the docs cannot drift.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl


@dataclass(frozen=True)
class Column:
    name: str
    dtype: pl.DataType
    doc: str


@dataclass(frozen=True)
class Schema:
    path: str
    doc: str
    columns: tuple[Column, ...]
    sort_by: tuple[str, ...] = ()


STR, INT, FLOAT, BOOL = pl.String(), pl.Int64(), pl.Float64(), pl.Boolean()

_EXPERIMENT = (
    Column(
        "perturbation",
        STR,
        "perturbation name: zero, sign_flip, scale, gauss_rel, gauss_abs, bit_flip, bit_flip_p, "
        "quantize (docs/params.md)",
    ),
    Column(
        "strength",
        FLOAT,
        "α (scale), σ (gauss_rel, gauss_abs), bit position (bit_flip), p (bit_flip_p), n bits "
        "(quantize); NaN for none or for a bit field",
    ),
    Column("setting", STR, "the strength in words (`α=2`, `bit 30`, `random exponent bit`, ...)"),
    Column("selection", STR, "`top`, `bottom_k` or `random_k`"),
    Column("draw", INT, "random draw number (0 for top and bottom_k)"),
    Column("k", INT, "weights selected per group (the whole pool in global mode)"),
    Column(
        "mask_ratio",
        FLOAT,
        "fraction of the selection perturbed (a seeded random subset; 1 = all of it)",
    ),
)
_EXPERIMENT_ORDER = ("perturbation", "strength", "setting", "selection", "k", "mask_ratio", "draw")

SCHEMAS: dict[str, Schema] = {
    "corpus": Schema(
        "data/corpus.parquet",
        "The built-in corpus: one row per paragraph of the King James Bible.",
        (
            Column("doc", INT, "paragraph number in reading order"),
            Column("split", STR, "`train`, `calib` or `eval` (disjoint)"),
            Column("text", STR, "paragraph text, translators' brackets removed"),
        ),
        ("doc",),
    ),
    "train_log": Schema(
        "artifacts/train/<model>.parquet",
        "Training curve of a built-in model.",
        (
            Column("model", STR, "built-in model name"),
            Column("step", INT, "optimizer step (1-based)"),
            Column("loss", FLOAT, "training loss (mean token cross-entropy) of that step's batch"),
            Column("lr", FLOAT, "learning rate used at that step"),
        ),
        ("step",),
    ),
    "eval_texts": Schema(
        "artifacts/baseline/texts.parquet, artifacts/perturb/texts.parquet",
        "Per evaluation text (window) results: the unit of every paired statistic.",
        (
            *_EXPERIMENT,
            Column("text", INT, "evaluation window index"),
            Column("nll", FLOAT, "summed next-token negative log-likelihood (nats)"),
            Column("tokens", INT, "predicted tokens in the window"),
            Column("correct", INT, "tokens whose greedy prediction is right"),
        ),
        (*_EXPERIMENT_ORDER, "text"),
    ),
    "baseline": Schema(
        "artifacts/baseline/summary.parquet",
        "The unperturbed model on the evaluation windows.",
        (
            Column("model", STR, "model spec from params (`builtin:<name>`, hub id or directory)"),
            Column("texts", INT, "evaluation windows"),
            Column("tokens", INT, "predicted tokens in all windows"),
            Column("nll", FLOAT, "total NLL (nats)"),
            Column("ppl", FLOAT, "token-weighted perplexity exp(Σ NLL / Σ tokens)"),
            Column("accuracy", FLOAT, "greedy next-token accuracy"),
            Column("params", INT, "parameter count (tied parameters once)"),
        ),
    ),
    "pool": Schema(
        "artifacts/sensitivity/pool.parquet",
        "The ranking pool: every scored tensor, where it sits and how its storage is laid out.",
        (
            Column(
                "position", INT, "order of the tensor in named_parameters (the tie-break order)"
            ),
            Column("param", STR, "parameter name (`named_parameters`, tied parameters once)"),
            Column("layer", INT, "transformer block index, -1 outside the blocks"),
            Column(
                "component", STR, "attn_q/attn_k/attn_v/attn_o/mlp_gate/mlp_up/mlp_down/embed/..."
            ),
            Column("shape", pl.List(pl.Int64()), "storage shape"),
            Column("transposed", BOOL, "storage is [in, out] (GPT-2 Conv1D) rather than [out, in]"),
            Column("heads", INT, "query heads of the model, on attention weights; 0 elsewhere"),
            Column("kv_heads", INT, "key/value heads (GQA), on attention weights; 0 elsewhere"),
            Column("head_dim", INT, "width of one head, on attention weights; 0 elsewhere"),
        ),
        ("position",),
    ),
    "tensor_stats": Schema(
        "artifacts/sensitivity/tensor_stats.parquet",
        "Per seed and scored tensor: how the sensitivity score is distributed.",
        (
            Column("metric", STR, "sensitivity metric"),
            Column("seed", INT, "calibration seed"),
            Column("param", STR, "parameter name (`named_parameters`)"),
            Column("layer", INT, "transformer block index, -1 outside the blocks"),
            Column(
                "component", STR, "attn_q/attn_k/attn_v/attn_o/mlp_gate/mlp_up/mlp_down/embed/..."
            ),
            Column("numel", INT, "weights in the tensor"),
            Column("score_sum", FLOAT, "sum of scores"),
            Column("score_mean", FLOAT, "mean score"),
            Column("score_median", FLOAT, "median score"),
            Column("score_max", FLOAT, "largest score"),
            Column("zeros", INT, "weights with score exactly 0"),
        ),
        ("seed", "param"),
    ),
    "ranking": Schema(
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
            Column(
                "group", STR, "`global`, the tensor (per_layer) or the component (per_component)"
            ),
            Column("selection", STR, "`top`, `bottom_k` or `random_k`"),
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
            Column(
                "flat_index", INT, "index into the tensor's storage, `param.view(-1)[flat_index]`"
            ),
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
    ),
    "effects": Schema(
        "artifacts/perturb/effects.parquet",
        "One row per perturbation experiment: damage against the baseline, with a paired CI.",
        (
            Column("metric", STR, "sensitivity metric the selection came from"),
            Column("mode", STR, "ranking mode"),
            Column("seed", INT, "calibration seed of the ranking"),
            *_EXPERIMENT,
            Column("weights", INT, "weights perturbed"),
            Column("ppl", FLOAT, "perplexity after the perturbation (inf when diverged)"),
            Column("delta_ppl", FLOAT, "ppl − baseline ppl"),
            Column(
                "ci_low", FLOAT, "2.5% paired-bootstrap quantile of delta_ppl (resampling texts)"
            ),
            Column("ci_high", FLOAT, "97.5% paired-bootstrap quantile of delta_ppl"),
            Column("rel_delta", FLOAT, "delta_ppl / baseline ppl"),
            Column("accuracy", FLOAT, "greedy next-token accuracy after the perturbation"),
            Column("delta_accuracy", FLOAT, "accuracy − baseline accuracy"),
            Column("diverged", BOOL, "the loss became inf or NaN"),
            Column("restored", BOOL, "every touched weight was restored bit for bit (always true)"),
        ),
        _EXPERIMENT_ORDER,
    ),
    "comparisons": Schema(
        "artifacts/perturb/comparisons.parquet",
        "The top set against each control kind: one row per perturbation setting, k, mask ratio "
        "and control. Unit of the tests: per-text differences d = ΔNLL/token(top) − mean over "
        "draws of ΔNLL/token(control), on the same windows.",
        (
            Column("metric", STR, "sensitivity metric the selection came from"),
            Column("mode", STR, "ranking mode"),
            Column("seed", INT, "calibration seed of the ranking"),
            *(c for c in _EXPERIMENT if c.name not in ("selection", "draw")),
            Column("control", STR, "`random_k` or `bottom_k`"),
            Column("draws", INT, "control draws averaged"),
            Column("top_delta_ppl", FLOAT, "ΔPPL of the top set"),
            Column("control_delta_ppl", FLOAT, "ΔPPL of the control (mean over draws)"),
            Column(
                "separation",
                FLOAT,
                "top_delta_ppl / mean over draws |control ΔPPL| (NaN: diverged)",
            ),
            Column(
                "separation_ci_low",
                FLOAT,
                "2.5% paired-bootstrap quantile of the separation (texts resampled jointly)",
            ),
            Column("separation_ci_high", FLOAT, "97.5% quantile of the separation"),
            Column("effect_size", FLOAT, "Cohen's d_z = mean(d) / sd(d)"),
            Column(
                "p_value",
                FLOAT,
                "one-sided sign-flip permutation test of mean(d) > 0 (`bootstrap` resamples; "
                "exact for few texts); NaN when a side diverged",
            ),
            Column("p_wilcoxon", FLOAT, "one-sided Wilcoxon signed-rank test of d > 0"),
            Column("top_diverged", BOOL, "the top-set experiment diverged"),
            Column("control_diverged", INT, "control draws that diverged"),
        ),
        ("perturbation", "strength", "setting", "k", "mask_ratio", "control"),
    ),
    "tasks": Schema(
        "artifacts/perturb/tasks.parquet",
        "Downstream tasks (docs/params.md `tasks`) on the unperturbed model (perturbation `none`) "
        "and under every experiment at headline_k (first strength, whole selections).",
        (
            Column("metric", STR, "sensitivity metric the selection came from"),
            Column("mode", STR, "ranking mode"),
            Column("seed", INT, "calibration seed of the ranking"),
            *_EXPERIMENT,
            Column("task", STR, "task name (built-in name or the JSONL path given)"),
            Column(
                "kind",
                STR,
                "`last_word` (LAMBADA-style), `choice` (HellaSwag-style) or `lm_eval` (a "
                "harness task, named `lm_eval:<task>`, scored by lm-eval's own acc / acc_norm)",
            ),
            Column("items", INT, "items scored"),
            Column(
                "accuracy",
                FLOAT,
                "last_word: every target token greedy; choice: argmax of summed log-likelihood",
            ),
            Column("acc_norm", FLOAT, "choice: argmax of log-likelihood / characters (else NaN)"),
            Column("target_ppl", FLOAT, "last_word: exp(target NLL / target tokens) (else NaN)"),
            Column("delta_accuracy", FLOAT, "accuracy − the unperturbed model's"),
            Column("ci_low", FLOAT, "2.5% paired-bootstrap quantile of delta_accuracy (items)"),
            Column("ci_high", FLOAT, "97.5% quantile of delta_accuracy"),
            Column("delta_acc_norm", FLOAT, "acc_norm − the unperturbed model's"),
            Column("delta_target_ppl", FLOAT, "target_ppl − the unperturbed model's"),
        ),
        (*_EXPERIMENT_ORDER, "task"),
    ),
    "fault_trials": Schema(
        "artifacts/faults/trials.parquet",
        "Fault-injection campaign: one row per bit error rate, trial, protected fraction and arm. "
        "Every arm of a trial shares its fault draw.",
        (
            Column("rate", FLOAT, "bit error rate: each storage bit of each pool weight flips"),
            Column("trial", INT, "fault draw number"),
            Column("protect", FLOAT, "fraction of the pool protected (0 for the unprotected arm)"),
            Column("arm", STR, "`none`, `top` (top-scored weights protected) or `random`"),
            Column("protected", INT, "weights protected"),
            Column("flips", INT, "bits flipped in the draw"),
            Column("blocked", INT, "flips that landed in the protected set and were not applied"),
            Column("ppl", FLOAT, "perplexity with the applied flips (inf when diverged)"),
            Column("delta_ppl", FLOAT, "ppl − baseline ppl"),
            Column("diverged", BOOL, "the loss became inf or NaN"),
        ),
        ("rate", "protect", "arm", "trial"),
    ),
    "fault_summary": Schema(
        "artifacts/faults/summary.parquet",
        "The campaign per rate, protected fraction and arm.",
        (
            Column("rate", FLOAT, "bit error rate"),
            Column("protect", FLOAT, "fraction of the pool protected"),
            Column("arm", STR, "`none`, `top` or `random`"),
            Column("trials", INT, "fault draws"),
            Column("protected", INT, "weights protected"),
            Column("mean_flips", FLOAT, "bits flipped per draw (mean)"),
            Column("mean_blocked", FLOAT, "flips blocked by protection per draw (mean)"),
            Column("diverged_share", FLOAT, "share of draws whose loss became inf/NaN"),
            Column("median_delta_ppl", FLOAT, "median ΔPPL over draws (a diverged draw is +inf)"),
            Column(
                "median_gain",
                FLOAT,
                "median over draws of ppl(unprotected) − ppl(this arm): what protection bought",
            ),
            Column("gain_per_weight", FLOAT, "median_gain / protected weights"),
        ),
        ("rate", "protect", "arm"),
    ),
    "spikes": Schema(
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
    ),
    "agreement": Schema(
        "artifacts/agreement/agreement.parquet",
        "Agreement between metrics on the first seed's calibration draw (global pool).",
        (
            Column("metric_a", STR, "first metric"),
            Column("metric_b", STR, "second metric"),
            Column("k", INT, "size of the top sets"),
            Column("jaccard", FLOAT, "overlap@k: Jaccard of the two global top-k sets"),
            Column(
                "spearman_pool", FLOAT, "Spearman ρ of |scores| over a fixed 100k-weight sample"
            ),
        ),
        ("metric_a", "metric_b", "k"),
    ),
    "stability": Schema(
        "artifacts/stability/stability.parquet",
        "Agreement of the top-k sets of two calibration seeds.",
        (
            Column("metric", STR, "sensitivity metric"),
            Column("mode", STR, "ranking mode"),
            Column("k", INT, "size of the top set"),
            Column("seed_a", INT, "first seed"),
            Column("seed_b", INT, "second seed"),
            Column("jaccard", FLOAT, "|A ∩ B| / |A ∪ B| of the two top-k coordinate sets"),
            Column(
                "spearman",
                FLOAT,
                "Spearman ρ of the two seeds' scores over A ∪ B (biased low "
                "when the sets barely overlap: each seed's picks score lower under the other)",
            ),
            Column(
                "spearman_pool",
                FLOAT,
                "Spearman ρ over a fixed uniform sample of 100k pool weights",
            ),
            Column("union", INT, "|A ∪ B|"),
        ),
        ("k", "seed_a", "seed_b"),
    ),
    "scaling_model": Schema(
        "artifacts/scaling/models/<model>.parquet, artifacts/scaling/scaling.parquet",
        "Concentration and headline damage for each model of the built-in family.",
        (
            Column("model", STR, "built-in model name"),
            Column("params", INT, "parameter count"),
            Column("pool", INT, "weights in the ranking pool"),
            Column("metric", STR, "sensitivity metric"),
            Column("baseline_ppl", FLOAT, "perplexity of the unperturbed model"),
            Column(
                "top_share", FLOAT, "share of the pool's total score held by its top 0.1% weights"
            ),
            Column("max_over_median", FLOAT, "largest score / median score in the pool"),
            Column("k", INT, "size of the zeroed sets"),
            Column("delta_ppl_top", FLOAT, "ΔPPL from zeroing the global top-k"),
            Column(
                "delta_ppl_random",
                FLOAT,
                "mean ΔPPL from zeroing k random weights (matched per tensor)",
            ),
            Column("separation", FLOAT, "delta_ppl_top / mean |ΔPPL| of the random draws"),
        ),
        ("params", "model"),
    ),
    "scaling_fit": Schema(
        "artifacts/scaling/fit.parquet",
        "Power law statistic = a · params^slope, fitted by least squares in log-log space.",
        (
            Column("statistic", STR, "column of the scaling table that was fitted"),
            Column("slope", FLOAT, "exponent"),
            Column("intercept", FLOAT, "log10 a"),
            Column("r2", FLOAT, "coefficient of determination in log-log space"),
            Column("slope_ci_low", FLOAT, "95% CI of the slope (t distribution, n − 2 dof)"),
            Column("slope_ci_high", FLOAT, "upper end of that CI"),
            Column("models", INT, "points in the fit"),
        ),
        ("statistic",),
    ),
}


def markdown() -> str:
    """The artifact reference, rendered from SCHEMAS."""
    out = [
        "# Artifact tables",
        "",
        "Generated by `python -m cwa.schemas`; do not edit by hand.",
        "",
    ]
    for name, schema in SCHEMAS.items():
        out += [f"## `{name}`: `{schema.path}`", "", schema.doc, ""]
        if schema.sort_by:
            out += [f"Rows sorted by {', '.join(schema.sort_by)}.", ""]
        out += ["| column | type | meaning |", "|---|---|---|"]
        out += [f"| `{c.name}` | {c.dtype} | {c.doc} |" for c in schema.columns]
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    print(markdown(), end="")
