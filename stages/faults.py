"""faults: a fault-injection campaign priced against protection of the top-scored weights.

Random bit flips at each rate in `fault_rates` (per storage bit of every pool weight),
`fault_trials` draws per rate; each draw is evaluated unprotected, with the top fraction
(`fault_protect`) of the pool by the first seed's scores protected, and with a random set of the
same size (uniform over the rest of the pool) protected. All arms share the draw and the
evaluation windows; each is measured by ΔPPL and by the KL to the unperturbed next-token
distribution (one reference pass, cwa.evaluation.perplexity.Reference) and its unchanged top-1
predictions.
Reads: the evaluation text (sources stage), the model, the score store, the pool and the
baseline per-text table.
Writes: one row per trial and arm (schema `fault_trials`) and the summary (`fault_summary`).
"""

import polars as pl

from cwa.core.io import write_table
from cwa.evaluation.perplexity import reference
from cwa.experiments.faults import campaign, guard_campaign, summary
from cwa.pipeline.evaluation_setup import prepare_stage
from cwa.pipeline.paths import SCORED_MODEL
from cwa.pipeline.stage import Stage, stage_main
from cwa.schemas.fault_summary import FAULT_SUMMARY_TABLE
from cwa.schemas.fault_trials import FAULT_TRIALS_TABLE
from cwa.scoring.store import StoredScores, pool_infos
from cwa.selection.ranking import MemberScores

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
    "fault_rates",
    "fault_trials",
    "fault_protect",
)


STAGE = Stage(
    "faults",
    PARAMS,
    does=(
        "fault-injection campaign: random bit flips at each bit error rate, unprotected and with "
        "the top (or a random) fraction of the pool protected"
    ),
    reads=SCORED_MODEL,
    writes={
        "trials": "artifacts/faults/trials.parquet",
        "summary": "artifacts/faults/summary.parquet",
    },
    manifest="artifacts/faults/manifest.json",
)


def run(args, params):
    ev = prepare_stage(params, args.models_dir, args.eval_text, args.baseline_texts)
    seed = params.seeds[0]
    infos = pool_infos(pl.read_parquet(args.pool))
    scores = MemberScores(StoredScores(args.scores, seed), [(i, None) for i in infos])
    memory = guard_campaign(ev.model, scores.sizes, params.batch_size, params.seq_len)
    with reference(ev.model, ev.windows, params.batch_size, params.kl_topk) as ref:
        rows = campaign(
            ev.model,
            [i.name for i in infos],
            scores,
            ev.windows,
            ev.base,
            params.fault_rates,
            params.fault_trials,
            params.fault_protect,
            seed,
            params.batch_size,
            ref,
        )
    write_table(rows, args.trials, FAULT_TRIALS_TABLE)
    write_table(summary(rows), args.summary, FAULT_SUMMARY_TABLE)
    return {
        "evaluations": len(rows),
        "diverged": int(rows["diverged"].sum()),
        "memory": memory,
        "evaluation_text": ev.text,
    }


if __name__ == "__main__":
    stage_main(__doc__, STAGE, run)
