"""The report's figures. Each function takes tidy tables and writes one PNG."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import polars as pl
import torch

from cwa.core.io import atomic_write

COLORS = {
    "top": "#c0392b",
    "random_k": "#7f8c8d",
    "magnitude_matched_k": "#e67e22",
    "bottom_k": "#2980b9",
}
OTHER_COLORS = ("#8e44ad", "#16a085", "#2c3e50")  # a control registered later still gets a line


def _save(fig, path: str | Path) -> None:
    atomic_write(
        path,
        lambda tmp: fig.savefig(
            tmp, dpi=110, bbox_inches="tight", format="png", metadata={"Software": None}
        ),
    )
    plt.close(fig)


def score_distribution(
    scores: Mapping[str, torch.Tensor],
    components: dict[str, str],
    log_range: tuple[float, float],
    metric: str,
    path,
    bins=80,
) -> None:
    """Histogram of log10 |score| per component (how heavy is the tail?), streamed tensor by
    tensor over bins shared by every component, spanning `log_range` (score_pass.read_once)."""

    def logs(name):
        v = scores[name].reshape(-1).double().abs()
        return torch.log10(v[v > 0]).numpy()

    edges = np.linspace(log_range[0], log_range[1] + 1e-9, bins + 1)
    counts: dict[str, np.ndarray] = {}
    for name in scores:
        comp = components[name]
        counts[comp] = counts.get(comp, 0) + np.histogram(logs(name), edges)[0]
    fig, ax = plt.subplots(figsize=(7, 4))
    for comp, c in sorted(counts.items()):
        if c.sum():
            ax.stairs(c / (c.sum() * np.diff(edges)), edges, label=comp)
    ax.set(
        xlabel=f"log10 |{metric} score|", ylabel="density", title="Score distribution by component"
    )
    ax.legend(fontsize=7, ncols=2)
    _save(fig, path)


def layer_heatmap(ranking: pl.DataFrame, pool: pl.DataFrame, k: int, path) -> None:
    """Where the top-k weights sit: count per (layer, component) over the whole pool's grid."""
    top = ranking.filter((pl.col("selection") == "top") & (pl.col("k") == k))
    layers = sorted(pool["layer"].unique().to_list())
    comps = sorted(pool["component"].unique().to_list())
    grid = np.zeros((len(layers), len(comps)))
    for (layer, comp), rows in top.group_by(["layer", "component"]):
        grid[layers.index(layer), comps.index(comp)] = len(rows)
    fig, ax = plt.subplots(figsize=(1.1 * len(comps) + 2, 0.5 * len(layers) + 2))
    im = ax.imshow(grid, cmap="Reds", aspect="auto")
    ax.set_xticks(range(len(comps)), comps, rotation=45, ha="right")
    ax.set_yticks(range(len(layers)), [str(v) for v in layers])
    for (i, j), v in np.ndenumerate(grid):
        ax.text(j, i, f"{int(v)}", ha="center", va="center", fontsize=8)
    ax.set(xlabel="component", ylabel="layer", title=f"Top-{k} weights by layer and component")
    fig.colorbar(im, ax=ax, label="weights")
    _save(fig, path)


def sensitivity_heatmap(grid: pl.DataFrame, metric: str, path) -> None:
    """Σ|score| per (layer, component) as a share of the pool's total (layer_stats.summed_grid)."""
    layers = sorted(grid["layer"].unique().to_list())
    comps = sorted(grid["component"].unique().to_list())
    cells = np.full((len(layers), len(comps)), np.nan)
    for r in grid.iter_rows(named=True):
        cells[layers.index(r["layer"]), comps.index(r["component"])] = 100 * r["share"]
    fig, ax = plt.subplots(figsize=(1.1 * len(comps) + 2, 0.5 * len(layers) + 2))
    im = ax.imshow(cells, cmap="Reds", aspect="auto")
    ax.set_xticks(range(len(comps)), comps, rotation=45, ha="right")
    ax.set_yticks(range(len(layers)), [str(v) for v in layers])
    for (i, j), v in np.ndenumerate(cells):
        if np.isfinite(v):
            ax.text(j, i, f"{v:.1f}", ha="center", va="center", fontsize=8)
    title = f"Summed |{metric} score| by layer and component (% of the pool's total)"
    ax.set(xlabel="component", ylabel="layer", title=title)
    fig.colorbar(im, ax=ax, label="% of total")
    _save(fig, path)


