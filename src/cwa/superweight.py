"""Data-free super-weight detection after Yu et al. (2024), "The Super Weight in LLMs".

One forward pass with hooks on every MLP down projection: the input channel j* and the output
channel i* holding the largest |activation| over all tokens. A layer is a candidate when both
maxima are spikes: at least `spike_ratio` times the median |activation| of that input / output.
The super weight is down_proj.weight[i*, j*] (row = output channel, col = input channel).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from cwa.hooks import forward_hooks
from cwa.models import describe, owning_modules


@dataclass(frozen=True)
class Spike:
    param: str
    layer: int
    in_channel: int  # j*: column of the weight (nn.Linear convention)
    out_channel: int  # i*: row
    in_max: float
    out_max: float
    in_ratio: float  # in_max / median |input|
    out_ratio: float  # out_max / median |output|
    flat_index: int  # position of [i*, j*] in the weight's storage

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


def detect(model, windows: torch.Tensor, batch_size: int) -> list[Spike]:
    """The strongest input/output spike of every down projection, with its weight coordinate."""
    from transformers.pytorch_utils import Conv1D

    infos = {i.name: i for i in describe(model)}
    downs = down_projections(model)
    spikes = []
    for name, s in activation_maxima(model, windows, batch_size).items():
        j, i = int(s["x_max"].argmax()), int(s["y_max"].argmax())
        shape = infos[name].shape
        flat = j * shape[1] + i if isinstance(downs[name], Conv1D) else i * shape[1] + j
        spikes.append(
            Spike(
                param=name,
                layer=infos[name].layer,
                in_channel=j,
                out_channel=i,
                in_max=float(s["x_max"][j]),
                out_max=float(s["y_max"][i]),
                in_ratio=float(s["x_max"][j] / s["x_med"]),
                out_ratio=float(s["y_max"][i] / s["y_med"]),
                flat_index=flat,
            )
        )
    return sorted(spikes, key=lambda sp: sp.layer)
