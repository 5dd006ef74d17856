"""report: the Markdown/HTML report with its plots, the DVC metrics and the plot side files.

Reads: every upstream table (baseline, pool, scores, ranking, effects, per-text results,
comparisons, tasks, stability, the study across models, training curves, super-weight spikes,
fault campaign) and
the records of the calibration and evaluation text. Checks the old guide's success criteria
(cwa.report.criteria). Writes: report.md, report.html and PNGs in the report directory, summary.json
(the numbers of the README's results section, rendered by `cwa readme`), metrics.json (with a
criterion_<name> key per criterion), and effects_vs_k.csv for `dvc plots`.
"""

from pathlib import Path

import polars as pl

from cwa.analysis.study import FIT_STATISTICS, scaling_points
from cwa.core.io import atomic_write, write_csv, write_json
from cwa.data.text_folder import read_text
from cwa.experiments.finetuning import ARMS
from cwa.experiments.finetuning import metrics as finetune_metrics
from cwa.experiments.perturbations import SWEEP_KEYS, get_perturbation
from cwa.experiments.pruning_summary import HEADLINE_SPARSITY
from cwa.experiments.pruning_summary import metrics as pruning_metrics
from cwa.experiments.summaries import first_strength
from cwa.experiments.sweep import SweepConfig, first_settings, headline_setting, specs
from cwa.pipeline.paths import CALIB_TEXT, EVAL_TEXT, POOL, RANKING, SCORES
from cwa.pipeline.stage import Stage, stage_main
from cwa.report import criteria, plots
from cwa.report.layer_stats import by_layer, summed_grid
from cwa.report.score_pass import read_once
from cwa.report.sections import (
    SCALING_HEADLINE,
    ReportInputs,
    comparisons_table,
    effects_table,
    headline_table,
    k_sweep,
    metrics,
    pruning_table,
    render_html,
    render_markdown,
    run_summary,
    scaling_metrics,
    seed_table,
    summary,
    task_metrics,
    tasks_table,
)
from cwa.scoring.store import StoredScores

# What this stage reads (its `params:` in the generated dvc.yaml).
PARAMS = (
    "model",
    "metric",
    "mode",
    "seeds",
    "calib_samples",
    "calib_data",
    "eval_data",
    "seq_len",
    "bos",
    "dtype",
    "include_embeddings",
    "random_draws",
    "bootstrap",
    "kl_topk",
    "headline_k",
    "topk",
    "spike_ratio",
    "compare_metrics",
    "target_components",
    "target_layers",
    "perturb",
    *SWEEP_KEYS,
    "mask_ratios",
    "tasks",
    "task_items",
    "lm_eval_tasks",
    "fault_rates",
    "fault_trials",
    "fault_protect",
    "prune_group",
    "finetune_data",
    "finetune_k",
    "finetune_steps",
    "finetune_lr",
    "finetune_seeds",
    "unit_reduce",
    "cluster_sample",
    "cluster_top",
    "cluster_max_k",
)


