"""GPU mode of the benchmark: a randomly initialised ~1B-parameter Llama (TinyLlama-1.1B shape).

    python benchmarks/gpu.py [--layers 22 --windows 32 --seq-len 512 --batch-size 8 --probes 2]

For plain forward, plain forward+backward and each sensitivity pass: seconds, tokens/s, peak CUDA
memory, the memory estimate of src/cwa/models/memory.py for the same pass, and the ratio of the pass
to plain forward+backward on the same windows. A consistency check first: scores of a small model
on the GPU against the CPU (fp32). Prints a markdown table; --json also writes the rows.
Meant for a CUDA GPU (on a CPU it only smoke-tests itself); docs/benchmarks.md holds the figures.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

from cwa import CwaError
from cwa.evaluation.perplexity import evaluate, token_nll
from cwa.models.anatomy import describe, pool
from cwa.models.memory import check, estimate
from cwa.scoring.metrics import compute_scores, get_metric

GIB = 2**30
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # CPU: a smoke run of the script only


def llama(layers: int, hidden: int, heads: int, kv_heads: int, inner: int, vocab: int, dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        intermediate_size=inner,
        max_position_embeddings=4096,
        dtype=dtype,
    )
    with torch.device(DEVICE):
        model = LlamaForCausalLM(config).to(dtype)
    return model.eval()


def timed(fn) -> tuple[float, float]:
    """(seconds, peak CUDA GiB) of one call, after synchronising (peak 0 on the CPU)."""
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    fn()
    if cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start, torch.cuda.max_memory_allocated() / GIB if cuda else 0.0


def forward_backward(model, infos, windows, batch_size):
    params = dict(model.named_parameters())
    targets = [params[i.name] for i in infos]
    for p in model.parameters():
        p.requires_grad_(False)
    for p in targets:
        p.requires_grad_(True)
    for batch in windows.split(batch_size):
        loss = token_nll(model(input_ids=batch, use_cache=False).logits, batch).sum()
        torch.autograd.grad(loss, targets)


def consistency() -> dict[str, float]:
    """Largest relative difference of GPU vs CPU scores (fp32, small model, same draw)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(1)
    config = LlamaConfig(
        vocab_size=512,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
    )
    cpu = LlamaForCausalLM(config).eval()
    gpu = LlamaForCausalLM(config).eval()
    gpu.load_state_dict(cpu.state_dict())
    gpu.to(DEVICE)
    infos = pool(describe(cpu))
    windows = torch.randint(0, 512, (8, 64), generator=torch.Generator().manual_seed(0))
    out = {}
    for name in ("grad_x_weight", "grad_squared", "wanda", "super_weight"):
        m = get_metric(name)
        a = compute_scores(cpu, infos, m, windows, 4)
        b = compute_scores(gpu, infos, m, windows, 4)
        scored = [n for n in a if a[n].any()]  # super_weight scores down projections only
        out[name] = max(float((a[n] - b[n]).abs().max() / a[n].abs().max()) for n in scored)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=22)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--intermediate", type=int, default=5632)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--windows", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--probes", type=int, default=2)
    ap.add_argument("--hessian-batch", type=int, default=2, help="batch of Hutchinson passes")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--json")
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = True
    agreement = consistency()
    dtype = getattr(torch, args.dtype)
    model = llama(
        args.layers,
        args.hidden,
        args.heads,
        args.kv_heads,
        args.intermediate,
        args.vocab,
        dtype,
    )
    infos = pool(describe(model))
    n_params = sum(p.numel() for p in model.parameters())
    gen = torch.Generator().manual_seed(0)
    windows = torch.randint(0, args.vocab, (args.windows, args.seq_len), generator=gen)
    windows = windows.to(DEVICE)
    tokens = args.windows * (args.seq_len - 1)
    rows = []

    def row(name, seconds, peak, needs, layer_group=0, base=None, batch=args.batch_size):
        scored = [] if name.startswith("plain forward (") else infos
        need = estimate(model, scored, needs, batch, args.seq_len, layer_group)
        dev = need.devices[str(next(model.parameters()).device)]
        est = (dev.weights + dev.beyond_weights) / GIB
        rows.append(
            {
                "pass": name,
                "batch": batch,
                "seconds": round(seconds, 3),
                "tokens_per_s": round(tokens / seconds),
                "peak_gib": round(peak, 2),
                "estimate_gib": round(est, 2),
                "ratio": round(seconds / base, 2) if base else None,
            }
        )
        print(rows[-1], flush=True)

    evaluate(model, windows[: args.batch_size], args.batch_size)  # warm-up
    t, peak = timed(lambda: evaluate(model, windows, args.batch_size))
    row("plain forward (evaluation)", t, peak, "forward")
    forward_backward(model, infos, windows[: args.batch_size], args.batch_size)  # warm-up
    base, peak = min(
        (timed(lambda: forward_backward(model, infos, windows, args.batch_size)) for _ in range(2)),
        key=lambda r: r[0],
    )
    row("plain forward+backward", base, peak, "backward", base=base)
    with sdpa_kernel(SDPBackend.MATH):
        math_base, peak = timed(lambda: forward_backward(model, infos, windows, args.batch_size))
    row("plain forward+backward, math attention", math_base, peak, "backward", base=base)
    scores = [torch.rand(i.shape, device=DEVICE) for i in infos]
    t, _ = timed(lambda scores=scores: [s.cpu() for s in scores])
    print(f"copy of the pool's fp32 scores to the host: {t:.2f} s", flush=True)
    host = {"score_copy_s": round(t, 3)}
    del scores
    for name, kwargs, batch in [
        ("grad_x_weight", {}, args.batch_size),
        ("grad_squared", {}, args.batch_size),
        ("wanda", {}, args.batch_size),
        ("super_weight", {}, args.batch_size),
        ("hutchinson_diag", {"probes": args.probes}, args.hessian_batch),
        *[
            ("hutchinson_diag", {"probes": args.probes, "layer_group": g}, args.hessian_batch)
            for g in (args.layers // 2, 1)
        ],
    ]:
        m = get_metric(name)
        label = name + "".join(f", {k} {v}" for k, v in kwargs.items())
        group = kwargs.get("layer_group", 0)
        try:
            check(estimate(model, infos, m.needs, batch, args.seq_len, group), label)
        except CwaError as err:
            print(f"{label}: refused by the memory guard: {err}", flush=True)
            continue
        t, peak = timed(
            lambda m=m, kw=kwargs, b=batch: compute_scores(
                model, infos, m, windows, b, seed=0, **kw
            )
        )
        row(label, t, peak, m.needs, group, base=base, batch=batch)
    info = {
        "device": torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu",
        "torch": torch.__version__,
        "params": n_params,
        "pool": sum(i.numel for i in infos),
        "dtype": args.dtype,
        "windows": args.windows,
        "seq_len": args.seq_len,
        "batch_size": args.batch_size,
        "gpu_vs_cpu_max_rel_diff": agreement,
        **host,
    }
    print(json.dumps(info, indent=1))
    print("\n| pass | batch | s | tokens/s | peak GiB | estimate GiB | / forward+backward |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['pass']} | {r['batch']} | {r['seconds']} | {r['tokens_per_s']:,} | "
            f"{r['peak_gib']} | "
            f"{r['estimate_gib']} | {r['ratio'] if r['ratio'] is not None else '–'} |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"info": info, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
