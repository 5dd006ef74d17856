"""member: the per-model analysis of one study member (`models.<label>`).

Scores the pool with `metric` on the first seed's calibration draw, measures how concentrated
the scores are, zeroes the global top-k (k = headline_k) against `controls`, runs the
super-weight detector, and records where the sensitivity sits (components, depth, experts with
their routed tokens) and what the drift analysis compares between checkpoints (the top
max(topk) weights and the scores at a fixed pool sample).
Reads: the calibration and evaluation text (sources stage) and the member's model.
Writes: a directory of tables (schemas `study_member`, `study_shares`, `study_experts`,
`study_top`, `study_sample`), one file each.
"""

import math
from pathlib import Path

import polars as pl

from cwa import CwaError
from cwa.analysis.experts import active_parameters, expert_table, experts_in, is_moe, routed_tokens
from cwa.core.io import atomic_write, write_table
from cwa.core.stats import bootstrap_indices
from cwa.data.windows import calibration_draw, calibration_windows, evaluation_windows
from cwa.evaluation.perplexity import evaluate
from cwa.experiments.perturbations import get_perturbation
from cwa.experiments.summaries import ZERO, compare, headline, summarize
from cwa.experiments.sweep import experiments
from cwa.experiments.sweep import run as run_experiments
from cwa.models.anatomy import describe, pool
from cwa.models.loading import check_positions, count_parameters, load_model
from cwa.models.memory import guard_scoring
from cwa.pipeline.paths import CALIB_TEXT, EVAL_TEXT, MODELS
from cwa.pipeline.stage import Stage, stage_main
from cwa.schemas.study_experts import STUDY_EXPERTS_TABLE
from cwa.schemas.study_member import STUDY_MEMBER_TABLE
from cwa.schemas.study_sample import STUDY_SAMPLE_TABLE
from cwa.schemas.study_shares import STUDY_SHARES_TABLE
from cwa.schemas.study_top import STUDY_TOP_TABLE
from cwa.scoring.metrics import ScoringConfig, get_metric, score
from cwa.scoring.store import concentration, magnitude_bins, pool_sample, shares
from cwa.scoring.superweight import detect
from cwa.selection.ranking import rank

# What this stage reads (its `params:` in the generated dvc.yaml).
PARAMS = (
    "models",
    "metric",
    "seeds",
    "calib_samples",
    "seq_len",
    "bos",
    "batch_size",
    "probes",
    "layer_group",
    "eval_samples",
    "headline_k",
    "topk",
    "controls",
    "random_draws",
    "bootstrap",
    "include_embeddings",
    "include_1d",
    "layers",
    "spike_ratio",
    "dtype",
    "device",
    "device_map",
)


STAGE = Stage(
    "member",
    PARAMS,
    does=(
        "for each model of the study (`models`: built-in, hub id with revision, or directory): "
        "sensitivity, concentration, the headline zeroing experiment against the controls, the "
        "super-weight detector, where the top-k and the score sit by component and depth, each "
        "expert's score share and routed tokens, the top set and a score sample for drift"
    ),
    reads={
        "calib_text": CALIB_TEXT,
        "eval_text": EVAL_TEXT,
        "models_dir": MODELS,
    },
    writes={
        "out": "artifacts/study/members/${key}",
    },
    manifest="artifacts/study/manifests/${key}.json",
    foreach="models",
    key_flag="label",
)


def run(args, params):
    if args.label not in params.models:
        raise CwaError(
            f"--label {args.label!r} is not in params `models`: {', '.join(params.models)}"
        )
    member = params.models[args.label]
    try:
        model, tokenizer = load_model(
            member.model,
            args.models_dir,
            member.dtype or params.dtype,
            params.device,
            device_map=params.device_map,
            revision=member.revision,
        )
        check_positions(model.config, params.seq_len, member.model)
        return measure(args, params, model, tokenizer)
    except CwaError as err:  # the other members' results stay; this one names itself
        raise CwaError(f"study member {args.label}: {err}") from err


