"""correlation: which layers move together: per calibration window, each pool tensor's
sensitivity on that window alone (Σ|g·w|, one backward pass per window), and the correlation of
those sensitivities across windows between every two layers and every two layer components
(cwa.analysis.layer_correlation).

Reads: the calibration text (sources stage), the model and the pool.
The windows: the first seed's calibration draw (the sensitivity stage's first draw).
Writes: the per-window scores (schema `window_scores`) and the pairs (`layer_pairs`).
"""

import polars as pl

from cwa.analysis.layer_correlation import guard_correlation, pairs, window_scores
from cwa.core.io import write_table
from cwa.data.windows import calibration_draw, calibration_windows
from cwa.models.loading import ModelConfig, load_studied
from cwa.pipeline.paths import CALIB_TEXT, MODELS, POOL
from cwa.pipeline.stage import Stage, stage_main
from cwa.schemas.layer_pairs import LAYER_PAIRS_TABLE
from cwa.schemas.window_scores import WINDOW_SCORES_TABLE
from cwa.scoring.store import pool_infos

# What this stage reads (its `params:` in the generated dvc.yaml).
PARAMS = ("model", "dtype", "device", "device_map", "seeds", "calib_samples", "seq_len", "bos")


STAGE = Stage(
    "correlation",
    PARAMS,
    does=(
        "per calibration window, each pool tensor's Σ|g·w| on that window alone (one backward "
        "pass per window); the correlation over windows between every two layers and every two "
        "layer components, of the sensitivities and of their shares of the window's total, with "
        "Fisher CIs and q-values"
    ),
    reads={
        "calib_text": CALIB_TEXT,
        "models_dir": MODELS,
        "pool": POOL,
    },
    writes={
        "windows": "artifacts/correlation/windows.parquet",
        "pairs": "artifacts/correlation/pairs.parquet",
    },
    manifest="artifacts/correlation/manifest.json",
)


def run(args, params):
    model, tokenizer = load_studied(ModelConfig.of(params), args.models_dir)
    infos = pool_infos(pl.read_parquet(args.pool))
    memory = guard_correlation(model, infos, params.seq_len)
    calib = calibration_windows(
        tokenizer, args.calib_text, params.seq_len, params.bos, params.calib_samples
    )
    draw = calibration_draw(calib.all, params.calib_samples, params.seeds[0])
    scores = window_scores(model, infos, draw, desc="correlation windows")
    write_table(scores, args.windows, WINDOW_SCORES_TABLE)
    table = pairs(scores)
    write_table(table, args.pairs, LAYER_PAIRS_TABLE)
    return {"windows": len(draw), "pairs": len(table), "memory": memory, "text": calib.record}


if __name__ == "__main__":
    stage_main(__doc__, STAGE, run)
