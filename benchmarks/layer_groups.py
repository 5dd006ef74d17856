"""Peak memory and time of the Hutchinson pass one group of blocks at a time (`layer_group`).

    python benchmarks/layer_groups.py [--hidden 256 --layers 8 --seq-len 256 --batch-size 8]

On a randomly initialised Llama (SDPA, math kernel under Hutchinson), CPU, each configuration in
fresh processes: the peak resident memory above the loaded model (Linux VmHWM, reset before the
pass; glibc told to return freed blocks at once, so the peak follows live tensors), the best time
of two passes after a warm-up (normal allocator), and the memory estimate's activations +
gradients for the same pass. Rows: a plain forward+backward, hutchinson_diag in one pass, then
layer_group = layers/2, ..., 1. Ratios are to the plain pass.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time

GROUPS_ENV = "CWA_BENCH_ONE"


def peak_kib() -> int:
    return int(re.search(r"VmHWM:\s+(\d+)", open("/proc/self/status").read()).group(1))


def rss_kib() -> int:
    return int(re.search(r"VmRSS:\s+(\d+)", open("/proc/self/status").read()).group(1))


def build(args):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=args.hidden // 32,
        intermediate_size=args.hidden * 8 // 3,
        max_position_embeddings=args.seq_len,
        attn_implementation="sdpa",
    )
    return LlamaForCausalLM(config).eval()


def one(args, layer_group: int, measure: str) -> dict:
    """One configuration in this process (layer_group -1: the plain forward+backward).

    measure "peak": the first pass's peak memory; "time": the best of two passes after one that
    warms up the allocator and kernels."""
    import torch

    from cwa.evaluation.perplexity import token_nll
    from cwa.models.anatomy import describe, pool
    from cwa.models.memory import estimate
    from cwa.scoring.metrics import compute_scores, get_metric

    torch.set_num_threads(args.threads)
    model = build(args)
    infos = pool(describe(model))
    windows = torch.randint(0, args.vocab, (args.batch_size, args.seq_len))

    def run():
        if layer_group < 0:
            token_nll(model(input_ids=windows, use_cache=False).logits, windows).sum().backward()
            model.zero_grad(set_to_none=True)
        else:
            m = get_metric("hutchinson_diag")
            compute_scores(
                model, infos, m, windows, args.batch_size, args.probes, layer_group=layer_group
            )

    if measure == "time":
        run()
        times = []
        for _ in range(2):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
        return {"seconds": min(times)}
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := VmRSS
    before = rss_kib()
    run()
    needs = "backward" if layer_group < 0 else "hessian"
    cpu = estimate(model, infos, needs, args.batch_size, args.seq_len, max(layer_group, 0))
    cpu = cpu.devices["cpu"]
    return {
        "peak_mib": (peak_kib() - before) / 1024,
        "estimate_mib": (cpu.activations + cpu.gradients) / 2**20,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=512)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--probes", type=int, default=2)
    args = ap.parse_args()
    if GROUPS_ENV in os.environ:
        group, measure = os.environ[GROUPS_ENV].split(":")
        print(json.dumps(one(args, int(group), measure)))
        return
    groups = [-1, 0] + [g for g in (8, 4, 2, 1) if g < args.layers]
    exact = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}  # slow, exact
    rows = []
    for g in groups:
        row = {"layer_group": g}
        for measure, env in (("peak", exact), ("time", {})):
            out = subprocess.run(
                [sys.executable, *sys.argv],
                env={**os.environ, **env, GROUPS_ENV: f"{g}:{measure}"},
                capture_output=True,
                text=True,
                check=True,
            )
            row.update(json.loads(out.stdout.strip().splitlines()[-1]))
        rows.append(row)
    base = rows[0]
    print(
        f"Llama hidden {args.hidden}, {args.layers} blocks, vocab {args.vocab}, batch "
        f"{args.batch_size} x {args.seq_len} tokens, fp32, CPU {args.threads} threads, "
        f"{args.probes} probes\n"
    )
    print("| pass | seconds | x plain | peak MiB | x plain | estimate MiB |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        g = r["layer_group"]
        name = "forward+backward" if g < 0 else f"hutchinson_diag, layer_group {g}"
        print(
            f"| {name} | {r['seconds']:.2f} | {r['seconds'] / base['seconds']:.1f} | "
            f"{r['peak_mib']:.0f} | {r['peak_mib'] / base['peak_mib']:.1f} | "
            f"{r['estimate_mib']:.0f} |"
        )


if __name__ == "__main__":
    main()
