"""perturb: perturbs the top-k weights and every control, measures the damage, restores exactly.

Runs on the ranking of every seed in `seeds` (top set and controls drawn per seed). The grid:
every perturbation at the first value of its strength sweep for every k; at headline_k every
strength and every mask ratio. Every experiment is evaluated on the baseline's windows: ΔPPL
with a paired bootstrap CI over texts, and the KL to the unperturbed model's next-token
distributions and the fraction of unchanged top-1 predictions with theirs (one reference pass
for all seeds: cwa.evaluation.perplexity.Reference). Per seed, the top set is compared with each
control (permutation and Wilcoxon p-values, effect size, separation CI); pooled over seeds, the same
with CIs from a bootstrap over seeds and texts; BH q-values over all of them. After each
experiment the touched weights are checked bit for bit, the whole touched tensors by checksum
after each seed's sweep, and one baseline batch is re-evaluated at the end. The downstream tasks
run on the unperturbed model and under every experiment of the first seed at headline_k (first
strength, whole sets), lm-evaluation-harness tasks (`lm_eval_tasks`) on the same in-memory
weights.
Reads: the evaluation text (sources stage), the model, the ranking, the baseline per-text
table, the task files.
Writes: one row per experiment (schema `effects`), per-text results (`eval_texts`), each seed's
top vs control comparisons (`comparisons`), the pooled ones (`pooled`) and downstream task
results (`tasks`).
"""

import polars as pl

from cwa.core.io import write_table
from cwa.core.stats import bootstrap_indices
from cwa.evaluation.lmeval import LmEval
from cwa.evaluation.perplexity import BASELINE, reference
from cwa.evaluation.tasks import evaluate_task, load_task, task_path
from cwa.experiments.perturbations import SWEEP_KEYS
from cwa.experiments.summaries import compare, headline_cell, pool, summarize, with_q_values
from cwa.experiments.sweep import (
    SweepConfig,
    experiments,
    first_settings,
    specs,
    stream_seed,
    sweep,
    task_rows,
)
from cwa.experiments.sweep import run as run_experiments
from cwa.pipeline.evaluation_setup import prepare_stage
from cwa.pipeline.paths import BASELINE_TEXTS, EVAL_TEXT, LM_EVAL_CONFIGS, MODELS, RANKING, TASK_DIR
from cwa.pipeline.stage import Stage, content_hash, stage_main
from cwa.schemas.comparisons import COMPARISONS_TABLE
from cwa.schemas.effects import EFFECTS_TABLE
from cwa.schemas.eval_texts import EVAL_TEXTS_TABLE
from cwa.schemas.pooled import POOLED_TABLE
from cwa.schemas.tasks import TASKS_TABLE

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
    "perturb",
    *SWEEP_KEYS,
    "mask_ratios",
    "headline_k",
    "bootstrap",
    "tasks",
    "task_items",
    "lm_eval_tasks",
)


STAGE = Stage(
    "perturb",
    PARAMS,
    does=(
        "the perturbation sweep (every kind over k; every strength and mask ratio at "
        "`headline_k`) on every selection of every seed's ranking; ΔPPL with paired-bootstrap CI; "
        "top vs each control with p-values, effect sizes and separation CIs, per seed and pooled "
        "over seeds (CIs resampling seeds and windows); downstream tasks (and "
        "lm-evaluation-harness tasks) under the first seed's headline experiments; restore "
        "checked bit for bit"
    ),
    reads={
        "eval_text": EVAL_TEXT,
        "models_dir": MODELS,
        "ranking": RANKING,
        "baseline_texts": BASELINE_TEXTS,
        "tasks_dir": TASK_DIR,
        "lm_eval_include": LM_EVAL_CONFIGS,
    },
    writes={
        "effects": "artifacts/perturb/effects.parquet",
        "texts": "artifacts/perturb/texts.parquet",
        "comparisons": "artifacts/perturb/comparisons.parquet",
        "pooled": "artifacts/perturb/pooled.parquet",
        "task_results": "artifacts/perturb/tasks.parquet",
    },
    manifest="artifacts/perturb/manifest.json",
)


