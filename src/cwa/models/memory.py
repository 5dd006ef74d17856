"""Memory a pass will need on each device, estimated from the model's shape before it starts.

A run that cannot fit fails at once with the numbers and what to change, not after an hour with
an out-of-memory error. The estimate is deliberately simple and conservative (upper bound):

- weights: the parameters resident on the device (already loaded: counted in its used memory);
- gradients: one per scored weight in the model dtype (backward passes); `grad_squared` adds
  the per-window fp32 gradients of one layer and their squares (batch x largest tensor x 8 B);
- accumulators: fp32 per scored weight, plus the fp32 score copy kept in CPU memory (of the
  weights on an accelerator: a CPU accumulator is handed over as it is);
- activations: per block and token, the tensors a backward pass keeps, in the model dtype:
  10·hidden + 4·intermediate (×experts per token), + 2·heads·seq attention probabilities with
  eager or math attention (Hutchinson; fused SDPA kernels keep none);
  logits b·s·vocab in the model dtype plus three fp32 copies (upcast, log-softmax, gradient).
  A forward-only pass keeps one block's working set. Hessian-vector products keep the first
  backward's graph: ×7 activations (measured), plus the gradient graph and a product per scored
  weight and a probe per scored weight. With `layer_group` (cwa.scoring.blockwise) only one group's
  blocks hold activations (×7), plus the hidden state and its tangent where each group starts,
  and the gradient and product exist for one group (or the tensors outside the blocks).
Pruning by activations (`pruning_estimate`) holds the calibration draw's hidden states between
blocks, one block's input statistics (Σxxᵀ per layer for SparseGPT), one layer's working copies,
a mask per pool weight and the dense pool's copy.
docs/benchmarks.md compares the estimate with measured peaks.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import torch
from torch import nn

from cwa import CwaError
from cwa.models.anatomy import ParamInfo, describe, group_ranges

GIB = 2**30
ADAMW_MOMENTS = 8  # bytes per weight: exp_avg and exp_avg_sq in fp32
HEADROOM = 0.9  # use at most this share of the free memory (allocator fragmentation, buffers)
# Hessian-vector products keep the first backward's graph: measured 6.9x the backward
# activations on a 1.1B Llama, H100 (docs/benchmarks.md); 3.4x one pass and 2.3-4.4x per block
# of a group (cwa.scoring.blockwise) on CPU (benchmarks/layer_groups.py).
HESSIAN_FACTOR = 7
PRUNE_SOLVE_MATRICES = 5  # SparseGPT's inputs x inputs fp32 copies at once (damped H, factors)


@dataclass(frozen=True)
class Pass:
    """What one kind of pass holds beyond the weights (a metric names its kind: `needs`)."""

    name: str
    reads_data: bool  # False: data-free, the weights alone
    backward: bool  # gradients of the scored weights, activations kept for the backward
    hessian: bool  # a probe and its product per scored weight; activations x HESSIAN_FACTOR
    per_window: bool  # one layer's per-window fp32 gradients and their squares


PASSES = {
    p.name: p
    for p in (
        Pass("none", reads_data=False, backward=False, hessian=False, per_window=False),
        Pass("forward", reads_data=True, backward=False, hessian=False, per_window=False),
        Pass("backward", reads_data=True, backward=True, hessian=False, per_window=False),
        Pass("per_window", reads_data=True, backward=True, hessian=False, per_window=True),
        Pass("hessian", reads_data=True, backward=True, hessian=True, per_window=False),
    )
}


@dataclass
class Need:
    """Bytes one device needs, by kind."""

    weights: int = 0
    gradients: int = 0
    accumulators: int = 0
    activations: int = 0
    per_batch: int = 0  # the part of gradients + activations that scales with the batch

    @property
    def beyond_weights(self) -> int:
        return self.gradients + self.accumulators + self.activations


@dataclass(frozen=True)
class Shape:
    """What the estimate reads from the model config."""

    hidden: int
    intermediate: int  # per token: × experts per token for MoE
    heads: int
    vocab: int
    elem: int  # bytes per weight / activation element

    @classmethod
    def of(cls, model: nn.Module) -> Shape:
        c = model.config
        hidden = c.hidden_size
        inner = getattr(c, "intermediate_size", None) or getattr(c, "n_inner", None) or 4 * hidden
        experts = getattr(c, "num_experts_per_tok", None) or 1
        elem = next(model.parameters()).element_size()
        return cls(hidden, inner * experts, c.num_attention_heads, c.vocab_size, elem)


@dataclass
class Estimate:
    """Per-device needs of one pass, with what it was estimated for."""

    needs: str
    batch: int
    seq_len: int
    elem: int  # bytes per weight of the model dtype
    devices: dict[str, Need] = field(default_factory=dict)

    def as_dict(self, free: dict[str, int] | None = None) -> dict:
        """GiB per device and kind, for the run manifest."""
        out = {"pass": self.needs, "batch": self.batch, "seq_len": self.seq_len}
        for dev, n in self.devices.items():
            out[dev] = {
                "weights_gib": round(n.weights / GIB, 3),
                "gradients_gib": round(n.gradients / GIB, 3),
                "accumulators_gib": round(n.accumulators / GIB, 3),
                "activations_gib": round(n.activations / GIB, 3),
                **({"free_gib": round(free[dev] / GIB, 3)} if free and dev in free else {}),
            }
        return out


def _block_activations(shape: Shape, batch: int, seq_len: int, probabilities: bool) -> int:
    """Bytes one block keeps for the backward pass; `probabilities`: attention keeps its
    (heads x seq x seq) weights (eager or math attention; fused SDPA kernels do not)."""
    per_token = 10 * shape.hidden + 4 * shape.intermediate
    per_token += 2 * shape.heads * seq_len if probabilities else 0
    return batch * seq_len * per_token * shape.elem


def _logits(shape: Shape, batch: int, seq_len: int, backward: bool) -> int:
    fp32_copies = 3 if backward else 2
    return batch * seq_len * shape.vocab * (shape.elem + 4 * fp32_copies)


def estimate(
    model: nn.Module,
    infos: list[ParamInfo],
    needs: str,
    batch_size: int,
    seq_len: int,
    layer_group: int = 0,
) -> Estimate:
    """Per-device bytes of a pass of kind `needs` scoring `infos` (empty: an evaluation)."""
    if needs not in PASSES:
        raise CwaError(f"unknown pass kind {needs!r}; valid: {', '.join(PASSES)}")
    kind = PASSES[needs]
    shape = Shape.of(model)
    est = Estimate(needs, batch_size, seq_len, shape.elem, defaultdict(Need))
    params = dict(model.named_parameters())
    for p in params.values():
        est.devices[str(p.device)].weights += p.numel() * p.element_size()
    if kind.reads_data:
        _scored_buffers(est, kind, params, infos, layer_group)
        _activations(est, kind, model, params, shape, layer_group)
    est.devices = dict(est.devices)
    return est


def _scored_buffers(est: Estimate, kind: Pass, params: dict, infos, layer_group: int) -> None:
    """fp32 accumulators (and their host copy), gradients, probes and products of the scored
    weights, on each weight's device."""
    grouped = kind.hessian and layer_group > 0
    share = _largest_group_share(infos, layer_group) if grouped else 1.0
    scored = {i.name for i in infos}
    for name in scored:
        p = params[name]
        n = est.devices[str(p.device)]
        size = p.numel() * p.element_size()
        n.accumulators += 4 * p.numel()
        if kind.backward:  # the gradient (of one group at a time when grouped)
            n.gradients += int(share * size)
        if kind.hessian:  # the probe z (every scored weight) and the product Hz
            n.gradients += size + int(share * size)
    # the fp32 host copy of the scores (metrics.to_host): none for an fp32 accumulator already
    # on the CPU, which is handed over as it is
    est.devices["cpu"].accumulators += 4 * sum(
        params[n].numel() for n in scored if params[n].device.type != "cpu"
    )
    if kind.per_window:  # one layer's per-window fp32 gradients and their squares
        largest: dict[str, int] = {}
        for name in scored:
            dev = str(params[name].device)
            largest[dev] = max(largest.get(dev, 0), params[name].numel())
        for dev, numel in largest.items():
            est.devices[dev].gradients += 8 * est.batch * numel
            est.devices[dev].per_batch += 8 * est.batch * numel