def layer_comparison(stats: pl.DataFrame, metric: str, path) -> None:
    """Per layer: mean, standard deviation and maximum of |score| (layer_stats.by_layer), on a
    log axis (a ± std bar would reach below zero for heavy-tailed scores)."""
    rows = stats.filter(pl.col("layer") != "all")
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(rows) + 3), 4))
    for column, marker, color in (
        ("mean", "o", COLORS["top"]),
        ("std", "s", COLORS["random_k"]),
        ("max", "^", COLORS["bottom_k"]),
    ):
        ax.plot(x, rows[column], marker, color=color, label=column)
    ax.set_xticks(x, rows["layer"].to_list())
    ax.set_yscale("log")
    ax.set(
        xlabel="layer (-1: outside the blocks)",
        ylabel=f"|{metric} score|",
        title="Sensitivity by layer",
    )
    ax.legend(fontsize=7)
    _save(fig, path)


def layer_sweep(table: pl.DataFrame, path) -> None:
    """ΔPPL by layer, each block's own top-k perturbed alone (95% paired-bootstrap CI) against
    the mean of its random draws; symlog, so a block whose top set lowers perplexity shows."""
    x = table["layer"].to_numpy()
    top = table["delta_ppl"].to_numpy()
    err = np.abs(np.stack([top - table["ci_low"].to_numpy(), table["ci_high"].to_numpy() - top]))
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(x) + 3), 4))
    ax.errorbar(x, top, yerr=err, fmt="o-", color=COLORS["top"], capsize=3, label="top-k")
    ax.plot(x, table["control_delta_ppl"], "s--", color=COLORS["random_k"], label="random_k")
    ax.set_yscale("symlog", linthresh=1e-4)
    ax.set_xticks(x)
    named = f"{table['perturbation'][0]} {table['setting'][0]}".strip() if len(table) else ""
    ax.set(xlabel="layer perturbed alone", ylabel="ΔPPL", title=f"One block at a time: {named}")
    ax.legend(fontsize=7)
    _save(fig, path)


def effects(effects: pl.DataFrame, path) -> None:
    """ΔPPL vs k per perturbation: top set against controls, with 95% paired-bootstrap CIs."""
    _per_perturbation(effects, "k", "k (weights perturbed)", path, log_x=True)


def mask(effects: pl.DataFrame, path) -> None:
    """ΔPPL against the fraction of each selection perturbed, per perturbation."""
    _per_perturbation(effects, "mask_ratio", "fraction of the selection", path)


def _per_perturbation(effects: pl.DataFrame, x: str, xlabel: str, path, log_x=False) -> None:
    perts = effects["perturbation"].unique().sort().to_list()
    fig, axes = _panels(len(perts))
    for ax, pert in zip(axes, perts, strict=True):
        rows = effects.filter(pl.col("perturbation") == pert)
        _selection_lines(ax, rows, x)
        if log_x:  # explicit limits: a panel where everything diverged has no line to scale by
            ax.set_xscale("log")
            ax.set_xlim(rows[x].min() / 1.5, rows[x].max() * 1.5)
        ax.set(title=f"{pert} {rows['setting'][0]}".strip(), xlabel=xlabel, ylabel="ΔPPL (symlog)")
    _save(fig, path)


