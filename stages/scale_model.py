"""scale_model: sensitivity and the headline experiment for one model of the built-in family.

Scores the pool with `metric` on the first seed's calibration draw, measures how concentrated
the scores are, and zeroes the global top-k (k = headline_k) against matched random draws.
Reads: the calibration and evaluation text (sources stage) and the built-in model.
Writes: one row (schema `scaling_model`) and where the top-k and the score sit by component and
depth (schema `scaling_shares`).
"""

import polars as pl

from cwa.data import calibration_draw, calibration_windows, evaluation_windows
from cwa.evaluation import evaluate
from cwa.experiment import ZERO, experiments, headline, summarize
from cwa.experiment import run as run_experiments
from cwa.io import write_table
from cwa.memory import guard_scoring
from cwa.metrics import ScoringConfig, get_metric, score
from cwa.models import count_parameters, describe, load_model, pool
from cwa.perturbations import get_perturbation
from cwa.ranking import rank
from cwa.schemas.scaling_model import SCALING_MODEL_TABLE
from cwa.schemas.scaling_shares import SCALING_SHARES_TABLE
from cwa.scores import concentration, shares
from cwa.stage import stage_main
from cwa.stats import bootstrap_indices

# What this stage reads: its `params:` in dvc.yaml (tests/test_docs.py keeps them equal).
PARAMS = (
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
    "random_draws",
    "include_embeddings",
    "include_1d",
    "layers",
    "dtype",
    "device",
)


def add_args(p):
    p.add_argument("--name", required=True, help="built-in model")
    p.add_argument("--calib-text", required=True, help="the sources stage's calibration directory")
    p.add_argument("--eval-text", required=True, help="the sources stage's evaluation directory")
    p.add_argument("--models-dir", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--shares", required=True, help="component and depth shares (scaling_shares)")


def run(args, params):
    metric, seed, k = get_metric(params.metric), params.seeds[0], params.headline_k
    model, tokenizer = load_model(
        f"builtin:{args.name}", args.models_dir, params.dtype, params.device
    )
    infos = pool(describe(model), **params.pool_options)
    s = ScoringConfig.of(params)
    guard_scoring(model, infos, metric, s.batch_size, s.seq_len, s.layer_group)
    seq_len, bos = params.seq_len, params.bos
    pool_windows = calibration_windows(
        tokenizer, args.calib_text, seq_len, bos, params.calib_samples
    )
    calib = calibration_draw(pool_windows.all, params.calib_samples, seed)
    desc = f"{args.name} {metric.name}"
    scores = score(s, model, infos, metric, calib, seed, desc)
    windows = evaluation_windows(tokenizer, args.eval_text, seq_len, bos, params.eval_samples).all
    base = evaluate(model, windows, params.batch_size)
    ranking = rank(
        infos, scores, "global", (k,), ("random_k",), params.random_draws, seed, metric.name
    )
    exps = experiments(ranking, [(get_perturbation("zero"), (None,))], seed=seed)
    results = run_experiments(model, exps, windows, params.batch_size, desc=f"{args.name} zero")
    effects, _ = summarize(exps, results, base, bootstrap_indices(len(windows), 1, seed), seed)
    row = {
        "model": args.name,
        "params": count_parameters(model),
        "pool": sum(i.numel for i in infos),
        "metric": metric.name,
        "baseline_ppl": base.ppl,
        **concentration([scores[i.name] for i in infos]),
        "k": k,
    }
    h = headline(effects, None, k, ZERO)
    row |= {key: h[key] for key in ("delta_ppl_top", "delta_ppl_random", "separation")}
    top = ranking.filter(pl.col("selection") == "top")
    where = shares(infos, scores, top).with_columns(model=pl.lit(args.name))
    write_table(pl.DataFrame([row]), args.out, SCALING_MODEL_TABLE)
    write_table(where, args.shares, SCALING_SHARES_TABLE)
    return row


if __name__ == "__main__":
    stage_main(__doc__, add_args, run, PARAMS)
