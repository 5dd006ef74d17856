"""`cwa doctor`: what this machine has (versions, devices and their free memory) and what the
memory guard would allow for the params' model here: for each kind of pass the stages make, the
estimated need at `batch_size` x `seq_len` and the largest batch that fits the device a stage
would use. The model is built empty (meta device) from its config, so nothing is loaded."""

from __future__ import annotations

import platform
import subprocess

import torch

from cwa.config.params import Params
from cwa.models.anatomy import describe, pool
from cwa.models.memory import GIB, HEADROOM, PASSES, estimate, free_memory

# The kinds of pass the stages make, with an example of each.
KINDS = {
    "forward": "evaluation, perturbation sweep, pruning statistics",
    "backward": "grad_x_weight, grad_squared, fine-tuning's backward",
    "per_window": "the correlation stage's per-window sensitivities",
    "hessian": "hutchinson_diag (`layer_group` bounds it)",
}


def environment() -> list[str]:
    import transformers

    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "not a git checkout"
    return [
        f"python {platform.python_version()}, torch {torch.__version__}, transformers "
        f"{transformers.__version__}, commit {commit}",
        f"cpu: {torch.get_num_threads()} threads, {free_memory('cpu') / GIB:.1f} GiB available",
        *gpus(),
    ]


def gpus() -> list[str]:
    if not torch.cuda.is_available():
        return ["cuda: none"]
    lines = []
    for i in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(i)
        name = torch.cuda.get_device_name(i)
        lines.append(f"cuda:{i}: {name}, {free / GIB:.1f} of {total / GIB:.1f} GiB free")
    return lines


BATCH_CAP = 1 << 20  # "any" above this


def need_at(model, scored, kind: str, batch: int, params: Params):
    """The estimate's need (cwa.models.memory.Need) of one pass at `batch`."""
    est = estimate(model, scored, kind, batch, params.seq_len, params.layer_group)
    return next(iter(est.devices.values()))


def fits(need, free: int) -> bool:
    """The guard's rule with the weights not loaded yet: the weights in the free memory, the
    pass's own need within HEADROOM of what they leave."""
    return need.weights <= free and need.beyond_weights <= HEADROOM * (free - need.weights)


def largest_batch(model, scored, kind: str, params: Params, free: int) -> int:
    """The largest batch that fits (0: none; BATCH_CAP: any), by doubling and bisection over
    the estimate itself."""

    def ok(batch: int) -> bool:
        return fits(need_at(model, scored, kind, batch, params), free)

    if not ok(1):
        return 0
    low = 1
    while low < BATCH_CAP and ok(2 * low):
        low *= 2
    high = min(2 * low, BATCH_CAP + 1)
    while high - low > 1:  # fits at low, not at high
        mid = (low + high) // 2
        low, high = (mid, high) if ok(mid) else (low, mid)
    return min(low, BATCH_CAP)


def allowance(model, params: Params, free: int) -> list[str]:
    """A table, one row per pass kind: the estimate at the params' batch and the largest batch
    that fits."""
    infos = pool(describe(model), **params.pool_options)
    at = f"GiB at {params.batch_size} x {params.seq_len}"
    lines = [f"| pass | made by | {at} | fits | largest batch_size |", "|---|---|---:|---|---:|"]
    for kind, example in KINDS.items():
        scored = infos if PASSES[kind].backward else []
        need = need_at(model, scored, kind, params.batch_size, params)
        total = (need.weights + need.beyond_weights) / GIB
        ok = "yes" if fits(need, free) else "no"
        most = largest_batch(model, scored, kind, params, free)
        lines.append(f"| {kind} | {example} | {total:.2f} | {ok} | {most} |")
    return lines


def report(params: Params) -> list[str]:
    """The whole printout for `params` (already validated)."""
    from cwa.core.devices import resolve_device
    from cwa.pipeline.feasibility import empty_model

    lines = environment()
    model = empty_model(params)
    if model is None:
        return [*lines, f"{params.model}: its config is not in the local cache; no estimate"]
    model = model.to(getattr(torch, params.dtype))
    device = str(resolve_device(params.device))
    device = "cuda:0" if device == "cuda" else device
    free = free_memory(device)
    count = sum(p.numel() for p in model.parameters())
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    lines += [
        "",
        f"{params.model}: {count / 1e6:.1f}M parameters, {weights / GIB:.2f} GiB in "
        f"{params.dtype}; {device} has {free / GIB:.1f} GiB free, and the guard lets a pass use "
        f"{HEADROOM:.0%} of what the weights leave:",
        "",
        *allowance(model, params, free),
    ]
    return lines
