"""Perturbations of selected weights, applied in place and undone bit for bit.

Only the touched coordinates are saved (name, flat index, original value); restore writes them
back and verifies equality of the integer views (NaN-safe), never by inverse arithmetic.
A perturbation with a strength (α, σ, bit, n bits, p) names the params key that holds its sweep.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from cwa import CwaError
from cwa.params import check as params_check
from cwa.params import check_choice, fail
from cwa.registry import Registry

# Integer view with the same width as each float storage dtype.
_INT_VIEW = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}

# IEEE-754 fields as inclusive (low, high) bit positions, bit 0 = mantissa LSB.
FIELDS = {
    torch.float32: {"sign": (31, 31), "exponent": (23, 30), "mantissa": (0, 22)},
    torch.float16: {"sign": (15, 15), "exponent": (10, 14), "mantissa": (0, 9)},
    torch.bfloat16: {"sign": (15, 15), "exponent": (7, 14), "mantissa": (0, 6)},
}
FIELD_NAMES = ("sign", "exponent", "mantissa")

Strength = float | int | str | None


@dataclass(frozen=True)
class Perturbation:
    """apply(values, tensor, strength, generator) -> new values (same dtype) for the selected
    weights; `tensor` is the whole parameter they come from (for grids); `strength_key` names the
    params key holding the strengths to sweep (None: the perturbation has no strength), `valid`
    the rule each strength obeys and `valid_doc` how the refusal names it."""

    name: str
    doc: str
    apply: Callable[[torch.Tensor, torch.Tensor, Strength, torch.Generator], torch.Tensor]
    strength_key: str | None = None
    label: Callable[[Strength], str] = lambda s: ""
    valid: Callable[[Strength], bool] = lambda s: True
    valid_doc: str = ""


PERTURBATIONS: Registry[Perturbation] = Registry("perturbation")
register = PERTURBATIONS.register
get_perturbation = PERTURBATIONS.get


def int_view(t: torch.Tensor) -> torch.Tensor:
    if t.dtype not in _INT_VIEW:
        raise CwaError(f"bit-level access needs fp32, fp16 or bf16 weights, got {t.dtype}")
    return t.view(_INT_VIEW[t.dtype])


def _width(dtype: torch.dtype) -> int:
    return 32 if dtype == torch.float32 else 16


def _as_int(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """An int64 bit mask as the (signed, two's-complement) integer view type of `dtype`."""
    width = _width(dtype)
    mask = torch.where(mask >= 1 << (width - 1), mask - (1 << width), mask)
    return mask.to(_INT_VIEW[dtype])


def flip_bits(values: torch.Tensor, bit: int | torch.Tensor) -> torch.Tensor:
    """Flips IEEE-754 bit `bit` (0 = mantissa LSB; a tensor gives one bit per value) of each
    value in its own storage dtype."""
    ints = int_view(values)
    width = _width(values.dtype)
    bits = torch.as_tensor(bit, dtype=torch.int64, device=values.device)
    if bits.numel() and not (int(bits.min()) >= 0 and int(bits.max()) < width):
        raise CwaError(f"bit {bit} is outside the {width}-bit {values.dtype} layout")
    return (ints ^ _as_int(torch.ones_like(bits) << bits, values.dtype)).view(values.dtype)


def xor_mask(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """values with the bits set in `mask` (int64, one per value) flipped."""
    return (int_view(values) ^ _as_int(mask.to(values.device), values.dtype)).view(values.dtype)


def field_bits(dtype: torch.dtype, field: str, n: int, gen: torch.Generator) -> torch.Tensor:
    """n bit positions drawn uniformly from `field` of `dtype` (int64, CPU)."""
    if dtype not in FIELDS:
        raise CwaError(f"bit-level access needs fp32, fp16 or bf16 weights, got {dtype}")
    lo, hi = FIELDS[dtype][field]
    return torch.randint(lo, hi + 1, (n,), generator=gen)


def _bit_flip(values, tensor, strength, gen):
    if isinstance(strength, str):
        return flip_bits(values, field_bits(values.dtype, strength, values.numel(), gen))
    return flip_bits(values, int(strength))


def _bit_flip_p(values, tensor, p, gen):
    """Each bit of each value flips independently with probability p."""
    width = _width(values.dtype) if values.dtype in _INT_VIEW else 0
    hits = torch.rand((values.numel(), width), generator=gen) < float(p)  # (n, bits)
    mask = (hits.long() << torch.arange(width)).sum(dim=1)
    return xor_mask(values, mask)


def _bit_label(strength) -> str:
    return f"random {strength} bit" if isinstance(strength, str) else f"bit {strength}"


def _noise(values: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """ε ~ N(0, 1) in fp32, drawn on CPU from the seeded generator so every device agrees."""
    return torch.randn(values.shape, generator=gen, dtype=torch.float32).to(values.device)


def _quantize(values, tensor, bits, gen):
    """Round to the symmetric per-tensor absmax grid with 2^(n-1) − 1 levels each side: the grid
    round-to-nearest quantisation would give the whole tensor."""
    levels = 2 ** (int(bits) - 1) - 1
    step = tensor.detach().abs().max().float() / levels
    if step == 0:
        return values
    q = torch.clamp(torch.round(values.float() / step), -levels, levels)
    return (q * step).to(values.dtype)


register(Perturbation("zero", "w → 0", lambda v, t, s, g: torch.zeros_like(v)))
register(Perturbation("sign_flip", "w → −w", lambda v, t, s, g: -v))
register(
    Perturbation(
        "scale",
        "w → α·w",
        lambda v, t, a, g: (v.float() * float(a)).to(v.dtype),
        "scale_alpha",
        lambda a: f"α={a:g}",
        lambda a: math.isfinite(a),
        "finite numbers",
    )
)
register(
    Perturbation(
        "gauss_rel",
        "w → w·(1 + σε), ε ~ N(0, 1): noise relative to each weight's own magnitude",
        lambda v, t, s, g: (v.float() * (1 + float(s) * _noise(v, g))).to(v.dtype),
        "noise_sigma",
        lambda s: f"σ={s:g} relative",
        lambda s: s > 0,
        "numbers > 0",
    )
)
PERTURBATIONS.alias("gauss_noise", "gauss_rel")
register(
    Perturbation(
        "gauss_abs",
        "w → w + σε, ε ~ N(0, 1): absolute noise, σ in weight units",
        lambda v, t, s, g: (v.float() + float(s) * _noise(v, g)).to(v.dtype),
        "abs_sigma",
        lambda s: f"σ={s:g}",
        lambda s: s > 0,
        "numbers > 0",
    )
)
register(
    Perturbation(
        "bit_flip",
        "flip one IEEE-754 bit of w in its storage dtype: a fixed position, or a uniformly "
        "random bit of a field (sign, exponent, mantissa) per weight",
        _bit_flip,
        "flip_bit",
        _bit_label,
        lambda b: b in FIELD_NAMES if isinstance(b, str) else 0 <= b < 32,
        f"bit positions 0..31 (fp32: 31 sign, 30-23 exponent; fp16/bf16: 15 sign) or "
        f"fields {', '.join(FIELD_NAMES)}",
    )
)
register(
    Perturbation(
        "bit_flip_p",
        "flip each bit of w's storage independently with probability p",
        _bit_flip_p,
        "flip_prob",
        lambda p: f"p={p:g}",
        lambda q: 0 < q <= 1,
        "probabilities in (0, 1]",
    )
)
register(
    Perturbation(
        "quantize",
        "round w to the n-bit symmetric absmax grid of its tensor",
        _quantize,
        "quant_bits",
        lambda n: f"{n}-bit",
        lambda n: 2 <= n <= 16,
        "bit widths 2..16",
    )
)


@params_check
def _valid_perturbations(p) -> None:
    """`perturb` names distinct registered perturbations (the headline: `zero` when listed, else
    the first); each strength sweep is a non-empty list of distinct values it accepts."""
    for name in p.perturb:
        check_choice("perturb", name, PERTURBATIONS.names())
    if not p.perturb or len(set(p.perturb)) != len(p.perturb):
        fail(
            "perturb", f"must be a non-empty list of distinct perturbations, got {list(p.perturb)}"
        )
    for pert in PERTURBATIONS.items():
        if pert.strength_key is None:
            continue
        values = getattr(p, pert.strength_key)
        distinct = len(set(values)) == len(values)
        if not values or not distinct or not all(pert.valid(v) for v in values):
            fail(
                pert.strength_key,
                f"must be a non-empty list of distinct {pert.valid_doc}, got {list(values)}",
            )


def check(perturbation: Perturbation, strength: Strength, dtype: torch.dtype) -> None:
    """Fails before a sweep if `strength` cannot be applied in `dtype` (e.g. bit 30 in bf16)."""
    probe = torch.ones(1, dtype=dtype)
    perturbation.apply(probe, probe, strength, torch.Generator().manual_seed(0))


@contextmanager
def edited(
    params: dict[str, torch.nn.Parameter],
    edits: dict[str, tuple[torch.Tensor, object]],
    change: Callable[[torch.Tensor, torch.Tensor, object], torch.Tensor],
) -> Iterator[None]:
    """Sets params[name].view(-1)[flat] = change(original values, whole tensor, extra) for each
    `name: (flat, extra)`; on exit restores the saved originals and proves it bit for bit."""
    saved = []
    try:
        with torch.no_grad():
            for name, (flat, extra) in edits.items():
                tensor = params[name].data
                storage = tensor.view(-1)  # a view: writes land in the parameter
                flat = flat.to(storage.device)
                original = storage[flat].clone()
                saved.append((storage, flat, original))
                storage[flat] = change(original, tensor, extra)
        yield
    finally:
        restore(saved)


def perturbed(
    params: dict[str, torch.nn.Parameter],
    selection: dict[str, torch.Tensor],
    perturbation: Perturbation,
    strength: Strength = None,
    seed: int = 0,
):
    """Applies `perturbation` to params[name].view(-1)[flat] for each entry; restores on exit.

    The random stream depends on `seed` only, so two selections of equal size and layout
    (a top set and its matched control) receive the same ε and the same bit positions.
    """
    gen = torch.Generator().manual_seed(seed)
    return edited(
        params,
        {name: (flat, None) for name, flat in selection.items()},
        lambda values, tensor, _: perturbation.apply(values, tensor, strength, gen),
    )


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
    h = hashlib.sha256()
    for t in tensors:
        h.update(int_view(t.detach()).cpu().contiguous().numpy().tobytes())
    return h.hexdigest()
