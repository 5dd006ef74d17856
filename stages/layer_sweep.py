"""layer_sweep: which block's critical weights matter most? For each transformer block alone, the
headline perturbation (at its first strength) on the block's own top-`headline_k` (ranked within
the block, first seed's scores) and on `random_draws` random_k draws from the same block: ΔPPL
by layer with paired-bootstrap CIs, and the top-vs-random separation with its permutation p.
Reads: the evaluation text (sources stage), the model, the score store and pool description,
the baseline per-text table.
Writes: one row per block (schema `layer_sweep`).
"""

import polars as pl

from cwa.core.io import write_table
from cwa.core.stats import bootstrap_indices
from cwa.experiments.layer_sweep import by_layer, layer_experiments
from cwa.experiments.perturbations import SWEEP_KEYS
from cwa.experiments.sweep import SweepConfig, first_settings, headline_setting, specs
from cwa.experiments.sweep import run as run_experiments
from cwa.pipeline.evaluation_setup import prepare_stage
from cwa.pipeline.paths import BASELINE_TEXTS, EVAL_TEXT, MODELS, POOL, SCORES
from cwa.pipeline.stage import Stage, stage_main
from cwa.schemas.layer_sweep import LAYER_SWEEP_TABLE
from cwa.scoring.store import StoredScores, pool_infos

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
    "seeds",
    "metric",
    "perturb",
    *SWEEP_KEYS,
    "headline_k",
    "random_draws",
    "bootstrap",
)


STAGE = Stage(
    "layer_sweep",
    PARAMS,
    does=(
        "the headline perturbation on each block's own top-k alone, against random draws from "
        "that block: ΔPPL by layer with CIs, separation and p"
    ),
    reads={
        "eval_text": EVAL_TEXT,
        "models_dir": MODELS,
        "scores": SCORES,
        "pool": POOL,
        "baseline_texts": BASELINE_TEXTS,
    },
    writes={
        "out": "artifacts/layer_sweep/layers.parquet",
    },
    manifest="artifacts/layer_sweep/manifest.json",
)


def run(args, params):
    ev = prepare_stage(params, args.models_dir, args.eval_text, args.baseline_texts)
    seed = params.seeds[0]
    config = SweepConfig.of(params)
    (name,) = headline_setting(first_settings(config))
    spec = next(s for s in specs(config) if s[0].name == name)
    exps = layer_experiments(
        pool_infos(pl.read_parquet(args.pool)),
        StoredScores(args.scores, seed),
        params.headline_k,
        spec,
        params.random_draws,
        seed,
        params.metric,
    )
    results = {
        layer: run_experiments(ev.model, mine, ev.windows, params.batch_size, f"layer {layer}")
        for layer, mine in exps.items()
    }
    ev.check_unchanged(params.batch_size)
    idx = bootstrap_indices(len(ev.windows), params.bootstrap, seed)
    table = by_layer(exps, results, ev.base, idx, params.bootstrap, seed)
    write_table(table, args.out, LAYER_SWEEP_TABLE)
    return {
        "experiments": sum(len(mine) for mine in exps.values()),
        "memory": ev.memory,
        "evaluation_text": ev.text,
    }


if __name__ == "__main__":
    stage_main(__doc__, STAGE, run)