def _selection_lines(ax, rows: pl.DataFrame, x: str, positions: dict | None = None) -> None:
    """One line per selection that ran (random draws averaged) of ΔPPL against column `x`, with
    CIs; diverged points are marked instead of drawn."""
    ran = set(rows["selection"])
    others = dict(zip(sorted(ran - set(COLORS)), OTHER_COLORS * len(ran), strict=False))
    for sel, color in {**COLORS, **others}.items():
        sub = rows.filter(pl.col("selection") == sel)
        if sub.is_empty():
            continue
        agg = (
            sub.group_by(x)
            .agg(pl.col("delta_ppl", "ci_low", "ci_high").mean(), pl.col("diverged").any())
            .sort(x)
        )
        if positions is not None:
            agg = agg.with_columns(pl.col(x).replace_strict(positions).alias("_x")).sort("_x")
        at = "_x" if positions is not None else x
        ok = agg.filter(~pl.col("diverged"))
        ax.errorbar(
            ok[at],
            ok["delta_ppl"],
            color=color,
            marker="o",
            capsize=3,
            label=sel,
            yerr=[ok["delta_ppl"] - ok["ci_low"], ok["ci_high"] - ok["delta_ppl"]],
        )
        for v in agg.filter(pl.col("diverged"))[at]:
            ax.annotate("diverged", (v, 0), color=color, fontsize=7, rotation=90)
    ax.set_yscale("symlog", linthresh=1e-2)
    lo, hi = ax.get_ylim()
    ax.set_ylim(min(lo, -1e-2), max(hi, 1e-2))  # tiny effects: keep readable symlog ticks
    ax.axhline(0, color="black", lw=0.5)
    ax.legend(fontsize=7)


def _panels(n: int, cols: int = 3):
    """A grid of n panels, `cols` per row; unused panels hidden."""
    rows = max(1, -(-n // cols))
    fig, axes = plt.subplots(
        rows, cols, figsize=(4.4 * cols, 3.6 * rows), squeeze=False, layout="constrained"
    )
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n]) or [axes.flat[0]]


def tasks(table: pl.DataFrame, path) -> None:
    """Per downstream task, the change in accuracy of each headline experiment by selection, with
    its CI (the report's tasks table: draws averaged; `none`, the unperturbed model, left out)."""
    rows = table.filter(pl.col("perturbation") != "none")
    names = rows["task"].unique().sort().to_list()
    fig, axes = _panels(len(names), cols=2)
    for ax, task in zip(axes, names, strict=True):
        cells = rows.filter(pl.col("task") == task)
        labels = cells.select(
            pl.concat_str("perturbation", "setting", separator=" ").str.strip_chars()
        ).to_series()
        experiments = list(dict.fromkeys(labels.to_list()))
        selections = [
            s
            for s in (*COLORS, *sorted(set(cells["selection"]) - set(COLORS)))
            if s in set(cells["selection"])
        ]
        width = 0.8 / max(len(selections), 1)
        for i, sel in enumerate(selections):
            mine = cells.filter(pl.col("selection") == sel)
            mine_labels = labels.filter(cells["selection"] == sel).to_list()
            x = (
                np.array([experiments.index(e) for e in mine_labels])
                + (i - len(selections) / 2 + 0.5) * width
            )
            delta = mine["Δacc"].to_numpy()
            err = [delta - mine["CI low"].to_numpy(), mine["CI high"].to_numpy() - delta]
            ax.bar(
                x,
                delta,
                width,
                yerr=err,
                capsize=2,
                label=sel,
                color=COLORS.get(sel, OTHER_COLORS[0]),
            )
        ax.set_xticks(range(len(experiments)), experiments, rotation=30, ha="right")
        ax.axhline(0, color="black", lw=0.5)
        ax.set(title=task, ylabel="Δ accuracy")
        ax.legend(fontsize=7)
    _save(fig, path)


