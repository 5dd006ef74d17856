"""finetune: fine-tunes the model on a new text with the critical weights frozen, or with only
them trained, against the same with a random set, and the whole pool free
(cwa.experiments.finetuning).

The critical set: the top `finetune_k` pool weights by `metric` on the first seed's calibration
draw (the score store). Each seed of `finetune_seeds` orders the training windows and draws the
random set (the top set's count in every tensor, none of it in the top set); every arm of
`finetune_arms` trains on the seed's windows in the same order. Before the first run, each arm's
memory is estimated (the sparse arms hold AdamW state for their k weights only) and an arm that
cannot fit is refused, naming those that would. After each run the frozen weights are checked
bit for bit, the model is evaluated on the held-out windows of `finetune_data` (gain) and on the
baseline's evaluation windows (forgetting), and the pool is restored (checksum at the end, one
baseline batch re-evaluated).
Reads: the fine-tuning and evaluation texts (sources stage), the model, the score store, the
pool and the baseline per-text table.
Writes: one row per seed and arm (schema `finetune_runs`) and the summary over seeds
(`finetune`).
"""

import numpy as np
import polars as pl

from cwa.core.io import write_table
from cwa.core.progress import progress
from cwa.data.text_folder import read_text
from cwa.data.windows import text_windows
from cwa.evaluation.perplexity import evaluate
from cwa.experiments.finetuning import (
    ARMS,
    check_frozen,
    finetune,
    split_windows,
    summary,
    trainable,
    training_plan,
)
from cwa.experiments.perturbations import Snapshot
from cwa.models.memory import guard_finetuning
from cwa.pipeline.evaluation_setup import prepare_stage
from cwa.pipeline.paths import (
    FINETUNE_TEXT,
    SCORED_MODEL,
)
from cwa.pipeline.stage import Stage, stage_main
from cwa.schemas.finetune import FINETUNE_TABLE
from cwa.schemas.finetune_runs import FINETUNE_RUNS_TABLE
from cwa.scoring.store import StoredScores, pool_infos
from cwa.selection.ranking import MemberScores, extreme_k, matched_random

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
    "finetune_k",
    "finetune_steps",
    "finetune_batch",
    "finetune_lr",
    "finetune_seeds",
    "finetune_arms",
)


STAGE = Stage(
    "finetune",
    PARAMS,
    does=(
        "fine-tunes on `finetune_data` in five arms: every pool weight free, the top `finetune_k` "
        "frozen or a random set frozen, only the top set or only the random set trained; gain on "
        "held-out new text and forgetting on the evaluation text, with t-intervals over "
        "fine-tuning seeds and paired contrasts; frozen weights checked bit for bit"
    ),
    reads={"finetune_text": FINETUNE_TEXT, **SCORED_MODEL},
    writes={
        "runs": "artifacts/finetune/runs.parquet",
        "summary": "artifacts/finetune/summary.parquet",
    },
    manifest="artifacts/finetune/manifest.json",
)


def run(args, params):
    ev = prepare_stage(params, args.models_dir, args.eval_text, args.baseline_texts)
    infos = pool_infos(pl.read_parquet(args.pool))
    scores = MemberScores(StoredScores(args.scores, params.seeds[0]), [(i, None) for i in infos])
    top = extreme_k(scores, params.finetune_k)
    arms = [arm for arm in ARMS if arm in params.finetune_arms]
    # the first run's random set: every seed's has the top set's count in every tensor
    first = matched_random(
        top, scores.sizes, np.random.default_rng(params.finetune_seeds[0]), scores
    )
    plans = {arm: training_plan(trainable(arm, infos, top, first)) for arm in arms}
    memory = guard_finetuning(ev.model, plans, params.finetune_batch, params.seq_len)
    text = read_text(args.finetune_text)
    found = text_windows(
        ev.tokenizer, text, params.seq_len, params.bos, "eval_samples", params.eval_samples
    )
    train, held = split_windows(
        found.all, params.eval_samples, params.finetune_batch, text.source["spec"]
    )
    before = evaluate(ev.model, held, params.batch_size).ppl
    rows = []
    dense = Snapshot(ev.model, [i.name for i in infos])
    for seed in params.finetune_seeds:
        random = matched_random(top, scores.sizes, np.random.default_rng(seed), scores)
        for arm in progress(arms, desc=f"finetune seed {seed}"):
            free = trainable(arm, infos, top, random)
            steps, batch, lr = params.finetune_steps, params.finetune_batch, params.finetune_lr
            losses = finetune(ev.model, free, train, steps, batch, lr, seed)
            changed = check_frozen(ev.model, free, dense.saved)
            after = (evaluate(ev.model, w, params.batch_size).ppl for w in (held, ev.windows))
            row = {"seed": seed, "arm": arm, "k": params.finetune_k, "changed": changed}
            rows.append(row | measures(free, losses, before, ev.base.ppl, *after))
            dense.restore()
    dense.verify()
    ev.check_unchanged(params.batch_size)
    runs = pl.DataFrame(rows)
    write_table(runs, args.runs, FINETUNE_RUNS_TABLE)
    write_table(summary(runs), args.summary, FINETUNE_TABLE)
    return {
        "runs": len(rows),
        "training_windows": len(train),
        "held_out_windows": len(held),
        "memory": memory,
        "evaluation_text": ev.text,
        "finetune_text": found.record,
    }


def measures(free, losses, new_before, eval_before, new_after, eval_after) -> dict:
    """One run's row: what could change, the loss, and the gain and forgetting in PPL points."""
    return {
        "trainable": sum(int(m.sum()) for m in free.values()),
        "steps": len(losses),
        "train_loss": float(np.mean(losses[-5:])),
        "new_ppl_before": new_before,
        "new_ppl": new_after,
        "gain": new_before - new_after,
        "gain_rel": (new_before - new_after) / new_before,
        "eval_ppl_before": eval_before,
        "eval_ppl": eval_after,
        "forgetting": eval_after - eval_before,
        "forgetting_rel": (eval_after - eval_before) / eval_before,
    }


if __name__ == "__main__":
    stage_main(__doc__, STAGE, run)
