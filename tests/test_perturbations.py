"""Perturbations: IEEE-754 bit flips against a struct-level reference, and exact restore."""

import math
import struct

import pytest
import torch

from cwa import CwaError
from cwa.experiments.perturbations import (
    PERTURBATIONS,
    check,
    field_bits,
    fingerprint,
    flip_bits,
    get_perturbation,
    int_view,
    named_bit,
    perturbed,
)

VALUES = [0.0, -0.0, 1.0, -1.5, 0.033203125, 3.0, 1e-3, -250.0, 65504.0, 2.0**-20]


def ref_fp32(x: float, bit: int) -> float:
    (i,) = struct.unpack("<I", struct.pack("<f", x))
    return struct.unpack("<f", struct.pack("<I", i ^ (1 << bit)))[0]


def ref_fp16(x: float, bit: int) -> float:
    (i,) = struct.unpack("<H", struct.pack("<e", x))
    return struct.unpack("<e", struct.pack("<H", i ^ (1 << bit)))[0]


def ref_bf16(x: float, bit: int) -> float:
    # bf16 is the upper half of an fp32: flip bit `bit` of the half, i.e. bit + 16 of the fp32.
    (i,) = struct.unpack("<I", struct.pack("<f", x))
    assert i & 0xFFFF == 0, "test values must be exact in bf16"
    return struct.unpack("<f", struct.pack("<I", i ^ (1 << (bit + 16))))[0]


def same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or struct.pack("<d", a) == struct.pack("<d", b)


@pytest.mark.parametrize(
    ("dtype", "width", "ref"),
    [(torch.float32, 32, ref_fp32), (torch.float16, 16, ref_fp16), (torch.bfloat16, 16, ref_bf16)],
)
def test_flip_bits_matches_struct_reference_for_every_bit(dtype, width, ref):
    values = [v for v in VALUES if float(torch.tensor(v, dtype=dtype)) == v]
    t = torch.tensor(values, dtype=dtype)
    for bit in range(width):
        flipped = flip_bits(t, bit).float().tolist()
        for x, got in zip(values, flipped, strict=True):
            assert same(got, ref(x, bit)), (dtype, bit, x, got, ref(x, bit))


def test_top_exponent_bit_semantics_in_fp32():
    t = torch.tensor([0.5, 1.5, 3.0])
    out = flip_bits(t, 30).tolist()
    assert out[0] == 2.0**127  # |w| < 1: exponent bit 7 is 0, the flip multiplies by 2^128
    assert math.isinf(out[1]) or math.isnan(out[1])  # 1 <= |w| < 2: exponent becomes all ones
    assert out[2] == 2.0**-127  # |w| >= 2: the bit is set, the flip divides (here to a subnormal)
    assert flip_bits(t, 31).tolist() == [-0.5, -1.5, -3.0]  # sign bit, int32 overflow handled


def test_sign_bit_in_16_bit_dtypes():
    for dtype in (torch.float16, torch.bfloat16):
        assert flip_bits(torch.tensor([2.0, -0.5], dtype=dtype), 15).float().tolist() == [-2.0, 0.5]


# A strength per perturbation for the generic tests; bit positions per storage width.
STRENGTHS = {
    "zero": None,
    "sign_flip": None,
    "set_mean": None,
    "scale": 3.0,
    "gauss_rel": 0.5,
    "gauss_noise": 0.5,
    "gauss_abs": 0.1,
    "bit_flip": "exponent",
    "bit_flip_p": 0.5,
    "quantize": 2,
}


def quantize_ref(values: list[float], absmax: float, bits: int) -> list[float]:
    """Round-to-nearest on the symmetric grid written out by hand (halves to even, as torch)."""
    levels = 2 ** (bits - 1) - 1
    step = absmax / levels
    return [max(-levels, min(levels, round(v / step))) * step for v in values]


# IEEE-754 field positions (bit 0 = mantissa LSB), written from the formats' definitions
EXPONENT = {torch.float32: (23, 30), torch.float16: (10, 14), torch.bfloat16: (7, 14)}


def ints(t: torch.Tensor) -> torch.Tensor:
    """The raw bits as int64 (the storage's signed view, masked to its width)."""
    width = 32 if t.dtype == torch.float32 else 16
    view = t.view(torch.int32 if width == 32 else torch.int16).long()
    return view & ((1 << width) - 1)


