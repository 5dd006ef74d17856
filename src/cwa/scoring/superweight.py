"""Data-free super-weight detection after Yu et al. (2024), "The Super Weight in LLMs".

One forward pass with hooks on every MLP down projection finds where its output spikes: the
token t* and output channel i* of the largest |output|. The super weight is the weight making
that spike: down_proj.weight[i*, j*] with j* the input channel whose term |W[i*, j]·x[t*, j]|
is largest (row = output channel, col = input channel). A layer holds a candidate when both the
spike and that input are at least `spike_ratio` times the layer's median |activation|.
`activation_maxima` (per-channel maxima) feeds the `super_weight` metric.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from cwa.core.hooks import forward_hooks
from cwa.models.anatomy import describe, owning_modules


@dataclass(frozen=True)
class Spike:
    param: str
    layer: int
    in_channel: int  # j*: column of the weight (nn.Linear convention)
    out_channel: int  # i*: row
    window: int  # where the output spike happens: window of the probe batch ...
    token: int  # ... and token position in it
    in_act: float  # |x[t*, j*]|: the input on j* at the spike token
    out_act: float  # |y[t*, i*]|: the spike
    in_ratio: float  # in_act / median |input| of the layer
    out_ratio: float  # out_act / median |output| of the layer
    contribution: float  # |W[i*, j*] · x[t*, j*]|
    share: float  # contribution / Σ_j |W[i*, j] · x[t*, j]|: how much of the spike it makes
    flat_index: int  # position of [i*, j*] in the weight's storage
    row_mean: float  # mean of W[i*, :]: the value the mean-ablation control sets it to

    def is_candidate(self, spike_ratio: float) -> bool:
        return self.in_ratio >= spike_ratio and self.out_ratio >= spike_ratio


def down_projections(model: nn.Module) -> dict[str, nn.Module]:
    """weight name -> module for every MLP down projection (any supported architecture)."""
    names = [i.name for i in describe(model) if i.component == "mlp_down"]
    return owning_modules(model, [n for n in names if n.endswith("weight")])


def activation_maxima(model, windows: torch.Tensor, batch_size: int):
    """Per down projection: max |x| per input channel, max |y| per output channel and the medians
    of |x| and |y| over the first batch (fp32)."""
    downs = down_projections(model)
    stats: dict[str, dict[str, torch.Tensor]] = {}

    def hook(name, module, inputs, output):
        x = inputs[0].detach().float().abs().reshape(-1, inputs[0].shape[-1])  # (tokens, in)
        y = output.detach().float().abs().reshape(-1, output.shape[-1])  # (tokens, out)
        s = stats.setdefault(name, {"x_med": x.median(), "y_med": y.median()})
        s["x_max"] = torch.maximum(s["x_max"], x.amax(0)) if "x_max" in s else x.amax(0)
        s["y_max"] = torch.maximum(s["y_max"], y.amax(0)) if "y_max" in s else y.amax(0)

    device = next(model.parameters()).device
    with forward_hooks(downs, hook), torch.inference_mode():
        for batch in windows.split(batch_size):
            model(input_ids=batch.to(device), use_cache=False)
    return stats


def spike_sites(model, windows: torch.Tensor, batch_size: int) -> dict[str, dict]:
    """Per down projection: where its largest |output| happens (window, token, output channel),
    the input vector x[t*] at that token, and the medians of |x| and |y| (fp32; the medians
    over the first batch)."""
    downs = down_projections(model)
    sites: dict[str, dict] = {}
    offset = 0

    def hook(name, module, inputs, output):
        x = inputs[0].detach().float()  # (batch, tokens, in)
        y = output.detach().float().abs()  # (batch, tokens, out)
        s = sites.setdefault(name, {"x_med": x.abs().median(), "y_med": y.median(), "peak": -1.0})
        flat = int(y.argmax())
        peak = float(y.reshape(-1)[flat])
        if peak > s["peak"]:
            b, t, o = (int(v) for v in torch.unravel_index(torch.tensor(flat), y.shape))
            s.update(peak=peak, window=offset + b, token=t, out=o, x=x[b, t].clone())

    device = next(model.parameters()).device
    with forward_hooks(downs, hook), torch.inference_mode():
        for batch in windows.split(batch_size):
            model(input_ids=batch.to(device), use_cache=False)
            offset += len(batch)
    return sites


def detect(model, windows: torch.Tensor, batch_size: int) -> list[Spike]:
    """The super-weight candidate of every down projection, located where the spike happens:
    the token and output channel of its largest |output|, then the weight whose term
    |W[i*, j] · x[t*, j]| contributes most to that output. Sorted by contribution, largest
    first. (Pairing the largest input channel with the largest output channel independently
    misses a super weight whenever an ordinary channel's peak input is larger.)"""
    from transformers.pytorch_utils import Conv1D

    infos = {i.name: i for i in describe(model)}
    downs = down_projections(model)
    spikes = []
    for name, s in spike_sites(model, windows, batch_size).items():
        weight = downs[name].weight.detach().float()
        transposed = isinstance(downs[name], Conv1D)
        row = weight[:, s["out"]] if transposed else weight[s["out"]]  # W[i*, :]
        terms = (row * s["x"]).abs()
        j, i = int(terms.argmax()), s["out"]
        shape = infos[name].shape
        spikes.append(
            Spike(
                param=name,
                layer=infos[name].layer,
                in_channel=j,
                out_channel=i,
                window=s["window"],
                token=s["token"],
                in_act=float(s["x"][j].abs()),
                out_act=s["peak"],
                in_ratio=float(s["x"][j].abs() / s["x_med"]),
                out_ratio=float(s["peak"] / s["y_med"]),
                contribution=float(terms[j]),
                share=float(terms[j] / terms.sum()),
                flat_index=j * shape[1] + i if transposed else i * shape[1] + j,
                row_mean=float(row.mean()),
            )
        )
    return sorted(spikes, key=lambda sp: -sp.contribution)
