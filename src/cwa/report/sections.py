"""The human-readable report (Markdown and HTML) and the flat DVC metrics."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import markdown as md
import polars as pl

from cwa.core.stats import spearman
from cwa.experiments.finetuning import ARMS
from cwa.experiments.pruning_summary import HEADLINE_SPARSITY, at
from cwa.experiments.summaries import first_strength, headline, headline_cell, headline_rows
from cwa.report.criteria import UNCHECKED


def fmt(x, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, float):
        if math.isinf(x):
            return "∞" if x > 0 else "−∞"
        return f"{x:.{digits}g}" if abs(x) < 1e4 else f"{x:.3e}"
    return str(x)


def table(df: pl.DataFrame, digits: int = 3) -> str:
    head = "| " + " | ".join(df.columns) + " |"
    rule = "|" + "---|" * len(df.columns)
    rows = [
        "| " + " | ".join(fmt(v, digits).replace("|", "\\|") for v in r) + " |"
        for r in df.iter_rows()
    ]
    return "\n".join([head, rule, *rows])


def metrics(
    baseline: pl.DataFrame,
    effects: pl.DataFrame,
    comparisons: pl.DataFrame,
    pooled: pl.DataFrame,
    stability: pl.DataFrame,
    k: int,
    setting: dict[str, str],
) -> dict:
    """The flat keys `dvc exp show` displays (docs/science.md, Headline numbers): the headline
    pooled over seeds, and the run's family of tests (each seed's comparisons and the pooled)."""
    h = headline(effects, pooled, k, setting)
    jac = stability.filter(pl.col("k") == k)["jaccard"]
    q = pl.concat([t.select("p_value", "q_value") for t in (comparisons, pooled)])
    tested = q.filter(pl.col("p_value").is_not_nan())
    return {
        "baseline_ppl": float(baseline["ppl"][0]),
        **h,
        "seeds_perturbed": effects["seed"].n_unique(),
        "comparisons": len(tested),
        "comparisons_fdr05": int((tested["q_value"] < 0.05).sum()),
        "jaccard_top": float(jac.mean()) if len(jac) else float("nan"),
        "headline_k": k,
    }


def run_summary(baseline: pl.DataFrame, effects: pl.DataFrame) -> tuple[dict, str]:
    """The old runner's run summary: (metrics.json keys, what caused the largest ΔPPL). The
    largest finite ΔPPL of every experiment of every seed; a diverged one is counted apart."""
    finite = effects.filter(pl.col("delta_ppl").is_finite())
    keys = {
        "model_params": int(baseline["params"][0]),
        "experiments": effects.height,
        "experiments_diverged": effects.height - finite.height,
        "largest_delta_ppl": float(finite["delta_ppl"].max()) if finite.height else math.nan,
    }
    if not finite.height:
        return keys, ""
    order = ["perturbation", "setting", "selection", "k", "mask_ratio", "seed", "draw"]
    r = finite.sort(["delta_ppl", *order], descending=[True] + [False] * len(order)).row(
        0, named=True
    )
    part = "" if r["mask_ratio"] == 1.0 else f", {r['mask_ratio']:g} of the set"
    cause = (
        f"{r['perturbation']}{' ' + r['setting'] if r['setting'] else ''} on {r['selection']}, "
        f"k = {r['k']}{part}, seed {r['seed']}"
    )
    return keys, cause


SCALING_HEADLINE = "top_share"  # the statistic whose exponent metrics.json reports


def scaling_metrics(fits: pl.DataFrame) -> dict:
    """The family's scaling law for `dvc exp show`: exponent of the top-0.1% score share against
    parameter count, its R² and the mean leave-one-out relative error."""
    row = fits.filter(pl.col("statistic") == SCALING_HEADLINE).row(0, named=True)
    loo = row["loo_mean_error"]
    return {
        "scaling_exponent": row["slope"],
        "scaling_r2": row["r2"],
        "scaling_loo_error": float("nan") if loo is None else loo,
    }


def effects_table(effects: pl.DataFrame) -> pl.DataFrame:
    """Per experiment cell and selection: ΔPPL with CI (random draws: mean, CI over draws' CIs)."""
    return (
        effects.group_by(
            ["perturbation", "setting", "mask_ratio", "selection", "k"], maintain_order=True
        )
        .agg(
            pl.col("delta_ppl").mean().alias("ΔPPL"),
            pl.col("delta_ppl").std().alias("sd draws"),
            pl.col("ci_low").mean().alias("CI low"),
            pl.col("ci_high").mean().alias("CI high"),
            pl.col("rel_delta").mean().alias("ΔPPL / PPL"),
            pl.col("delta_accuracy").mean().alias("Δacc"),
            pl.col("kl").mean().alias("KL"),
            pl.col("top1_same").mean().alias("top-1 same"),
            pl.col("diverged").sum().alias("diverged"),
            pl.len().alias("runs"),
        )
        .sort(["perturbation", "setting", "k", "mask_ratio", "selection"])
    )


def headline_table(
    pooled: pl.DataFrame, effects: pl.DataFrame, k: int, first: dict
) -> pl.DataFrame:
    """Perturbation x selection at k (first strength, whole selections), over every seed: ΔPPL
    with CI and the pooled test of the top set against that control."""
    cells = effects_table(effects.filter(headline_cell(k, first)))
    tests = pooled.filter(headline_cell(k, first)).select(
        "perturbation", pl.col("control").alias("selection"), "separation", "p_value", "q_value"
    )
    return (
        cells.join(tests, on=["perturbation", "selection"], how="left", maintain_order="left")
        .select(
            "perturbation",
            "setting",
            "selection",
            "ΔPPL",
            "CI low",
            "CI high",
            "KL",
            "top-1 same",
            "diverged",
            "separation",
            pl.col("p_value").alias("p (top > this)"),
            pl.col("q_value").alias("q"),
        )
        .sort("perturbation", "selection")
    )


def seed_table(
    effects: pl.DataFrame,
    comparisons: pl.DataFrame,
    pooled: pl.DataFrame,
    k: int,
    setting: dict[str, str],
) -> pl.DataFrame:
    """The headline experiment seed by seed, then pooled: the top set's ΔPPL with its CI (over
    texts; pooled: over seeds and texts), random_k's and magnitude_matched_k's ΔPPL (mean over
    draws), the separation from random_k with its CI and the q-values of top > each."""
    cells = headline_rows(effects, k, setting)
    tests = headline_rows(comparisons, k, setting)
    rows = []
    for (seed,), mine in cells.group_by("seed", maintain_order=True):
        top = mine.filter(pl.col("selection") == "top")
        ci = (top["ci_low"][0], top["ci_high"][0]) if len(top) else (math.nan, math.nan)
        rows.append(_seed_row(str(seed), mine, tests.filter(pl.col("seed") == seed), ci))
    together = headline_rows(pooled, k, setting)
    ci = (
        (together["top_ci_low"][0], together["top_ci_high"][0])
        if len(together)
        else (math.nan,) * 2
    )
    rows.append(_seed_row("pooled", cells, together, ci))
    return pl.DataFrame(rows)


def _first(rows: pl.DataFrame, col: str, control: str = "random_k") -> float:
    """`col` of the comparison with `control` (NaN when that control did not run)."""
    vals = rows.filter(pl.col("control") == control)[col]
    return float(vals[0]) if len(vals) else math.nan


def _seed_row(name: str, cells: pl.DataFrame, tests: pl.DataFrame, top_ci: tuple) -> dict:
    def mean(selection: str) -> float:
        vals = cells.filter(pl.col("selection") == selection)["delta_ppl"]
        return float(vals.mean()) if len(vals) else math.nan

    return {
        "seed": name,
        "ΔPPL top": mean("top"),
        "CI low": float(top_ci[0]),
        "CI high": float(top_ci[1]),
        "ΔPPL random_k": mean("random_k"),
        "ΔPPL magnitude_matched_k": mean("magnitude_matched_k"),
        "separation": _first(tests, "separation"),
        "sep. CI low": _first(tests, "separation_ci_low"),
        "sep. CI high": _first(tests, "separation_ci_high"),
        "q (top > random_k)": _first(tests, "q_value"),
        "q (top > magnitude_matched_k)": _first(tests, "q_value", "magnitude_matched_k"),
    }


def k_sweep(effects: pl.DataFrame, first: dict) -> pl.DataFrame:
    """The experiments over k: whole selections, each perturbation at its first strength."""
    return effects.filter(first_strength(first) & (pl.col("mask_ratio") == 1.0))


def tasks_table(tasks: pl.DataFrame, by: str | tuple = ("perturbation", "setting", "selection")):
    """Per task and experiment cell (`by`: its columns; random draws averaged): accuracy and its
    change."""
    by = [by] if isinstance(by, str) else list(by)
    return (
        tasks.group_by(["task", *by], maintain_order=True)
        .agg(
            pl.col("accuracy").mean(),
            pl.col("delta_accuracy").mean().alias("Δacc"),
            pl.col("ci_low").mean().alias("CI low"),
            pl.col("ci_high").mean().alias("CI high"),
            pl.col("acc_norm").mean(),
            pl.col("target_ppl").mean().alias("target PPL"),
            pl.len().alias("runs"),
        )
        .sort("task", *by)
    )


def task_metrics(tasks: pl.DataFrame, k: int, setting: dict[str, str]) -> dict:
    """Baseline accuracy of each task and its change under the headline perturbation."""
    out = {}
    for (task,), rows in tasks.group_by("task", maintain_order=True):
        base = rows.filter(pl.col("perturbation") == "none")
        top = headline_rows(rows, k, setting).filter(pl.col("selection") == "top")
        out[f"{task}_acc"] = float(base["accuracy"][0]) if len(base) else float("nan")
        out[f"{task}_delta_top"] = float(top["delta_accuracy"][0]) if len(top) else float("nan")
    return dict(sorted(out.items()))


def comparisons_table(pooled: pl.DataFrame, k: int) -> pl.DataFrame:
    """The pooled comparisons at k, with how many seeds pass on their own."""
    return (
        pooled.filter(pl.col("k") == k)
        .select(
            "perturbation",
            "setting",
            pl.col("mask_ratio").alias("mask"),
            "control",
            pl.col("top_delta_ppl").alias("ΔPPL top"),
            pl.col("control_delta_ppl").alias("ΔPPL control"),
            "separation",
            pl.col("separation_ci_low").alias("sep. CI low"),
            pl.col("separation_ci_high").alias("sep. CI high"),
            pl.col("effect_size").alias("d_z"),
            pl.col("p_value").alias("p perm."),
            pl.col("q_value").alias("q (BH)"),
            pl.col("p_wilcoxon").alias("p Wilcoxon"),
            pl.col("seeds_fdr05").alias("seeds q < 0.05"),
            pl.col("p_floor").alias("p floor"),
        )
        .sort("perturbation", "setting", "mask", "control")
    )


def pruning_table(pruning: pl.DataFrame) -> pl.DataFrame:
    """Each method at each target, best first within a target: damage and gains."""
    return pruning.sort("pattern", "allocation", "target", "ppl").select(
        "pattern",
        "allocation",
        "target",
        "method",
        "group",
        "ppl",
        pl.col("delta_ppl").alias("ΔPPL"),
        pl.col("ci_low").alias("CI low"),
        pl.col("ci_high").alias("CI high"),
        pl.col("kl").alias("KL"),
        pl.col("top1_same").alias("top-1 same"),
        pl.col("gain_magnitude").alias("gain vs magnitude"),
        pl.col("gain_magnitude_ci_low").alias("CI low "),
        pl.col("gain_magnitude_ci_high").alias("CI high "),
        pl.col("gain_wanda").alias("gain vs wanda"),
    )


def summary(
    params,
    baseline: pl.DataFrame,
    pool_weights: int,
    pooled: pl.DataFrame,
    effects: pl.DataFrame,
    members: pl.DataFrame,
    first: dict,
) -> dict:
    """The numbers the README's results section shows (cwa.report.readme renders them): the set-up,
    each perturbation's top / random_k / bottom_k at headline_k pooled over seeds (the top
    set's CI and the test from the pooled comparison with random_k), the study's final members."""
    k = params.headline_k
    cells = effects_table(effects.filter(headline_cell(k, first)))
    tests = pooled.filter(headline_cell(k, first)).filter(pl.col("control") == "random_k")
    rows = []
    for (name, setting), group in cells.group_by("perturbation", "setting", maintain_order=True):
        by = {r["selection"]: r for r in group.iter_rows(named=True)}
        matched = tests.filter(pl.col("perturbation") == name).to_dicts()
        test = matched[0] if matched else {}
        rows.append(
            {
                "perturbation": name,
                "setting": setting,
                **{
                    f"{sel}_{key}": by[sel][col] if sel in by else None
                    for sel in ("top", "random_k", "bottom_k")
                    for key, col in (("delta_ppl", "ΔPPL"), ("diverged", "diverged"))
                },
                "top_ci": [test.get("top_ci_low"), test.get("top_ci_high")],
                "random_k_runs": by["random_k"]["runs"] if "random_k" in by else 0,
                "separation": test.get("separation"),
                "separation_ci": [test.get("separation_ci_low"), test.get("separation_ci_high")],
                "p_value": test.get("p_value"),
                "p_wilcoxon": test.get("p_wilcoxon"),
            }
        )
    rows.sort(key=lambda r: list(params.perturb).index(r["perturbation"]))  # as params lists
    return {
        "setup": {
            "model": params.model,
            "metric": params.metric,
            "mode": params.mode,
            "pool_weights": pool_weights,
            "seeds": len(params.seeds),
            "calib_samples": params.calib_samples,
            "eval_windows": int(baseline["texts"][0]),
            "eval_tokens": int(baseline["tokens"][0]),
            "calib_data": params.calib_data,
            "eval_data": params.eval_data,
            "random_draws": params.random_draws,
            "bootstrap": params.bootstrap,
        },
        "perturbations": rows,
        "models": members.filter(pl.col("final") == "yes")
        .select("label", "kind", "params", "baseline_ppl")
        .to_dicts(),
    }


@dataclass(frozen=True)
class ReportInputs:
    """Everything the report shows, read and reduced by the report stage."""

    params: object  # the report stage's params (cwa.config.params.StageParams)
    metrics: dict  # metrics.json
    baseline: pl.DataFrame  # schema `baseline`
    pool_weights: int
    pool_tensors: int
    top: pl.DataFrame  # the top weights of the first seed at the smallest k
    headline: pl.DataFrame  # headline_table
    seeds: pl.DataFrame  # seed_table
    comparisons: pl.DataFrame  # comparisons_table at headline_k
    tasks: pl.DataFrame  # tasks_table
    effects: pl.DataFrame  # effects_table
    faults: pl.DataFrame  # schema `fault_summary`
    pruning: pl.DataFrame  # pruning_table
    prune_tasks: pl.DataFrame  # tasks_table of the pruned models, by method
    finetune: pl.DataFrame  # schema `finetune`, arms in cwa.experiments.finetuning.ARMS order
    correlation: pl.DataFrame  # schema `layer_pairs`
    units: pl.DataFrame  # schema `unit_comparisons`, joined with the units' scores
    clusters: pl.DataFrame  # schema `clusters`
    cluster_effects: pl.DataFrame  # schema `cluster_effects`
    perturbation_docs: list[tuple[str, str]]
    stability: pl.DataFrame  # mean over seed pairs, per k
    agreement: pl.DataFrame  # at headline_k
    modes: pl.DataFrame  # schema `modes`: global against per-layer top sets, every k
    layer_sweep: pl.DataFrame  # schema `layer_sweep`, less k and diverged
    spikes: pl.DataFrame  # schema `spikes`
    study: pl.DataFrame  # schema `study_members`
    fits: pl.DataFrame  # schema `scaling_fit`
    shares: pl.DataFrame  # schema `study_shares`
    groups: pl.DataFrame  # schema `study_groups`
    experts: pl.DataFrame  # schema `study_experts`
    drift: pl.DataFrame  # schema `study_drift`
    has_training: bool
    sources: tuple[dict, dict]  # calibration's and evaluation's source.json (cwa.data.sources)
    setting: dict[str, str]  # the headline perturbation and setting (headline_setting)
    criteria: pl.DataFrame  # cwa.report.criteria.table
    layers: pl.DataFrame = field(default_factory=pl.DataFrame)  # layer_stats.by_layer


def setup_section(inputs: ReportInputs) -> list[str]:
    params, base = inputs.params, inputs.baseline
    return [
        f"# Critical weights of `{params.model}`",
        "",
        f"Metric **{params.metric}**, ranking mode **{params.mode}**, seeds {list(params.seeds)} "
        f"({params.calib_samples} calibration windows of {params.seq_len} tokens each), "
        f"evaluation on {base['texts'][0]} held-out windows "
        f"({base['tokens'][0]} predicted tokens), dtype {params.dtype}. "
        f"Ranking pool: {inputs.pool_weights:,} weights in {inputs.pool_tensors} tensors "
        f"({'with' if params.include_embeddings else 'without'} embeddings and lm_head) "
        f"of a {base['params'][0]:,}-parameter model. Versions, commit and hashes of "
        "every input: the stages' manifest.json files.",
        "",
        *text_lines(inputs.sources, params.bos),
    ]


def text_lines(sources: tuple[dict, dict], bos: bool) -> list[str]:
    """Which text each role measured, with its hash and size: results on different text are
    never comparable, and this says so in every report."""
    lines = []
    for role, s in zip(("Calibration", "Evaluation"), sources, strict=True):
        lines.append(
            f"- {role} text (`{s['key']}`): `{s['spec']}` ({s['kind']}, {s['part']}), "
            f"{s['documents']:,} documents, {s['characters']:,} characters, {s['bytes']:,} bytes "
            f"read, SHA-256 `{s['sha256'][:16]}…`"
        )
    calib, evaluation = sources
    if calib["spec"] == evaluation["spec"] and calib["kind"] != "builtin":
        lines.append(
            "- Calibration and evaluation name the same source: it was cut into two disjoint "
            "halves at the whitespace nearest its middle character; calibration read the first."
        )
    if bos:
        lines.append("- Every window starts with the tokenizer's BOS token (`bos: true`).")
    return [*lines, ""]


def _magnitude_sentence(m: dict, k: int) -> str:
    """Against random weights matched in |w| (magnitude_matched_k), when that control ran."""
    q = m.get("q_value_magnitude", math.nan)
    if math.isnan(q):
        return ""
    return (
        f" Against {k} random weights matched in magnitude (magnitude_matched_k) ΔPPL is "
        f"{fmt(m['delta_ppl_magnitude'])}, and the top set's q-value {fmt(q)}: {_verdict(q)}."
    )


def _kl_scope(topk: int) -> str:
    """What the KL is taken over, when it is not the whole vocabulary (`kl_topk`)."""
    if topk == 0:
        return ""
    return (
        f" (over the unperturbed model's top {topk} tokens and the rest as one outcome: a lower "
        "bound of the full-vocabulary KL)"
    )


def _verdict(q: float) -> str:
    if math.isnan(q):  # no random_k control, or a side diverged
        return "no test"
    return "significant at a 5% false discovery rate" if q < 0.05 else "not significant at 5% FDR"


def headline_section(inputs: ReportInputs) -> list[str]:
    metrics, params = inputs.metrics, inputs.params
    k, seeds = metrics["headline_k"], metrics["seeds_perturbed"]
    ((name, setting),) = inputs.setting.items()
    doing = "zeroing" if name == "zero" else f"applying {name}{f' ({setting})' * bool(setting)} to"
    return [
        "## Headline",
        "",
        f"Pooled over the rankings of {seeds} calibration seed{'s' * (seeds > 1)} (each seed's "
        f"own top set and controls): {doing} the top-{k} weights by {params.metric} changes "
        f"perplexity by **{fmt(metrics['delta_ppl_top'])}** (95% CI "
        f"{fmt(metrics['delta_ppl_top_ci_low'])} "
        f"– {fmt(metrics['delta_ppl_top_ci_high'])}, resampling seeds and windows; baseline "
        f"{fmt(metrics['baseline_ppl'], 4)}); {doing} {k} random weights (same tensors, "
        f"{params.random_draws} draws per seed) by {fmt(metrics['delta_ppl_random'])} on average; "
        f"the {k} "
        f"lowest-scored weights by {fmt(metrics['delta_ppl_bottom'])}. Separation (top ΔPPL / mean "
        f"|random ΔPPL|): **{fmt(metrics['separation'])}** (95% CI "
        f"{fmt(metrics['separation_ci_low'])} – "
        f"{fmt(metrics['separation_ci_high'])}); one-sided permutation p-value of top > random: "
        f"{fmt(metrics['p_value'])}, Benjamini-Hochberg q-value over the run's "
        f"{metrics['comparisons']} "
        f"comparisons **{fmt(metrics['q_value'])}**: {_verdict(metrics['q_value'])}; on its own, "
        f"{fmt(metrics['seeds_fdr05'])} of {seeds} seeds pass at q < 0.05. Beyond perplexity, "
        f"the next-token distribution moves by a mean KL{_kl_scope(params.kl_topk)} of "
        f"**{fmt(metrics['kl_top'])}** nats per "
        f"token for the top set against {fmt(metrics['kl_random'])} for random weights, and "
        f"{fmt(100 * metrics['top1_same_top'])}% of top-1 predictions stay the same."
        f"{_magnitude_sentence(metrics, k)} Top-{k} sets of "
        f"different seeds overlap with mean "
        f"Jaccard **{fmt(metrics['jaccard_top'])}**.",
        "",
        "Seed by seed, then pooled (CI of ΔPPL top: over windows for one seed, over seeds and "
        "windows pooled; q: Benjamini-Hochberg over the run):",
        "",
        table(inputs.seeds),
        "",
        "![The headline, seed by seed](seeds.png)",
        "",
        f"Every perturbation at k = {k} (first strength of its sweep, whole selections; means "
        "over seeds and draws); `p (top > this)` and `q` test the top set against that control "
        "row, pooled over seeds:",
        "",
        table(inputs.headline),
        "",
    ]


def criteria_section(inputs: ReportInputs) -> list[str]:
    """The old guide's success criteria: measured value, interval, met / not met / not
    measured. Thresholds are the guide's; a criterion the model fails is reported as failed."""
    c = inputs.criteria
    met = c.filter(pl.col("status") == "met")["criterion"].to_list()
    failed = c.filter(pl.col("status") == "not met")["criterion"].to_list()
    unmeasured = c.filter(pl.col("status") == "not measured")["criterion"].to_list()
    return [
        "## Success criteria",
        "",
        f"The criteria the old tool's guide set, with its thresholds: **{len(met)} of "
        f"{len(met) + len(failed)} measured are met** ({', '.join(met) or 'none'}); not met: "
        f"{', '.join(failed) or 'none'}; not measured: {', '.join(unmeasured) or 'none'}. No "
        "threshold is softened for a model to pass; each note says what was measured.",
        "",
        table(c),
        "",
        "What the old documents state that this table does not check, and why:",
        "",
        table(pl.DataFrame(UNCHECKED, schema=["statement", "why not checked"], orient="row")),
        "",
    ]


def figures_section(inputs: ReportInputs) -> list[str]:
    """The figures, each with what it shows; the tables they summarise follow the figures."""
    figures = _evidence_figures(inputs) + _structure_figures(inputs) + _practice_figures(inputs)
    if inputs.has_training:
        figures.append(("Built-in model training", "training.png", ""))
    lines = ["## Figures", ""]
    for title, png, caption in figures:
        lines += [f"### {title}", ""] + ([f"![{title}]({png})", ""] if png else [])
        lines += [caption, ""] if caption else []
    return lines


def _evidence_figures(inputs: ReportInputs) -> list[tuple[str, str, str]]:
    """(title, file, caption) of the perturbation, ranking and stability figures."""
    params, k = inputs.params, inputs.metrics["headline_k"]
    return [
        (
            "Perturbation effects against k (first strength of each sweep)",
            "effects.png",
            "ΔPPL = perplexity after − before on the same windows, 95% CIs by paired bootstrap "
            f"over windows ({params.bootstrap} resamples); every point averages the "
            f"{len(params.seeds)} "
            f"seeds' rankings, random_k and magnitude_matched_k also their {params.random_draws} "
            "draws "
            "per seed, which share the perturbation's random numbers (ε, bit positions) with "
            "that seed's top set.",
        ),
        (f"Dose-response in strength (k = {k})", "dose.png", ""),
        (
            f"Downstream tasks (k = {k})",
            *(
                (
                    "tasks.png",
                    "Change in accuracy of each task under each headline experiment, by "
                    "selection (random draws averaged), with the paired-bootstrap CI over items.",
                )
                if len(inputs.tasks)
                else (None, "None were run (`tasks` and `lm_eval_tasks` are empty).")
            ),
        ),
        (
            f"Perturbing a fraction of each selection (k = {k}, mask ratios "
            f"{list(params.mask_ratios)})",
            "mask.png",
            "",
        ),
        (f"Where the top-{k} weights sit", "heatmap.png", ""),
        (
            "Where the sensitivity sits",
            "sensitivity_heatmap.png",
            f"Summed |{params.metric} score| of each layer's component as a share of the pool's "
            f"total (seed {params.seeds[0]}): where the mass of the scores is, where the heatmap "
            "above counts only the top weights.",
        ),
        (
            "Sensitivity by layer",
            "layer_comparison.png",
            "Mean, standard deviation and maximum of |score| over each layer's pool weights "
            "(the table under Sensitivity by layer).",
        ),
        (
            "Perplexity by layer, one block at a time",
            "layer_sweep.png",
            f"ΔPPL of perturbing each block's own top-{k} alone (ranked within the block, 95% "
            "paired-bootstrap CI) beside the mean of random draws from the same block (the table "
            "under One block at a time).",
        ),
        ("Score distribution", "score_distribution.png", ""),
        ("Stability across calibration seeds", *_stability_figure(inputs.stability)),
        (f"Do the metrics agree? (k = {k})", "agreement.png", ""),
    ]


ONE_SEED = (
    "One seed (`seeds` has one value): there is no second ranking to compare, so stability "
    "across seeds is not measured; run two or more seeds to see it."
)


def _stability_figure(stability: pl.DataFrame) -> tuple[str | None, str]:
    """(file, caption): the figure, or no figure and why when there is no seed pair."""
    return ("stability.png", "") if len(stability) else (None, ONE_SEED)


def _structure_figures(inputs: ReportInputs) -> list[tuple[str, str, str]]:
    """(title, file, caption) of the figures on units, clusters and layers."""
    return [
        (
            "Units: the top neurons and heads zeroed alone",
            "units.png",
            "ΔPPL of zeroing each top unit alone (red, 95% paired CI) beside the mean of random "
            "units from its own layer (grey).",
        ),
        (
            "Clusters of weights",
            "clusters.png",
            "The clustered weights by magnitude and score, coloured by K-means cluster; the top "
            "weights circled.",
        ),
        (
            "Layers that move together",
            "correlation.png",
            "Correlation over calibration windows of the per-window sensitivities (Σ|g·w|) of "
            "two layers (left) and two layer components (right): r below the diagonal, r of "
            "their shares of the window's total above it.",
        ),
    ]


def _practice_figures(inputs: ReportInputs) -> list[tuple[str, str, str]]:
    """(title, file, caption) of faults, pruning, fine-tuning and scaling."""
    params = inputs.params
    return [
        ("Fault injection", "faults.png", ""),
        (
            "Pruning: perplexity against sparsity",
            "pruning.png",
            "Unstructured pruning by each method of `prune_methods` (dotted: the dense model); "
            "95% CIs by paired bootstrap over windows.",
        ),
        (
            "Fine-tuning: gain on the new text and forgetting, per arm",
            "finetune.png",
            f"Mean over the {len(params.finetune_seeds)} fine-tuning seeds with its 95% "
            "t-interval; "
            "grey dots: each seed's run. Symmetric log scale.",
        ),
        *_study_figures(inputs),
    ]


def _study_figures(inputs: ReportInputs) -> list[tuple[str, str, str]]:
    """(title, file, caption) of the study across models."""
    params, k = inputs.params, inputs.metrics["headline_k"]
    figures = [
        (
            "Scaling across the study's models",
            "scaling.png",
            "Circles: the final dense base members, with the power law fitted to them; crosses: "
            "the other final members (mixture of experts at its total parameter count).",
        ),
        (
            "Where the sensitivity sits in each model of the study",
            "shares.png",
            f"Share of each final member's global top-{k} (by {params.metric}) per component "
            "class, "
            "and per block at normalised depth; dashed: share of the total score.",
        ),
    ]
    if len(inputs.experts):
        figures.append(("Mixture of experts: sensitivity and routing", "experts.png", ""))
    if len(inputs.drift):
        figures.append(("Checkpoints: when the critical set forms", "drift.png", ""))
    return figures


def top_weights_section(inputs: ReportInputs) -> list[str]:
    return [
        f"### The top {len(inputs.top)} weights (seed {inputs.params.seeds[0]})",
        "",
        "Row = output feature, col = input feature (nn.Linear convention).",
        "",
        table(inputs.top),
        "",
    ]


def layers_section(inputs: ReportInputs) -> list[str]:
    """The old runner's per-layer statistics of |score| (first seed)."""
    if inputs.layers.is_empty():
        return []
    return [
        f"### Sensitivity by layer (seed {inputs.params.seeds[0]})",
        "",
        f"|{inputs.params.metric} score| over each layer's pool weights (layer -1: outside the "
        "blocks; `all`: the whole pool): mean, standard deviation, maximum, and the layer's "
        "share of the pool's total.",
        "",
        table(inputs.layers),
        "",
    ]


def layer_sweep_section(inputs: ReportInputs) -> list[str]:
    """ΔPPL by layer from the layer_sweep stage."""
    params, sweep = inputs.params, inputs.layer_sweep
    named = sweep.select(pl.concat_str("perturbation", "setting", separator=" ").str.strip_chars())
    return [
        "### One block at a time",
        "",
        f"`{named.item(0, 0) if len(named) else ''}` on the top-{inputs.metrics['headline_k']} of "
        "each transformer block alone, "
        f"ranked within the block by seed {params.seeds[0]}'s scores, against "
        f"{params.random_draws} "
        "random draws from the same block with the same per-tensor counts: ΔPPL with its "
        "paired-bootstrap CI, the draws' mean ΔPPL, the separation with its CI and the "
        "permutation p-value.",
        "",
        table(sweep.drop("perturbation", "setting")),
        "",
    ]


def experiments_section(inputs: ReportInputs) -> list[str]:
    params = inputs.params
    docs = "; ".join(f"{name}: {doc}" for name, doc in inputs.perturbation_docs)
    return [
        "### Every experiment",
        "",
        f"Perturbations: {docs}. Bits are flipped in the {params.dtype} storage. Every perturbed "
        "weight was restored bit for bit after each experiment (checked in the run). Rows average "
        f"the {len(params.seeds)} seeds' rankings and, for the random controls, their "
        f"{params.random_draws} draws each (`sd draws` is the spread of those runs).",
        "",
        table(inputs.effects),
        "",
    ]


def comparisons_section(inputs: ReportInputs) -> list[str]:
    if inputs.comparisons.is_empty():
        return [
            "### Top set against the controls",
            "",
            "No controls were run (`controls` is empty): no comparison, separation or p-value.",
            "",
        ]
    metrics = inputs.metrics
    at_floor = inputs.comparisons.filter(pl.col("p perm.") <= pl.col("p floor") * (1 + 1e-9))
    floor = (
        [
            f"{len(at_floor)} of these p-values sit at the permutation test's floor "
            f"({fmt(at_floor['p floor'][0])}: 1 / (`bootstrap` + 1), or 2⁻ⁿ when every sign "
            "pattern of n texts is enumerated): they say only p ≤ that; more evaluation windows "
            "or resamples would tell how much smaller.",
            "",
        ]
        if len(at_floor)
        else []
    )
    return [
        f"### Top set against the controls, pooled over seeds (k = {metrics['headline_k']})",
        "",
        "Per text, d = ΔNLL per token of the top set − the control's (mean over draws), averaged "
        "over seeds; p perm. = one-sided sign-flip permutation test of mean(d) > 0 over texts, "
        "q (BH) = its Benjamini-Hochberg q-value over all "
        f"{metrics['comparisons']} comparisons of the run (each seed's and the pooled ones, for "
        "every "
        f"perturbation, strength, k, mask ratio and control; {metrics['comparisons_fdr05']} have "
        "q < 0.05), p Wilcoxon = one-sided signed-rank test, d_z = mean(d)/sd(d); separation CI "
        "by a bootstrap resampling seeds and texts. `seeds q < 0.05`: seeds whose own "
        "comparison passes (each seed's rows: artifacts/perturb/comparisons.parquet).",
        "",
        table(inputs.comparisons.drop("p floor")),
        "",
        *floor,
    ]


def tasks_section(inputs: ReportInputs) -> list[str]:
    params = inputs.params
    if inputs.tasks.is_empty():
        return [
            "### Downstream tasks",
            "",
            "None were run (`tasks` and `lm_eval_tasks` are empty).",
            "",
        ]
    return [
        f"### Downstream tasks (k = {inputs.metrics['headline_k']})",
        "",
        f"{', '.join(params.tasks) or 'none'}: {params.task_items} items each; `none` is the "
        "unperturbed "
        "model. last_word (LAMBADA-style): correct iff every target token is greedy; choice "
        "(HellaSwag-style): argmax of summed log-likelihood (acc_norm: per character). Δacc "
        "CIs by paired bootstrap over items.",
        "",
        table(inputs.tasks),
        "",
    ]


def faults_section(inputs: ReportInputs) -> list[str]:
    params = inputs.params
    return [
        "### Fault injection: what does protecting the top weights buy?",
        "",
        "Random bit flips over every pool weight's storage at each bit error rate "
        f"({params.fault_trials} draws per rate). Each draw is evaluated unprotected, with the top "
        f"fraction of the pool by {params.metric} protected (flips landing there are not applied), "
        "and "
        "with a random set of the same size (uniform over the rest of the pool) protected. "
        "median_gain = median over draws of PPL(unprotected) − PPL(arm); gain_per_weight divides "
        "it by the protected weights; median_kl and median_top1_same: medians over draws of "
        "the mean KL per token to the unperturbed model's next-token distribution and of the "
        "unchanged top-1 fraction (a diverged draw has none).",
        "",
        table(inputs.faults),
        "",
    ]


def pruning_section(inputs: ReportInputs) -> list[str]:
    params = inputs.params
    return [
        "### Pruning: what the ranking is worth in practice",
        "",
        f"Each method removes the lowest-scored fraction of the {inputs.pool_weights:,} pool "
        "weights "
        f"(metric methods and random within `prune_group` = {params.prune_group}; wanda per output "
        "row, ria per tensor, sparsegpt per 128-column block with the remaining weights updated; "
        "wanda, ria and sparsegpt block by block on the pruned model's activations) and the "
        "pruned model is evaluated on the same windows. gain vs magnitude = 1 − PPL / "
        "PPL(magnitude) at the same target, with its 95% paired CI over windows; gain vs wanda "
        "likewise. The pool is restored bit for bit after each. allocation `owl` "
        "(`prune_owl`): OWL's outlier-weighted block sparsities, their mean the target.",
        "",
        *_pruning_verdict(inputs.pruning, params.metric),
        table(inputs.pruning),
        "",
        *_prune_tasks(inputs.prune_tasks),
    ]


def _prune_tasks(rows: pl.DataFrame) -> list[str]:
    if rows.is_empty():
        return []
    return [
        "Downstream tasks of the dense model and of each method's model pruned at the "
        "unstructured target nearest 50% (Δacc against the dense model, CI by paired bootstrap "
        "over items):",
        "",
        table(rows.drop("runs")),
        "",
    ]


def _pruning_verdict(rows: pl.DataFrame, metric: str) -> list[str]:
    """Which method prunes best at 50%, and how `metric` fares against magnitude there."""
    half = at(rows, HEADLINE_SPARSITY)
    if half.is_empty():
        return []
    best = half.sort("ppl").row(0, named=True)
    line = f"At 50%: {best['method']} prunes best (PPL {fmt(best['ppl'])})"
    mine = half.filter(pl.col("method") == metric)
    if len(mine) and not math.isnan(mine["gain vs magnitude"][0] or math.nan):
        metrics = mine.row(0, named=True)
        line += (
            f"; {metric} (the ranking's metric) reaches PPL {fmt(metrics['ppl'])}, a gain over "
            f"magnitude of {fmt(metrics['gain vs magnitude'])} (95% CI {fmt(metrics['CI low '])} – "
            f"{fmt(metrics['CI high '])})"
        )
    return [line + ".", ""]


def finetune_section(inputs: ReportInputs) -> list[str]:
    params = inputs.params
    if inputs.finetune.is_empty():
        return []
    return [
        "### Fine-tuning: protect the critical weights, or train only them?",
        "",
        f"The model is fine-tuned on `{params.finetune_data}` for {params.finetune_steps} AdamW "
        "steps at a "
        f"constant learning rate of {fmt(params.finetune_lr)}, once per fine-tuning seed "
        f"({len(params.finetune_seeds)}), in arms that differ only in which pool weights may "
        "change: "
        f"all of them (full), all but the top {params.finetune_k:,} by {params.metric} "
        "(freeze_top) or "
        "all but a random set with the same count in every tensor (freeze_random), only the top "
        "set (only_top) or only the random set (only_random). Frozen weights are checked bit for "
        "bit after every run. gain: PPL points gained on held-out windows of the new text; "
        "forgetting: PPL points lost on the evaluation windows. Rows with `against` give the "
        "paired difference between two arms; CIs and p-values are Student's t over the "
        "fine-tuning seeds (the windows are fixed).",
        "",
        *_arms_left_out(inputs.finetune),
        *_one_finetune_seed(len(params.finetune_seeds)),
        *_finetune_verdict(inputs.finetune, params.finetune_k),
        table(inputs.finetune),
        "",
    ]


def _arms_left_out(rows: pl.DataFrame) -> list[str]:
    ran = set(rows["arm"])
    left = [arm for arm in ARMS if arm not in ran]
    if not left:
        return []
    return [f"Not run (left out of `finetune_arms`): {', '.join(left)}.", ""]


def _one_finetune_seed(seeds: int) -> list[str]:
    if seeds > 1:
        return []
    return [
        "One fine-tuning seed (`finetune_seeds` has one value): no interval and no p-value below "
        "(Student's t needs two or more runs per arm), only each arm's single run.",
        "",
    ]


def _finetune_verdict(rows: pl.DataFrame, k: int) -> list[str]:
    """The two contrasts in words: protection against forgetting, and sparse fine-tuning."""

    def cell(arm: str, against: str = "") -> dict | None:
        found = rows.filter((pl.col("arm") == arm) & (pl.col("against") == against))
        return found.row(0, named=True) if len(found) else None

    lines = []
    protect, full = cell("freeze_top", "freeze_random"), cell("full")
    if protect and full:
        lines.append(
            f"Protection: freezing the top {k:,} changed forgetting by "
            f"{fmt(protect['forgetting'])} PPL (95% CI {fmt(protect['forgetting_ci_low'])} – "
            f"{fmt(protect['forgetting_ci_high'])}, p {fmt(protect['p_forgetting'])}) against "
            f"freezing a random {k:,}, of {fmt(full['forgetting'])} forgotten with every weight "
            "free."
        )
    sparse, top, rand = cell("only_top", "only_random"), cell("only_top"), cell("only_random")
    if sparse and top and rand:
        lines.append(
            f"Sparse fine-tuning: training only the top {k:,} gained {fmt(top['gain'])} PPL on "
            f"the new text against {fmt(rand['gain'])} for a random {k:,} (difference "
            f"{fmt(sparse['gain'])}, 95% CI {fmt(sparse['gain_ci_low'])} – "
            f"{fmt(sparse['gain_ci_high'])}, p {fmt(sparse['p_gain'])}), and forgot "
            f"{fmt(top['forgetting'])} against {fmt(rand['forgetting'])}."
        )
    return [" ".join(lines), ""] if lines else []


def units_section(inputs: ReportInputs) -> list[str]:
    if inputs.units.is_empty():
        return []
    params = inputs.params
    lines = [
        "### Units: neurons, heads, experts and channels as wholes",
        "",
        f"A unit's score is the {params.unit_reduce} of its weights' |{params.metric}| scores (the "
        "first "
        "seed's). Each of the top units is zeroed alone and compared with random units of its "
        f"own layer ({params.random_draws} draws); the top k together go through every "
        "perturbation "
        "at its first strength against random sets with the same count in every layer. "
        "separation = ΔPPL(top) / mean |ΔPPL(random)| with its joint bootstrap CI; q: "
        "Benjamini-Hochberg over this stage's comparisons. A whole head's sign flip leaves the "
        "model exactly unchanged (q·k and v·o keep their signs): no ratio.",
        "",
    ]
    shown = [
        "perturbation",
        "k",
        "top_delta_ppl",
        "control_delta_ppl",
        "separation",
        "separation_ci_low",
        "separation_ci_high",
        "q_value",
    ]
    for kind in inputs.units["kind"].unique(maintain_order=True):
        rows = inputs.units.filter(pl.col("kind") == kind)
        each = rows.filter(pl.col("rank") >= 0).sort("rank")
        sets = rows.filter(pl.col("rank") < 0).sort("k", "perturbation")
        lines += [
            f"Top {kind}s, each zeroed alone:",
            "",
            table(each.select("rank", "unit", "score", "weights", *shown[2:])),
            "",
        ]
        lines += [f"The top {kind}s together:", "", table(sets.select(shown)), ""]
    return lines


def clusters_section(inputs: ReportInputs) -> list[str]:
    if inputs.clusters.is_empty():
        return []
    params = inputs.params
    kmeans = inputs.clusters.filter(pl.col("method") == "kmeans").drop("method")
    found = inputs.clusters.filter((pl.col("method") == "dbscan") & (pl.col("cluster") >= 0))
    noise = inputs.clusters.filter((pl.col("method") == "dbscan") & (pl.col("cluster") < 0))
    clustered = int(kmeans["size"].sum())
    noise_share = float(noise["size"].sum()) / clustered if clustered else 0.0
    return [
        "### Clusters of weights",
        "",
        f"The top {params.cluster_top:,} weights by {params.metric} and a seeded sample of "
        f"{params.cluster_sample:,} others, each described by log10 |score|, log10 |w|, the spread "
        "of log10 |score| over the seeds, normalised depth (standardised) and its component "
        f"(one-hot). K-means with k = {len(kmeans)} (the best silhouette over 2.."
        f"{params.cluster_max_k}); DBSCAN found {len(found)} cluster{'s' * (len(found) != 1)} and "
        "left "
        f"{noise_share:.1%} as noise. top_share: the share of the top set in the cluster.",
        "",
        table(kmeans),
        "",
        f"Each K-means cluster's {params.headline_k} highest-scored members (or all of a smaller "
        "cluster) zeroed against random sets with the same count in every tensor:",
        "",
        table(
            inputs.cluster_effects.select(
                "cluster",
                "size",
                "k",
                "top_delta_ppl",
                "ci_low",
                "ci_high",
                "control_delta_ppl",
                "separation",
                "separation_ci_low",
                "separation_ci_high",
                "q_value",
            )
        ),
        "",
        "DBSCAN's clusters:",
        "",
        table(inputs.clusters.filter(pl.col("method") == "dbscan").drop("method")),
        "",
    ]


def correlation_section(inputs: ReportInputs) -> list[str]:
    if inputs.correlation.is_empty():
        return []
    layers = inputs.correlation.filter(pl.col("level") == "layer")
    components = inputs.correlation.filter(pl.col("level") == "component")
    windows = inputs.correlation["windows"][0]
    shown = [
        "a",
        "b",
        "r",
        "r_ci_low",
        "r_ci_high",
        "r_q",
        "share_r",
        "share_r_ci_low",
        "share_r_ci_high",
        "share_r_q",
    ]
    strongest = components.sort(pl.col("share_r").abs(), descending=True, nulls_last=True)
    return [
        "### Layers that move together",
        "",
        f"Per calibration window ({windows} windows of the first seed's draw), each pool "
        "tensor's sensitivity on that window alone, Σ|g·w| with g the gradient of the window's "
        "mean token loss; a layer's is the sum over its tensors. r: Pearson correlation over "
        "windows of two layers' sensitivities (a hard window raises every layer's, so r is "
        "mostly positive); share r: of their shares of the window's total, the common scale "
        "divided out, so a positive share r means the two gain sensitivity on the same windows "
        "at the expense of the others. 95% CIs by Fisher's z; q: Benjamini-Hochberg over the "
        "pairs of a level.",
        "",
        table(layers.select(shown)),
        "",
        f"The {min(10, len(strongest))} component pairs with the largest |share r|:",
        "",
        table(strongest.head(10).select(shown)),
        "",
    ]


def stability_section(inputs: ReportInputs) -> list[str]:
    if not len(inputs.stability):
        return ["### Stability across calibration seeds", "", ONE_SEED, ""]
    return [
        "### Stability across calibration seeds",
        "",
        "Mean over seed pairs: Jaccard of the top-k sets, Spearman ρ of |score| over their union "
        "and over a fixed 100k-weight pool sample.",
        "",
        table(inputs.stability),
        "",
    ]


def agreement_section(inputs: ReportInputs) -> list[str]:
    params, k = inputs.params, inputs.metrics["headline_k"]
    return [
        "### Do the metrics agree?",
        "",
        f"Every metric of `compare_metrics` on seed {params.seeds[0]}'s draw: overlap of the "
        "global "
        f"top-{k} sets (Jaccard) and Spearman ρ of |scores| over a fixed 100k-weight sample.",
        "",
        table(inputs.agreement),
        "",
        "Global against per-layer top sets (the `per_layer` mode ranks each pool tensor on its "
        "own): the Jaccard of the per-layer top-k sets' union with the global top set of the "
        "same size (the global top-k itself always lies inside them), and the share of the "
        "global top-k found by k spread evenly over the tensors (top-⌈k/tensors⌉ each).",
        "",
        table(inputs.modes),
        "",
    ]


def superweight_section(inputs: ReportInputs) -> list[str]:
    spikes = inputs.spikes
    return [
        "### Super-weight detector",
        "",
        "Data-free detector after Yu et al. (2024), located where the spike happens: in each MLP "
        "down projection, the token and output channel (row) of its largest |output| over one "
        "calibration batch, then the input channel (col) whose term |W[row, col]·x[col]| "
        "contributes most to it (share: of the summed |terms|); rows ranked by contribution. A "
        f"candidate needs its input and its output to reach {inputs.params.spike_ratio:g}× the "
        "layer's median |activation|. Each weight[row, col] was then set alone to 0 and to the "
        "mean of its row (the mean-ablation control), ΔPPL with 95% paired CIs. "
        f"**{int(spikes['candidate'].sum())} of {len(spikes)}** down projections hold a candidate.",
        "",
        table(spikes),
        "",
    ]


def scaling_section(inputs: ReportInputs) -> list[str]:
    params = inputs.params
    shown = inputs.study.select(
        "label",
        "kind",
        "tuning",
        "step",
        "final",
        "params",
        "active_params",
        "baseline_ppl",
        "top_share",
        "max_over_median",
        "delta_ppl_top",
        "delta_ppl_top_rel",
        "separation",
        "superweight_candidates",
    )
    return [
        "### Scaling across the study's models",
        "",
        f"Each member scored with {params.metric} (seed {params.seeds[0]}); top_share = share of "
        "the "
        "pool's total score in its top 0.1% weights; ΔPPL from zeroing the global top-"
        f"{inputs.metrics['headline_k']} vs matched random weights. Fits over the final dense base "
        "members: statistic = a · params^slope (log-log least squares, 95% t-interval of the "
        "slope).",
        "",
        *scaling_verdict(inputs.fits),
        table(shown),
        "",
        table(inputs.fits),
        "",
    ]


def scaling_verdict(fits: pl.DataFrame) -> list[str]:
    """What the fits support, in words: the leave-one-out test of prediction within 20%, and
    whether a two-segment law (a critical parameter threshold) beats one line."""
    out = []
    for row in fits.iter_rows(named=True):
        name, loo = row["statistic"], row["loo_mean_error"]
        if loo is None or not math.isfinite(loo):
            out.append(f"- {name}: {row['note'] or 'no leave-one-out error'}.")
            continue
        held = "holds" if row["loo_max_error"] <= 0.2 else "does not hold"
        line = (
            f"- {name}: slope {fmt(row['slope'])} (R² {fmt(row['r2'])}); predicting each model "
            f"from the others misses by {fmt(100 * loo)}% on average, "
            f"{fmt(100 * row['loo_max_error'])}% at most: prediction within 20% {held}."
        )
        if row["breakpoint"] is not None and math.isfinite(row["breakpoint"]):
            line += (
                f" A two-segment law breaking at {fmt(row['breakpoint'])} parameters (slopes "
                f"{fmt(row['slope_below'])}, {fmt(row['slope_above'])}): F-test p = "
                f"{fmt(row['breakpoint_p'])}."
            )
        else:
            line += f" {row['note']}." if row["note"] else ""
        out.append(line)
    return [*out, ""]


def architecture_section(inputs: ReportInputs) -> list[str]:
    """Where each final member's top-k sits by component class, and the group comparisons (the
    depth profile is in the figure)."""
    finals = inputs.study.filter(pl.col("final") == "yes")["label"].implode()
    components = inputs.shares.filter(
        (pl.col("axis") == "component") & pl.col("label").is_in(finals)
    )
    wide = components.pivot(on="label", index="group", values="topk_share").sort("group")
    k = inputs.metrics["headline_k"]
    out = [
        f"### Where the sensitivity sits, member by member (share of the top-{k})",
        "",
        table(wide.rename({"group": "component"}).fill_null(0.0)),
        "",
    ]
    if len(inputs.groups):
        notes = sorted(set(inputs.groups["note"]) - {""})
        out += [
            "Group comparison of the final members (permutation test of the difference of "
            "means). " + (" ".join(f"{n}." for n in notes) if notes else ""),
            "",
            table(inputs.groups.filter(pl.col("share") == "score_share").drop("share", "note")),
            "",
        ]
    return out + experts_lines(inputs) + drift_lines(inputs)


def experts_lines(inputs: ReportInputs) -> list[str]:
    """The mixture-of-experts members' experts: score shares and routed tokens."""
    if not len(inputs.experts):
        return []
    few = int(inputs.experts["few_tokens"].sum())
    rho = spearman(
        inputs.experts["token_share"].to_numpy(), inputs.experts["score_share"].to_numpy()
    )
    return [
        "### Mixture of experts: each expert's score share and routed tokens",
        "",
        f"{few} of {len(inputs.experts)} experts saw fewer than a tenth of a uniform share of the "
        "routed calibration tokens (few_tokens): their scores rest on few tokens. Spearman ρ "
        f"of score share against token share over the experts: {fmt(rho)}.",
        "",
        table(inputs.experts),
        "",
    ]


def drift_lines(inputs: ReportInputs) -> list[str]:
    """Checkpoints: overlap of each step's critical set with the last step's and the previous."""
    if not len(inputs.drift):
        return []
    k = inputs.metrics["headline_k"]
    out = [f"### Checkpoints: drift of the critical set during training (k = {k})", ""]
    for (model,), rows in inputs.drift.filter(pl.col("k") == k).group_by(
        "model", maintain_order=True
    ):
        last = rows.filter(pl.col("against") == "last").sort("step")
        formed = last.filter(pl.col("jaccard") >= 0.5)["step"]
        when = (
            f"from step {formed[0]} on, the top-{k} shares Jaccard ≥ 0.5 with the last step's"
            if len(formed) and (last.filter(pl.col("step") >= formed[0])["jaccard"] >= 0.5).all()
            else f"no earlier step's top-{k} reaches Jaccard 0.5 with the last step's"
        )
        out += [f"- `{model}`: {when}.", ""]
    shown = inputs.drift.filter(pl.col("k") == k).drop("model", "k")
    return [*out, table(shown), ""]


def tables_heading(inputs: ReportInputs) -> list[str]:
    return ["## Tables", "", "The numbers behind the figures, the longest last.", ""]


SECTIONS = (
    setup_section,
    headline_section,
    criteria_section,
    figures_section,
    tables_heading,
    comparisons_section,
    tasks_section,
    top_weights_section,
    layers_section,
    layer_sweep_section,
    faults_section,
    pruning_section,
    finetune_section,
    units_section,
    clusters_section,
    stability_section,
    correlation_section,
    agreement_section,
    superweight_section,
    scaling_section,
    architecture_section,
    experiments_section,
)


def render_markdown(inputs: ReportInputs) -> str:
    """The headline and the figures first, then the tables, the longest last."""
    return "\n".join(line for section in SECTIONS for line in section(inputs))


def render_html(markdown_text: str, title: str) -> str:
    body = md.markdown(markdown_text, extensions=["tables"])
    style = (
        "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;font-size:0.85em}td,th{border:1px solid #ccc;"
        "padding:2px 6px;text-align:right}img{max-width:100%}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title>"
        f"<style>{style}</style></head><body>{body}</body></html>\n"
    )
