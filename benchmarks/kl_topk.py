"""How far the top-K KL (`kl_topk`) falls below the full-vocabulary KL, on the built-in model.

    python benchmarks/kl_topk.py [--ks 16,64,256,1024 --seed 0]   # after `dvc repro`

For the default run's seed-0 ranking, every k of `topk`, the top set and its random_k and
bottom_k controls, zeroed and sign-flipped, the mean KL per token over the evaluation windows
is measured against the whole vocabulary and against each K of the reference's top tokens plus
the rest as one outcome. Prints, per K, the shortfall 1 − KL_K / KL (median and largest over the
experiments whose full KL is at least FLOOR: below it the full KL is its own fp16 rounding,
docs/science.md, and can even be negative), the top set's KL separation (top / random) both
ways, and the reference's size.
"""

from __future__ import annotations

import argparse
from contextlib import ExitStack

import numpy as np
import polars as pl

import cwa.api as cwa
from cwa.config.params import load_params
from cwa.data.windows import evaluation_windows
from cwa.evaluation.perplexity import evaluate, reference, reference_bytes
from cwa.pipeline.paths import EVAL_TEXT, RANKING

FLOOR = 1e-5  # nats per token: 10x the full KL's fp16 rounding floor


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ks", default="16,64,256,1024")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    params = load_params("params.yaml", strict=False)
    ks = [0, *(int(k) for k in args.ks.split(","))]
    model, tokenizer = cwa.load(params.model)
    windows = evaluation_windows(
        tokenizer, EVAL_TEXT, params.seq_len, params.bos, params.eval_samples
    ).all
    ranking = pl.read_parquet(RANKING).filter(pl.col("seed") == args.seed)
    vocab = model.get_output_embeddings().weight.shape[0]
    rows = []
    with ExitStack() as stack:
        refs = {k: stack.enter_context(reference(model, windows, params.batch_size, k)) for k in ks}
        for k in params.topk:
            for selection in ("top", "random_k", "bottom_k"):
                for perturbation in ("zero", "sign_flip"):
                    with cwa.perturbed(model, ranking, perturbation, selection=selection, k=k):
                        for K, ref in refs.items():
                            res = evaluate(model, windows, params.batch_size, ref=ref)
                            kl = res.kl.sum() / res.tokens.sum()
                            rows.append((k, selection, perturbation, K, kl))
    table = pl.DataFrame(rows, schema=["k", "selection", "perturbation", "K", "kl"], orient="row")
    full = table.filter(pl.col("K") == 0).select("k", "selection", "perturbation", full="kl")
    table = table.join(full, on=["k", "selection", "perturbation"])
    measured = table.filter(pl.col("full") >= FLOOR)
    tokens = windows.shape[0] * (windows.shape[1] - 1)
    print(
        f"{params.model}: vocabulary {vocab}, {windows.shape[0]} windows x {windows.shape[1]} "
        f"tokens, {table['k'].n_unique() * 6} experiments, "
        f"{measured.filter(pl.col('K') == 0).height} with a full KL >= {FLOOR:g}"
    )
    print(
        "| K | shortfall 1 − KL_K / KL: median | largest | KL separation top / random at "
        f"k = {params.headline_k}, zero | reference on disk (MB) |"
    )
    print("|---|---|---|---|---|")
    for K in ks:
        mine = table.filter(pl.col("K") == K)
        short = measured.filter(pl.col("K") == K).select(1 - pl.col("kl") / pl.col("full"))
        short = short.to_series().to_numpy()
        head = mine.filter((pl.col("k") == params.headline_k) & (pl.col("perturbation") == "zero"))
        kl = dict(zip(head["selection"], head["kl"], strict=True))
        name = "whole vocabulary" if K == 0 else str(K)
        print(
            f"| {name} | {np.median(short):.2e} | {short.max():.2e} | "
            f"{kl['top'] / kl['random_k']:.4g} | {reference_bytes(tokens, vocab, K) / 1e6:.1f} |"
        )


if __name__ == "__main__":
    main()