def random_change(name: str, strength, orig: torch.Tensor, seed: int) -> torch.Tensor:
    """What a random perturbation does with the generator seeded `seed`: gauss_* the new values
    (ε drawn in fp32, the arithmetic in fp32, stored in the dtype); bit flips the XOR of the
    bits, as int64: one uniform bit of the exponent field per weight, or every bit of the width
    with probability p."""
    gen = torch.Generator().manual_seed(seed)
    n, dtype = orig.numel(), orig.dtype
    if name in ("gauss_rel", "gauss_noise"):
        return (orig.float() * (1 + strength * torch.randn(n, generator=gen))).to(dtype)
    if name == "gauss_abs":
        return (orig.float() + strength * torch.randn(n, generator=gen)).to(dtype)
    if name == "bit_flip":
        lo, hi = EXPONENT[dtype]
        return torch.tensor([1 << int(b) for b in torch.randint(lo, hi + 1, (n,), generator=gen)])
    assert name == "bit_flip_p", f"a new perturbation: write what {name} does here"
    width = 32 if dtype == torch.float32 else 16
    hits = torch.rand((n, width), generator=gen) < strength
    return torch.tensor([sum(1 << j for j in range(width) if row[j]) for row in hits.tolist()])


@pytest.mark.parametrize("name", PERTURBATIONS.names())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_every_perturbation_changes_only_the_selection_and_restores_bit_for_bit(name, dtype):
    from tests.conftest import tiny_llama

    model = tiny_llama().to(dtype)
    params = dict(model.named_parameters())
    target = "model.layers.1.mlp.down_proj.weight"
    flat = torch.tensor([0, 5, 17, 63])
    before = fingerprint(list(params.values()))
    original = params[target].detach().clone()
    pert, strength = get_perturbation(name), STRENGTHS[name]
    with perturbed(params, {target: flat}, pert, strength, seed=3):
        now = params[target].detach().reshape(-1)
        untouched = torch.ones(now.numel(), dtype=torch.bool)
        untouched[flat] = False
        assert torch.equal(now[untouched], original.reshape(-1)[untouched])
        orig = original.reshape(-1)[flat]
        expected = {
            "zero": torch.zeros_like(orig),
            # the tensor's mean in float64, stored in its dtype (its own sum: independent)
            "set_mean": torch.full_like(orig, float(original.double().mean())),
            "sign_flip": -orig,
            "scale": (orig.float() * 3.0).to(dtype),
            "quantize": torch.tensor(
                quantize_ref(orig.float().tolist(), float(original.abs().max()), 2)
            ).to(dtype),
        }
        if name in expected:
            assert torch.equal(now[flat], expected[name]), (now[flat], expected[name])
        else:  # random: the same draws from the seeded generator, written out
            drawn = random_change(name, strength, orig, seed=3)
            flipped = ints(now[flat]) ^ ints(orig)
            if name.startswith("gauss"):
                assert torch.equal(now[flat], drawn)
            else:
                assert torch.equal(flipped, drawn) and (flipped != 0).all()
    assert fingerprint(list(params.values())) == before
    assert torch.equal(
        params[target].detach().view(torch.int16 if dtype != torch.float32 else torch.int32),
        original.view(torch.int16 if dtype != torch.float32 else torch.int32),
    )


def test_gauss_noise_relative_and_absolute_are_seeded_and_named():
    v = torch.tensor([1.0, -2.0, 4.0, 0.0])
    eps = torch.randn(4, generator=torch.Generator().manual_seed(0))
    rel, ab = get_perturbation("gauss_noise"), get_perturbation("gauss_abs")
    assert rel.name == "gauss_rel"  # gauss_noise is the old name of relative noise
    a = rel.apply(v, v, 0.1, torch.Generator().manual_seed(0))
    assert torch.equal(a, rel.apply(v, v, 0.1, torch.Generator().manual_seed(0)))
    # exact: the same float32 operations on the same draws, in the same order
    assert torch.equal(a, v * (1 + 0.1 * eps))
    assert a[3] == 0.0  # relative noise leaves zeros at zero
    b = ab.apply(v, v, 0.1, torch.Generator().manual_seed(0))
    assert torch.equal(b, v + 0.1 * eps) and b[3] != 0.0


