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


LOOPS = [pytest.param(True, id="shuffled", marks=pytest.mark.skipif(not kernels.SHUFFLE, reason="x86 SSSE3 only")),
         pytest.param(False, id="table")]
"""Both INT4 → FP8 loops: byte shuffle (x86) and the 256-entry table loop (everywhere)."""


@pytest.mark.parametrize("shuffle", LOOPS)
@pytest.mark.parametrize("fmt", ["ct-int4", "w4a8"])
def test_packed_int4_quantisation_equals_quantising_the_decoded_weight(fmt: str, shuffle: bool,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """INT4 → block FP8 from the packed bytes: the bytes of decode-then-quantise, where decode is
    compressed-tensors' own unpacking (offset-binary nibbles) or W4A8's (two's complement). Random bytes put every
    nibble value in both positions; the shape is ragged (a partial row block and a partial column block)."""
    from k2trt.checkpoint.quant4 import dequantize_ct_int4, dequantize_w4a8

    monkeypatch.setattr(kernels, "SHUFFLE", shuffle)

    m, n, group = (300, 416, 32) if fmt == "ct-int4" else (300, 384, 128)
    rng = np.random.default_rng(5)
    packed = rng.integers(0, 256, (m, n // 2), dtype=np.uint8)
    gscale = (rng.uniform(1e-4, 1e-2, (m, n // group)) * rng.choice([1, 0], (m, n // group), p=[0.9, 0.1]))
    if fmt == "ct-int4":  # BF16 scales, int32 words read little-endian
        gs = torch.from_numpy(gscale.astype(np.float32)).to(torch.bfloat16)
        ref = dequantize_ct_int4(torch.from_numpy(packed.view(np.int32).copy()), gs)
        gs = gs.float().numpy()
    else:
        gs = gscale.astype(np.float32)
        ref = dequantize_w4a8(torch.from_numpy(packed.view(np.int8).copy()), torch.from_numpy(gs))
    want_q, want_s = quantize(ref)
    q, s = np.empty((m, n), np.uint8), np.empty(tuple(want_s.shape), np.float32)
    for r0 in range(0, m, 128):
        kernels.quantize_packed_rows(packed[r0:r0 + 128], gs[r0:r0 + 128], fmt == "w4a8", q[r0:r0 + 128],
                                     s[r0 // 128:])
    assert np.array_equal(s, want_s.numpy()) and np.array_equal(q, want_q.view(torch.uint8).numpy())


@pytest.mark.skipif(not kernels.SHUFFLE, reason="the byte-shuffle loop runs on x86 (SSSE3) only")
@pytest.mark.parametrize("group,signed", [(32, False), (64, True), (128, False)])
def test_shuffled_int4_loop_equals_the_table_loop_on_every_scale(group: int, signed: bool) -> None:
    """The shuffled loop takes each group's amax from its largest |code|; that shortcut must not change a bit
    where it does not hold either: Inf and NaN group scales (Inf × a zero code is NaN), negative and zero scales,
    a group of zero codes. The table loop is the oracle (the test above ties it to the reference)."""
    rng = np.random.default_rng(7)
    m, n = 256, 640
    packed = rng.integers(0, 256, (m, n // 2), dtype=np.uint8)
    gs = rng.uniform(-1e-2, 1e-2, (m, n // group)).astype(np.float32)
    zero, one = (0x00, 0x11) if signed else (0x88, 0x99)
    per_block = 128 // group                     # groups per block column
    for row, g, value in [(3, 0, np.inf), (4, 0, -np.inf), (130, 0, np.nan), (5, 1, 0.0), (6, 1, -0.0),
                          (200, 0, np.inf), (60, 2 * per_block, -np.inf)]:
        gs[row, g] = value
    packed[3, 0:3] = zero                        # an Inf group with some zero codes (NaN) and the rest (Inf)
    packed[200, 0:group // 2] = zero             # an Inf group of zero codes only (NaN)
    packed[60, group * per_block:group * per_block + group // 2] = one  # no zero code: an Inf scale
    packed[7, group // 2:group] = zero           # a finite group of zero codes only
    out = []
    for loop in (kernels._quantize_packed_shuffled, kernels._quantize_packed):
        q, s = np.zeros((m, n), np.uint8), np.zeros((2, 5), np.float32)
        tables = kernels._code_tables(signed) if loop is kernels._quantize_packed_shuffled \
            else (kernels._code_pairs(signed),)
        loop(packed, gs, *tables, q, s)
        out.append((q, s.view(np.int32)))
    assert np.isnan(out[1][1].view(np.float32)).any() and np.isinf(out[1][1].view(np.float32)).any()
    assert np.array_equal(out[0][1], out[1][1]) and np.array_equal(out[0][0], out[1][0])


def test_packed_quantisation_refuses_groups_that_straddle_blocks() -> None:
    q, s = np.empty((4, 96), np.uint8), np.empty((1, 1), np.float32)
    with pytest.raises(ValueError, match="groups dividing 128"):
        kernels.quantize_packed_rows(np.zeros((4, 48), np.uint8), np.ones((4, 2), np.float32), False, q, s)


@pytest.mark.parametrize("q_shape,s_shape", [((4, 64), (1, 1)), ((3, 96), (1, 1)), ((4, 96), (1, 2)),
                                             ((4, 96), (0, 1))])
def test_packed_quantisation_refuses_outputs_of_another_shape(q_shape: tuple[int, int],
                                                              s_shape: tuple[int, int]) -> None:
    """The loops write through raw row addresses: an output of the wrong shape is refused before any write."""
    q, s = np.zeros(q_shape, np.uint8), np.zeros(s_shape, np.float32)
    with pytest.raises(ValueError, match="need uint8"):
        kernels.quantize_packed_rows(np.zeros((4, 48), np.uint8), np.ones((4, 3), np.float32), False, q, s)
    assert not q.any()
