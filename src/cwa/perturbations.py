"""Perturbations of selected weights, applied in place and undone bit for bit.

Only the touched coordinates are saved (name, flat index, original value); restore writes them
back and verifies equality of the integer views (NaN-safe), never by inverse arithmetic.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from cwa import CwaError
from cwa.registry import Registry

# Integer view with the same width as each float storage dtype, and its bit count.
_INT_VIEW = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}


@dataclass(frozen=True)
class Settings:
    noise_sigma: float = 1.0
    flip_bit: int = 30
    seed: int = 0


@dataclass(frozen=True)
class Perturbation:
    """apply(values, settings, generator) -> new values, same dtype, for the selected weights."""

    name: str
    doc: str
    apply: Callable[[torch.Tensor, Settings, torch.Generator], torch.Tensor]
    strength: Callable[[Settings], float] = lambda s: 0.0


PERTURBATIONS: Registry[Perturbation] = Registry("perturbation")
register = PERTURBATIONS.register
get_perturbation = PERTURBATIONS.get


def int_view(t: torch.Tensor) -> torch.Tensor:
    if t.dtype not in _INT_VIEW:
        raise CwaError(f"bit-level access needs fp32, fp16 or bf16 weights, got {t.dtype}")
    return t.view(_INT_VIEW[t.dtype])


def flip_bits(values: torch.Tensor, bit: int) -> torch.Tensor:
    """Flips IEEE-754 bit `bit` (0 = mantissa LSB) of each value in its own storage dtype."""
    ints = int_view(values)
    width = ints.element_size() * 8
    if not 0 <= bit < width:
        raise CwaError(f"flip_bit {bit} is outside the {width}-bit {values.dtype} layout")
    mask = 1 << bit
    if mask >= 1 << (width - 1):
        mask -= 1 << width  # the sign bit as a negative two's-complement constant
    return (ints ^ mask).view(values.dtype)


def _gauss(values, s, gen):
    eps = torch.randn(values.shape, generator=gen, dtype=torch.float32, device="cpu")
    return (values.float() * (1 + s.noise_sigma * eps.to(values.device))).to(values.dtype)


register(Perturbation("zero", "w → 0", lambda v, s, g: torch.zeros_like(v)))
register(Perturbation("sign_flip", "w → −w", lambda v, s, g: -v))
register(
    Perturbation(
        "gauss_noise",
        "w → w·(1 + σε), ε ~ N(0, 1): noise relative to each weight's own magnitude",
        _gauss,
        strength=lambda s: s.noise_sigma,
    )
)
register(
    Perturbation(
        "bit_flip",
        "flip IEEE-754 bit `flip_bit` of w in the model's own dtype",
        lambda v, s, g: flip_bits(v, s.flip_bit),
        strength=lambda s: float(s.flip_bit),
    )
)


@contextmanager
def perturbed(
    params: dict[str, torch.nn.Parameter],
    selection: dict[str, torch.Tensor],
    perturbation: Perturbation,
    settings: Settings,
) -> Iterator[None]:
    """Applies `perturbation` to params[name].view(-1)[flat] for each entry; restores on exit."""
    gen = torch.Generator().manual_seed(settings.seed)
    saved = []
    try:
        with torch.no_grad():
            for name, flat in selection.items():
                storage = params[name].data.view(-1)  # a view: writes land in the parameter
                flat = flat.to(storage.device)
                original = storage[flat].clone()
                saved.append((storage, flat, original))
                storage[flat] = perturbation.apply(original, settings, gen)
        yield
    finally:
        restore(saved)


def restore(saved) -> None:
    """Writes the saved values back and proves every touched weight is bit-identical again."""
    with torch.no_grad():
        for storage, flat, original in saved:
            storage[flat] = original
        for storage, flat, original in saved:
            if not torch.equal(int_view(storage[flat]), int_view(original)):
                raise CwaError("weights were not restored bit for bit after a perturbation")


def fingerprint(tensors: list[torch.Tensor]) -> str:
    """SHA-256 of the raw bytes of `tensors`: a whole-model checksum before and after a sweep."""
    import hashlib

    h = hashlib.sha256()
    for t in tensors:
        h.update(int_view(t.detach()).cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
