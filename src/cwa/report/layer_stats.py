"""Sensitivity by layer and component: the old runner's per-layer statistics of |score| (mean,
standard deviation, maximum, share of the total) and the summed-sensitivity grid of its heatmap,
streamed tensor by tensor from one seed's score store (report.score_pass).

Each tensor contributes its count, mean and sum of squared deviations from its own mean (float64,
two passes over the tensor); groups combine them with Chan's pairwise formula, so the standard
deviation does not suffer the cancellation of E[x²] − E[x]² when it is small beside the mean."""

from __future__ import annotations

import math

import polars as pl
import torch

WHOLE_MODEL = "all"  # the `layer` label of the whole-model row


def moments(values: torch.Tensor) -> dict:
    """weights, mean, m2 (Σ(v − mean)²) and max of one tensor's flat float64 |scores|."""
    mean = float(values.mean()) if values.numel() else 0.0
    return {
        "weights": values.numel(),
        "mean": mean,
        "m2": float(((values - mean) ** 2).sum()),
        "max": float(values.max()) if values.numel() else math.nan,
    }


def combined(group: pl.DataFrame, total: float) -> dict:
    """weights, mean, population std and max of |score| over a group of tensors, and its share
    of `total` (Σ|score| of the pool)."""
    n = group["weights"].to_numpy().astype(float)
    means, m2 = group["mean"].to_numpy(), group["m2"].to_numpy()
    count = n.sum()
    mean = float((n * means).sum() / count)
    spread = float(m2.sum() + (n * (means - mean) ** 2).sum())
    return {
        "weights": int(count),
        "mean": mean,
        "std": math.sqrt(spread / count),
        "max": float(group["max"].max()),
        "share": float(mean * count / total),
    }


def by_layer(moments: pl.DataFrame) -> pl.DataFrame:
    """Per layer (block index; -1 outside the blocks) and for the whole model (`all`): weights,
    mean, std and max of |score|, and the share of the total |score|."""
    total = float((moments["weights"] * moments["mean"]).sum())
    rows = [
        {"layer": str(layer), **combined(group, total)}
        for (layer,), group in moments.sort("layer").group_by("layer", maintain_order=True)
    ]
    rows.append({"layer": WHOLE_MODEL, **combined(moments, total)})
    return pl.DataFrame(rows)


def summed_grid(moments: pl.DataFrame) -> pl.DataFrame:
    """Σ|score| per (layer, component) as a share of the total: the heatmap's cells."""
    mass = moments.with_columns(sum=pl.col("weights") * pl.col("mean"))
    total = float(mass["sum"].sum())
    return (
        mass.group_by("layer", "component")
        .agg(pl.col("sum").sum())
        .with_columns(share=pl.col("sum") / total)
        .sort("layer", "component")
        .select("layer", "component", "share")
    )