def dose(effects: pl.DataFrame, path) -> None:
    """ΔPPL against strength for every perturbation that has a sweep (settings in the order of
    their numeric strength, bit fields last)."""
    swept = sorted(
        name for (name,), g in effects.group_by("perturbation") if g["setting"].n_unique() > 1
    )
    fig, axes = _panels(len(swept))
    for ax, pert in zip(axes, swept, strict=False):
        rows = effects.filter(pl.col("perturbation") == pert)
        order = (
            rows.select("setting", "strength")
            .unique()
            .sort(pl.col("strength").fill_nan(None), "setting", nulls_last=True)["setting"]
            .to_list()
        )
        _selection_lines(ax, rows, "setting", {s: i for i, s in enumerate(order)})
        ax.set_xticks(range(len(order)), order, rotation=30, ha="right", fontsize=8)
        ax.set(title=pert, xlabel="strength", ylabel="ΔPPL (symlog)")
    if not swept:
        axes[0].text(0.5, 0.5, "no strength sweeps", ha="center", transform=axes[0].transAxes)
    _save(fig, path)


def faults(summary: pl.DataFrame, path) -> None:
    """Median ΔPPL over fault trials against the bit error rate: unprotected, and with the top
    or a matched random fraction of the pool protected."""
    fracs = sorted(f for f in summary["protect"].unique() if f > 0)
    fig, axes = _panels(max(1, len(fracs)), cols=max(1, len(fracs)))
    none = summary.filter(pl.col("arm") == "none").sort("rate")
    for ax, frac in zip(axes, fracs, strict=False):
        ax.plot(none["rate"], none["median_delta_ppl"], "o-", color="black", label="unprotected")
        for arm, color in (("top", COLORS["top"]), ("random", COLORS["random_k"])):
            rows = summary.filter((pl.col("protect") == frac) & (pl.col("arm") == arm)).sort("rate")
            ax.plot(
                rows["rate"], rows["median_delta_ppl"], "o-", color=color, label=f"{arm} protected"
            )
        ax.set_xscale("log")
        ax.set_xlim(summary["rate"].min() / 2, summary["rate"].max() * 2)  # even if all diverged
        ax.set_yscale("symlog", linthresh=1e-2)
        ax.set(
            title=f"protect {frac:g} of the pool",
            xlabel="bit error rate",
            ylabel="median ΔPPL over trials (symlog)",
        )
        ax.legend(fontsize=7)
    _save(fig, path)


def stability(table: pl.DataFrame, path) -> None:
    """Jaccard and Spearman of top-k sets across calibration seeds, vs k; nothing with one seed
    (no pair to compare: the report says so instead)."""
    if not len(table):
        return
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    agg = (
        table.group_by("k")
        .agg(
            pl.col("jaccard").mean(),
            pl.col("jaccard").min().alias("lo"),
            pl.col("jaccard").max().alias("hi"),
            pl.col("spearman", "spearman_pool").mean(),
        )
        .sort("k")
    )
    ax.plot(agg["k"], agg["jaccard"], "o-", label="Jaccard (mean of seed pairs)")
    ax.fill_between(agg["k"], agg["lo"], agg["hi"], alpha=0.2, label="min–max over pairs")
    ax.plot(agg["k"], agg["spearman"], "s--", label="Spearman over the union of top-k")
    ax.plot(agg["k"], agg["spearman_pool"], ":", color="gray", label="Spearman, 100k-weight sample")
    ax.set_xscale("log")
    ax.set(xlabel="k", ylabel="agreement", ylim=(-1.05, 1.05), title="Stability across seeds")
    ax.legend(fontsize=8)
    _save(fig, path)


