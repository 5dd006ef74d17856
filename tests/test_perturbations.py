"""Perturbations: IEEE-754 bit flips against a struct-level reference, and exact restore."""

import math
import struct

import pytest
import torch

from cwa.perturbations import (
    PERTURBATIONS,
    Settings,
    fingerprint,
    flip_bits,
    get_perturbation,
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
    pert = get_perturbation(name)
    settings = Settings(noise_sigma=0.5, flip_bit=14 if dtype != torch.float32 else 30, seed=3)
    with perturbed(params, {target: flat}, pert, settings):
        now = params[target].detach().reshape(-1)
        untouched = torch.ones(now.numel(), dtype=torch.bool)
        untouched[flat] = False
        assert torch.equal(now[untouched], original.reshape(-1)[untouched])
        orig = original.reshape(-1)[flat]
        if name == "zero":
            assert torch.equal(now[flat], torch.zeros_like(orig))
        elif name == "sign_flip":
            assert torch.equal(now[flat], -orig)
        elif name == "bit_flip":
            assert torch.equal(now[flat], flip_bits(orig, settings.flip_bit))
        else:
            assert not torch.equal(now[flat], orig)
    assert fingerprint(list(params.values())) == before
    assert torch.equal(
        params[target].detach().view(torch.int16 if dtype != torch.float32 else torch.int32),
        original.view(torch.int16 if dtype != torch.float32 else torch.int32),
    )


def test_gauss_noise_is_relative_and_seeded():
    v = torch.tensor([1.0, -2.0, 4.0, 0.0])
    p = get_perturbation("gauss_noise")
    a = p.apply(v, Settings(noise_sigma=0.1, seed=0), torch.Generator().manual_seed(0))
    b = p.apply(v, Settings(noise_sigma=0.1, seed=0), torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    eps = torch.randn(4, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(a, v * (1 + 0.1 * eps))
    assert a[3] == 0.0  # relative noise leaves zeros at zero


def test_restore_happens_even_when_the_body_raises():
    from tests.conftest import tiny_llama

    model = tiny_llama()
    params = dict(model.named_parameters())
    before = fingerprint(list(params.values()))
    with (
        pytest.raises(RuntimeError),
        perturbed(
            params,
            {"lm_head.weight": torch.tensor([1, 2])},
            get_perturbation("bit_flip"),
            Settings(flip_bit=30),
        ),
    ):
        raise RuntimeError("evaluation crashed")
    assert fingerprint(list(params.values())) == before
