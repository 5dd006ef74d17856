"""Sensitivity metrics: a registry of per-weight scores, each one function of a calibration draw.

Conventions (docs/science.md): eval mode, fp32 accumulators, fixed-length unpadded windows, loss =
next-token NLL. L = mean token loss over the draw; ℓₙ = mean token loss of window n.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from cwa import CwaError
from cwa.config.params import check as params_check
from cwa.config.params import check_choice
from cwa.core.distributed import SINGLE_PROCESS, World
from cwa.core.hooks import forward_hooks, grads_for
from cwa.core.progress import progress
from cwa.core.registry import Registry
from cwa.evaluation.perplexity import token_nll
from cwa.models.anatomy import ParamInfo, along_inputs, owning_modules
from cwa.scoring.superweight import activation_maxima


@dataclass(frozen=True)
class Calibration:
    """What a metric may use: the model, the tensors to score and the calibration draw."""

    model: nn.Module
    infos: list[ParamInfo]
    windows: torch.Tensor  # (N, T) token ids
    batch_size: int
    probes: int = 16  # Hutchinson probes
    seed: int = 0  # Hutchinson probe seed
    desc: str | None = None
    layer_group: int = 0  # Hutchinson: blocks per pass (0: all at once)
    world: World = (
        SINGLE_PROCESS  # data parallel: this process scores its shard, sums are all-reduced
    )

    @property
    def targets(self) -> dict[str, nn.Parameter]:
        params = dict(self.model.named_parameters())
        return {i.name: params[i.name] for i in self.infos}

    @property
    def shard(self) -> torch.Tensor:
        """This process's windows (all of them in a single-process run)."""
        return self.world.shard(self.windows)

    @property
    def tokens(self) -> int:
        """Predicted tokens of the whole draw, over every process."""
        n, t = self.windows.shape
        return n * (t - 1)


@dataclass(frozen=True)
class Metric:
    name: str
    doc: str
    score: Callable[[Calibration], dict[str, torch.Tensor]]
    signed: bool = False  # scores may be negative; ranking orders |score|
    # the pass it makes, for the memory estimate: none | forward | backward | per_window | hessian
    needs: str = "backward"


METRICS: Registry[Metric] = Registry("metric")
get_metric = METRICS.get


def metric(name: str, doc: str, signed: bool = False, needs: str = "backward"):
    """Registers the decorated function `(Calibration) -> {param name: fp32 scores}` by name."""

    def wrap(fn):
        METRICS.register(Metric(name, doc, fn, signed, needs))
        return fn

    return wrap


def compute_scores(
    model,
    infos: list[ParamInfo],
    metric_: Metric,
    windows: torch.Tensor,
    batch_size: int,
    probes: int = 16,
    seed: int = 0,
    desc: str | None = None,
    world: World = SINGLE_PROCESS,
    layer_group: int = 0,
) -> dict[str, torch.Tensor]:
    """Scores for the parameters in `infos`: fp32 CPU tensors shaped like the parameters.

    Under several processes each scores its shard of `windows`; every process returns the scores
    of the whole draw.
    """
    desc = desc if world.main else None
    cal = Calibration(model, infos, windows, batch_size, probes, seed, desc, layer_group, world)
    model.eval()
    scores = metric_.score(cal)
    for name, s in scores.items():
        if not torch.isfinite(s).all():
            raise CwaError(f"{metric_.name}: non-finite scores in {name}")
    return to_host(scores)


@dataclass(frozen=True)
class ScoringConfig:
    """How a sensitivity pass runs (params: batch_size, seq_len, probes, layer_group)."""

    batch_size: int
    seq_len: int
    probes: int
    layer_group: int

    @classmethod
    def of(cls, params) -> ScoringConfig:
        return cls(params.batch_size, params.seq_len, params.probes, params.layer_group)


def score(
    config: ScoringConfig,
    model,
    infos: list[ParamInfo],
    metric_: Metric,
    windows: torch.Tensor,
    seed: int,
    desc: str | None = None,
    world: World = SINGLE_PROCESS,
) -> dict[str, torch.Tensor]:
    """compute_scores as `config` sets it: the call every scoring stage makes."""
    return compute_scores(
        model,
        infos,
        metric_,
        windows,
        config.batch_size,
        config.probes,
        seed,
        desc,
        world,
        config.layer_group,
    )


