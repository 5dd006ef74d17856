"""Tolerances for float32 scores computed along two paths (one pass or several, 1 or 2
processes, CPU or GPU, hooks or torch.func): how far apart rounding alone can put them.

A float32 sum of n terms is off by up to ~n · eps32 · Σ|terms| (eps32 = 1.19e-7). Score tensors
hold a few large entries and many near-zero ones, and a near-zero entry is a cancelling sum of
terms about as large as the tensor's largest scores: its rounding error is absolute, on the scale
of max|score|, not a fraction of the entry itself. Hence a relative tolerance for the large
entries plus an absolute floor that is a fraction of the reference's largest magnitude.
"""

import torch

EPS32 = torch.finfo(torch.float32).eps  # 1.19e-7

# ~84 eps32 of the largest score: the n · eps32 bound for sums of ~100 terms as large as it (the
# tiny test models' batches, tokens and hidden sizes); observed differences are <= 7e-7 of it. A
# wrong factor, sign or a dropped window moves the largest scores by >= 10%, 1,000x rtol.
FLOOR32 = 1e-5
RTOL32 = 1e-4


def assert_close_scaled(
    actual: torch.Tensor,
    expected: torch.Tensor,
    rtol: float = RTOL32,
    floor: float = FLOOR32,
    name: str = "",
    atol_min: float = 0.0,
) -> None:
    """|actual − expected| <= rtol · |expected| + max(floor · max|expected|, atol_min), entrywise.

    An all-zero reference (scores a metric defines as 0) must be matched exactly.
    """
    scale = float(expected.abs().max()) if expected.numel() else 0.0
    atol = max(floor * scale, atol_min)
    torch.testing.assert_close(
        actual, expected, rtol=rtol, atol=atol, msg=lambda m: f"{name}: {m}" if name else m
    )
