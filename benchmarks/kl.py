"""The cost of distribution-level damage, as ratios measured in one run.

    python benchmarks/kl.py [--hidden 128 --layers 4 --vocab 4096 --windows 64 --seq-len 128]

On a randomly initialised Llama of the built-in base shape (same cost as a trained one), prints:
  - one perturbation experiment measuring KL and top-1 against the reference / the same
    experiment measuring perplexity only (goal: at most 1.3);
  - the reference pass (once per stage) / one plain evaluation pass;
  - the reference's size on disk, over the whole vocabulary and with `kl_topk` 256.
(The top-K KL's error against the full one, on the built-in model: benchmarks/kl_topk.py.)
"""

from __future__ import annotations

import argparse

import torch
from speed import best_of

from cwa.config.params import FamilyMember
from cwa.evaluation.perplexity import evaluate, reference, reference_bytes
from cwa.experiments.perturbations import get_perturbation, perturbed
from cwa.models.training import build_model


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--windows", type=int, default=64)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()
    shape = FamilyMember(args.hidden, args.layers, max(1, args.hidden // 32), 4 * args.hidden)
    model = build_model(shape, args.vocab, args.seq_len, seed=0).eval()
    gen = torch.Generator().manual_seed(0)
    windows = torch.randint(0, args.vocab, (args.windows, args.seq_len), generator=gen)
    params = dict(model.named_parameters())
    sel = {"model.layers.0.mlp.down_proj.weight": torch.arange(0, 100)}
    zero = get_perturbation("zero")

    def experiment(ref=None):
        with perturbed(params, sel, zero):
            evaluate(model, windows, args.batch_size, ref=ref)

    def reference_pass():
        with reference(model, windows, args.batch_size):
            pass

    with reference(model, windows, args.batch_size) as ref:
        experiment(ref)  # warm-up: first touches of the reference file and of the allocator
        rounds = [(best_of(experiment, 1), best_of(lambda: experiment(ref), 1)) for _ in range(7)]
        plain, with_kl = (min(r[i] for r in rounds) for i in (0, 1))  # alternated: no drift
        ev = best_of(lambda: evaluate(model, windows, args.batch_size), 5)
        ref_pass = best_of(reference_pass, 3)
    tokens = args.windows * (args.seq_len - 1)
    size, top_k_size = (reference_bytes(tokens, args.vocab, k) for k in (0, 256))
    print(
        f"model: {sum(p.numel() for p in model.parameters()):,} parameters, vocabulary "
        f"{args.vocab}, {args.windows} windows x {args.seq_len} tokens, "
        f"{torch.get_num_threads()} threads"
    )
    print("| measurement | value |\n|---|---|")
    ratio = with_kl / plain
    print(f"| experiment with KL and top-1 / experiment with perplexity only | {ratio:.3f} |")
    print(f"| reference pass (once per stage) / evaluation pass | {ref_pass / ev:.3f} |")
    print(f"| reference on disk (MB) | {size / 2**20:.1f} |")
    print(f"| reference on disk with kl_topk 256 (MB) | {top_k_size / 2**20:.1f} |")


if __name__ == "__main__":
    main()
