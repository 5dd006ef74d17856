"""Temporary model state that is always undone: forward hooks keyed by qualified module name,
and which parameters require grad."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def forward_hooks(modules: dict[str, nn.Module], hook) -> Iterator[None]:
    """Registers hook(name, module, inputs, output) on each module; always removes them."""
    handles = [
        m.register_forward_hook(lambda mod, i, o, n=n: hook(n, mod, i, o))
        for n, m in modules.items()
    ]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@contextmanager
def grads_for(model: nn.Module, targets: dict[str, nn.Parameter]) -> Iterator[None]:
    """Only the scored tensors require grad (less compute and memory); flags restored after."""
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        for p in targets.values():
            p.requires_grad_(True)
        yield
    finally:
        for n, p in model.named_parameters():
            p.requires_grad_(flags[n])
