"""Forward hooks that are always removed, keyed by qualified module name."""

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
