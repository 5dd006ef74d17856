"""sensitivity: a score for every weight in the ranking pool, one calibration draw per seed.

Reads: the calibration text (sources stage) and the model.
Writes: the score store (one safetensors file per seed), the pool description (schema `pool`)
and per-tensor score statistics (schema `tensor_stats`).

With num_processes > 1 the stage runs itself again under `accelerate launch` (or runs under a
launcher the user started): each process scores its share of every draw, the accumulators are
all-reduced once per seed, and only the main process writes.
"""

import polars as pl

from cwa.core.distributed import init_world, relaunch
from cwa.core.io import write_table
from cwa.data.windows import calibration_indices, calibration_windows
from cwa.models.anatomy import describe, pool
from cwa.models.loading import ModelConfig, load_studied
from cwa.models.memory import guard_scoring
from cwa.pipeline.paths import CALIB_TEXT, MODELS, POOL, SCORES
from cwa.pipeline.stage import Stage, stage_main
from cwa.schemas.pool import POOL_TABLE
from cwa.schemas.tensor_stats import TENSOR_STATS_TABLE
from cwa.scoring.metrics import ScoringConfig, get_metric, score
from cwa.scoring.store import pool_table, save_magnitude_bins, save_scores, tensor_stats

# What this stage reads (its `params:` in the generated dvc.yaml).
PARAMS = (
    "model",
    "dtype",
    "device",
    "device_map",
    "num_processes",
    "metric",
    "seeds",
    "calib_samples",
    "seq_len",
    "bos",
    "batch_size",
    "probes",
    "layer_group",
    "include_embeddings",
    "include_1d",
    "layers",
)


STAGE = Stage(
    "sensitivity",
    PARAMS,
    does=(
        "one calibration draw per seed, a score for every pool weight (fp32), per-tensor "
        "statistics (scores as safetensors, one file per seed; its header records the metric, the "
        "seed and the indices of the calibration windows scored)"
    ),
    reads={
        "calib_text": CALIB_TEXT,
        "models_dir": MODELS,
    },
    writes={
        "scores": SCORES,
        "pool": POOL,
        "stats": "artifacts/sensitivity/tensor_stats.parquet",
    },
    manifest="artifacts/sensitivity/manifest.json",
)


def run(args, params):
    metric = get_metric(params.metric)
    relaunch(params.num_processes, params.device)  # exits here when it launched the processes
    world = init_world(params.device)
    model, tokenizer = load_studied(ModelConfig.of(params), args.models_dir, world.device)
    s = ScoringConfig.of(params)
    infos = pool(describe(model), **params.pool_options)
    memory = guard_scoring(model, infos, metric, s.batch_size, s.seq_len, s.layer_group)
    calib = calibration_windows(
        tokenizer, args.calib_text, params.seq_len, params.bos, params.calib_samples
    )
    stats = []
    for seed in params.seeds:
        drawn = calibration_indices(len(calib.all), params.calib_samples, seed)
        draw = calib.all[drawn]
        desc = f"{metric.name} seed {seed}"
        scores = score(s, model, infos, metric, draw, seed, desc, world)
        if not world.main:
            continue
        save_scores(scores, args.scores, seed, metric.name, windows=drawn.tolist())
        stats.append(tensor_stats(infos, scores, metric.name, seed))
    if not world.main:
        return None
    save_magnitude_bins(dict(model.named_parameters()), infos, args.scores)
    write_table(pool_table(infos), args.pool, POOL_TABLE)
    write_table(pl.concat(stats), args.stats, TENSOR_STATS_TABLE)
    return {
        "pool_tensors": len(infos),
        "pool_weights": sum(i.numel for i in infos),
        "processes": world.size,
        "memory": memory,
        "calibration_text": calib.record,
    }


if __name__ == "__main__":
    stage_main(__doc__, STAGE, run)