def measure(args, params, model, tokenizer):
    metric, seed, k = get_metric(params.metric), params.seeds[0], params.headline_k
    every = describe(model)
    infos = pool(every, **params.pool_options)
    s = ScoringConfig.of(params)
    guard_scoring(model, infos, metric, s.batch_size, s.seq_len, s.layer_group)
    windows = calibration_windows(
        tokenizer, args.calib_text, params.seq_len, params.bos, params.calib_samples
    )
    calib = calibration_draw(windows.all, params.calib_samples, seed)
    scores = score(s, model, infos, metric, calib, seed, f"{args.label} {metric.name}")
    effects, p_value, base = headline_experiment(args, params, model, tokenizer, infos, scores)
    h = headline(effects, None, k, ZERO)
    spikes = detect(model, calib[: params.batch_size], params.batch_size)
    row = describe_member(args.label, params, model, every, infos, scores) | {
        "baseline_ppl": base.ppl,
        "delta_ppl_top": h["delta_ppl_top"],
        "delta_ppl_top_rel": h["delta_ppl_top"] / base.ppl,
        "delta_ppl_random": h["delta_ppl_random"],
        "delta_ppl_magnitude": h["delta_ppl_magnitude"],
        "delta_ppl_bottom": h["delta_ppl_bottom"],
        "separation": h["separation"],
        "p_value": p_value,
        "superweight_candidates": sum(sp.is_candidate(params.spike_ratio) for sp in spikes),
        "superweight_ratio": max((min(sp.in_ratio, sp.out_ratio) for sp in spikes), default=None),
    }
    top = rank(infos, scores, "global", (max(params.topk),), (), 1, seed, metric.name)
    total = sum(float(scores[i.name].double().abs().sum()) for i in infos)
    routed = routed_tokens(model, infos, calib, params.batch_size) if is_moe(infos) else None
    tables = {
        "member": (pl.DataFrame([row]), STUDY_MEMBER_TABLE),
        "shares": (shares(infos, scores, top.filter(pl.col("rank") < k)), STUDY_SHARES_TABLE),
        "experts": (
            expert_table(infos, scores, routed, total) if routed is not None else None,
            STUDY_EXPERTS_TABLE,
        ),
        "top": (
            top.select("rank", pl.col("param").alias("tensor"), "flat_index", "score"),
            STUDY_TOP_TABLE,
        ),
        "sample": (sample_rows(scores, infos), STUDY_SAMPLE_TABLE),
    }

    def write(tmp: Path):
        tmp.mkdir()
        for name, (table, schema) in tables.items():
            if table is None:  # a dense model: no expert rows
                table = pl.DataFrame(schema={c.name: c.dtype for c in schema.columns})
            table = table.with_columns(label=pl.lit(args.label, pl.String))
            write_table(table, tmp / f"{name}.parquet", schema)

    atomic_write(args.out, write)
    return {"member": row}


def describe_member(label, params, model, every, infos, scores) -> dict:
    """Identity, sizes and concentration of one member (`every`: all its parameters' infos,
    `infos`: the pool's)."""
    member, total = params.models[label], count_parameters(model)
    return {
        "label": label,
        "model": member.model,
        "revision": member.revision,
        "architecture": model.config.model_type,
        "experts": experts_in(model.config) if is_moe(infos) else 0,
        "params": total,
        "active_params": active_parameters(every, model.config, total),
        "pool": sum(i.numel for i in infos),
        "metric": params.metric,
        **concentration([scores[i.name] for i in infos]),
        "k": params.headline_k,
    }


def headline_experiment(args, params, model, tokenizer, infos, scores):
    """(effects, p of the top set beating random_k, baseline) of zeroing the top-k against the
    controls on the evaluation windows."""
    seed, k = params.seeds[0], params.headline_k
    weights = dict(model.named_parameters())
    bins = (
        {i.name: magnitude_bins(weights[i.name]) for i in infos}
        if "magnitude_matched_k" in params.controls
        else None
    )
    controls, draws = params.controls, params.random_draws
    ranking = rank(infos, scores, "global", (k,), controls, draws, seed, params.metric, bins)
    windows = evaluation_windows(
        tokenizer, args.eval_text, params.seq_len, params.bos, params.eval_samples
    ).all
    base = evaluate(model, windows, params.batch_size)
    exps = experiments(ranking, [(get_perturbation("zero"), (None,))], seed=seed)
    results = run_experiments(model, exps, windows, params.batch_size, desc=f"{args.label} zero")
    effects, _ = summarize(exps, results, base, bootstrap_indices(len(windows), 1, seed), seed)
    idx = bootstrap_indices(len(windows), params.bootstrap, seed)
    tests = compare(exps, results, base, idx, params.bootstrap, seed)
    random = tests.filter(pl.col("control") == "random_k")["p_value"] if tests.height else []
    return effects, float(random[0]) if len(random) else math.nan, base


def sample_rows(scores, infos) -> pl.DataFrame:
    """|score| at the fixed pool sample (the same coordinates for every member of one shape)."""
    sample = pool_sample({i.name: i.numel for i in infos})
    return pl.concat(
        pl.DataFrame(
            {
                "tensor": name,
                "flat_index": index.numpy(),
                "score": scores[name].reshape(-1)[index].double().abs().numpy(),
            }
        )
        for name, index in sample.items()
    )


if __name__ == "__main__":
    stage_main(__doc__, STAGE, run)