def to_host(tensors: dict[str, torch.Tensor], chunk: int = 1 << 26) -> dict[str, torch.Tensor]:
    """fp32 CPU copies, GPU tensors through one reused pinned buffer of `chunk` elements.

    A plain device-to-pageable copy ran at ~1.2 GB/s on the H100 machine (3.3 s for a 1B-weight
    pool); device-to-pinned is DMA (~50 GB/s) and pinned-to-pageable a host memcpy.
    """
    on_gpu = [t.numel() for t in tensors.values() if t.device.type != "cpu"]
    if on_gpu:
        chunk = min(chunk, max(on_gpu))
        staging = torch.empty(chunk, dtype=torch.float32, pin_memory=True)
    out = {}
    for name, t in tensors.items():
        t = t.float()
        if t.device.type == "cpu":
            out[name] = t
            continue
        flat, host = t.reshape(-1), torch.empty(t.numel(), dtype=torch.float32)
        for start in range(0, flat.numel(), chunk):
            part = flat[start : start + chunk]
            buf = staging[: part.numel()]
            buf.copy_(part)  # blocking: the buffer is reused by the next part
            host[start : start + part.numel()].copy_(buf)
        out[name] = host.view(t.shape)
    return out


def _batches(cal: Calibration, size: int):
    batches = cal.shard.split(size)
    return progress(batches, desc=cal.desc, total=len(batches))


def _loss(model, batch: torch.Tensor) -> torch.Tensor:
    """Summed next-token NLL of the batch (fp32); refuses non-finite losses."""
    batch = batch.to(next(model.parameters()).device)
    loss = token_nll(model(input_ids=batch, use_cache=False).logits, batch).sum()
    if not torch.isfinite(loss):
        raise CwaError(f"calibration loss is {loss.item()} (non-finite)")
    return loss


def gradient_sums(cal: Calibration, per_window: bool, square: bool) -> dict[str, torch.Tensor]:
    """Σ over backward passes of each pass's gradient, or of its square, in fp32.

    per_window: one window per pass, loss = that window's mean token NLL (exact per-sample
    gradients); otherwise batches of `batch_size`, loss = summed NLL.
    """
    return _gradient_sums(cal, cal.targets, per_window, square)


def _gradient_sums(cal, targets, per_window: bool, square: bool) -> dict[str, torch.Tensor]:
    acc = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in targets.items()}
    window_tokens = cal.windows.shape[1] - 1
    with grads_for(cal.model, targets):
        for batch in _batches(cal, 1 if per_window else cal.batch_size):
            loss = _loss(cal.model, batch)
            if per_window:
                loss = loss / window_tokens
            for name, g in zip(
                targets, torch.autograd.grad(loss, list(targets.values())), strict=True
            ):
                acc[name].add_(g.float().square() if square else g.float())
    cal.world.reduce(acc.values())
    return acc


def per_window_squares(cal: Calibration) -> dict[str, torch.Tensor]:
    """Σₙ (∇ℓₙ)², ℓₙ = window n's mean token loss, from batched backward passes.

    Windows are independent sequences, so in a batch the gradient reaching a linear layer's
    output at window n is window n's own; its weight gradient is Σₜ δₙₜ xₙₜᵀ, formed per window
    from the layer's input (forward hook) and output gradient (tensor hook) one layer at a time.
    Tensors that are not linear weights applied per window (norms, biases, embeddings, fused or
    token-routed experts) take one backward per window instead.
    """
    from transformers.pytorch_utils import Conv1D

    targets = cal.targets
    owners = owning_modules(cal.model, [n for n in targets if n.endswith(".weight")])
    linear = {n: m for n, m in owners.items() if isinstance(m, nn.Linear | Conv1D)}
    acc = {n: torch.zeros_like(targets[n], dtype=torch.float32) for n in linear}
    routed: set[str] = set()  # inputs not shaped (windows, tokens, features): fall back
    window_tokens = cal.windows.shape[1] - 1

    def hook(name, module, inputs, output):
        x = inputs[0].detach()
        if x.dim() != 3 or x.shape[:2] != current[0].shape:
            routed.add(name)
            return
        conv1d = isinstance(module, Conv1D)  # weight [in, out]; nn.Linear: [out, in]

        def on_grad(g):
            a, b = (x, g) if conv1d else (g, x)
            per_window = torch.einsum("btp,btq->bpq", a.float(), b.float())
            acc[name].add_(per_window.square().sum(dim=0))

        output.register_hook(on_grad)

    current = [None]
    with grads_for(cal.model, targets), forward_hooks(linear, hook):
        for batch in _batches(cal, cal.batch_size):
            current[0] = batch
            loss = _loss(cal.model, batch) / window_tokens
            torch.autograd.grad(loss, [targets[n] for n in linear])
    cal.world.reduce(acc[n] for n in linear)
    rest = {n: p for n, p in targets.items() if n not in linear or n in routed}
    if rest:
        acc |= _gradient_sums(cal, rest, per_window=True, square=True)
    return {n: acc[n] for n in targets}


