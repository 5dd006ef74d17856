"""What `cwa export DIR` and `cwa run --out-dir DIR` write: the files a reader of the old
scripts' output directory expects, copied whole or not at all, and the top weights of every
metric and k as CSV, read from the ranking table."""

from __future__ import annotations

import shutil
from pathlib import Path

import polars as pl

from cwa.core.io import atomic_write

# Each exported file or directory of artifacts/, with the stage that writes it.
EXPORTS = {
    "metrics.json": "report",
    "report": "report",
    "perturb/effects.parquet": "perturb",
    "perturb/comparisons.parquet": "perturb",
    "perturb/pooled.parquet": "perturb",
    "perturb/tasks.parquet": "perturb",
    "prune/pruning.parquet": "prune",
    "rank/ranking.parquet": "rank",
    "faults/summary.parquet": "faults",
    "layer_sweep/layers.parquet": "layer_sweep",
}
RANKING = "rank/ranking.parquet"
# The old runners' columns, from the ranking table's: ranks count from 1 within a group (the
# whole pool in global mode, a layer or a component otherwise).
TOP_COLUMNS = {
    "rank": pl.col("rank") + 1,
    "group": pl.col("group"),
    "layer": pl.col("layer"),
    "component": pl.col("component"),
    "parameter": pl.col("param"),
    "row": pl.col("row"),
    "column": pl.col("col"),
    "score": pl.col("score"),
    "seed": pl.col("seed"),
}


def top_weights(ranking: pl.DataFrame) -> dict[str, pl.DataFrame]:
    """`top_<k>_weights_<metric>.csv` -> the top-k rows of every seed, by seed, group, rank."""
    top = ranking.filter(pl.col("selection") == "top")
    tables = {}
    for (metric, k), rows in top.group_by("metric", "k", maintain_order=True):
        table = rows.sort("seed", "group", "rank").select(**TOP_COLUMNS)
        tables[f"top_{k}_weights_{metric}.csv"] = table
    return tables


def export(artifacts: Path, out_dir: Path, targets: list[str] | None = None) -> None:
    """Copies the run's results into out_dir, whole or not at all (temp dir, then rename).
    A run limited to `targets` (e.g. --no-perturbation: rank) brings only its targets' files:
    the others in artifacts/ are an earlier run's."""
    items = [item for item, stage in EXPORTS.items() if not targets or stage in targets]

    def write(tmp: Path):
        for item in items:
            src, dest = artifacts / item, tmp / item
            dest.parent.mkdir(parents=True, exist_ok=True)
            (shutil.copytree if src.is_dir() else shutil.copy2)(src, dest)
        for name, table in top_weights(pl.read_parquet(artifacts / RANKING)).items():
            table.write_csv(tmp / name)

    atomic_write(out_dir, write)
