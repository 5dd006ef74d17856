"""The human-readable report (Markdown and HTML) and the flat DVC metrics."""

from __future__ import annotations

import math

import markdown as md
import polars as pl

from cwa.experiment import headline


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
    rows = ["| " + " | ".join(fmt(v, digits) for v in r) + " |" for r in df.iter_rows()]
    return "\n".join([head, rule, *rows])


def metrics(baseline: pl.DataFrame, effects: pl.DataFrame, stability: pl.DataFrame, k: int) -> dict:
    """The flat keys `dvc exp show` displays (DESIGN.md §6)."""
    h = headline(effects, k)
    jac = stability.filter(pl.col("k") == k)["jaccard"]
    return {
        "baseline_ppl": float(baseline["ppl"][0]),
        **h,
        "jaccard_top": float(jac.mean()) if len(jac) else float("nan"),
        "headline_k": k,
    }


def effects_table(effects: pl.DataFrame) -> pl.DataFrame:
    """Per perturbation, selection and k: ΔPPL with CI (random draws: mean, CI over draws' CIs)."""
    return (
        effects.group_by(["perturbation", "strength", "selection", "k"], maintain_order=True)
        .agg(
            pl.col("delta_ppl").mean().alias("ΔPPL"),
            pl.col("delta_ppl").std().alias("sd draws"),
            pl.col("ci_low").mean().alias("CI low"),
            pl.col("ci_high").mean().alias("CI high"),
            pl.col("rel_delta").mean().alias("ΔPPL / PPL"),
            pl.col("delta_accuracy").mean().alias("Δacc"),
            pl.col("diverged").sum().alias("diverged"),
            pl.len().alias("runs"),
        )
        .sort(["perturbation", "k", "selection"])
    )


def render_markdown(ctx: dict) -> str:
    m, p = ctx["metrics"], ctx["params"]
    k = m["headline_k"]
    top = ctx["top"]
    lines = [
        f"# Critical weights of `{p.model}`",
        "",
        f"Metric **{p.metric}**, ranking mode **{p.mode}**, seeds {list(p.seeds)} "
        f"({p.calib_samples} calibration windows of {p.seq_len} tokens each), "
        f"evaluation on {ctx['baseline']['texts'][0]} held-out windows "
        f"({ctx['baseline']['tokens'][0]} predicted tokens), dtype {p.dtype}. "
        f"Ranking pool: {ctx['pool_weights']:,} weights in {ctx['pool_tensors']} tensors "
        f"({'with' if p.include_embeddings else 'without'} embeddings and lm_head) "
        f"of a {ctx['baseline']['params'][0]:,}-parameter model. Commit `{ctx['commit']}`.",
        "",
        "## Headline",
        "",
        f"Zeroing the top-{k} weights by {p.metric} changes perplexity by "
        f"**{fmt(m['delta_ppl_top'])}** (baseline {fmt(m['baseline_ppl'], 4)}); "
        f"zeroing {k} random weights (same tensors, {p.random_draws} draws) by "
        f"{fmt(m['delta_ppl_random'])} on average; the {k} lowest-scored weights by "
        f"{fmt(m['delta_ppl_bottom'])}. Separation (top ΔPPL / mean |random ΔPPL|): "
        f"**{fmt(m['separation'])}**. Top-{k} sets of different seeds overlap with mean "
        f"Jaccard **{fmt(m['jaccard_top'])}**.",
        "",
        table(ctx["headline_rows"]),
        "",
        f"## The top {len(top)} weights (seed {p.seeds[0]})",
        "",
        "Row = output feature, col = input feature (nn.Linear convention).",
        "",
        table(top),
        "",
        f"![where the top-{k} weights sit](heatmap.png)",
        "",
        "## Score distribution",
        "",
        "![score distribution](score_distribution.png)",
        "",
        "## Perturbation effects",
        "",
        "ΔPPL = perplexity after − before, on the same windows; 95% CIs by paired bootstrap over "
        f"windows ({p.bootstrap} resamples). Random rows average {p.random_draws} draws "
        f"(`sd draws` is their spread). gauss_noise: w·(1 + {p.noise_sigma}·ε); bit_flip flips "
        f"bit {p.flip_bit} of the {p.dtype} storage. Every perturbed weight was restored bit "
        "for bit after each experiment (checked in the run).",
        "",
        "![perturbation effects](effects.png)",
        "",
        table(ctx["effects"]),
        "",
        "## Stability across calibration seeds",
        "",
        "![stability](stability.png)",
        "",
        table(ctx["stability"]),
        "",
    ]
    lines += [
        "## Do the metrics agree?",
        "",
        f"Every metric of `compare_metrics` on seed {p.seeds[0]}'s draw: overlap of the global "
        f"top-{k} sets (Jaccard) and Spearman ρ of |scores| over a fixed 100k-weight sample.",
        "",
        f"![metric agreement at k={k}](agreement.png)",
        "",
        table(ctx["agreement"]),
        "",
    ]
    spikes = ctx["spikes"]
    n_cand = int(spikes["candidate"].sum())
    lines += [
        "## Super-weight detector",
        "",
        "Data-free detector after Yu et al. (2024): in each MLP down projection, the input channel "
        "(col) and output channel (row) with the largest |activation| over one calibration batch; "
        f"a candidate needs both to reach {p.spike_ratio:g}× the layer's median |activation|. Each "
        f"weight[row, col] was then zeroed alone (ΔPPL with 95% paired CI). **{n_cand} of "
        f"{len(spikes)}** down projections hold a candidate.",
        "",
        table(spikes),
        "",
    ]
    if ctx["scaling"] is not None:
        lines += [
            "## Scaling across the built-in family",
            "",
            f"Each model scored with {p.metric} (seed {p.seeds[0]}); top_share = share of the "
            "pool's total score in its top 0.1% weights; ΔPPL from zeroing the global top-"
            f"{k} vs matched random weights. Fits: statistic = a · params^slope (log-log least "
            "squares, 95% t-interval of the slope).",
            "",
            "![scaling](scaling.png)",
            "",
            table(ctx["scaling"]),
            "",
            table(ctx["fits"]),
            "",
        ]
    if ctx["has_training"]:
        lines += ["## Built-in model training", "", "![training curves](training.png)", ""]
    return "\n".join(lines)


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