def _activations(
    est: Estimate, kind: Pass, model, params: dict, shape: Shape, layer_group: int
) -> None:
    """Activations of the batch per device: every block's for a backward (one group's at a
    time when grouped, plus the hidden states where groups start), one block's for a forward,
    and the logits on the head's device."""
    layer_device: dict[int, str] = {}
    for info in describe(model):
        if info.layer >= 0:
            layer_device.setdefault(info.layer, str(params[info.name].device))
    batch, seq_len = est.batch, est.seq_len
    fused = getattr(model.config, "_attn_implementation", "eager") != "eager"
    probabilities = kind.hessian or not fused  # Hutchinson runs on math attention
    block = _block_activations(shape, batch, seq_len, probabilities)
    factor = HESSIAN_FACTOR if kind.hessian else 1
    if kind.hessian and layer_group > 0:  # one group's blocks at a time, plus (h, ḣ) per start
        boundary = 2 * batch * seq_len * shape.hidden * shape.elem
        peak: dict[str, int] = defaultdict(int)
        for group in group_ranges(len(layer_device), layer_group):
            dev = layer_device[group[0]]
            peak[dev] = max(peak[dev], block * factor * len(group))
            est.devices[dev].activations += boundary
        for dev, held in peak.items():
            est.devices[dev].activations += held
    elif kind.backward:
        for dev in layer_device.values():
            est.devices[dev].activations += block * factor
    else:  # forward only: one block's working set at a time
        est.devices[next(iter(layer_device.values()), "cpu")].activations += block
    head = model.get_output_embeddings()
    head_dev = str(head.weight.device) if head is not None else "cpu"
    est.devices[head_dev].activations += _logits(shape, batch, seq_len, kind.backward)
    for need in est.devices.values():
        need.per_batch += need.activations


