"""The converter's compiled loops against the torch reference math, byte for byte."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from k2trt.checkpoint import kernels
from k2trt.checkpoint.fp8 import quantize


def test_e4m3_rounding_matches_torch_across_the_range() -> None:
    """Every 97th float32 bit pattern from 0 to 448 (normal and subnormal results, ties, the top code) and random
    values down to far below the smallest subnormal, both signs; beyond ±448 the encoder clamps."""
    rng = np.random.default_rng(0)
    x = np.concatenate([np.arange(0, 0x43E00001, 97, dtype=np.int32).view(np.float32),
                        (rng.uniform(-1, 1, 1 << 20) * 2.0 ** rng.integers(-30, 9, 1 << 20)).astype(np.float32),
                        np.float32([2.0 ** -10, 3 * 2.0 ** -11, 2.0 ** -6 - 2.0 ** -11, 464.0, 1e30, 0.0])])
    x = np.concatenate([x, -x])
    want = torch.from_numpy(x).clamp(-448, 448).to(torch.float8_e4m3fn).view(torch.uint8).numpy()
    got = kernels.e4m3_bytes(x)
    assert got[-1] == 0x80 and got[-2] == 0xFE  # -0.0 keeps its sign; -1e30 clamps to -448
    assert np.array_equal(got, want), f"{int((got != want).sum())} of {x.size} differ"


@pytest.mark.parametrize("m,n", [(256, 384), (200, 300), (576, 1024), (128, 7)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_quantize_rows_is_bit_identical_to_the_reference(m: int, n: int, dtype: torch.dtype) -> None:
    """Whole and partial edge blocks, BF16 bits and float32, zero blocks (the 1e-12 floor), in chunks of rows."""
    w = (torch.randn(m, n, generator=torch.Generator().manual_seed(m + n)) * 0.03).to(dtype)
    w[:128, :128] = 0
    w[-1, -1] = 1e-41 if dtype == torch.float32 else 0
    want_q, want_s = quantize(w)
    src = w.view(torch.int16).numpy() if dtype == torch.bfloat16 else w.numpy()
    q, s = np.empty((m, n), np.uint8), np.empty(tuple(want_s.shape), np.float32)
    for r0 in range(0, m, 128):
        kernels.quantize_rows(src[r0:r0 + 128], q[r0:r0 + 128], s[r0 // 128:])
    assert np.array_equal(s, want_s.numpy())
    assert np.array_equal(q, want_q.view(torch.uint8).numpy())


def test_non_finite_values_make_their_block_scale_non_finite() -> None:
    """The converter refuses a weight by its scale grid: NaN or Inf anywhere in a block must show there."""
    w = torch.zeros(256, 256, dtype=torch.bfloat16)
    w[3, 200] = float("nan")
    w[130, 5] = float("inf")
    q, s = np.empty((256, 256), np.uint8), np.empty((2, 2), np.float32)
    kernels.quantize_rows(w.view(torch.int16).numpy(), q, s)
    assert np.isnan(s[0, 1]) and np.isinf(s[1, 0]) and np.isfinite(s[0, 0]) and np.isfinite(s[1, 1])


def test_wrong_dtypes_are_refused() -> None:
    q, s = np.empty((2, 2), np.uint8), np.empty((1, 1), np.float32)
    with pytest.raises(TypeError, match="BF16 bits or float32"):
        kernels.quantize_rows(np.zeros((2, 2), np.float64), q, s)
    with pytest.raises(TypeError, match="float32 or BF16 bits"):
        kernels.dequantize_rows(q, s, 0, np.zeros(256, np.float32), np.zeros((2, 2), np.float64))


def test_grouped_quantisation_equals_quantising_the_decoded_int4_weight() -> None:
    """INT4 → block FP8 without a float32 copy: the fused product gives the bytes of decode-then-quantise, on a
    ragged shape (partial blocks) and with compressed-tensors' own unpacking."""
    from k2trt.checkpoint.quant4 import ct_int4_codes, dequantize_ct_int4, quantize_ct_int4

    w = torch.randn(300, 416, generator=torch.Generator().manual_seed(3)) * 0.02
    packed, gscale, _ = quantize_ct_int4(w)
    want_q, want_s = quantize(dequantize_ct_int4(packed, gscale))
    codes, gs = ct_int4_codes(packed, gscale)
    q, s = np.empty((300, 416), np.uint8), np.empty(tuple(want_s.shape), np.float32)
    for r0 in range(0, 300, 128):
        kernels.quantize_grouped_rows(codes[r0:r0 + 128].numpy(), gs[r0:r0 + 128].numpy(), q[r0:r0 + 128],
                                      s[r0 // 128:])
    assert np.array_equal(s, want_s.numpy()) and np.array_equal(q, want_q.view(torch.uint8).numpy())
    with pytest.raises(ValueError, match="must divide 128"):
        kernels.quantize_grouped_rows(codes[:4, :96].numpy(), gs[:4, :2].numpy(), q[:4, :96], s[:1])
