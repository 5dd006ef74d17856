"""rank: the top-k weights and their controls, for every seed and every k in one run.

Reads: the score store and the pool description.
With target_components / target_layers only those pool tensors compete (targeted experiments).
Writes: the ranking table (schema `ranking`).
"""

import polars as pl

from cwa.core.io import write_table
from cwa.pipeline.paths import POOL, RANKING, SCORES
from cwa.pipeline.stage import Stage, stage_main
from cwa.schemas.ranking import RANKING_TABLE
from cwa.scoring.store import StoredScores, pool_infos, read_magnitude_bins, seeds_in
from cwa.selection.ranking import CONTROLS, rank, target

# What this stage reads (its `params:` in the generated dvc.yaml).
PARAMS = (
    "metric",
    "mode",
    "topk",
    "controls",
    "random_draws",
    "target_components",
    "target_layers",
)


STAGE = Stage(
    "rank",
    PARAMS,
    does=(
        "exact top-k, bottom_k and matched random_k (stratified by tensor, several draws) for "
        "every k and seed"
    ),
    reads={
        "scores": SCORES,
        "pool": POOL,
    },
    writes={
        "out": RANKING,
    },
    manifest="artifacts/rank/manifest.json",
)


def run(args, params):
    infos = target(
        pool_infos(pl.read_parquet(args.pool)), params.target_components, params.target_layers
    )
    by_magnitude = any(CONTROLS.get(c).by_magnitude for c in params.controls)
    bins = read_magnitude_bins(args.scores) if by_magnitude else None
    tables = [
        rank(
            infos,
            StoredScores(args.scores, seed),
            params.mode,
            params.topk,
            params.controls,
            params.random_draws,
            seed,
            params.metric,
            bins,
        )
        for seed in seeds_in(args.scores)
    ]
    table = pl.concat(tables)
    write_table(table, args.out, RANKING_TABLE)
    return {"rows": len(table)}


if __name__ == "__main__":
    stage_main(__doc__, STAGE, run)