def scaling(
    points: pl.DataFrame, others: pl.DataFrame, fits: pl.DataFrame, stats: tuple[str, ...], path
) -> None:
    """Each statistic against parameter count on log-log axes: the fitted members (circles)
    with the power law, the other members (crosses, with their kind) beside it."""
    members = pl.concat([points, others])
    fig, axes = plt.subplots(
        1, len(stats), figsize=(4.2 * len(stats), 3.6), squeeze=False, layout="constrained"
    )
    x = members["params"].to_numpy().astype(float)
    grid = np.geomspace(x.min(), x.max(), 50)
    for ax, stat in zip(axes[0], stats, strict=True):
        for rows, marker in ((points, "o"), (others, "x")):
            ax.loglog(rows["params"], rows[stat], marker, color="#c0392b", linestyle="none")
            for row in rows.iter_rows(named=True):
                label = f"{row['label']} ({row['kind']})" if marker == "x" else row["label"]
                ax.annotate(
                    label,
                    (row["params"], row[stat]),
                    fontsize=7,
                    xytext=(3, 3),
                    textcoords="offset points",
                )
        fit = fits.filter(pl.col("statistic") == stat).row(0, named=True)
        if np.isfinite(fit["slope"]):
            ax.loglog(
                grid,
                10 ** fit["intercept"] * grid ** fit["slope"],
                "--",
                color="black",
                label=f"slope {fit['slope']:.2f}, R² {fit['r2']:.2f}",
            )
            ax.legend(fontsize=7)
        ax.set(xlabel="parameters", title=stat)
        _log_labels(ax, members[stat].to_numpy())
    _save(fig, path)


def _log_labels(ax, y: np.ndarray) -> None:
    """Readable log axes: no minor x labels; minor y labels only when y spans < 1 decade."""
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    y = y[np.isfinite(y) & (y > 0)]
    narrow = len(y) and np.log10(y.max() / y.min()) < 1
    fmt = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:.3g}")
    ax.yaxis.set_minor_formatter(fmt if narrow else matplotlib.ticker.NullFormatter())
    ax.yaxis.set_major_formatter(fmt)


def training_curves(logs: pl.DataFrame, path) -> None:
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for (model,), rows in logs.group_by("model", maintain_order=True):
        smooth = rows["loss"].rolling_mean(20, min_samples=1)
        ax.plot(rows["step"], smooth, label=model)
    ax.set(xlabel="step", ylabel="training loss (20-step mean)", title="Built-in family training")
    ax.legend(fontsize=8)
    _save(fig, path)