STAGE = Stage(
    "report",
    PARAMS,
    does=("`report/report.md` and `.html` with plots, `metrics.json`, plot CSVs"),
    reads={
        "baseline": "artifacts/baseline/summary.parquet",
        "baseline_texts": "artifacts/baseline/texts.parquet",
        "pool": POOL,
        "scores": SCORES,
        "ranking": RANKING,
        "effects": "artifacts/perturb/effects.parquet",
        "comparisons": "artifacts/perturb/comparisons.parquet",
        "pooled": "artifacts/perturb/pooled.parquet",
        "tasks": "artifacts/perturb/tasks.parquet",
        "texts": "artifacts/perturb/texts.parquet",
        "stability": "artifacts/stability/stability.parquet",
        "study_members": "artifacts/study/members.parquet",
        "study_fit": "artifacts/study/fit.parquet",
        "study_shares": "artifacts/study/shares.parquet",
        "study_groups": "artifacts/study/groups.parquet",
        "study_experts": "artifacts/study/experts.parquet",
        "study_drift": "artifacts/study/drift.parquet",
        "train_logs": "artifacts/train",
        "spikes": "artifacts/superweight/spikes.parquet",
        "agreement": "artifacts/agreement/agreement.parquet",
        "modes": "artifacts/agreement/modes.parquet",
        "layer_sweep": "artifacts/layer_sweep/layers.parquet",
        "faults": "artifacts/faults/summary.parquet",
        "pruning": "artifacts/prune/pruning.parquet",
        "prune_tasks": "artifacts/prune/tasks.parquet",
        "finetune": "artifacts/finetune/summary.parquet",
        "finetune_runs": "artifacts/finetune/runs.parquet",
        "correlation": "artifacts/correlation/pairs.parquet",
        "unit_scores": "artifacts/units/scores.parquet",
        "unit_effects": "artifacts/units/effects.parquet",
        "unit_comparisons": "artifacts/units/comparisons.parquet",
        "cluster_members": "artifacts/clusters/members.parquet",
        "clusters": "artifacts/clusters/clusters.parquet",
        "cluster_effects": "artifacts/clusters/effects.parquet",
        "calib_text": CALIB_TEXT,
        "eval_text": EVAL_TEXT,
    },
    records={
        "out_dir": "artifacts/report",
    },
    metrics={
        "metrics": "artifacts/metrics.json",
    },
    manifest="artifacts/report/manifest.json",
)


def run(args, params):
    t = read_tables(args)
    k, first = params.headline_k, first_settings(SweepConfig.of(params))
    setting = headline_setting(first)
    m = metrics(
        t["baseline"], t["effects"], t["comparisons"], t["pooled"], t["stability"], k, setting
    )
    m |= task_metrics(t["tasks"], k, setting) | scaling_metrics(t["study_fit"])
    m |= pruning_metrics(t["pruning"]) | finetune_metrics(t["finetune"])
    run_keys, largest_by = run_summary(t["baseline"], t["effects"])
    m |= run_keys
    scores = StoredScores(args.scores, params.seeds[0])  # read tensor by tensor
    read = read_once(scores, t["pool"])  # moments, the pool sample, the range of log10 |score|
    checks = success_criteria(t, read.bulk, params, first, setting)
    m |= criteria.flat_keys(checks)
    write_json(m, args.metrics)
    curve = k_sweep(t["effects"], setting)
    out = Path(args.out_dir)
    write_csv(k_curve(curve), out / "effects_vs_k.csv")
    layers = by_layer(read.moments)  # per-layer statistics, first seed
    draw_figures(t, scores, read.log_range, params, first, out)
    plots.sensitivity_heatmap(
        summed_grid(read.moments), params.metric, out / "sensitivity_heatmap.png"
    )
    plots.layer_comparison(layers, params.metric, out / "layer_comparison.png")
    plots.layer_sweep(t["layer_sweep"], out / "layer_sweep.png")
    sources = tuple(read_text(d).source for d in (args.calib_text, args.eval_text))
    r = report_inputs(t, m, read.weights, params, first, sources, criteria.table(checks), layers)
    plots.seeds(r.seeds, out / "seeds.png")
    facts = summary(
        params, t["baseline"], r.pool_weights, t["pooled"], t["effects"], t["study_members"], first
    )
    facts["run"] = run_keys | {"largest_delta_ppl_by": largest_by}
    write_json(facts, out / "summary.json")
    text = render_markdown(r)
    atomic_write(out / "report.md", lambda tmp: tmp.write_text(text))
    html = render_html(text, f"cwa report: {params.model}")
    atomic_write(out / "report.html", lambda tmp: tmp.write_text(html))
    return m