@metric("magnitude", "|w|: data-free baseline", needs="none")
def magnitude(cal: Calibration) -> dict[str, torch.Tensor]:
    return {n: p.detach().float().abs() for n, p in cal.targets.items()}


@metric("grad_x_weight", "|ḡ·w|, ḡ = ∇L, the gradient of the mean token loss over the draw")
def grad_x_weight(cal: Calibration) -> dict[str, torch.Tensor]:
    acc = gradient_sums(cal, per_window=False, square=False)
    return {n: (acc[n] / cal.tokens * p.detach().float()).abs() for n, p in cal.targets.items()}


@metric(
    "grad_squared",
    "(1/N) Σₙ (∇ℓₙ)²: empirical Fisher diagonal, squared per window",
    needs="per_window",
)
def grad_squared(cal: Calibration) -> dict[str, torch.Tensor]:
    acc = per_window_squares(cal)
    return {n: a / len(cal.windows) for n, a in acc.items()}


def rademacher(params: list[torch.Tensor], seed: int) -> list[torch.Tensor]:
    """±1 probes, one per tensor, drawn on each tensor's own device from `seed`.

    One generator per device, consumed in tensor order: the same probes in every process of a
    data-parallel run (same device type), and no host-side draw of a billion signs per probe on
    a GPU run. CPU and CUDA generators give different (equally valid) probes.
    """
    gens: dict[torch.device, torch.Generator] = {}
    out = []
    for p in params:
        gen = gens.get(p.device) or gens.setdefault(
            p.device, torch.Generator(device=p.device).manual_seed(seed)
        )
        signs = torch.randint(0, 2, p.shape, generator=gen, dtype=torch.int8, device=p.device)
        out.append((signs * 2 - 1).to(p.dtype))
    return out


@metric(
    "hutchinson_diag",
    "diag(∇²L) ≈ (1/S) Σₛ zₛ ⊙ ∇²L zₛ, Rademacher zₛ (signed)",
    signed=True,
    needs="hessian",
)
def hutchinson_diag(cal: Calibration) -> dict[str, torch.Tensor]:
    """One Hessian-vector product per probe and batch covers every scored tensor at once.

    Each probe's z is the same for every batch (seeded by seed and probe), so the sum over
    batches is z ⊙ (H z) for the Hessian of the whole draw's loss. Fused attention kernels have no
    double backward: attention runs on the math SDPA backend (eager models are unaffected).
    With `layer_group` the same products are computed one group of blocks at a time.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if cal.layer_group > 0:
        return _hutchinson_blockwise(cal)
    targets = cal.targets
    params = list(targets.values())
    acc = [torch.zeros_like(p, dtype=torch.float32) for p in params]
    with grads_for(cal.model, targets), sdpa_kernel(SDPBackend.MATH):
        for batch in _batches(cal, cal.batch_size):
            grads = torch.autograd.grad(_loss(cal.model, batch), params, create_graph=True)
            for s in range(cal.probes):
                z = rademacher(params, cal.seed * 1_000_003 + s)
                hz = torch.autograd.grad(grads, params, grad_outputs=z, retain_graph=True)
                for a, zi, hzi in zip(acc, z, hz, strict=True):
                    a.add_(zi.float() * hzi.float())
    cal.world.reduce(acc)
    scale = 1.0 / (cal.tokens * cal.probes)
    return {n: a * scale for n, a in zip(targets, acc, strict=True)}


def _hutchinson_blockwise(cal: Calibration) -> dict[str, torch.Tensor]:
    """The same z ⊙ (Hz), `layer_group` blocks at a time (cwa.scoring.blockwise): the activations of
    one group exist at a time, and the products equal the all-at-once pass to float rounding."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from cwa.scoring.blockwise import Segments

    targets = cal.targets
    primal = {n: p.detach() for n, p in targets.items()}
    acc = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in primal.items()}
    batches = cal.shard.split(cal.batch_size)
    steps = progress(
        [(k, b, s) for k, b in enumerate(batches) for s in range(cal.probes)],
        desc=cal.desc,
        total=len(batches) * cal.probes,
    )
    segments = None
    with sdpa_kernel(SDPBackend.MATH):
        for k, batch, s in steps:
            if s == 0:  # the blocks' calls are recorded per batch; the first checks them
                segments = Segments(cal.model, primal, batch, cal.layer_group, verify=k == 0)
            probe = rademacher(list(primal.values()), cal.seed * 1_000_003 + s)
            z = dict(zip(primal, probe, strict=True))

            def add(hz, z=z):
                for n, h in hz.items():
                    acc[n].add_(z[n].float() * h.float())

            segments.products(z, add)
    cal.world.reduce(acc.values())
    scale = 1.0 / (cal.tokens * cal.probes)
    return {n: a * scale for n, a in acc.items()}