def shares(table: pl.DataFrame, kinds: dict[str, str], k: int, path) -> None:
    """Left: each member's share of the top-k by component class (bars). Right: the share of the
    top-k (solid) and of the total score (dashed) by normalised depth. `kinds`: label -> kind
    of the members shown."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8), layout="constrained")
    labels = [m for m in table["label"].unique(maintain_order=True) if m in kinds]
    components = table.filter(pl.col("axis") == "component")
    groups = sorted(set(components["group"]))
    width = 0.8 / max(len(labels), 1)
    for i, (label, color) in enumerate(zip(labels, _colors(len(labels)), strict=True)):
        name = f"{label} ({kinds[label]})"
        mine = dict(
            components.filter(pl.col("label") == label).select("group", "topk_share").iter_rows()
        )
        x = np.arange(len(groups)) + i * width
        left.bar(x, [mine.get(g, 0.0) for g in groups], width, label=name, color=color)
        depth = table.filter((pl.col("label") == label) & (pl.col("axis") == "depth"))
        right.plot(depth["depth"], depth["topk_share"], "o-", color=color, label=name)
        right.plot(depth["depth"], depth["score_share"], "--", color=color)
    left.set_xticks(np.arange(len(groups)) + 0.4 - width / 2, groups, rotation=45, ha="right")
    left.set(ylabel=f"share of the top-{k}", title="By component")
    right.set(
        xlabel="normalised depth (0 = first block, 1 = last)",
        ylabel="share (solid: top-k, dashed: score)",
        title="By depth",
    )
    left.legend(fontsize=7)
    _save(fig, path)


def experts(table: pl.DataFrame, path) -> None:
    """Each expert's share of the score against its share of the routed tokens (1 = a uniform
    share); red: too few tokens for its scores to mean much."""
    fig, ax = plt.subplots(figsize=(5.8, 4.0), layout="constrained")
    for (label,), rows in table.group_by("label", maintain_order=True):
        experts_per_block = rows.group_by("layer").len()["len"].max()
        x = rows["token_share"].to_numpy() * experts_per_block
        colors = ["#c0392b" if few else "#2c3e50" for few in rows["few_tokens"]]
        ax.scatter(x, rows["score_share"], c=colors, s=22)
        for row, xi in zip(rows.iter_rows(named=True), x, strict=True):
            ax.annotate(
                f"{label} L{row['layer']}E{row['expert']}",
                (xi, row["score_share"]),
                fontsize=6,
                xytext=(2, 2),
                textcoords="offset points",
            )
    ax.axvline(1.0, color="gray", linestyle=":", linewidth=1)
    ax.set(
        xlabel="routed tokens / uniform share",
        ylabel="share of the pool's total |score|",
        title="Experts: sensitivity against routing",
    )
    _save(fig, path)


def drift(table: pl.DataFrame, k: int, path) -> None:
    """Per checkpointed model, at k: Jaccard of each step's top-k with the last step's (solid)
    and the previous step's (dashed), and the score Spearman with the last (dotted)."""
    fig, ax = plt.subplots(figsize=(6.0, 3.8), layout="constrained")
    rows = table.filter(pl.col("k") == k)
    for ((model,), series), color in zip(
        rows.group_by("model", maintain_order=True), _colors(rows["model"].n_unique()), strict=True
    ):
        last = series.filter(pl.col("against") == "last").sort("step")
        previous = series.filter(pl.col("against") == "previous").sort("step")
        ax.plot(last["step"], last["jaccard"], "o-", color=color, label=f"{model}: Jaccard, last")
        ax.plot(
            previous["step"], previous["jaccard"], "s--", color=color, label="Jaccard, previous"
        )
        ax.plot(last["step"], last["spearman"], "^:", color=color, label="Spearman, last")
    ax.set(
        xlabel="training step",
        ylabel="agreement",
        ylim=(-0.05, 1.05),
        title=f"Drift of the top-{k} during training",
    )
    ax.legend(fontsize=7)
    _save(fig, path)


def _colors(n: int) -> list:
    return [plt.get_cmap("viridis")(v) for v in np.linspace(0.1, 0.85, max(n, 1))][:n]


def agreement(table: pl.DataFrame, k: int, path) -> None:
    """Jaccard of global top-k sets between every pair of metrics (symmetric, diagonal 1)."""
    rows = table.filter(pl.col("k") == k)
    metrics = sorted(set(rows["metric_a"]) | set(rows["metric_b"]))
    grid = np.eye(len(metrics))
    for a, b, j in rows.select("metric_a", "metric_b", "jaccard").iter_rows():
        grid[metrics.index(a), metrics.index(b)] = grid[metrics.index(b), metrics.index(a)] = j
    fig, ax = plt.subplots(figsize=(1.0 * len(metrics) + 2.5, 0.8 * len(metrics) + 1.5))
    im = ax.imshow(grid, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(metrics)), metrics, rotation=45, ha="right")
    ax.set_yticks(range(len(metrics)), metrics)
    for (i, j), v in np.ndenumerate(grid):
        ax.text(
            j,
            i,
            f"{v:.2f}",
            ha="center",
            va="center",
            fontsize=8,
            color="white" if v > 0.6 else "black",
        )
    ax.set(title=f"Overlap of top-{k} sets (Jaccard)")
    fig.colorbar(im, ax=ax)
    _save(fig, path)