def success_criteria(t: dict, sample, params, first: dict, setting: dict) -> list:
    """The old guide's criteria against this run (cwa.report.criteria)."""
    k = params.headline_k
    return [
        criteria.separation(t["pooled"], k),
        *criteria.hierarchy(t["pooled"], k, first),
        *criteria.stability_by_k(t["stability"]),
        criteria.metric_correlation(t["agreement"]),
        criteria.baseline_spread(t["baseline_texts"]),
        criteria.architectures(t["study_members"]),
        criteria.metric_overlap(t["agreement"], k),
        criteria.concentration(sample),
        criteria.k_trend(t["texts"], setting),
        *criteria.dose_response(t["texts"], t["pooled"], k, strength_sweeps(params)),
        *criteria.scaling(t["study_fit"], SCALING_HEADLINE),
        criteria.pruning(t["pruning"], params.metric, HEADLINE_SPARSITY),
    ]


def strength_sweeps(params) -> list[tuple[str, str, list]]:
    """(perturbation, sweep key, [(strength, setting label)]) of every swept perturbation run."""
    return [
        (p.name, p.sweep.key, [(s, p.label(s)) for s in strengths])
        for p, strengths in specs(SweepConfig.of(params))
        if p.sweep
    ]


def read_tables(args) -> dict[str, pl.DataFrame | None]:
    tables = {  # every upstream table, named as its flag
        name: pl.read_parquet(getattr(args, name))
        for name, path in STAGE.reads.items()
        if path.endswith(".parquet")
    }
    logs = sorted(Path(args.train_logs).glob("*.parquet"))
    tables["training"] = pl.concat([pl.read_parquet(p) for p in logs]) if logs else None
    return tables


def k_curve(effects: pl.DataFrame) -> pl.DataFrame:
    """ΔPPL of the headline perturbation of k weights per selection (random draws averaged), for
    `dvc plots`."""
    return (
        effects.group_by("k", "selection")
        .agg(pl.col("delta_ppl").mean())
        .sort("selection", "k")  # fixed column order: the CSV is byte-stable
        .pivot(on="selection", index="k", values="delta_ppl")
        .sort("k")
    )


def draw_figures(t: dict, scores, log_range, params, first: dict, out: Path) -> None:
    k, effects = params.headline_k, t["effects"]
    components = dict(zip(t["pool"]["param"], t["pool"]["component"], strict=True))
    plots.score_distribution(
        scores, components, log_range, params.metric, out / "score_distribution.png"
    )
    first_seed = t["ranking"].filter(pl.col("seed") == params.seeds[0])
    plots.layer_heatmap(first_seed, t["pool"], k, out / "heatmap.png")
    plots.effects(k_sweep(effects, first), out / "effects.png")
    plots.dose(effects.filter((pl.col("k") == k) & (pl.col("mask_ratio") == 1.0)), out / "dose.png")
    plots.mask(effects.filter((pl.col("k") == k) & first_strength(first)), out / "mask.png")
    plots.stability(t["stability"], out / "stability.png")
    if len(t["tasks"]):
        plots.tasks(tasks_table(t["tasks"]), out / "tasks.png")
    plots.agreement(t["agreement"], k, out / "agreement.png")
    plots.faults(t["faults"], out / "faults.png")
    study_figures(t, k, out)
    plots.pruning(t["pruning"], out / "pruning.png")
    ran = set(t["finetune_runs"]["arm"])  # the arms of `finetune_arms`
    arms = tuple(arm for arm in ARMS if arm in ran)
    plots.finetune(t["finetune_runs"], t["finetune"], arms, out / "finetune.png")
    plots.layer_correlation(t["correlation"], out / "correlation.png")
    plots.units(unit_table(t), out / "units.png")
    plots.clusters(t["cluster_members"], out / "clusters.png")
    if t["training"] is not None:
        plots.training_curves(t["training"], out / "training.png")


