"""report: the Markdown/HTML report with its plots, the DVC metrics and the plot side files.

Reads: every upstream table (baseline, pool, scores, ranking, effects, comparisons, tasks,
stability, scaling, training curves, super-weight spikes, fault campaign). Writes: report.md,
report.html and PNGs in the report directory, summary.json (the numbers of the README's results
section, rendered by `cwa readme`), metrics.json, and effects_vs_k.csv for `dvc plots`.
"""

from pathlib import Path

import polars as pl

from cwa import plots
from cwa.experiment import first_settings, first_strength
from cwa.io import atomic_write, write_csv, write_json
from cwa.perturbations import get_perturbation
from cwa.report import (
    comparisons_table,
    effects_table,
    headline_table,
    k_sweep,
    metrics,
    render_html,
    render_markdown,
    summary,
    task_metrics,
    tasks_table,
)
from cwa.scores import StoredScores
from cwa.stage import stage_main
from cwa.stats import SCALING_STATISTICS

# What this stage reads: its `params:` in dvc.yaml (tests/test_docs.py keeps them equal).
PARAMS = (
    "model",
    "metric",
    "mode",
    "seeds",
    "calib_samples",
    "seq_len",
    "dtype",
    "include_embeddings",
    "random_draws",
    "bootstrap",
    "headline_k",
    "topk",
    "spike_ratio",
    "compare_metrics",
    "target_components",
    "target_layers",
    "perturb",
    "scale_alpha",
    "noise_sigma",
    "abs_sigma",
    "flip_bit",
    "flip_prob",
    "quant_bits",
    "mask_ratios",
    "tasks",
    "task_items",
    "lm_eval_tasks",
    "fault_rates",
    "fault_trials",
    "fault_protect",
)


def add_args(p):
    for name in (
        "baseline",
        "pool",
        "scores",
        "ranking",
        "effects",
        "comparisons",
        "tasks",
        "stability",
        "scaling",
        "fit",
        "train_logs",
        "spikes",
        "agreement",
        "faults",
        "out_dir",
        "metrics",
        "effects_csv",
    ):
        p.add_argument(f"--{name.replace('_', '-')}", required=True)


def run(args, params):
    out = Path(args.out_dir)
    baseline = pl.read_parquet(args.baseline)
    pool = pl.read_parquet(args.pool)
    ranking = pl.read_parquet(args.ranking)
    effects = pl.read_parquet(args.effects)
    comparisons = pl.read_parquet(args.comparisons)
    tasks = pl.read_parquet(args.tasks)
    stability = pl.read_parquet(args.stability)
    scaling, fits = pl.read_parquet(args.scaling), pl.read_parquet(args.fit)
    logs = sorted(Path(args.train_logs).glob("*.parquet"))
    spikes = pl.read_parquet(args.spikes)
    agreement = pl.read_parquet(args.agreement)
    faults = pl.read_parquet(args.faults)
    k, seed = params.headline_k, params.seeds[0]

    m = metrics(baseline, effects, comparisons, stability, k) | task_metrics(tasks, k)
    write_json(m, args.metrics)
    first = first_settings(params)
    zero = effects.filter((pl.col("perturbation") == "zero") & (pl.col("mask_ratio") == 1.0))
    curve = (
        zero.group_by("k", "selection")
        .agg(pl.col("delta_ppl").mean())
        .sort("selection", "k")  # fixed column order: the CSV is byte-stable
        .pivot(on="selection", index="k", values="delta_ppl")
        .sort("k")
    )
    write_csv(curve, args.effects_csv)

    scores = StoredScores(args.scores, seed)  # read tensor by tensor
    plots.score_distribution(
        scores,
        dict(zip(pool["param"], pool["component"], strict=True)),
        params.metric,
        out / "score_distribution.png",
    )
    plots.layer_heatmap(ranking.filter(pl.col("seed") == seed), pool, k, out / "heatmap.png")
    plots.effects(k_sweep(effects, first), out / "effects.png")
    plots.dose(effects.filter((pl.col("k") == k) & (pl.col("mask_ratio") == 1.0)), out / "dose.png")
    at_k = effects.filter((pl.col("k") == k) & first_strength(first))
    plots.mask(at_k, out / "mask.png")
    plots.stability(stability, out / "stability.png")
    plots.agreement(agreement, k, out / "agreement.png")
    plots.faults(faults, out / "faults.png")
    plots.scaling(scaling, fits, SCALING_STATISTICS, out / "scaling.png")
    if logs:
        plots.training_curves(pl.concat([pl.read_parquet(p) for p in logs]), out / "training.png")

    top = (
        ranking.filter(
            (pl.col("seed") == seed)
            & (pl.col("selection") == "top")
            & (pl.col("k") == min(params.topk))
            & (pl.col("group") == pl.col("group").first())
        )
        .sort("rank")
        .select("rank", "param", "layer", "component", "row", "col", "score")
    )
    table = effects_table(effects)
    ctx = {
        "params": params,
        "metrics": m,
        "baseline": baseline,
        "top": top,
        "pool_weights": sum(int(s.numel()) for s in scores.values()),
        "pool_tensors": len(pool),
        "effects": table,
        "headline_table": headline_table(comparisons, effects, k, first),
        "comparisons": comparisons_table(comparisons, k),
        "tasks": tasks_table(tasks),
        "faults": faults.select(
            "rate",
            "protect",
            "arm",
            "protected",
            "mean_flips",
            "mean_blocked",
            "diverged_share",
            "median_delta_ppl",
            "median_gain",
            "gain_per_weight",
        ),
        "perturbation_docs": [
            (name, get_perturbation(name).doc) for name in effects["perturbation"].unique().sort()
        ],
        "stability": stability.group_by("k")
        .agg(pl.col("jaccard", "spearman", "spearman_pool", "union").mean())
        .sort("k"),
        "scaling": scaling,
        "fits": fits,
        "has_training": bool(logs),
        "agreement": agreement.filter(pl.col("k") == k).drop("k"),
        "spikes": spikes.select(
            "layer",
            "row",
            "col",
            "weight",
            "in_max",
            "out_max",
            "in_ratio",
            "out_ratio",
            "candidate",
            "delta_ppl",
            "ci_low",
            "ci_high",
        ),
    }
    pool_weights = ctx["pool_weights"]
    facts = summary(params, baseline, pool_weights, comparisons, effects, scaling, first)
    write_json(facts, out / "summary.json")
    text = render_markdown(ctx)
    atomic_write(out / "report.md", lambda tmp: tmp.write_text(text))
    html = render_html(text, f"cwa report: {params.model}")
    atomic_write(out / "report.html", lambda tmp: tmp.write_text(html))
    return m


if __name__ == "__main__":
    stage_main(__doc__, add_args, run, PARAMS)
