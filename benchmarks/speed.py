"""Speed ratios measured in one run (never timed assertions in tests).

    python benchmarks/speed.py [--hidden 128 --layers 4 --windows 64 --seq-len 128]

Prints, on a randomly initialised Llama of the built-in base shape (same cost as a trained one):
  - sensitivity pass time / plain forward+backward time on the same windows, per metric
    (Hutchinson: per probe, the shared first backward included);
  - perturbation experiment (apply + evaluate + restore + check) / plain evaluation;
  - global exact top-k over 100M fp32 scores (seconds).
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from cwa.config.params import FamilyMember
from cwa.evaluation.perplexity import evaluate, token_nll
from cwa.experiments.perturbations import get_perturbation, perturbed
from cwa.models.anatomy import describe, pool
from cwa.models.training import build_model
from cwa.scoring.metrics import compute_scores, get_metric
from cwa.selection.ranking import extreme_k

# One experiment of each kind: apply to 1,000 weights, evaluate, restore (and verify).
PERTURBATION_COSTS = [
    ("zero", None),
    ("scale", 2.0),
    ("gauss_rel", 1.0),
    ("bit_flip", "exponent"),
    ("bit_flip_p", 0.05),
    ("quantize", 4),
]


def best_of(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def plain_forward_backward(model, windows, batch_size):
    for batch in windows.split(batch_size):
        model.zero_grad(set_to_none=True)
        token_nll(model(input_ids=batch, use_cache=False).logits, batch).sum().backward()
    model.zero_grad(set_to_none=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--windows", type=int, default=64)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()
    shape = FamilyMember(args.hidden, args.layers, max(1, args.hidden // 32), 4 * args.hidden)
    model = build_model(shape, 4096, args.seq_len, seed=0).eval()
    windows = torch.randint(
        0, 4096, (args.windows, args.seq_len), generator=torch.Generator().manual_seed(0)
    )
    infos = pool(describe(model))
    rows = []
    base = best_of(lambda: plain_forward_backward(model, windows, args.batch_size))
    rows.append(("plain forward+backward (s)", base))
    for name in ("grad_x_weight", "grad_squared", "wanda", "super_weight"):
        metric = get_metric(name)
        t = best_of(lambda m=metric: compute_scores(model, infos, m, windows, args.batch_size))
        rows.append((f"{name} pass / forward+backward", t / base))
    probes = 4
    hutch = get_metric("hutchinson_diag")
    with sdpa_kernel(SDPBackend.MATH):  # the attention implementation Hutchinson runs on
        base_math = best_of(lambda: plain_forward_backward(model, windows, args.batch_size))
    t = best_of(lambda: compute_scores(model, infos, hutch, windows, args.batch_size, probes), 1)
    label = f"hutchinson_diag per probe / forward+backward on math SDPA ({probes} probes)"
    rows.append((label, t / probes / base_math))
    store = compute_scores(model, infos, get_metric("grad_x_weight"), windows, args.batch_size)
    store_bytes = sum(s.numel() * s.element_size() for s in store.values())
    pool_fp32 = 4 * sum(i.numel for i in infos)
    rows.append(("score store bytes / one fp32 copy of the pool", store_bytes / pool_fp32))
    params = dict(model.named_parameters())
    sel = {infos[0].name: torch.arange(0, 1000)}
    for name, strength in PERTURBATION_COSTS:
        pert = get_perturbation(name)

        def one_experiment(pert=pert, strength=strength):
            with perturbed(params, sel, pert, strength, seed=0):
                evaluate(model, windows, args.batch_size)

        def apply_restore(pert=pert, strength=strength):
            with perturbed(params, sel, pert, strength, seed=0):
                pass

        # evaluation timed right beside each experiment: the machine's speed drifts over a run
        ev = best_of(lambda: evaluate(model, windows, args.batch_size), 5)
        ratio = best_of(one_experiment, 5) / ev
        overhead = best_of(apply_restore, 5) / ev
        rows.append((f"perturb experiment {name} {strength} (k=1000) / evaluation", ratio))
        rows.append((f"  apply + restore + verify alone / evaluation ({name})", overhead))
    scores = [torch.rand(10_000_000, generator=torch.Generator().manual_seed(i)) for i in range(10)]
    rows.append(("global top-1000 of 100M scores (s)", best_of(lambda: extreme_k(scores, 1000), 2)))
    print(
        f"model: {sum(p.numel() for p in model.parameters()):,} parameters, "
        f"{args.windows} windows x {args.seq_len} tokens, {torch.get_num_threads()} threads"
    )
    print("| measurement | value |\n|---|---|")
    for label, value in rows:
        print(f"| {label} | {value:.4f} |")


if __name__ == "__main__":
    main()
