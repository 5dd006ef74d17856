"""prune: prunes the model by every method of `prune_methods` at every target, against the dense
model and against magnitude and Wanda pruning.

Targets: each fraction of `sparsities` (unstructured, within each method's comparison group; with
`prune_owl` also with OWL's outlier-weighted block sparsities, measured on the dense model) and
each N:M pattern of `prune_nm`. Metric methods use the metric's scores on the first seed's
calibration draw (the score store's for `metric`, computed here for the others); wanda, ria and
sparsegpt measure that draw's activations block by block on the model as it is being pruned.
Every pruned model is evaluated on the baseline's windows (ΔPPL with paired CI, accuracy, KL to
the dense model and unchanged top-1 predictions), then the pool is restored bit for bit
(checked by checksum at the end, and one baseline batch re-evaluated).
Reads: the calibration and evaluation texts (sources stage), the model, the score store, the
pool and the baseline per-text table.
The downstream tasks (`tasks`) run on the dense model and on every method's pruned model at the
unstructured, uniform target nearest 0.5.
Writes: one row per method and target (schema `pruning`), the task results (`prune_tasks`).
"""

import polars as pl

from cwa.core.io import write_table
from cwa.core.progress import progress
from cwa.core.stats import bootstrap_indices
from cwa.data.windows import calibration_draw, calibration_windows
from cwa.evaluation.perplexity import evaluate, reference
from cwa.evaluation.tasks import evaluate_task, load_task
from cwa.experiments.perturbations import Snapshot
from cwa.experiments.pruning import (
    LAYER_PRUNERS,
    Sparsity,
    apply_masks,
    in_group,
    method_scores,
    outlier_ratios,
    owl,
    prune_by_activations,
)
from cwa.experiments.pruning_summary import table, task_table
from cwa.models.memory import guard_pruning
from cwa.pipeline.evaluation_setup import prepare_stage
from cwa.pipeline.paths import (
    CALIB_TEXT,
    SCORED_MODEL,
    TASK_DIR,
)
from cwa.pipeline.stage import Stage, stage_main
from cwa.schemas.prune_tasks import PRUNE_TASKS_TABLE
from cwa.schemas.pruning import PRUNING_TABLE
from cwa.scoring.metrics import ScoringConfig, get_metric, score
from cwa.scoring.store import StoredScores, pool_infos

# What this stage reads (its `params:` in the generated dvc.yaml).
PARAMS = (
    "model",
    "dtype",
    "device",
    "device_map",
    "metric",
    "seq_len",
    "bos",
    "calib_samples",
    "eval_samples",
    "batch_size",
    "kl_topk",
    "probes",
    "layer_group",
    "seeds",
    "prune_methods",
    "sparsities",
    "prune_group",
    "prune_nm",
    "prune_owl",
    "bootstrap",
    "tasks",
    "task_items",
)


STAGE = Stage(
    "prune",
    PARAMS,
    does=(
        "prunes the model by every method of `prune_methods` (any metric, `wanda`, `ria`, "
        "`sparsegpt`, `random`) at every sparsity and N:M pattern; perplexity, KL and top-1 of "
        "each pruned model with paired CIs, and its gain over magnitude and Wanda pruning"
    ),
    reads={"calib_text": CALIB_TEXT, **SCORED_MODEL, "tasks_dir": TASK_DIR},
    writes={
        "out": "artifacts/prune/pruning.parquet",
        "task_results": "artifacts/prune/tasks.parquet",
    },
    manifest="artifacts/prune/manifest.json",
)


def run(args, params):
    ev = prepare_stage(params, args.models_dir, args.eval_text, args.baseline_texts)
    model, windows, base, seed = ev.model, ev.windows, ev.base, params.seeds[0]
    infos = pool_infos(pl.read_parquet(args.pool))
    calib = calibration_windows(
        ev.tokenizer, args.calib_text, params.seq_len, params.bos, params.calib_samples
    )
    draw = calibration_draw(calib.all, params.calib_samples, seed)
    layerwise = {
        m: LAYER_PRUNERS.get(m).hessian for m in params.prune_methods if m in LAYER_PRUNERS
    }
    pruning_memory = guard_pruning(
        model, infos, layerwise, len(draw), params.batch_size, params.seq_len
    )

    def scores_of(metric: str):
        if metric == params.metric:  # the sensitivity stage's scores of this draw
            return StoredScores(args.scores, seed)
        return score(ScoringConfig.of(params), model, infos, get_metric(metric), draw, seed)

    tasks = [load_task(t, args.tasks_dir, params.task_items) for t in params.tasks]
    measure = lambda: {  # noqa: E731
        t.name: evaluate_task(model, ev.tokenizer, t, params.seq_len, params.batch_size)
        for t in tasks
    }
    task_at = min(params.sparsities, key=lambda s: (abs(s - 0.5), s))
    runs, measured = prune_each(ev, infos, params, draw, scores_of, measure, task_at)
    idx = bootstrap_indices(len(windows), params.bootstrap, seed)
    pool_size = sum(i.numel for i in infos)
    rows = table(runs, base, pool_size, idx, params.prune_group)
    write_table(rows, args.out, PRUNING_TABLE)
    write_table(
        task_table(measured, tasks, task_at, seed, params.bootstrap),
        args.task_results,
        PRUNE_TASKS_TABLE,
    )
    return {
        "pruned_models": len(runs),
        "diverged": int(rows["diverged"].sum()),
        "memory": ev.memory,
        "pruning_memory": pruning_memory,
        "evaluation_text": ev.text,
        "calibration_text": calib.record,
    }


def pruning_targets(params, model, infos, draw) -> list[Sparsity]:
    """Every sparsity (uniform, then with OWL's allocation when asked), then every N:M."""
    targets = [Sparsity(s) for s in params.sparsities]
    if params.prune_owl:
        ratios = outlier_ratios(model, infos, draw, params.batch_size)
        allocated = (owl(s, ratios) for s in params.sparsities)
        targets += [t for t in allocated if t.by_layer]  # none when every ratio is equal
    return targets + [Sparsity.pattern(t) for t in params.prune_nm]


def prune_each(ev, infos, params, draw, scores_of, measure, task_at: float):
    """Every method at every target from the dense model, restored after each: (runs, task
    results), runs as (method, target, pruned, EvalResult); proves the restore by checksum and
    one baseline batch."""
    model, windows = ev.model, ev.windows
    dense = Snapshot(model, [i.name for i in infos])
    targets = pruning_targets(params, model, infos, draw)
    measured, runs = {"dense": measure()}, []
    with reference(model, windows, params.batch_size, params.kl_topk) as ref:
        for method in params.prune_methods:
            activations = method in LAYER_PRUNERS
            scores = (
                None if activations else method_scores(method, infos, scores_of, params.seeds[0])
            )
            for target in progress(targets, desc=f"prune {method}"):
                if activations:
                    masks = prune_by_activations(
                        model, infos, method, target, draw, params.batch_size
                    )
                    pruned = sum(int(m.sum()) for m in masks.values())
                else:
                    pruned = apply_masks(model, in_group(scores, infos, target, params.prune_group))
                runs.append(
                    (method, target, pruned, evaluate(model, windows, params.batch_size, ref=ref))
                )
                if target == Sparsity(task_at):
                    measured[method] = measure()
                dense.restore()
    dense.verify()
    ev.check_unchanged(params.batch_size)
    return runs, measured


if __name__ == "__main__":
    stage_main(__doc__, STAGE, run)
