"""correlation: which layers move together: per calibration window, each pool tensor's
sensitivity on that window alone (Σ|g·w|, one backward pass per window), and the correlation of
those sensitivities across windows between every two layers and every two layer components
(cwa.analysis.layer_correlation).

Reads: the calibration text (sources stage), the model and the pool.
The windows: the first seed's calibration draw (the sensitivity stage's first draw).
Writes: the per-window scores (schema `window_scores`) and the pairs (`layer_pairs`).
"""

import polars as pl

from cwa.analysis.layer_correlation import pairs, window_scores
from cwa.core.io import write_table
from cwa.data.windows import calibration_draw, calibration_windows
from cwa.models.loading import ModelConfig, load_studied
from cwa.models.memory import guard
from cwa.pipeline.stage import stage_main
from cwa.schemas.layer_pairs import LAYER_PAIRS_TABLE
from cwa.schemas.window_scores import WINDOW_SCORES_TABLE
from cwa.scoring.store import pool_infos

# What this stage reads: its `params:` in dvc.yaml (tests/test_docs.py keeps them equal).
PARAMS = ("model", "dtype", "device", "device_map", "seeds", "calib_samples", "seq_len", "bos")


def add_args(p):
    p.add_argument("--calib-text", required=True, help="the sources stage's calibration directory")
    p.add_argument("--models-dir", required=True)
    p.add_argument("--pool", required=True)
    p.add_argument("--windows", required=True)
    p.add_argument("--pairs", required=True)


def run(args, params):
    model, tokenizer = load_studied(ModelConfig.of(params), args.models_dir)
    infos = pool_infos(pl.read_parquet(args.pool))
    memory = guard(model, infos, "backward", 1, params.seq_len, "the per-window gradient pass")
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
    stage_main(__doc__, add_args, run, PARAMS)