@pytest.mark.parametrize(
    ("dtype", "ref", "fields"),
    [
        (
            torch.float32,
            ref_fp32,
            {"sign": {31}, "exponent": set(range(23, 31)), "mantissa": set(range(23))},
        ),
        (
            torch.float16,
            ref_fp16,
            {"sign": {15}, "exponent": set(range(10, 15)), "mantissa": set(range(10))},
        ),
        (
            torch.bfloat16,
            ref_bf16,
            {"sign": {15}, "exponent": set(range(7, 15)), "mantissa": set(range(7))},
        ),
    ],
)
def test_bit_flip_of_a_field_draws_one_bit_of_that_field_per_weight(dtype, ref, fields):
    values = [v for v in VALUES if float(torch.tensor(v, dtype=dtype)) == v] * 40
    t = torch.tensor(values, dtype=dtype)
    for field, allowed in fields.items():
        out = get_perturbation("bit_flip").apply(t, t, field, torch.Generator().manual_seed(7))
        bits = field_bits(dtype, field, len(values), torch.Generator().manual_seed(7)).tolist()
        assert set(bits) == allowed  # 400 draws cover every bit of the field
        for x, b, got in zip(values, bits, out.float().tolist(), strict=True):
            assert same(got, ref(x, b)), (dtype, field, x, b)


def test_bit_flip_p_flips_each_bit_with_probability_p():
    t = torch.full((20_000,), 0.15625)
    flip = get_perturbation("bit_flip_p").apply
    everything = flip(t[:3], t, 1.0, torch.Generator().manual_seed(0))
    (i,) = struct.unpack("<I", struct.pack("<f", 0.15625))
    assert everything.tolist() == [struct.unpack("<f", struct.pack("<I", i ^ 0xFFFFFFFF))[0]] * 3
    out = flip(t, t, 0.1, torch.Generator().manual_seed(0))
    changed = (int_view(out) ^ int_view(t)).numpy().view("uint32")
    ones = sum(bin(int(c)).count("1") for c in changed)
    assert abs(ones / (20_000 * 32) - 0.1) < 0.003  # binomial sd 0.0004
    assert torch.equal(int_view(out), int_view(flip(t, t, 0.1, torch.Generator().manual_seed(0))))


def test_set_mean_uses_the_mean_of_the_whole_tensor():
    tensor = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 9.0]])  # mean 4, row means 2 and 6
    out = get_perturbation("set_mean").apply(tensor.view(-1)[[0, 5]], tensor, None, None)
    assert out.tolist() == [4.0, 4.0]
    gains = torch.full((8,), 1.0, dtype=torch.bfloat16)  # a norm gain: stays 1, not 0
    assert get_perturbation("set_mean").apply(gains[:2], gains, None, None).tolist() == [1, 1]


def test_quantize_puts_weights_on_the_tensor_grid():
    tensor = torch.tensor([0.95, -0.35, 0.02, 1.4, -1.4])
    q = get_perturbation("quantize").apply(tensor[:4], tensor, 4, torch.Generator())
    step = 1.4 / 7
    # float32 grid points k · step (|k| <= 7, step = fl32(1.4) / 7): a rounding or two each,
    # <= 2 ulp(1.4) = 2.4e-7 from the decimal value; a neighbouring level is 0.2 away
    assert torch.allclose(q, torch.tensor([1.0, -0.4, 0.0, 1.4]), rtol=0, atol=1e-6)
    # q / step recovers k to a few float32 roundings at magnitude 7 (ulp 4.8e-7)
    assert torch.allclose(q / step, torch.round(q / step), rtol=0, atol=1e-5)
    # the float64 reference rounded to float32: <= 2 ulp(1.4) apart
    ref = torch.tensor(quantize_ref(tensor[:4].tolist(), 1.4, 4))
    assert torch.allclose(q, ref, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("dtype", "ref", "mantissa_bits", "exponent_bits"),
    [
        (torch.float32, ref_fp32, 23, 8),
        (torch.float16, ref_fp16, 10, 5),
        (torch.bfloat16, ref_bf16, 7, 8),
    ],
)
def test_named_bits_are_the_positions_their_names_say_in_every_dtype(
    dtype, ref, mantissa_bits, exponent_bits
):
    """From the IEEE-754 widths: exponent bits m..m+e-1 above m mantissa bits."""
    want = {
        "exponent_top": mantissa_bits + exponent_bits - 1,
        "exponent_middle": mantissa_bits + (exponent_bits - 1) // 2,
        "mantissa_top": mantissa_bits - 1,
    }
    values = [v for v in VALUES if float(torch.tensor(v, dtype=dtype)) == v]
    t = torch.tensor(values, dtype=dtype)
    for name, bit in want.items():
        assert named_bit(name, dtype) == bit
        out = get_perturbation("bit_flip").apply(t, t, name, torch.Generator().manual_seed(0))
        for x, got in zip(values, out.float().tolist(), strict=True):
            assert same(got, ref(x, bit)), (dtype, name, x)
        check(get_perturbation("bit_flip"), name, dtype)  # every name applies in every dtype
    assert named_bit(3, dtype) == 3 and named_bit("exponent", dtype) == "exponent"


