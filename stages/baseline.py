"""baseline: the unperturbed model's perplexity and accuracy on the evaluation windows.

Reads: the evaluation text (sources stage) and the model. Writes: a one-row summary (schema
`baseline`) and per-text results (schema `eval_texts`), the reference for every paired statistic.
"""

import numpy as np
import polars as pl

from cwa import CwaError
from cwa.core.io import write_table
from cwa.evaluation.perplexity import BASELINE, evaluate, text_rows
from cwa.models.loading import count_parameters
from cwa.pipeline.evaluation_setup import prepare_stage
from cwa.pipeline.paths import BASELINE_TEXTS, EVAL_TEXT, MODELS
from cwa.pipeline.stage import Stage, stage_main
from cwa.schemas.baseline import BASELINE_TABLE
from cwa.schemas.eval_texts import EVAL_TEXTS_TABLE

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
)


STAGE = Stage(
    "baseline",
    PARAMS,
    does=("per-window NLL, token-weighted perplexity, next-token accuracy"),
    reads={
        "eval_text": EVAL_TEXT,
        "models_dir": MODELS,
    },
    writes={
        "summary": "artifacts/baseline/summary.parquet",
        "texts": BASELINE_TEXTS,
    },
    manifest="artifacts/baseline/manifest.json",
)


def run(args, params):
    ev = prepare_stage(params, args.models_dir, args.eval_text)
    model, windows, memory = ev.model, ev.windows, ev.memory
    result = evaluate(model, windows, params.batch_size, desc="baseline")
    if result.diverged:  # finite weights, yet an inf/NaN loss: say where
        bad = np.flatnonzero(~np.isfinite(result.nll))
        raise CwaError(
            f"the unperturbed model's loss is not finite on {len(bad)} of {len(windows)} "
            f"evaluation windows (first: {bad[:10].tolist()}); with dtype {params.dtype}, an "
            "overflow in fp16 is the usual cause: try bfloat16 or float32"
        )
    summary = {
        "model": params.model,
        "texts": len(result.nll),
        "tokens": int(result.tokens.sum()),
        "nll": float(result.nll.sum()),
        "ppl": result.ppl,
        "accuracy": result.accuracy,
        "params": count_parameters(model),
    }
    write_table(pl.DataFrame([summary]), args.summary, BASELINE_TABLE)
    write_table(text_rows(BASELINE, result), args.texts, EVAL_TEXTS_TABLE)
    return {
        "ppl": result.ppl,
        "accuracy": result.accuracy,
        "vocab_size": len(ev.tokenizer),
        "memory": memory,
        "evaluation_text": ev.text,
    }


if __name__ == "__main__":
    stage_main(__doc__, STAGE, run)