def study_figures(t: dict, k: int, out: Path) -> None:
    """Scaling, shares of the final members, experts and checkpoint drift (each when the study
    has them)."""
    members, points = t["study_members"], scaling_points(t["study_members"])
    finals = members.filter(pl.col("final") == "yes")
    others = finals.filter(~pl.col("label").is_in(points["label"].implode()))
    plots.scaling(points, others, t["study_fit"], FIT_STATISTICS, out / "scaling.png")
    kinds = dict(finals.select("label", "kind").iter_rows())
    plots.shares(t["study_shares"], kinds, k, out / "shares.png")
    if len(t["study_experts"]):
        plots.experts(t["study_experts"], out / "experts.png")
    if len(t["study_drift"]):
        plots.drift(t["study_drift"], k, out / "drift.png")


def unit_table(t: dict) -> pl.DataFrame:
    """The unit comparisons with each single unit's score and size, and the top set's CI of
    ΔPPL from the effects."""
    keys = ["kind", "rank", "k", "perturbation", "setting"]
    top = t["unit_effects"].filter(pl.col("selection") == "top").select(*keys, "ci_low", "ci_high")
    scores = t["unit_scores"].select("kind", "rank", "score", "weights")
    return (
        t["unit_comparisons"]
        .join(top, on=keys, how="left")
        .join(scores, on=["kind", "rank"], how="left")
    )


def finetune_table(summary: pl.DataFrame) -> pl.DataFrame:
    """The arms in the order they are described, then the contrasts."""
    order = {arm: i for i, arm in enumerate(ARMS)}
    rank = pl.col("arm").replace_strict(order, default=len(ARMS))
    return summary.sort(pl.col("against") != "", rank)


def report_inputs(
    t: dict,
    m: dict,
    pool_weights: int,
    params,
    first: dict,
    sources: tuple[dict, dict],
    checks: pl.DataFrame,
    layers: pl.DataFrame,
) -> ReportInputs:
    """The report's tables, reduced to what each section shows."""
    setting = headline_setting(first)
    k, ranking = params.headline_k, t["ranking"]
    top = ranking.filter(
        (pl.col("seed") == params.seeds[0])
        & (pl.col("selection") == "top")
        & (pl.col("k") == min(params.topk))
        & (pl.col("group") == pl.col("group").first())
    )
    names = t["effects"]["perturbation"].unique().sort()
    return ReportInputs(
        params=params,
        metrics=m,
        baseline=t["baseline"],
        pool_weights=pool_weights,
        pool_tensors=len(t["pool"]),
        top=top.sort("rank").select("rank", "param", "layer", "component", "row", "col", "score"),
        headline=headline_table(t["pooled"], t["effects"], k, first),
        seeds=seed_table(t["effects"], t["comparisons"], t["pooled"], k, setting),
        comparisons=comparisons_table(t["pooled"], k),
        tasks=tasks_table(t["tasks"]),
        effects=effects_table(t["effects"]),
        faults=t["faults"].drop("trials"),
        pruning=pruning_table(t["pruning"]),
        prune_tasks=tasks_table(t["prune_tasks"], by="method"),
        finetune=finetune_table(t["finetune"]),
        correlation=t["correlation"],
        units=unit_table(t),
        clusters=t["clusters"],
        cluster_effects=t["cluster_effects"],
        perturbation_docs=[(name, get_perturbation(name).doc) for name in names],
        stability=t["stability"]
        .group_by("k")
        .agg(pl.col("jaccard", "overlap", "spearman", "spearman_pool", "union").mean())
        .sort("k"),
        agreement=t["agreement"].filter(pl.col("k") == k).drop("k"),
        modes=t["modes"],
        layer_sweep=t["layer_sweep"].drop("k", "diverged"),
        spikes=t["spikes"]
        .sort("contribution", descending=True)
        .drop("param", "flat_index", "token_id", "in_act", "out_act", "row_mean"),
        study=t["study_members"],
        fits=t["study_fit"],
        shares=t["study_shares"],
        groups=t["study_groups"],
        experts=t["study_experts"],
        drift=t["study_drift"],
        has_training=t["training"] is not None,
        sources=sources,
        setting=setting,
        criteria=checks,
        layers=layers,
    )


if __name__ == "__main__":
    stage_main(__doc__, STAGE, run)
