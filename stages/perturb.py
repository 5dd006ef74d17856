"""perturb: perturbs the top-k weights and every control, measures the damage, restores exactly.

Uses the ranking of the first seed in `seeds`. The grid: every perturbation at the first value of
its strength sweep for every k; at headline_k every strength and every mask ratio. Every
experiment is evaluated on the baseline's windows; ΔPPL gets a paired bootstrap CI over texts; the
top set is compared with each control (permutation and Wilcoxon p-values, effect size, separation
CI). After each experiment the touched weights are checked bit for bit, the whole touched tensors
by checksum after the sweep, and one baseline batch is re-evaluated.
Reads: the corpus table, the model, the ranking and the baseline per-text table.
Writes: one row per experiment (schema `effects`), per-text results (`eval_texts`) and top vs
control comparisons (`comparisons`).
Params: model, dtype, device, seq_len, eval_samples, batch_size, seeds, perturb, scale_alpha,
noise_sigma, abs_sigma, flip_bit, flip_prob, quant_bits, mask_ratios, headline_k, bootstrap.
"""

import numpy as np
import polars as pl

from cwa import CwaError
from cwa.data import eval_windows
from cwa.evaluation import evaluate, read_baseline
from cwa.experiment import compare, experiments, specs, summarize
from cwa.experiment import run as run_experiments
from cwa.io import write_table
from cwa.models import load_model
from cwa.stage import stage_main
from cwa.stats import bootstrap_indices


def add_args(p):
    p.add_argument("--corpus", required=True)
    p.add_argument("--models-dir", required=True)
    p.add_argument("--ranking", required=True)
    p.add_argument("--baseline-texts", required=True)
    p.add_argument("--effects", required=True)
    p.add_argument("--texts", required=True)
    p.add_argument("--comparisons", required=True)


def run(args, params):
    model, tokenizer = load_model(params.model, args.models_dir, params.dtype, params.device)
    windows = eval_windows(tokenizer, args.corpus, params.seq_len, params.eval_samples)
    base = read_baseline(args.baseline_texts, len(windows))
    seed = params.seeds[0]
    ranking = pl.read_parquet(args.ranking).filter(pl.col("seed") == seed)
    exps = experiments(ranking, specs(params), params.headline_k, params.mask_ratios, seed)
    results = run_experiments(model, exps, windows, params.batch_size)
    check = evaluate(model, windows[: params.batch_size], params.batch_size)
    if not np.allclose(check.nll, base.nll[: params.batch_size], rtol=1e-5, atol=1e-4):
        raise CwaError("after restoring, the model no longer reproduces the baseline NLL")
    idx = bootstrap_indices(len(windows), params.bootstrap, seed)
    effects, texts = summarize(exps, results, base, idx)
    comparisons = compare(exps, results, base, idx, params.bootstrap, seed)
    meta = {k: pl.lit(ranking[k][0]) for k in ("metric", "mode", "seed")}
    write_table(effects.with_columns(**meta), args.effects, "effects")
    write_table(comparisons.with_columns(**meta), args.comparisons, "comparisons")
    write_table(texts, args.texts, "eval_texts")
    return {"experiments": len(exps), "diverged": int(effects["diverged"].sum())}


if __name__ == "__main__":
    stage_main(__doc__, add_args, run)
