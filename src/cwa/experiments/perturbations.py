"""Perturbations of selected weights, applied in place and undone bit for bit.

Only the touched coordinates are saved (name, flat index, original value); restore writes them
back and verifies equality of the integer views (NaN-safe), never by inverse arithmetic.
A perturbation with a strength (α, σ, bit, n bits, p) registers the params key that holds its
sweep, with its default, docs and the rule each value obeys: adding one touches this module only
(and params.yaml, where its default is written for users).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from cwa import CwaError
from cwa.config.params import Key, check_choice, fail, register_key
from cwa.config.params import check as params_check
from cwa.core.registry import Registry

# Integer view with the same width as each float storage dtype.
_INT_VIEW = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16}

# IEEE-754 fields as inclusive (low, high) bit positions, bit 0 = mantissa LSB.
FIELDS = {
    torch.float32: {"sign": (31, 31), "exponent": (23, 30), "mantissa": (0, 22)},
    torch.float16: {"sign": (15, 15), "exponent": (10, 14), "mantissa": (0, 9)},
    torch.bfloat16: {"sign": (15, 15), "exponent": (7, 14), "mantissa": (0, 6)},
}
FIELD_NAMES = ("sign", "exponent", "mantissa")
# Fixed positions named by what they are, so one name holds in every dtype (bit 30 is fp32's
# highest exponent bit and does not exist in bf16): the exponent's highest bit, its middle one
# (lowest + ⌊(highest − lowest)/2⌋) and the mantissa's highest bit.
NAMED_BITS = {
    "exponent_top": lambda lo, hi: hi,
    "exponent_middle": lambda lo, hi: lo + (hi - lo) // 2,
    "mantissa_top": lambda lo, hi: lo - 1,  # just below the exponent
}

Strength = float | int | str | None


@dataclass(frozen=True)
class Sweep:
    """A perturbation's strength: the params key holding the values to sweep (the first over
    every k, all at headline_k), its type and default, what it means, the rule each value obeys
    (`valid`, named in refusals by `valid_doc`), a value's setting label, and `kind`:
    `intensity` or `probability`, the old runners' --perturb-scale / --perturb-prob."""

    key: str
    ftype: str
    default: tuple
    doc: str
    label: Callable[[Strength], str]
    valid: Callable[[Strength], bool]
    valid_doc: str
    kind: str = ""
    resolve: Callable[[Strength, torch.dtype], Strength] = lambda strength, dtype: strength


@dataclass(frozen=True)
class Perturbation:
    """apply(values, tensor, strength, generator) -> new values (same dtype) for the selected
    weights; `tensor` is the whole parameter they come from (for grids); `sweep` its strength
    (None: it has none)."""

    name: str
    doc: str
    apply: Callable[[torch.Tensor, torch.Tensor, Strength, torch.Generator], torch.Tensor]
    sweep: Sweep | None = None

    def label(self, strength: Strength) -> str:
        return self.sweep.label(strength) if self.sweep else ""


PERTURBATIONS: Registry[Perturbation] = Registry("perturbation")
get_perturbation = PERTURBATIONS.get


def register(perturbation: Perturbation) -> Perturbation:
    """Registers the perturbation and its strength's params key."""
    if perturbation.sweep:
        s = perturbation.sweep
        register_key(Key(s.key, s.ftype, s.default, s.doc))
    return PERTURBATIONS.register(perturbation)


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


def named_bit(strength: Strength, dtype: torch.dtype) -> Strength:
    """The position a NAMED_BITS name stands for in `dtype`; any other strength as it is."""
    if strength not in NAMED_BITS:
        return strength
    if dtype not in FIELDS:
        raise CwaError(f"bit-level access needs fp32, fp16 or bf16 weights, got {dtype}")
    return NAMED_BITS[strength](*FIELDS[dtype]["exponent"])


def _bit_flip(values, tensor, strength, gen):
    strength = named_bit(strength, values.dtype)
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


def _set_mean(values, tensor, strength, gen):
    """Every selected weight takes the mean of its whole (unperturbed) tensor, summed in fp64 in
    chunks (no fp32 copy of a large embedding), then stored in the weights' dtype."""
    flat = tensor.detach().reshape(-1)
    total = sum(chunk.double().sum() for chunk in flat.split(1 << 24))
    return torch.full_like(values, float(total / flat.numel()))


