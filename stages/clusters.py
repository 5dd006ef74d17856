"""clusters: clusters the pool's weights by what they are (score, magnitude, seed-to-seed
spread, depth, component) with K-means and DBSCAN, and zeroes each K-means cluster's top-scored
members against random weights (cwa.analysis.clusters).

The clustered weights: the top `cluster_top` by the first seed's scores and a seeded uniform
sample of `cluster_sample` others. K-means' k is chosen by silhouette over 2..`cluster_max_k`.
Clustered perturbation: for each K-means cluster, its `headline_k` highest-scored members (all
of them in a smaller cluster) are zeroed (the headline perturbation at its first strength)
against `random_draws` random sets with the same count in every tensor, on the perturb stage's
windows, reference and bootstrap, with its statistics; q-values by Benjamini-Hochberg over the
clusters.
Reads: the evaluation text (sources stage), the model, the score store, the pool and the
baseline per-text table.
Writes: every clustered weight with its features and labels (schema `cluster_members`), each
cluster (`clusters`) and the clustered perturbations (`cluster_effects`).
"""

import numpy as np
import polars as pl
import torch

from cwa.analysis.clusters import chosen_weights, dbscan, features, kmeans, matrix, summary
from cwa.core.io import write_table
from cwa.core.stats import bh_q_values
from cwa.evaluation.perplexity import reference
from cwa.experiments.perturbations import SWEEP_KEYS
from cwa.experiments.sweep import SweepConfig, selection_set, stream_seed
from cwa.experiments.unit_sets import Bench, headline_sweep, measure
from cwa.pipeline.evaluation_setup import prepare_stage
from cwa.pipeline.paths import SCORED_MODEL
from cwa.pipeline.stage import Stage, stage_main
from cwa.schemas.cluster_effects import CLUSTER_EFFECTS_TABLE
from cwa.schemas.cluster_members import CLUSTER_MEMBERS_TABLE
from cwa.schemas.clusters import CLUSTERS_TABLE
from cwa.scoring.store import StoredScores, pool_infos
from cwa.selection.ranking import MemberScores, Selected, matched_random

# What this stage reads (its `params:` in the generated dvc.yaml).
PARAMS = (
    "model",
    "dtype",
    "device",
    "device_map",
    "seq_len",
    "bos",
    "eval_samples",
    "batch_size",
    "kl_topk",
    "seeds",
    "random_draws",
    "bootstrap",
    "headline_k",
    "perturb",
    *SWEEP_KEYS,
    "cluster_sample",
    "cluster_top",
    "cluster_max_k",
)


STAGE = Stage(
    "clusters",
    PARAMS,
    does=(
        "clusters the top weights and a sample of the rest by log score, log |w|, seed-to-seed "
        "spread, depth and component (K-means with k by silhouette, DBSCAN); each K-means "
        "cluster's top members zeroed against random weights"
    ),
    reads=SCORED_MODEL,
    writes={
        "members": "artifacts/clusters/members.parquet",
        "clusters": "artifacts/clusters/clusters.parquet",
        "effects": "artifacts/clusters/effects.parquet",
    },
    manifest="artifacts/clusters/manifest.json",
)


def run(args, params):
    ev = prepare_stage(params, args.models_dir, args.eval_text, args.baseline_texts)
    infos, seed = pool_infos(pl.read_parquet(args.pool)), params.seeds[0]
    stores = [StoredScores(args.scores, s) for s in params.seeds]
    scores = MemberScores(stores[0], [(i, None) for i in infos])
    chosen = chosen_weights(scores, scores.sizes, params.cluster_top, params.cluster_sample, seed)
    weights = dict(ev.model.named_parameters())
    table = features(infos, chosen, params.cluster_top, weights, stores)
    x, _ = matrix(table)
    km, k, quality = kmeans(x, params.cluster_max_k, seed)
    db, eps = dbscan(x)
    table = table.with_columns(
        kmeans=pl.Series(km).cast(pl.Int64), dbscan=pl.Series(db).cast(pl.Int64)
    )
    clusters = pl.concat(
        [
            summary(table, "kmeans", "kmeans", params.cluster_top),
            summary(table, "dbscan", "dbscan", params.cluster_top),
        ]
    )
    effects = perturb_clusters(ev, params, infos, scores, table)
    write_table(table, args.members, CLUSTER_MEMBERS_TABLE)
    write_table(clusters, args.clusters, CLUSTERS_TABLE)
    write_table(effects, args.effects, CLUSTER_EFFECTS_TABLE)
    return {"kmeans_k": k, "silhouette": quality, "dbscan_eps": eps, "memory": ev.memory}


def perturb_clusters(ev, params, infos, scores, table: pl.DataFrame) -> pl.DataFrame:
    """Each K-means cluster's top-scored members (up to headline_k) zeroed against random sets
    matched per tensor: the comparison row with the top set's CI."""
    position = {i.name: t for t, i in enumerate(infos)}
    sweeps = headline_sweep(SweepConfig.of(params))
    seed, rows = params.seeds[0], []
    with reference(ev.model, ev.windows, params.batch_size, params.kl_topk) as ref:
        bench = Bench.of(ev, ref, params)
        by_score = table.sort("log_score", descending=True)
        for (cluster,), members in by_score.group_by("kmeans", maintain_order=True):
            best = members.head(params.headline_k)
            top = Selected(
                best["param"].replace_strict(position).to_numpy(),
                best["flat_index"].to_numpy(),
                best["log_score"].to_numpy(),
            )
            sets = [selection_set(_named(infos, top), "top", len(best), 0)]
            for d in range(params.random_draws):
                rng = np.random.default_rng(stream_seed(seed, "cluster", cluster, d))
                drawn = matched_random(top, scores.sizes, rng, scores)
                sets.append(selection_set(_named(infos, drawn), "random_k", len(best), d))
            stream = stream_seed(seed, "cluster", cluster)
            effects, compared = measure(bench, sets, sweeps, stream, f"cluster {cluster}")
            top_row = effects.filter(pl.col("selection") == "top").row(0, named=True)
            ci = {"ci_low": top_row["ci_low"], "ci_high": top_row["ci_high"]}
            rows.append(
                compared.row(0, named=True) | {"cluster": cluster, "size": len(members)} | ci
            )
    ev.check_unchanged(params.batch_size)
    out = pl.DataFrame(rows).select(c.name for c in CLUSTER_EFFECTS_TABLE.columns)
    return out.with_columns(q_value=pl.Series(bh_q_values(out["p_value"].to_numpy())))


def _named(infos, sel: Selected) -> dict[str, torch.Tensor]:
    """{param: sorted flat indices} of a Selected."""
    out = {}
    for t in np.unique(sel.tensor):
        out[infos[t].name] = torch.from_numpy(np.sort(sel.flat[sel.tensor == t]))
    return out


if __name__ == "__main__":
    stage_main(__doc__, STAGE, run)
