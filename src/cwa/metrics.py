"""Sensitivity metrics: a registry of per-weight scores and the calibration pass that feeds them.

Conventions (SCIENCE.md §5.1-5.3): eval mode, fp32 accumulators, loss = summed next-token NLL of
fixed-length windows. `grad_x_weight` uses the gradient of the mean token loss over the whole
calibration draw; `grad_squared` squares the gradient of each window's mean loss, then averages
over windows (the empirical Fisher diagonal), never the square of a summed gradient.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from cwa import CwaError
from cwa.evaluation import token_nll
from cwa.models import ParamInfo
from cwa.progress import progress


@dataclass(frozen=True)
class Metric:
    """A per-weight score.

    accumulate(acc, grad, window_tokens) folds one backward pass into the fp32 accumulator; grad
    is the gradient of the summed NLL of that pass's windows (one window when per_sample), each
    window predicting window_tokens tokens. finalize(acc, weight, windows, tokens) turns the
    accumulator, the weight and the totals of the draw into scores.
    """

    name: str
    doc: str
    finalize: Callable[[torch.Tensor | None, torch.Tensor, int, int], torch.Tensor]
    accumulate: Callable[[torch.Tensor, torch.Tensor, int], None] | None = None
    per_sample: bool = False

    @property
    def uses_data(self) -> bool:
        return self.accumulate is not None


METRICS: dict[str, Metric] = {}


def register(metric: Metric) -> Metric:
    METRICS[metric.name] = metric
    return metric


def get_metric(name: str) -> Metric:
    if name not in METRICS:
        raise CwaError(f"unknown metric {name!r}; valid metrics: {', '.join(sorted(METRICS))}")
    return METRICS[name]


def _add(acc, grad, tokens):
    acc.add_(grad.float())


def _add_squared_mean(acc, grad, tokens):
    acc.add_((grad.float() / tokens).square())  # gradient of the window's mean loss, squared


register(
    Metric(
        "magnitude",
        "|w|: data-free baseline",
        finalize=lambda acc, w, windows, tokens: w.detach().float().abs(),
    )
)
register(
    Metric(
        "grad_x_weight",
        "|ḡ·w|, ḡ = gradient of the mean token loss over the calibration draw",
        accumulate=_add,
        finalize=lambda acc, w, windows, tokens: (acc / tokens * w.detach().float()).abs(),
    )
)
register(
    Metric(
        "grad_squared",
        "(1/N) Σₙ gₙ²: empirical Fisher diagonal, gₙ = gradient of window n's mean loss",
        accumulate=_add_squared_mean,
        finalize=lambda acc, w, windows, tokens: acc / windows,
        per_sample=True,
    )
)


def compute_scores(
    model,
    infos: list[ParamInfo],
    metric: Metric,
    windows: torch.Tensor,
    batch_size: int,
    desc: str | None = None,
) -> dict[str, torch.Tensor]:
    """Scores for the parameters in `infos`: fp32 CPU tensors shaped like the parameters."""
    params = dict(model.named_parameters())
    targets = {i.name: params[i.name] for i in infos}
    acc = None
    if metric.uses_data:
        acc = _calibration_pass(model, targets, metric, windows, batch_size, desc)
    n_windows, seq_len = windows.shape
    tokens = n_windows * (seq_len - 1)
    return {
        name: metric.finalize(acc[name] if acc else None, p, n_windows, tokens).cpu()
        for name, p in targets.items()
    }


def _calibration_pass(model, targets, metric, windows, batch_size, desc):
    model.eval()
    device = next(model.parameters()).device
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    for p in targets.values():
        p.requires_grad_(True)  # only scored tensors get gradients: less compute and memory
    acc = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in targets.items()}
    step = 1 if metric.per_sample else batch_size
    try:
        batches = windows.split(step)
        for batch in progress(batches, desc=desc, total=len(batches)):
            batch = batch.to(device)
            logits = model(input_ids=batch, use_cache=False).logits
            loss = token_nll(logits, batch).sum()
            if not torch.isfinite(loss):
                raise CwaError(f"calibration loss is {loss.item()} (non-finite) in a {desc} batch")
            grads = torch.autograd.grad(loss, list(targets.values()))
            for name, g in zip(targets, grads, strict=True):
                metric.accumulate(acc[name], g, batch.shape[1] - 1)
    finally:
        for n, p in model.named_parameters():
            p.requires_grad_(flags[n])
    return acc
