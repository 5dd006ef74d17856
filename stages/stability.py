"""stability: do different calibration draws (seeds) find the same top-k weights?

For each k and each pair of seeds: Jaccard of the two top-k coordinate sets, Spearman ρ of the two
seeds' scores over their union (restricting to the union biases ρ downwards when overlap is low),
and Spearman ρ over a fixed uniform sample of 100k pool weights (agreement of the bulk).
Reads: the ranking table and the score store.
Writes: the stability table (schema `stability`) and a CSV of mean Jaccard vs k for `dvc plots`.
"""

import itertools

import numpy as np
import polars as pl

from cwa.core.io import write_csv, write_table
from cwa.core.stats import agreement, spearman
from cwa.pipeline.paths import RANKING, SCORES
from cwa.pipeline.stage import Stage, stage_main
from cwa.schemas.stability import STABILITY_TABLE
from cwa.scoring.store import StoredScores, bulk, scores_at

# What this stage reads (its `params:` in the generated dvc.yaml).
PARAMS = ()


STAGE = Stage(
    "stability",
    PARAMS,
    does=("Jaccard and Spearman of top-k sets across seeds, per k"),
    reads={
        "ranking": RANKING,
        "scores": SCORES,
    },
    writes={
        "out": "artifacts/stability/stability.parquet",
    },
    records={
        "csv": "artifacts/stability/stability_vs_k.csv",
    },
    manifest="artifacts/stability/manifest.json",
)


def top_sets(ranking: pl.DataFrame) -> dict[tuple[int, int], set]:
    top = ranking.filter(pl.col("selection") == "top")
    return {
        (seed, k): set(zip(rows["param"].to_list(), rows["flat_index"].to_list(), strict=True))
        for (seed, k), rows in top.group_by(["seed", "k"])
    }


def run(args, params):
    ranking = pl.read_parquet(args.ranking)
    sets = top_sets(ranking)
    seeds = sorted(ranking["seed"].unique().to_list())
    stores = {s: StoredScores(args.scores, s) for s in seeds}  # read tensor by tensor
    bulks = {s: bulk(stores[s], stores[seeds[0]].sizes()) for s in seeds}
    rows = []
    for k in sorted(ranking["k"].unique().to_list()):
        for a, b in itertools.combinations(seeds, 2):
            union = sorted(sets[a, k] | sets[b, k])
            rows.append(
                {
                    "k": k,
                    "seed_a": a,
                    "seed_b": b,
                    **agreement(sets[a, k], sets[b, k], bulks[a], bulks[b]),
                    "spearman": spearman(
                        np.abs(scores_at(stores[a], union)), np.abs(scores_at(stores[b], union))
                    ),
                    "union": len(union),
                }
            )
    schema = {
        "k": pl.Int64,
        "seed_a": pl.Int64,
        "seed_b": pl.Int64,
        "jaccard": pl.Float64,
        "overlap": pl.Float64,
        "spearman": pl.Float64,
        "spearman_pool": pl.Float64,
        "union": pl.Int64,
    }
    table = pl.DataFrame(rows, schema=schema)
    table = table.with_columns(metric=pl.lit(ranking["metric"][0]), mode=pl.lit(ranking["mode"][0]))
    write_table(table, args.out, STABILITY_TABLE)
    means = (
        table.group_by("k")
        .agg(pl.col("jaccard", "overlap", "spearman", "spearman_pool").mean())
        .sort("k")
    )
    write_csv(means, args.csv)
    return {"pairs": len(rows)}


if __name__ == "__main__":
    stage_main(__doc__, STAGE, run)