def run(args, params):
    ev = prepare_stage(params, args.models_dir, args.eval_text, args.baseline_texts)
    model, windows, base = ev.model, ev.windows, ev.base
    rankings = pl.read_parquet(args.ranking)
    runs = []
    with reference(model, windows, params.batch_size, params.kl_topk) as ref:
        for seed in params.seeds:
            exps = seed_experiments(rankings, params, seed)
            desc = f"perturb seed {seed}" if len(params.seeds) > 1 else "perturb"
            runs.append((exps, run_experiments(model, exps, windows, params.batch_size, desc, ref)))
    ev.check_unchanged(params.batch_size)
    first = params.seeds[0]
    idx = bootstrap_indices(len(windows), params.bootstrap, first)  # shared: CIs stay paired
    tables = [
        per_seed(exps, res, base, idx, params, s)
        for s, (exps, res) in zip(params.seeds, runs, strict=True)
    ]
    effects, texts, comparisons = (pl.concat([t[i] for t in tables]) for i in range(3))
    seed_idx = bootstrap_indices(len(runs), params.bootstrap, stream_seed("seeds", first))
    pooled = or_empty(pool(runs, base, idx, seed_idx, params.bootstrap, first), POOLED_TABLE)
    comparisons, pooled = with_q_values(comparisons, pooled)
    task_table = downstream(args, params, model, ev.tokenizer, runs[0][0], first)
    meta = {k: pl.lit(rankings[k][0]) for k in ("metric", "mode")}
    write_table(effects.with_columns(**meta), args.effects, EFFECTS_TABLE)
    write_table(comparisons.with_columns(**meta), args.comparisons, COMPARISONS_TABLE)
    write_table(pooled.with_columns(**meta), args.pooled, POOLED_TABLE)
    write_table(task_table.with_columns(**meta, seed=pl.lit(first)), args.task_results, TASKS_TABLE)
    write_table(texts, args.texts, EVAL_TEXTS_TABLE)
    return {
        "experiments": sum(len(exps) for exps, _ in runs),
        "diverged": int(effects["diverged"].sum()),
        "task_files": {t: content_hash(task_path(t, args.tasks_dir)) for t in params.tasks},
        "memory": ev.memory,
        "evaluation_text": ev.text,
    }


def seed_experiments(rankings: pl.DataFrame, params, seed: int) -> list:
    """The sweep grid over the top set and controls of one seed's ranking."""
    ranking = rankings.filter(pl.col("seed") == seed)
    grid = specs(SweepConfig.of(params))
    return experiments(ranking, grid, params.headline_k, params.mask_ratios, seed)


def per_seed(exps, results, base, idx, params, seed: int) -> tuple[pl.DataFrame, ...]:
    """(effects, texts, comparisons) of one seed's sweep."""
    effects, texts = summarize(exps, results, base, idx, seed)
    comparisons = or_empty(
        compare(exps, results, base, idx, params.bootstrap, seed), COMPARISONS_TABLE
    )
    return effects, texts, comparisons.with_columns(seed=pl.lit(seed))


def or_empty(table: pl.DataFrame, schema) -> pl.DataFrame:
    """`table`, or, when nothing was asked for (no controls, no tasks), the schema's empty table."""
    if not table.is_empty():
        return table
    return pl.DataFrame(schema={c.name: c.dtype for c in schema.columns})


def downstream(args, params, model, tokenizer, exps, seed) -> pl.DataFrame:
    """Task results of the unperturbed model and of the headline cells' experiments."""
    tasks = [load_task(t, args.tasks_dir, params.task_items) for t in params.tasks]
    harness = None
    if params.lm_eval_tasks:
        harness = LmEval(
            model,
            tokenizer,
            params.lm_eval_tasks,
            args.lm_eval_include,
            params.seq_len,
            params.batch_size,
            params.task_items,
        )
        tasks += harness.as_tasks()
    if not tasks:  # tasks: [] and lm_eval_tasks: []: none asked for, an empty table says so
        return or_empty(pl.DataFrame(), TASKS_TABLE)

    def measure(m):
        out = {
            t.name: evaluate_task(m, tokenizer, t, params.seq_len, params.batch_size)
            for t in tasks
            if t.kind != "lm_eval"
        }
        return out | (harness.run() if harness else {})

    idents = pl.DataFrame([e.ident for e in exps]).with_row_index()
    first = first_settings(SweepConfig.of(params))
    keep = idents.filter(headline_cell(params.headline_k, first))["index"]
    cells = [exps[i] for i in keep]
    base = measure(model)
    rows = task_rows(BASELINE, base, base, tasks, seed, params.bootstrap)
    for exp, res in zip(cells, sweep(model, cells, measure, "tasks"), strict=True):
        rows += task_rows(exp.ident, res, base, tasks, seed, params.bootstrap)
    return pl.DataFrame(rows)


if __name__ == "__main__":
    stage_main(__doc__, STAGE, run)