def _largest_group_share(infos: list[ParamInfo], layer_group: int) -> float:
    """The largest share of the scored weights whose products exist at once: a group of blocks,
    or the tensors outside the blocks."""
    total = sum(i.numel for i in infos) or 1
    blocks = max((i.layer for i in infos), default=-1) + 1
    parts = [[i for i in infos if i.layer in g] for g in group_ranges(blocks, layer_group)]
    parts.append([i for i in infos if i.layer < 0])
    return max(sum(i.numel for i in part) for part in parts) / total


def free_memory(device: str) -> int:
    """Bytes the device can still allocate (weights already loaded are not in it)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        free, _ = torch.cuda.mem_get_info(dev)
        return free + torch.cuda.memory_reserved(dev) - torch.cuda.memory_allocated(dev)
    import psutil

    return psutil.virtual_memory().available


def _short(est: Estimate, free: dict[str, int]) -> tuple[str, Need] | None:
    """The first device whose need exceeds HEADROOM of its free memory, with that need."""
    for dev, need in est.devices.items():
        if need.beyond_weights > HEADROOM * free[dev]:
            return dev, need
    return None


def check(
    est: Estimate,
    what: str,
    free: dict[str, int] | None = None,
    training: bool = False,
    remedies: str | None = None,
) -> dict:
    """Raises a CwaError naming the device, the numbers and the remedies (`remedies`, or those
    of the pass) when a need exceeds HEADROOM of the free memory; returns the estimate for the
    manifest otherwise."""
    free = free if free is not None else {dev: free_memory(dev) for dev in est.devices}
    short = _short(est, free)
    if short is not None:
        dev, need = short
        budget = HEADROOM * free[dev]
        raise CwaError(
            f"memory: {what} needs an estimated {_size(need.beyond_weights)} on {dev} beyond "
            f"the {_size(need.weights)} of weights (gradients {_size(need.gradients)}, fp32 "
            f"accumulators {_size(need.accumulators)}, activations {_size(need.activations)} "
            f"for batch {est.batch} x {est.seq_len} tokens) and {_size(free[dev])} is free. "
            f"{remedies or _remedies(est, need, budget, training)}"
        )
    return est.as_dict(free)


def _size(n: float) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB / 4 else f"{n / 2**20:.1f} MiB"


def _remedies(est: Estimate, need: Need, budget: float, training: bool = False) -> str:
    tips = []
    fixed = need.beyond_weights - need.per_batch
    if fixed < budget and need.per_batch > 0:
        fits = int(est.batch * (budget - fixed) / need.per_batch)
        if fits >= 1:
            key = "train_batch" if training else "batch_size"
            tips.append(f"{key}: {fits} (activations scale with it)")
    if training:
        return "Try: " + "; ".join([*tips, "a smaller family member"]) + "."
    if PASSES[est.needs].hessian:
        tips.append("layer_group: 1 (Hutchinson one block at a time)")
    if fixed > 0:
        tips.append("fewer scored tensors (`layers`, include_embeddings: false)")
    if est.elem > 2:
        tips.append("dtype: bfloat16 (half the weights, gradients and activations)")
    tips.append("more devices (device_map: auto splits the model over the GPUs)")
    return "Try: " + "; ".join(tips) + "."


def guard_scoring(
    model: nn.Module,
    infos: list[ParamInfo],
    metric,
    batch_size: int,
    seq_len: int,
    layer_group: int = 0,
) -> dict:
    """The guard of a sensitivity pass of `metric` (a cwa.scoring.metrics.Metric)."""
    name = f"the {metric.name} pass"
    return guard(model, infos, metric.needs, batch_size, seq_len, name, layer_group)


def guard_evaluation(model: nn.Module, batch_size: int, seq_len: int) -> dict:
    """The guard of evaluation passes (forward only, batches of `batch_size`)."""
    return guard(model, [], "forward", batch_size, seq_len, "evaluation")


def guard_training(model: nn.Module, batch_size: int, seq_len: int) -> dict:
    """The guard of a training run: a backward pass over every weight, and AdamW's two fp32
    moments per weight in place of score accumulators."""
    est = estimate(model, describe(model), "backward", batch_size, seq_len)
    for need in est.devices.values():
        need.accumulators = 0
    for p in model.parameters():
        est.devices[str(p.device)].accumulators += ADAMW_MOMENTS * p.numel()
    return check(est, "training", training=True)


def finetuning_estimate(
    model: nn.Module, plan: dict[str, tuple[bool, int]], batch_size: int, seq_len: int
) -> Estimate:
    """One fine-tuning arm: a backward pass's activations, and per trained tensor
    (cwa.experiments.finetuning.training_plan: name -> (trained whole, free weights)) its
    gradient and AdamW's two moments per weight when trained whole (the parameter's dtype);
    per free weight, when trained by its free entries, the value, its gradient, two moments and
    an int64 index, plus the largest such tensor's whole gradient while backward gathers it."""
    est = estimate(model, [], "backward", batch_size, seq_len)
    params = dict(model.named_parameters())
    gathering: dict[str, int] = defaultdict(int)
    for name, (whole, count) in plan.items():
        p = params[name]
        dev, size = str(p.device), p.element_size()
        need = est.devices.setdefault(dev, Need())
        if whole:
            need.gradients += p.numel() * size
            need.accumulators += 2 * p.numel() * size
        else:
            need.accumulators += count * (4 * size + 8)
            gathering[dev] = max(gathering[dev], p.numel() * size)
    for dev, size in gathering.items():
        est.devices[dev].gradients += size
    return est


