"""agreement: do the metrics pick the same weights? Every metric in `compare_metrics` scores the
pool on the first seed's calibration draw; every pair gets overlap@k (Jaccard of global top-k
sets) for each k in `topk` and Spearman ρ over a fixed 100k-weight sample; every metric's global
top set against its per-layer top sets.
Reads: the calibration text (sources stage) and the model.
Writes: the agreement table (schema `agreement`) and the modes table (schema `modes`).
"""

from cwa.analysis.agreement import metric_agreement, mode_agreement, summarize
from cwa.core.io import write_table
from cwa.data.windows import calibration_draw, calibration_windows
from cwa.models.anatomy import describe, pool
from cwa.models.loading import ModelConfig, load_studied
from cwa.models.memory import guard_scoring
from cwa.pipeline.paths import CALIB_TEXT, MODELS
from cwa.pipeline.stage import Stage, stage_main
from cwa.schemas.agreement import AGREEMENT_TABLE
from cwa.schemas.modes import MODES_TABLE
from cwa.scoring.metrics import ScoringConfig, get_metric, score

# What this stage reads (its `params:` in the generated dvc.yaml).
PARAMS = (
    "model",
    "dtype",
    "device",
    "device_map",
    "compare_metrics",
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
    "topk",
)


STAGE = Stage(
    "agreement",
    PARAMS,
    does=(
        "every metric of `compare_metrics` on the same draw: overlap@k and Spearman for each "
        "pair; each metric's global against its per-layer top sets"
    ),
    reads={
        "calib_text": CALIB_TEXT,
        "models_dir": MODELS,
    },
    writes={
        "out": "artifacts/agreement/agreement.parquet",
        "modes": "artifacts/agreement/modes.parquet",
    },
    manifest="artifacts/agreement/manifest.json",
)


def run(args, params):
    model, tokenizer = load_studied(ModelConfig.of(params), args.models_dir)
    s = ScoringConfig.of(params)
    infos = pool(describe(model), **params.pool_options)
    metrics = [get_metric(name) for name in params.compare_metrics]
    memory = {
        m.name: guard_scoring(model, infos, m, s.batch_size, s.seq_len, s.layer_group)
        for m in metrics
    }
    seed = params.seeds[0]
    calib = calibration_windows(
        tokenizer, args.calib_text, params.seq_len, params.bos, params.calib_samples
    )
    draw = calibration_draw(calib.all, params.calib_samples, seed)
    by_metric = {}
    for metric in metrics:  # one metric's scores in memory at a time
        scores = score(s, model, infos, metric, draw, seed, desc=metric.name)
        by_metric[metric.name] = summarize(scores, params.topk)
        del scores
    table = metric_agreement(by_metric, params.topk)
    write_table(table, args.out, AGREEMENT_TABLE)
    write_table(mode_agreement(by_metric, params.topk), args.modes, MODES_TABLE)
    return {"pairs": len(table), "memory": memory, "calibration_text": calib.record}


if __name__ == "__main__":
    stage_main(__doc__, STAGE, run)
