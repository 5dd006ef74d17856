"""stability: do different calibration draws (seeds) find the same top-k weights?

For each k and each pair of seeds: Jaccard of the two top-k coordinate sets, Spearman ρ of the two
seeds' scores over their union (restricting to the union biases ρ downwards when overlap is low),
and Spearman ρ over a fixed uniform sample of 100k pool weights (agreement of the bulk).
Reads: the ranking table and the score store.
Writes: the stability table (schema `stability`) and a CSV of mean Jaccard vs k for `dvc plots`.
Params: none (everything comes from the ranking).
"""

import itertools

import numpy as np
import polars as pl
import torch

from cwa.io import write_csv, write_table
from cwa.scores import load_scores, pool_sample, sampled_scores
from cwa.stage import stage_main
from cwa.stats import jaccard, spearman


def add_args(p):
    p.add_argument("--ranking", required=True)
    p.add_argument("--scores", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--csv", required=True, help="mean Jaccard and Spearman per k (dvc plots)")


def top_sets(ranking: pl.DataFrame) -> dict[tuple[int, int], set]:
    top = ranking.filter(pl.col("selection") == "top")
    return {
        (seed, k): set(zip(rows["param"].to_list(), rows["flat_index"].to_list(), strict=True))
        for (seed, k), rows in top.group_by(["seed", "k"])
    }


def score_at(scores: dict[str, torch.Tensor], coords: list[tuple[str, int]]) -> np.ndarray:
    return np.array([float(scores[name].reshape(-1)[i]) for name, i in coords])


def run(args, params):
    ranking = pl.read_parquet(args.ranking)
    sets = top_sets(ranking)
    seeds = sorted(ranking["seed"].unique().to_list())
    stores = {s: {n: t.abs() for n, t in load_scores(args.scores, s).items()} for s in seeds}
    sample = pool_sample(stores[seeds[0]])
    bulk = {s: sampled_scores(stores[s], sample) for s in seeds}
    rows = []
    for k in sorted(ranking["k"].unique().to_list()):
        for a, b in itertools.combinations(seeds, 2):
            union = sorted(sets[a, k] | sets[b, k])
            rows.append(
                {
                    "k": k,
                    "seed_a": a,
                    "seed_b": b,
                    "jaccard": jaccard(sets[a, k], sets[b, k]),
                    "spearman": spearman(score_at(stores[a], union), score_at(stores[b], union)),
                    "spearman_pool": spearman(bulk[a], bulk[b]),
                    "union": len(union),
                }
            )
    schema = {
        "k": pl.Int64,
        "seed_a": pl.Int64,
        "seed_b": pl.Int64,
        "jaccard": pl.Float64,
        "spearman": pl.Float64,
        "spearman_pool": pl.Float64,
        "union": pl.Int64,
    }
    table = pl.DataFrame(rows, schema=schema)
    table = table.with_columns(metric=pl.lit(ranking["metric"][0]), mode=pl.lit(ranking["mode"][0]))
    write_table(table, args.out, "stability")
    means = table.group_by("k").agg(pl.col("jaccard", "spearman", "spearman_pool").mean()).sort("k")
    write_csv(means, args.csv)
    return {"pairs": len(rows)}


if __name__ == "__main__":
    stage_main(__doc__, add_args, run)