def guard_finetuning(
    model: nn.Module,
    plans: dict[str, dict[str, tuple[bool, int]]],
    batch_size: int,
    seq_len: int,
    free: dict[str, int] | None = None,
) -> dict:
    """The guard of every fine-tuning arm ({arm: its training plan}) before the first runs: an
    arm that cannot fit is refused, naming the arms that would (`finetune_arms`)."""
    ests = {
        arm: finetuning_estimate(model, plan, batch_size, seq_len) for arm, plan in plans.items()
    }
    devices = {dev for est in ests.values() for dev in est.devices}
    free = free if free is not None else {dev: free_memory(dev) for dev in devices}
    fit = [arm for arm, est in ests.items() if _short(est, free) is None]
    tips = [f"finetune_arms: [{', '.join(fit)}] (the arms that fit)"] if fit else []
    if next(iter(ests.values())).elem > 2:
        tips.append("dtype: bfloat16 (half the weights, gradients, moments and activations)")
    tips += ["finetune_batch or seq_len lower", "more devices (device_map: auto)"]
    remedies = "Try: " + "; ".join(tips) + "."
    return {
        arm: check(est, f"fine-tuning arm {arm}", free, remedies=remedies)
        for arm, est in ests.items()
    }


def pruning_estimate(
    model: nn.Module,
    infos: list[ParamInfo],
    hessian: bool,
    windows: int,
    batch_size: int,
    seq_len: int,
) -> Estimate:
    """Pruning by activations (cwa.experiments.pruning.prune_by_activations) in a stage that
    writes the dense pool back after each run. Beyond an evaluation's forward (one block's
    working set and the logits: the capture pass, the layers outside the blocks), on the
    devices of the weights concerned:
    - activations: the calibration draw's hidden states entering the next block, with the
      rotary position embeddings (cos and sin) each batch passes to the blocks;
    - accumulators: one block's input statistics in fp32 for every pool layer of the block at
      once (Σx² per input, and Σxxᵀ with `hessian`: SparseGPT); one layer's working copies
      (its fp32 weights and scores, its mask; SparseGPT also PRUNE_SOLVE_MATRICES fp32
      inputs x inputs matrices: the damped Σxxᵀ, its Cholesky factors and inverse); a bool
      mask per pool weight (the masks returned); and the dense pool's copy on the CPU."""
    est = estimate(model, [], "forward", batch_size, seq_len)
    shape, params = Shape.of(model), dict(model.named_parameters())
    statistics: dict[tuple[str, int], int] = defaultdict(int)
    working: dict[str, int] = defaultdict(int)
    for info in infos:
        p = params[info.name]
        dev = str(p.device)
        inputs = info.shape[0] if info.transposed else info.shape[-1]
        square = 4 * inputs * inputs if hessian else 0
        statistics[dev, info.layer] += 4 * inputs + square
        layer = 9 * p.numel() + PRUNE_SOLVE_MATRICES * square
        working[dev] = max(working[dev], layer)
        est.devices.setdefault(dev, Need()).accumulators += p.numel()  # its mask
        est.devices.setdefault("cpu", Need()).accumulators += p.numel() * p.element_size()
    for dev in working:
        block = max(size for (where, _), size in statistics.items() if where == dev)
        est.devices[dev].accumulators += block + working[dev]
    head_dim = getattr(model.config, "head_dim", None) or shape.hidden // max(shape.heads, 1)
    first = next((str(params[i.name].device) for i in infos if i.layer >= 0), None)
    if first is not None:
        per_token = (shape.hidden + 2 * head_dim) * shape.elem
        est.devices[first].activations += windows * seq_len * per_token
    return est