register(Perturbation("zero", "w → 0", lambda v, t, s, g: torch.zeros_like(v)))
register(
    Perturbation(
        "set_mean",
        "w → mean of its tensor: the gentler ablation of the massive-activation literature, "
        "which keeps a tensor's offset (a norm gain near 1 stays near 1 instead of 0)",
        _set_mean,
    )
)
register(Perturbation("sign_flip", "w → −w", lambda v, t, s, g: -v))
register(
    Perturbation(
        "scale",
        "w → α·w",
        lambda v, t, a, g: (v.float() * float(a)).to(v.dtype),
        Sweep(
            "scale_alpha",
            "tuple[float, ...]",
            (2.0, 0.5, 10.0),
            "`scale` strengths α. In every strength list the first value is swept over all k; "
            "every value is run at `headline_k`",
            lambda a: f"α={a:g}",
            lambda a: math.isfinite(a),
            "finite numbers",
            "intensity",
        ),
    )
)
register(
    Perturbation(
        "gauss_rel",
        "w → w·(1 + σε), ε ~ N(0, 1): noise relative to each weight's own magnitude",
        lambda v, t, s, g: (v.float() * (1 + float(s) * _noise(v, g))).to(v.dtype),
        Sweep(
            "noise_sigma",
            "tuple[float, ...]",
            (1.0, 0.5, 2.0),
            "`gauss_rel` strengths σ (relative: w(1 + σε))",
            lambda s: f"σ={s:g} relative",
            lambda s: s > 0,
            "numbers > 0",
            "intensity",
        ),
    )
)
PERTURBATIONS.alias("gauss_noise", "gauss_rel")
register(
    Perturbation(
        "gauss_abs",
        "w → w + σε, ε ~ N(0, 1): absolute noise, σ in weight units",
        lambda v, t, s, g: (v.float() + float(s) * _noise(v, g)).to(v.dtype),
        Sweep(
            "abs_sigma",
            "tuple[float, ...]",
            (0.05, 0.2),
            "`gauss_abs` strengths σ (absolute: w + σε, weight units)",
            lambda s: f"σ={s:g}",
            lambda s: s > 0,
            "numbers > 0",
            "intensity",
        ),
    )
)
register(
    Perturbation(
        "bit_flip",
        "flip one IEEE-754 bit of w in its storage dtype: a fixed position, or a uniformly "
        "random bit of a field (sign, exponent, mantissa) per weight",
        _bit_flip,
        Sweep(
            "flip_bit",
            "tuple[int | str, ...]",
            ("exponent_top", "exponent_middle"),
            "`bit_flip` strengths: a bit position in the storage dtype (bit 0 = mantissa LSB; "
            "fp32: sign 31, exponent 30–23; fp16: sign 15, exponent 14–10; bf16: sign 15, "
            "exponent 14–7); a position named for every dtype, `exponent_top` (the exponent's "
            "highest bit: fp32 30, fp16 and bf16 14), `exponent_middle` (the exponent's lowest "
            "bit + ⌊(highest − lowest)/2⌋: fp32 26, fp16 12, bf16 10) or `mantissa_top` "
            "(fp32 22, fp16 9, bf16 6), resolved before the sweep and recorded as the number; "
            "or a field `sign`, `exponent`, `mantissa` (one "
            "uniformly random bit of that field per weight). Bit 30 of an fp32 weight with "
            "|w| < 1 multiplies it by 2¹²⁸; a number the dtype lacks fails before the sweep",
            _bit_label,
            lambda b: b in (*FIELD_NAMES, *NAMED_BITS) if isinstance(b, str) else 0 <= b < 32,
            f"bit positions 0..31 (fp32: 31 sign, 30-23 exponent; fp16/bf16: 15 sign), "
            f"{', '.join(NAMED_BITS)} or fields {', '.join(FIELD_NAMES)}",
            resolve=named_bit,
        ),
    )
)
register(
    Perturbation(
        "bit_flip_p",
        "flip each bit of w's storage independently with probability p",
        _bit_flip_p,
        Sweep(
            "flip_prob",
            "tuple[float, ...]",
            (0.01, 0.05),
            "`bit_flip_p` strengths: each bit of each selected weight flips independently with "
            "probability p",
            lambda p: f"p={p:g}",
            lambda q: 0 < q <= 1,
            "probabilities in (0, 1]",
            "probability",
        ),
    )
)
register(
    Perturbation(
        "quantize",
        "round w to the n-bit symmetric absmax grid of its tensor",
        _quantize,
        Sweep(
            "quant_bits",
            "tuple[int, ...]",
            (4, 2),
            "`quantize` strengths: grid bits n (2..16)",
            lambda n: f"{n}-bit",
            lambda n: 2 <= n <= 16,
            "bit widths 2..16",
        ),
    )
)


def sweeps() -> list[Sweep]:
    """Every registered perturbation's strength sweep."""
    return [p.sweep for p in PERTURBATIONS.items() if p.sweep]


# The params keys of every strength sweep: stages that perturb declare them all.
SWEEP_KEYS = tuple(s.key for s in sweeps())


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
    for sweep in sweeps():
        values = getattr(p, sweep.key)
        distinct = len(set(values)) == len(values)
        if not values or not distinct or not all(sweep.valid(v) for v in values):
            fail(
                sweep.key,
                f"must be a non-empty list of distinct {sweep.valid_doc}, got {list(values)}",
            )


def check(perturbation: Perturbation, strength: Strength, dtype: torch.dtype) -> None:
    """Fails before a sweep if `strength` cannot be applied in `dtype` (e.g. bit 30 in bf16)."""
    probe = torch.ones(1, dtype=dtype)
    try:
        perturbation.apply(probe, probe, strength, torch.Generator().manual_seed(0))
    except CwaError as err:
        key = perturbation.sweep.key if perturbation.sweep else "perturb"
        raise CwaError(
            f"params: `{key}` {strength!r} cannot apply with `dtype` "
            f"{str(dtype).removeprefix('torch.')}: {err}"
        ) from err


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


class Snapshot:
    """Named weights as they were, kept on the CPU: written back after each whole-model edit
    (a pruned or fine-tuned model), and the restore proved by checksum at the end."""

    def __init__(self, model: torch.nn.Module, names: list[str]):
        self.weights = dict(model.named_parameters())
        self.saved = {n: self.weights[n].detach().cpu().clone() for n in names}
        self.checksum = fingerprint(list(self.saved.values()))

    def restore(self) -> None:
        with torch.no_grad():
            for name, t in self.saved.items():
                self.weights[name].copy_(t)

    def verify(self) -> None:
        if fingerprint([self.weights[n] for n in self.saved]) != self.checksum:
            raise CwaError("model weights differ from the saved ones after restoring")