def pruning(table: pl.DataFrame, path) -> None:
    """Perplexity against the pruned fraction per method (unstructured; OWL's allocation
    dashed), with 95% paired CIs; diverged points are left out."""
    rows = table.filter((pl.col("pattern") == "unstructured") & ~pl.col("diverged"))
    dense = (table["ppl"] - table["delta_ppl"]).drop_nans()
    methods = table["method"].unique(maintain_order=True).to_list()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    colors = plt.get_cmap("tab10").colors
    for i, method in enumerate(methods):
        for allocation, style in (("uniform", "-"), ("owl", "--")):
            mine = rows.filter(
                (pl.col("method") == method) & (pl.col("allocation") == allocation)
            ).sort("target")
            if mine.is_empty():
                continue
            low = (mine["delta_ppl"] - mine["ci_low"]).clip(lower_bound=0)
            high = (mine["ci_high"] - mine["delta_ppl"]).clip(lower_bound=0)
            ax.errorbar(
                mine["target"],
                mine["ppl"],
                yerr=[low, high],
                marker="o",
                capsize=3,
                linestyle=style,
                color=colors[i % len(colors)],
                label=method if allocation == "uniform" else f"{method} (owl)",
            )
    if len(dense):
        ax.axhline(dense[0], color="black", linestyle=":", label="dense")
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.yaxis.set_minor_formatter(matplotlib.ticker.ScalarFormatter())
    ax.set(xlabel="fraction pruned", ylabel="perplexity (log)", title="Pruning")
    ax.legend(fontsize=8)
    _save(fig, path)


def finetune(runs: pl.DataFrame, summary: pl.DataFrame, arms: tuple[str, ...], path) -> None:
    """Gain on the new text and forgetting on the evaluation text per fine-tuning arm: the mean
    over seeds with its 95% t-interval, and each seed's run as a dot (symmetric log scale: the
    sparse arms move by a few PPL points, the others by tens)."""
    fig, axes = plt.subplots(1, 2, figsize=(9.5, 0.45 * len(arms) + 1.8), sharey=True)
    y = np.arange(len(arms))[::-1]
    own = summary.filter(pl.col("against") == "")
    for ax, measure in zip(axes, ("gain", "forgetting"), strict=True):
        for yi, arm in zip(y, arms, strict=True):
            row = own.filter(pl.col("arm") == arm)
            if row.is_empty():
                continue
            mean, low, high = (
                row[c][0] for c in (measure, f"{measure}_ci_low", f"{measure}_ci_high")
            )
            err = [[max(mean - low, 0)], [max(high - mean, 0)]] if np.isfinite(low) else None
            ax.errorbar([mean], [yi], xerr=err, fmt="o", capsize=4, color=COLORS["top"])
            dots = runs.filter(pl.col("arm") == arm)[measure].to_numpy()
            ax.plot(dots, np.full(len(dots), yi + 0.15), ".", color="#7f8c8d")
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_xscale("symlog", linthresh=0.1)
        seen = np.concatenate([runs[measure].to_numpy(), [0.0]])
        ax.set_xlim(min(seen.min() * 1.6, -0.05), max(seen.max() * 1.6, 0.05))
        ax.set(xlabel=f"{measure} (PPL points)", title=measure.capitalize())
    axes[0].set_yticks(y, list(arms))
    _save(fig, path)


def seeds(table: pl.DataFrame, path) -> None:
    """The headline experiment seed by seed and pooled: the top set's ΔPPL with its 95% CI (one
    seed: over windows; pooled: over seeds and windows) beside the controls' mean ΔPPL."""
    fig, ax = plt.subplots(figsize=(6.5, 0.5 * len(table) + 1.5))
    y = np.arange(len(table))[::-1]
    top = table["ΔPPL top"].to_numpy()
    low = np.clip(top - table["CI low"].to_numpy(), 0, None)
    high = np.clip(table["CI high"].to_numpy() - top, 0, None)
    ax.errorbar(top, y, xerr=[low, high], fmt="o", capsize=3, color=COLORS["top"], label="top")
    for column, marker, color in (
        ("ΔPPL random_k", "s", COLORS["random_k"]),
        ("ΔPPL magnitude_matched_k", "D", "#8e44ad"),
    ):
        ax.plot(table[column], y, marker, color=color, label=column.removeprefix("ΔPPL "))
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_yticks(y, [f"seed {s}" if s != "pooled" else "pooled" for s in table["seed"]])
    ax.set(xlabel="ΔPPL", title="The headline, seed by seed")
    ax.legend(fontsize=8)
    _save(fig, path)


