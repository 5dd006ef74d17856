"""units: ranks neurons, heads, experts or residual channels as wholes and perturbs the top ones
against random units of the same kind matched per layer (cwa.selection.units,
cwa.experiments.unit_sets).

For each kind of `units`: every unit's score aggregates the |scores| of its weights
(`unit_reduce`; the first seed's score store). The top k units of each k in `unit_topk` (capped
at half the kind's units) are perturbed together by every perturbation of `perturb` at its first
strength, against `random_draws` sets of random units with the same count in each layer; the top
`unit_each` units are also zeroed one at a time (the headline perturbation), each against
random units of its own layer. Same windows, reference, bootstrap and tests as the perturb
stage; q-values by Benjamini-Hochberg over this stage's comparisons. Every experiment's restore
is checked bit for bit, and one baseline batch re-evaluated at the end.
Reads: the evaluation text (sources stage), the model, the score store, the pool and the
baseline per-text table.
Writes: every unit's score and rank (schema `unit_scores`), the experiments (`unit_effects`)
and the comparisons (`unit_comparisons`).
"""

import polars as pl

from cwa.core.io import write_table
from cwa.core.stats import bh_q_values
from cwa.evaluation.perplexity import reference
from cwa.experiments.perturbations import SWEEP_KEYS
from cwa.experiments.sweep import SweepConfig, specs
from cwa.experiments.unit_sets import Bench, headline_sweep, measure_units
from cwa.pipeline.evaluation_setup import prepare_stage
from cwa.pipeline.paths import SCORED_MODEL
from cwa.pipeline.stage import Stage, stage_main
from cwa.schemas.unit_comparisons import UNIT_COMPARISONS_TABLE
from cwa.schemas.unit_effects import UNIT_EFFECTS_TABLE
from cwa.schemas.unit_scores import UNIT_SCORES_TABLE
from cwa.scoring.store import StoredScores, pool_infos
from cwa.selection.units import ranked, unit_scores, units_of

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
    "random_draws",
    "bootstrap",
    "perturb",
    *SWEEP_KEYS,
    "units",
    "unit_reduce",
    "unit_topk",
    "unit_each",
)


STAGE = Stage(
    "units",
    PARAMS,
    does=(
        "scores neurons, heads, experts or residual channels (`units`) as wholes; the top units "
        "alone and together against random units of the same kind matched per layer, through the "
        "perturbation sweep with its CIs and tests"
    ),
    reads=SCORED_MODEL,
    writes={
        "unit_scores": "artifacts/units/scores.parquet",
        "effects": "artifacts/units/effects.parquet",
        "comparisons": "artifacts/units/comparisons.parquet",
    },
    manifest="artifacts/units/manifest.json",
)


def run(args, params):
    ev = prepare_stage(params, args.models_dir, args.eval_text, args.baseline_texts)
    infos = pool_infos(pl.read_parquet(args.pool))
    store = StoredScores(args.scores, params.seeds[0])
    sweeps = specs(SweepConfig.of(params))
    zero = headline_sweep(SweepConfig.of(params))
    scored, effects, comparisons = [], [], []
    with reference(ev.model, ev.windows, params.batch_size, params.kl_topk) as ref:
        bench = Bench.of(ev, ref, params)
        for kind in params.units:
            units = units_of(infos, kind)
            table = ranked(unit_scores(units, store, params.unit_reduce))
            scored.append(table.with_columns(kind=pl.lit(kind)))
            top = table["unit"].to_list()
            ks = sorted({min(k, len(top) // 2) for k in params.unit_topk} - {0})
            runs = [(k, top[:k], sweeps, "", -1) for k in ks]
            each = range(min(params.unit_each, len(top)))
            runs += [(1, [top[r]], zero, table["label"][r], r) for r in each]
            for _, chosen, grid, label, rank in runs:
                e, c = measure_units(bench, units, table, chosen, grid)
                tag = {"kind": pl.lit(kind), "unit": pl.lit(label), "rank": pl.lit(rank)}
                effects.append(e.with_columns(**tag))
                comparisons.append(c.with_columns(**tag))
    ev.check_unchanged(params.batch_size)
    compared = stacked(comparisons, UNIT_COMPARISONS_TABLE)
    compared = compared.with_columns(q_value=pl.Series(bh_q_values(compared["p_value"])))
    write_table(stacked(scored, UNIT_SCORES_TABLE), args.unit_scores, UNIT_SCORES_TABLE)
    write_table(stacked(effects, UNIT_EFFECTS_TABLE), args.effects, UNIT_EFFECTS_TABLE)
    write_table(compared, args.comparisons, UNIT_COMPARISONS_TABLE)
    return {"experiments": sum(len(e) for e in effects), "memory": ev.memory}


def stacked(frames: list[pl.DataFrame], schema) -> pl.DataFrame:
    """The frames one under another; with `units: []`, the schema's empty table."""
    if frames:
        return pl.concat(frames, how="diagonal_relaxed")
    return pl.DataFrame(schema={c.name: c.dtype for c in schema.columns})


if __name__ == "__main__":
    stage_main(__doc__, STAGE, run)