def guard_pruning(
    model: nn.Module,
    infos: list[ParamInfo],
    methods: dict[str, bool],
    windows: int,
    batch_size: int,
    seq_len: int,
    free: dict[str, int] | None = None,
) -> dict:
    """The guard of each pruning-by-activations method ({method: needs Σxxᵀ}) before the
    first runs."""
    tips = [
        "calib_samples lower (the draw's hidden states are held between blocks)",
        "prune_methods without sparsegpt (its inputs x inputs matrices)",
        "fewer pruned tensors (`layers`)",
    ]
    if next(model.parameters()).element_size() > 2:
        tips.append("dtype: bfloat16 (half the weights and hidden states)")
    remedies = "Try: " + "; ".join(tips) + "."
    return {
        method: check(
            pruning_estimate(model, infos, hessian, windows, batch_size, seq_len),
            f"pruning method {method}",
            free,
            remedies=remedies,
        )
        for method, hessian in methods.items()
    }


def guard(
    model: nn.Module,
    infos: list[ParamInfo],
    needs: str,
    batch_size: int,
    seq_len: int,
    what: str,
    layer_group: int = 0,
) -> dict:
    """Estimates and checks a pass before it starts; the manifest's `memory` entry."""
    return check(estimate(model, infos, needs, batch_size, seq_len, layer_group), what)