def test_the_sweep_records_a_named_bit_as_its_number_in_the_run_dtype():
    from cwa.config.params import Params
    from cwa.experiments.sweep import SweepConfig

    assert SweepConfig.of(Params(model="gpt2")).strengths["flip_bit"] == (30, 26)  # fp32
    bits = {"flip_bit": ("exponent_top", 14, "sign", 3)}
    bf16 = Params(model="gpt2", dtype="bfloat16", registered=bits)
    assert SweepConfig.of(bf16).strengths["flip_bit"] == (14, "sign", 3)  # 14 twice: runs once


def test_impossible_strengths_fail_before_a_sweep():
    with pytest.raises(CwaError, match="outside the 16-bit"):
        check(get_perturbation("bit_flip"), 30, torch.bfloat16)
    check(get_perturbation("bit_flip"), 14, torch.bfloat16)


def test_a_top_set_and_its_matched_control_get_the_same_random_numbers():
    """Same seed and layout => same ε and same bit positions, only the weights differ; another
    seed draws others (so the equality is not that of two untouched sets)."""
    from tests.conftest import tiny_llama

    model = tiny_llama()
    params = dict(model.named_parameters())
    up, q = "model.layers.0.mlp.up_proj.weight", "model.layers.1.self_attn.q_proj.weight"
    top = {up: torch.tensor([1, 7, 30]), q: torch.tensor([3, 5])}
    control = {up: torch.tensor([2, 9, 41]), q: torch.tensor([4, 8])}

    def noise(selection, pert, strength, seed):
        """What the perturbation did to each selected weight: the factor 1 + σε (gauss_rel) or
        the flipped bits (bit_flip), read against copies taken before it ran."""

        def values():
            flat = [params[n].detach().reshape(-1)[i].clone() for n, i in selection.items()]
            return torch.cat(flat)

        before = values()
        with perturbed(params, selection, get_perturbation(pert), strength, seed=seed):
            after = values()
        assert torch.equal(values(), before)
        if pert == "gauss_rel":
            return after.double() / before.double()
        return int_view(before) ^ int_view(after)

    for pert, strength in (("gauss_rel", 0.3), ("bit_flip", "mantissa")):
        mine, theirs, reseeded = (
            noise(top, pert, strength, 11),
            noise(control, pert, strength, 11),
            noise(top, pert, strength, 12),
        )
        if pert == "gauss_rel":
            # identical 1 + σε: y / x recovers it to 2 float32 roundings (2.4e-7 relative) for
            # any x; rtol 1e-5, while different ε differ by O(σ)
            assert torch.allclose(mine, theirs, rtol=1e-5, atol=0)
            assert (mine - 1).abs().min() > 1e-4  # every weight was moved
            assert (mine - reseeded).abs().min() > 1e-4
        else:
            assert torch.equal(mine, theirs)
            assert (mine.bitwise_and(mine - 1) == 0).all() and (mine != 0).all()  # one bit each
            assert (mine >= 1).all() and (mine < 2**23).all()  # in the float32 mantissa
            assert not torch.equal(mine, reseeded)


def test_restore_happens_even_when_the_body_raises():
    from tests.conftest import tiny_llama

    model = tiny_llama()
    params = dict(model.named_parameters())
    before = fingerprint(list(params.values()))
    with (
        pytest.raises(RuntimeError),
        perturbed(
            params, {"lm_head.weight": torch.tensor([1, 2])}, get_perturbation("bit_flip"), 30
        ),
    ):
        raise RuntimeError("evaluation crashed")
    assert fingerprint(list(params.values())) == before
