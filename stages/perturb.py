"""perturb: perturbs the top-k weights and every control, measures the damage, restores exactly.

Uses the ranking of the first seed in `seeds`. Every experiment is evaluated on the same windows
as the baseline; ΔPPL gets a paired bootstrap CI over texts; after each experiment the touched
weights are checked bit for bit, and the whole touched tensors by checksum after the sweep.
Reads: the corpus table, the model, the ranking and the baseline per-text table.
Writes: one row per experiment (schema `effects`) and per-text results (schema `eval_texts`).
Params: model, dtype, device, seq_len, eval_samples, batch_size, seeds, perturb, noise_sigma,
flip_bit, bootstrap.
"""

import numpy as np
import polars as pl

from cwa import CwaError
from cwa.data import eval_windows
from cwa.evaluation import evaluate, read_baseline
from cwa.experiment import experiments, summarize
from cwa.experiment import run as run_experiments
from cwa.io import write_table
from cwa.models import load_model
from cwa.perturbations import Settings, get_perturbation
from cwa.stage import stage_main
from cwa.stats import bootstrap_indices


def add_args(p):
    p.add_argument("--corpus", required=True)
    p.add_argument("--models-dir", required=True)
    p.add_argument("--ranking", required=True)
    p.add_argument("--baseline-texts", required=True)
    p.add_argument("--effects", required=True)
    p.add_argument("--texts", required=True)


def run(args, params):
    model, tokenizer = load_model(params.model, args.models_dir, params.dtype, params.device)
    windows = eval_windows(tokenizer, args.corpus, params.seq_len, params.eval_samples)
    base = read_baseline(args.baseline_texts, len(windows))
    seed = params.seeds[0]
    ranking = pl.read_parquet(args.ranking).filter(pl.col("seed") == seed)
    exps = experiments(ranking, [get_perturbation(n) for n in params.perturb])
    settings = Settings(params.noise_sigma, params.flip_bit, seed)
    results = run_experiments(model, exps, windows, params.batch_size, settings)
    check = evaluate(model, windows[: params.batch_size], params.batch_size)
    if not np.allclose(check.nll, base.nll[: params.batch_size], rtol=1e-5, atol=1e-4):
        raise CwaError("after restoring, the model no longer reproduces the baseline NLL")
    idx = bootstrap_indices(len(windows), params.bootstrap, seed)
    effects, texts = summarize(exps, results, base, settings, idx)
    meta = {"metric": ranking["metric"][0], "mode": ranking["mode"][0], "seed": seed}
    write_table(
        effects.with_columns(**{k: pl.lit(v) for k, v in meta.items()}), args.effects, "effects"
    )
    write_table(texts, args.texts, "eval_texts")
    return {"experiments": len(exps), "diverged": int(np.sum(effects["diverged"].to_numpy()))}


if __name__ == "__main__":
    stage_main(__doc__, add_args, run)