@metric(
    "obd",
    "½·F·w²: Optimal Brain Damage saliency with the empirical Fisher diagonal F",
    needs="per_window",
)
def obd(cal: Calibration) -> dict[str, torch.Tensor]:
    fisher = grad_squared(cal)
    return {n: 0.5 * fisher[n] * p.detach().float().square() for n, p in cal.targets.items()}


@metric(
    "obd_hutchinson",
    "½·h·w²: OBD saliency with the Hutchinson Hessian diagonal h (signed)",
    signed=True,
    needs="hessian",
)
def obd_hutchinson(cal: Calibration) -> dict[str, torch.Tensor]:
    h = hutchinson_diag(cal)
    return {n: 0.5 * h[n] * p.detach().float().square() for n, p in cal.targets.items()}


def input_sq_norms(cal: Calibration, modules: dict[str, nn.Module]) -> dict[str, torch.Tensor]:
    """Σ over calibration tokens of x_j² for the input features j of each module (fp32)."""
    acc: dict[str, torch.Tensor] = {}

    def hook(name, module, inputs, output):
        x = inputs[0].detach().float()
        s = x.reshape(-1, x.shape[-1]).square().sum(dim=0)  # (in_features,)
        acc[name] = acc[name] + s if name in acc else s

    with forward_hooks(modules, hook), torch.inference_mode():
        for batch in _batches(cal, cal.batch_size):
            cal.model(input_ids=batch.to(next(cal.model.parameters()).device), use_cache=False)
    cal.world.reduce(acc[name] for name in modules)
    return acc


@metric(
    "wanda",
    "|W_ij|·‖X_j‖₂/√N, X_j = input feature j of the layer over all calibration tokens of the "
    "N windows (Wanda's normalisation)",
    needs="forward",
)
def wanda(cal: Calibration) -> dict[str, torch.Tensor]:
    from transformers.pytorch_utils import Conv1D

    owners = owning_modules(cal.model, [info.name for info in cal.infos])
    for info in cal.infos:
        linear = isinstance(owners[info.name], nn.Linear | Conv1D)
        if not (linear and info.name.endswith("weight")):
            raise CwaError(
                f"wanda scores linear-layer weights only; {info.name} is not one (embeddings, "
                f"norms and fused MoE experts have no input features to weigh): narrow the pool "
                f"with include_embeddings: false, include_1d: false or `layers`"
            )
    windows = len(cal.windows)  # Wanda's running mean: squared norms per calibration sample
    norms = {n: (v / windows).sqrt() for n, v in input_sq_norms(cal, owners).items()}
    scores = {}
    for info in cal.infos:
        w = cal.targets[info.name].detach().float().abs()
        scores[info.name] = w * along_inputs(info, norms[info.name])
    return scores


@metric(
    "super_weight",
    "|W_ij|·max_t |x_tj| on MLP down projections (0 elsewhere): the super-weight spike score",
    needs="forward",
)
def super_weight(cal: Calibration) -> dict[str, torch.Tensor]:
    """Largest where a huge input activation meets a large weight: the super weight peaks here."""
    stats = activation_maxima(cal.model, cal.shard, cal.batch_size)
    cal.world.reduce((s["x_max"] for s in stats.values()), op="max")
    scores = {}
    for info in cal.infos:
        w = cal.targets[info.name].detach().float().abs()
        if info.name not in stats:
            scores[info.name] = torch.zeros_like(w)
            continue
        scores[info.name] = w * along_inputs(info, stats[info.name]["x_max"])
    return scores


METRICS.alias("act_mag", "wanda")


@params_check
def _valid_metrics(p) -> None:
    """`metric` and every `compare_metrics` entry name a registered metric."""
    check_choice("metric", p.metric, METRICS.names())
    for name in p.compare_metrics:
        check_choice("compare_metrics", name, METRICS.names())
