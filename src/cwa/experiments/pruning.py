"""Pruning: which weights each method removes, in its comparison group, and SparseGPT's update.

Every method removes (sets to zero) the lowest-scored fraction of the pool's weights within its
comparison group, counting exactly: ⌊s·n⌋ of every group of n (N of every M for N:M patterns).

- A cwa metric (`magnitude`, `grad_x_weight`, ...) and `random` (uniform scores) compare within
  `prune_group`: the whole pool (`global`), each tensor, or each output row.
- `wanda` (Sun et al. 2024): |W_ij|·‖X_j‖₂ within each output row.
- `ria` (Zhang et al. 2024): (|W_ij|/Σ_k|W_kj| + |W_ij|/Σ_k|W_ik|)·‖X_j‖₂^0.5 within each tensor,
  the reference code's default group.
- `sparsegpt` (Frantar & Alistarh 2023): OBS pruning in column blocks of 128 with the remaining
  weights updated to reconstruct the layer's outputs (`sparsegpt`).

The activation methods run block by block, as their reference code does: each block's input
statistics come from the model with the blocks before it already pruned, in one pass over the
blocks (BlockInputs).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from cwa import CwaError
from cwa.config.params import check as params_check
from cwa.config.params import check_choice, fail
from cwa.core.hooks import forward_hooks
from cwa.core.registry import Registry
from cwa.models.anatomy import ParamInfo, block_stack, owning_modules
from cwa.scoring.blockwise import standing_in
from cwa.scoring.metrics import METRICS

GROUPS = ("global", "per_tensor", "per_row")
RIA_EXPONENT = 0.5  # a: the activation term's power in RIA's score (the paper's default)
SPARSEGPT_BLOCK = 128  # columns per block (the reference default)
SPARSEGPT_DAMP = 0.01  # λ = 1% of the mean diagonal of H (the reference's percdamp)


@params_check
def _valid_pruning(p) -> None:
    """prune_methods name metrics or pruning methods; sparsities are fractions; N:M patterns
    have 0 < N < M."""
    valid = sorted({*METRICS.names(), *LAYER_PRUNERS.names(), *SCORE_METHODS.names()})
    if not p.prune_methods or len(set(p.prune_methods)) != len(p.prune_methods):
        fail("prune_methods", f"must be distinct names, got {list(p.prune_methods)}")
    for name in p.prune_methods:
        check_choice("prune_methods", name, valid)
    if len(set(p.sparsities)) != len(p.sparsities) or not all(0 < s < 1 for s in p.sparsities):
        fail("sparsities", f"must be distinct fractions in (0, 1), got {list(p.sparsities)}")
    check_choice("prune_group", p.prune_group, GROUPS)
    for text in p.prune_nm:
        n, _, m = str(text).partition(":")
        if not (n.isdigit() and m.isdigit() and 0 < int(n) < int(m)):
            fail("prune_nm", f"entries are N:M with 0 < N < M (e.g. 2:4), got {text!r}")


@dataclass(frozen=True)
class Sparsity:
    """A pruning target: a fraction of every group, or N of every M consecutive input weights;
    `by_layer` ((block, fraction), ...) overrides the fraction per block (OWL's allocation)."""

    fraction: float
    nm: tuple[int, int] | None = None
    by_layer: tuple[tuple[int, float], ...] = ()

    def at(self, layer: int) -> float:
        """The fraction pruned in block `layer` (layers outside the blocks: `fraction`)."""
        return dict(self.by_layer).get(layer, self.fraction)

    @property
    def allocation(self) -> str:
        return "owl" if self.by_layer else "uniform"

    @classmethod
    def pattern(cls, text: str) -> Sparsity:
        """`N:M` (N pruned of every M), as `prune_nm` lists them."""
        n, m = (int(v) for v in text.split(":"))
        return cls(n / m, (n, m))

    @property
    def label(self) -> str:
        return f"{self.nm[0]}:{self.nm[1]}" if self.nm else "unstructured"


def matrix(weight: torch.Tensor, info: ParamInfo) -> torch.Tensor:
    """The weight as (outputs, inputs), a view of its storage (GPT-2's Conv1D stores [in, out])."""
    if info.transposed:
        return weight.T
    return weight.reshape(-1, weight.shape[-1])


def lowest_per_row(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Mask of the `count` lowest scores of every row of a 2-D tensor (ties: lower index first).

    A selection, not a sort: each row's `count`-th value is found in linear time, everything
    below it is taken, and equal values fill the rest in index order, as a stable sort would
    (NaN counts as the largest value, as it does in torch's sort).
    """
    if count <= 0:
        return torch.zeros_like(scores, dtype=torch.bool)
    if count >= scores.shape[1]:
        return torch.ones_like(scores, dtype=torch.bool)
    kth = scores.kthvalue(count, dim=1, keepdim=True).values
    mask, ties = scores < kth, scores == kth
    past_numbers = kth.isnan().squeeze(1).nonzero().squeeze(1)
    if past_numbers.numel():  # the cut lies among the NaNs: every number, then NaNs by index
        nan = scores[past_numbers].isnan()
        mask[past_numbers], ties[past_numbers] = ~nan, nan
    need = count - mask.sum(dim=1, keepdim=True)
    crowded = (ties.sum(dim=1, keepdim=True) > need).squeeze(1).nonzero().squeeze(1)
    if crowded.numel():  # more ties than places: the first ones by index
        tied = ties[crowded]
        ties[crowded] = tied & (tied.cumsum(dim=1, dtype=torch.int32) <= need[crowded])
    return mask | ties


def lowest(scores: torch.Tensor, count: int) -> torch.Tensor:
    """Mask of the `count` lowest scores of a 1-D tensor (ties: lower index first)."""
    return lowest_per_row(scores[None], count)[0]


def per_row(scores: torch.Tensor, fraction: float) -> torch.Tensor:
    """Mask of the ⌊fraction·columns⌋ lowest scores of every row (Wanda's group)."""
    return lowest_per_row(scores, int(scores.shape[1] * fraction))


def n_of_m(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Mask of the n lowest scores in every group of m consecutive columns of every row."""
    rows, cols = scores.shape
    if cols % m:
        raise CwaError(f"params: `prune_nm` {n}:{m} needs inputs divisible by {m}, got {cols}")
    groups = scores.reshape(rows, cols // m, m)  # a sort of m values is linear: no selection
    mask = torch.zeros_like(groups, dtype=torch.bool)
    mask.scatter_(2, torch.sort(groups, dim=2, stable=True).indices[..., :n], True)
    return mask.reshape(rows, cols)


def global_mask(scores: dict[str, torch.Tensor], fraction: float) -> dict[str, torch.Tensor]:
    """Masks of the ⌊fraction·total⌋ lowest scores over every tensor (non-negative, finite).

    The cut-off is found by bisection on the scores' float32 bit patterns, which order
    non-negative floats as their values, so no concatenated copy of the pool is made; ties at
    the cut-off are taken in tensor order, then storage order."""
    count = int(sum(s.numel() for s in scores.values()) * fraction)
    bits = {n: s.float().contiguous().view(torch.int32) for n, s in scores.items()}
    lo, hi = 0, 0x7F800000  # 0.0 and +inf
    while lo < hi:  # the smallest pattern v with count(bits <= v) >= count
        mid = (lo + hi) // 2
        if sum(int((b <= mid).sum()) for b in bits.values()) >= count:
            hi = mid
        else:
            lo = mid + 1
    ties = count - sum(int((b < lo).sum()) for b in bits.values())
    masks = {}
    for name, b in bits.items():
        mask = b < lo
        tied = torch.nonzero(b.flatten() == lo).flatten()[: max(ties, 0)]
        mask.view(-1)[tied] = True
        ties -= len(tied)
        masks[name] = mask
    return masks


def in_group(
    scores: dict[str, torch.Tensor], infos: list[ParamInfo], target: Sparsity, group: str
) -> dict[str, torch.Tensor]:
    """Masks (True: prune) of the lowest scores within `group`, in storage layout (with a
    per-block allocation, `global` means the whole pool part of each block)."""
    if target.nm or group == "per_row":
        out = {}
        for info in infos:
            rows = matrix(scores[info.name], info)
            mask = n_of_m(rows, *target.nm) if target.nm else per_row(rows, target.at(info.layer))
            out[info.name] = (mask.T if info.transposed else mask).reshape(info.shape)
        return out
    if group == "per_tensor":
        out = {}
        for i in infos:
            count = int(i.numel * target.at(i.layer))
            out[i.name] = lowest(scores[i.name].flatten(), count).reshape(i.shape)
        return out
    if not target.by_layer:
        return global_mask(scores, target.fraction)
    out = {}
    for layer in sorted({i.layer for i in infos}):
        mine = {i.name: scores[i.name] for i in infos if i.layer == layer}
        out |= global_mask(mine, target.at(layer))
    return out


def wanda_scores(w: torch.Tensor, sq: torch.Tensor, windows: int) -> torch.Tensor:
    """|W_ij|·‖X_j‖₂ (outputs, inputs), ‖X_j‖² averaged over calibration windows as the
    reference's running mean does."""
    return w.abs() * (sq / windows).sqrt()


def ria_scores(w: torch.Tensor, sq: torch.Tensor, windows: int) -> torch.Tensor:
    """(|W_ij|/Σ_k|W_kj| + |W_ij|/Σ_k|W_ik|)·‖X_j‖₂^a: relative importance within the input
    column and within the output row, times the activation norm to the power a."""
    a = w.abs()
    relative = a / a.sum(dim=0, keepdim=True) + a / a.sum(dim=1, keepdim=True)
    return relative * (sq / windows).sqrt() ** RIA_EXPONENT


def sparsegpt(
    w: torch.Tensor, h: torch.Tensor, target: Sparsity, block: int = SPARSEGPT_BLOCK
) -> tuple[torch.Tensor, torch.Tensor]:
    """SparseGPT on one layer: (pruned and updated weights, mask), both (outputs, inputs).

    h = Σ x xᵀ over the calibration inputs (its scale cancels). Dead inputs (h_jj = 0) get
    h_jj = 1 and their weights 0; h is damped by 1% of its mean diagonal; U is the upper
    Cholesky factor of h⁻¹. Per block of columns the mask takes the lowest w²/U_jj² (exactly
    ⌊s·n⌋ of the block; the reference's `<=` threshold takes one more); N:M picks N of every M
    columns of each row as the sweep reaches them. Each pruned column's error (w − q)/U_jj is
    propagated to the columns right of it through U, within the block at once and to the later
    blocks after it. fp32 throughout."""
    w, h = w.detach().float().clone(), h.float().clone()
    cols = w.shape[1]
    dead = torch.diag(h) == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    h += SPARSEGPT_DAMP * torch.mean(torch.diag(h)) * torch.eye(cols, device=h.device)
    u = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    mask = torch.zeros_like(w, dtype=torch.bool)
    for start in range(0, cols, block):
        end = min(start + block, cols)
        w1, u1 = w[:, start:end].clone(), u[start:end, start:end]
        d = torch.diag(u1)
        errors = torch.zeros_like(w1)
        m1 = torch.zeros_like(w1, dtype=torch.bool)
        if not target.nm:
            saliency = (w1**2 / d**2).flatten()
            m1 = lowest(saliency, int(saliency.numel() * target.fraction)).reshape(w1.shape)
        for i in range(end - start):
            if target.nm and i % target.nm[1] == 0:
                n, m = target.nm
                m1[:, i : i + m] = n_of_m(w1[:, i : i + m] ** 2 / d[i : i + m] ** 2, n, m)
            q = torch.where(m1[:, i], 0.0, w1[:, i])
            err = (w1[:, i] - q) / d[i]
            w1[:, i:] -= err[:, None] * u1[i, i:][None, :]
            w1[:, i] = q
            errors[:, i] = err
        w[:, start:end] = w1
        w[:, end:] -= errors @ u[start:end, end:]
        mask[:, start:end] = m1
    return w, mask


@dataclass
class InputStats:
    """One layer's calibration inputs: Σ x_j² per input feature, Σ x xᵀ (SparseGPT only)."""

    sq: torch.Tensor
    hessian: torch.Tensor | None
    windows: int


class _InputSums:
    """A forward hook that sums each module's inputs over every pass: Σ x_j², and Σ x xᵀ
    when `hessian` (fp32)."""

    def __init__(self, hessian: bool):
        self.hessian = hessian
        self.sq: dict[str, torch.Tensor] = {}
        self.hs: dict[str, torch.Tensor] = {}

    def __call__(self, name, module, inputs, output) -> None:
        x = inputs[0].detach().float()
        x = x.reshape(-1, x.shape[-1])
        self.sq[name] = self.sq.get(name, 0) + x.square().sum(dim=0)
        if self.hessian:
            self.hs[name] = self.hs.get(name, 0) + x.T @ x

    def stats(self, names, windows: int) -> dict[str, InputStats]:
        return {n: InputStats(self.sq[n], self.hs.get(n), windows) for n in names}


def input_stats(
    model: nn.Module,
    modules: dict[str, nn.Module],
    windows: torch.Tensor,
    batch_size: int,
    hessian: bool,
) -> dict[str, InputStats]:
    """Input statistics of each module over the calibration windows (fp32), one forward pass
    of the whole model per batch."""
    sums = _InputSums(hessian)
    device = next(model.parameters()).device
    with forward_hooks(modules, sums), torch.inference_mode():
        for batch in windows.split(batch_size):
            model(input_ids=batch.to(device), use_cache=False)
    return sums.stats(modules, len(windows))


class _Captured(Exception):
    """Ends the capture pass once the last block's inputs are recorded."""


@dataclass
class BlockInputs:
    """The calibration windows as they enter the blocks: per batch, the hidden states entering
    the next block to run, and per block and batch the other inputs the model's own forward
    gives it (attention masks, position embeddings, ...: they can differ by block, e.g. sliding
    and full attention layers). Held on the model's devices: one block's input activations over
    the calibration draw."""

    hidden: list[torch.Tensor]
    calls: list[list[tuple[tuple, dict]]]  # [block][batch]: (positional, keyword) beside hidden
    returns_tuple: bool

    @classmethod
    def capture(cls, model: nn.Module, blocks: nn.ModuleList, windows, batch_size) -> BlockInputs:
        """One pass of the model's own forward with every block stood in for by one that
        records its inputs and computes nothing (the pass stops after the last); block 0 runs
        once, on the first batch, to learn whether blocks return tuples."""
        first, last = blocks[0], len(blocks) - 1
        hidden: list[torch.Tensor] = []
        calls: list[list] = [[] for _ in blocks]
        returns: list[bool] = []

        def record(index, h, args, kwargs):
            calls[index].append((args, kwargs))
            if index == 0:
                hidden.append(h)
            if not returns:
                returns.append(isinstance(first(h, *args, **kwargs), tuple))
            if index == last:
                raise _Captured
            return (h,) if returns[0] else h

        device = next(model.parameters()).device
        with standing_in(blocks, record), torch.inference_mode():
            for batch in windows.split(batch_size):
                with contextlib.suppress(_Captured):
                    model(input_ids=batch.to(device), use_cache=False)
        return cls(hidden, calls, returns[0])

    def run(self, blocks: nn.ModuleList, index: int, advance: bool) -> None:
        """Runs block `index` on every batch of its inputs; with `advance`, its outputs become
        the inputs of the next block."""
        with torch.inference_mode():
            for b, (args, kwargs) in enumerate(self.calls[index]):
                out = blocks[index](self.hidden[b], *args, **kwargs)
                if advance:
                    self.hidden[b] = out[0] if self.returns_tuple else out


@dataclass(frozen=True)
class LayerPruner:
    """A method that prunes each linear layer from its own calibration inputs, block by block
    (Wanda, RIA, SparseGPT): `prune(view, target, stats)` prunes the (outputs, inputs) view in
    place and returns its mask (True: pruned); `hessian`: it needs Σ x xᵀ."""

    name: str
    doc: str
    hessian: bool
    prune: Callable[[torch.Tensor, Sparsity, InputStats], torch.Tensor]


@dataclass(frozen=True)
class ScoreMethod:
    """A method beside the metrics that scores weights without the model (`random`): the
    lowest scores of each `prune_group` are pruned, as for a metric."""

    name: str
    doc: str
    scores: Callable[[list[ParamInfo], int], dict[str, torch.Tensor]]


LAYER_PRUNERS: Registry[LayerPruner] = Registry("layer-wise pruning method")
SCORE_METHODS: Registry[ScoreMethod] = Registry("pruning score method")


def layer_pruner(name: str, doc: str, hessian: bool = False):
    def register(prune):
        LAYER_PRUNERS.register(LayerPruner(name, doc, hessian, prune))
        return prune

    return register


@layer_pruner("wanda", "|W_ij|·‖X_j‖₂ within each output row (Sun et al. 2024)")
def _wanda(view: torch.Tensor, target: Sparsity, stats: InputStats) -> torch.Tensor:
    score = wanda_scores(view.float(), stats.sq, stats.windows)
    mask = n_of_m(score, *target.nm) if target.nm else per_row(score, target.fraction)
    view.masked_fill_(mask, 0)
    return mask


@layer_pruner("ria", "relative importance and activations within each tensor (Zhang et al. 2024)")
def _ria(view: torch.Tensor, target: Sparsity, stats: InputStats) -> torch.Tensor:
    score = ria_scores(view.float(), stats.sq, stats.windows)
    if target.nm:
        mask = n_of_m(score, *target.nm)
    else:
        mask = lowest(score.flatten(), int(score.numel() * target.fraction)).reshape(score.shape)
    view.masked_fill_(mask, 0)
    return mask


@layer_pruner("sparsegpt", "OBS pruning with the layer's outputs reconstructed", hessian=True)
def _sparsegpt(view: torch.Tensor, target: Sparsity, stats: InputStats) -> torch.Tensor:
    new, mask = sparsegpt(view, stats.hessian, target)
    view.copy_(new.to(view.dtype))
    return mask


def _random_scores(infos: list[ParamInfo], seed: int) -> dict[str, torch.Tensor]:
    out = {}
    for i, info in enumerate(infos):
        generator = torch.Generator().manual_seed(seed * 100_003 + i)
        out[info.name] = torch.rand(info.shape, generator=generator)
    return out


SCORE_METHODS.register(
    ScoreMethod("random", "uniform random scores, seeded per tensor", _random_scores)
)


def prune_by_activations(
    model: nn.Module,
    infos: list[ParamInfo],
    method: str,
    target: Sparsity,
    windows: torch.Tensor,
    batch_size: int,
) -> dict[str, torch.Tensor]:
    """Prunes the pool in place with a layer-wise method (LAYER_PRUNERS); returns the masks
    (True: pruned) in storage layout.

    One pass over the blocks, as the reference code runs: the calibration windows' inputs to the
    blocks are captured once; each block runs on them with its pool layers' input statistics
    recorded, those layers are pruned, and the pruned block runs again to give the next block
    its inputs (two block passes per block, about two forwards in all). Layers outside the
    blocks come last, from one forward of the pruned model."""
    from transformers.pytorch_utils import Conv1D

    params = dict(model.named_parameters())
    owners = owning_modules(model, [i.name for i in infos])
    for info in infos:
        if not isinstance(owners[info.name], nn.Linear | Conv1D) or len(info.shape) != 2:
            raise CwaError(
                f"params: `prune_methods` {method} prunes linear-layer weights only; {info.name} "
                "is not one: narrow the pool (include_embeddings: false, include_1d: false)"
            )
    pruner, masks = LAYER_PRUNERS.get(method), {}

    def prune(layer: int, stats: dict[str, InputStats]) -> None:
        here = Sparsity(target.at(layer), target.nm)
        for info in (i for i in infos if i.layer == layer):
            with torch.no_grad():
                mask = pruner.prune(matrix(params[info.name].data, info), here, stats[info.name])
            masks[info.name] = (mask.T if info.transposed else mask).reshape(info.shape)

    inside = {i.layer for i in infos if i.layer >= 0}
    if inside:
        _, blocks = block_stack(model)
        inputs = BlockInputs.capture(model, blocks, windows, batch_size)
        for layer in range(max(inside) + 1):
            if layer in inside:
                mine = {i.name: owners[i.name] for i in infos if i.layer == layer}
                sums = _InputSums(pruner.hessian)
                with forward_hooks(mine, sums):
                    inputs.run(blocks, layer, advance=False)
                prune(layer, sums.stats(mine, len(windows)))
            if layer < max(inside):
                inputs.run(blocks, layer, advance=True)
    outside = {i.name: owners[i.name] for i in infos if i.layer < 0}
    if outside:
        prune(-1, input_stats(model, outside, windows, batch_size, pruner.hessian))
    return masks


def method_scores(
    method: str, infos: list[ParamInfo], scores_of, seed: int
) -> dict[str, torch.Tensor]:
    """|score| of every pool weight for a metric method (scores_of(name): the metric's scores
    on the calibration draw), or a score method's scores (SCORE_METHODS: `random`)."""
    if method in SCORE_METHODS:
        return SCORE_METHODS.get(method).scores(infos, seed)
    return {n: s.abs() for n, s in scores_of(method).items()}


def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> int:
    """Zeroes the masked weights in place; returns how many were pruned."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, mask in masks.items():
            params[name].masked_fill_(mask.to(params[name].device), 0)
    return sum(int(m.sum()) for m in masks.values())


OWL_M = 5.0  # an outlier: a Wanda score above M × its block's mean score (the paper's LLaMA runs)
OWL_LAMBDA = 0.08  # block sparsities span target ± λ


def outlier_ratios(model: nn.Module, infos: list[ParamInfo], windows, batch_size) -> dict:
    """OWL's layerwise outlier distribution: per block, the share of its pool weights whose
    Wanda score |W_ij|·‖X_j‖₂ exceeds OWL_M × the block's mean score, on the dense model (one
    calibration pass)."""
    params = dict(model.named_parameters())
    owners = owning_modules(model, [i.name for i in infos])
    blocks = [i for i in infos if i.layer >= 0]
    stats = input_stats(model, {i.name: owners[i.name] for i in blocks}, windows, batch_size, False)
    ratios = {}
    for layer in sorted({i.layer for i in blocks}):
        mine = [i for i in blocks if i.layer == layer]
        scores = torch.cat(
            [
                wanda_scores(
                    matrix(params[i.name].detach(), i).float(), stats[i.name].sq, 1
                ).flatten()
                for i in mine
            ]
        )
        ratios[layer] = float((scores > OWL_M * scores.mean()).double().mean())
    return ratios


def owl(fraction: float, ratios: dict[int, float]) -> Sparsity:
    """OWL's allocation (Yin et al. 2024): block densities spread over 2λ in proportion to the
    block's outlier ratio, shifted so that their mean is 1 − fraction; blocks with more outliers
    are pruned less. Uniform when every block has the same ratio."""
    layers = sorted(ratios)
    d = torch.tensor([ratios[layer] for layer in layers], dtype=torch.float64)
    spread = d.max() - d.min()
    if spread == 0:
        return Sparsity(fraction)
    density = (d - d.min()) / spread * 2 * OWL_LAMBDA
    density = density - density.mean() + (1 - fraction)
    per_layer = (1 - density).clamp(min=0.0, max=1.0)
    return Sparsity(fraction, by_layer=tuple(zip(layers, per_layer.tolist(), strict=True)))