def layer_correlation(table: pl.DataFrame, path) -> None:
    """Heatmaps of the correlation over calibration windows between layers and between layer
    components: r of the sensitivities below the diagonal, r of their shares above it."""
    from cwa.analysis.layer_correlation import LEVELS, correlation_matrix

    levels = [lv for lv in LEVELS if not table.filter(pl.col("level") == lv).is_empty()]
    fig, axes = plt.subplots(1, max(len(levels), 1), figsize=(6 * max(len(levels), 1), 5.2))
    for ax, level in zip(np.atleast_1d(axes), levels, strict=False):
        labels, raw = correlation_matrix(table, level, "r")
        _, share = correlation_matrix(table, level, "share_r")
        shown = np.where(np.tri(len(labels), dtype=bool), raw, share)
        image = ax.imshow(shown, cmap="RdBu_r", vmin=-1, vmax=1)
        ticks = range(len(labels))
        size = 8 if len(labels) <= 12 else 5
        ax.set_xticks(ticks, labels, rotation=90, fontsize=size)
        ax.set_yticks(ticks, labels, fontsize=size)
        ax.set_title(f"by {level}: r below, share r above")
        fig.colorbar(image, ax=ax, shrink=0.8)
    _save(fig, path)


def units(table: pl.DataFrame, path) -> None:
    """Per kind, each top unit zeroed alone: its ΔPPL (95% CI from the effects) beside the mean
    ΔPPL of random units of its own layer."""
    kinds = table["kind"].unique(maintain_order=True).to_list()
    fig, axes = plt.subplots(1, max(len(kinds), 1), figsize=(6.5 * max(len(kinds), 1), 3.6))
    fig.subplots_adjust(wspace=0.55)  # room for the unit labels
    for ax, kind in zip(np.atleast_1d(axes), kinds, strict=False):
        rows = table.filter((pl.col("kind") == kind) & (pl.col("rank") >= 0)).sort("rank")
        y = np.arange(len(rows))[::-1]
        top = rows["top_delta_ppl"].to_numpy()
        err = [
            np.clip(top - rows["ci_low"].to_numpy(), 0, None),
            np.clip(rows["ci_high"].to_numpy() - top, 0, None),
        ]
        ax.errorbar(top, y, xerr=err, fmt="o", capsize=3, color=COLORS["top"], label="top unit")
        ax.plot(rows["control_delta_ppl"], y, "s", color=COLORS["random_k"], label="random")
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_yticks(y, rows["unit"].to_list(), fontsize=8)
        ax.set(xlabel="ΔPPL (zeroed alone)", title=f"Top {kind}s")
        ax.legend(fontsize=8)
    _save(fig, path)


def clusters(members: pl.DataFrame, path) -> None:
    """The clustered weights by magnitude and score, coloured by K-means cluster; the top set
    circled in black."""
    fig, ax = plt.subplots(figsize=(7, 4.8))
    labels = sorted(members["kmeans"].unique())
    colors = _colors(len(labels))
    for color, label in zip(colors, labels, strict=True):
        rows = members.filter(pl.col("kmeans") == label)
        ax.scatter(
            rows["log_abs_w"],
            rows["log_score"],
            s=3,
            color=color,
            alpha=0.5,
            label=f"cluster {label} ({len(rows):,})",
        )
    top = members.filter(pl.col("top"))
    ax.scatter(
        top["log_abs_w"],
        top["log_score"],
        s=10,
        facecolors="none",
        edgecolors="black",
        linewidths=0.5,
        label=f"top {len(top):,}",
    )
    ax.set(xlabel="log10 |w|", ylabel="log10 |score|", title="Clusters of weights (K-means)")
    ax.legend(fontsize=7, markerscale=3)
    _save(fig, path)
