"""The 4-bit encoders' compiled loops (``kernels4``) against the torch reference math in ``quant4``, byte for byte.

``quant4.quantize_nvfp4`` / ``quantize_w4a8`` are themselves tied to modelopt's own functions by
tests/unit/test_requant.py, so equality here carries that chain to the converter's loops. Every source kind is
checked: float32 rows, BF16 bits, and block-FP8 bytes with their scale grid (against decode-then-quantise).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from k2trt.checkpoint import kernels4 as K
from k2trt.checkpoint.fp8 import dequantize, e4m3_values, quantize
from k2trt.checkpoint.quant4 import nvfp4_scale_2, quantize_nvfp4, quantize_w4a8


def _nvfp4(src: np.ndarray, s2: float, chunk: int | None = None, grid: np.ndarray | None = None
           ) -> tuple[np.ndarray, np.ndarray, bool]:
    m, n = src.shape
    q, s = np.full((m, n // 2), 0xAA, np.uint8), np.full((m, n // 16), 0xAA, np.uint8)
    ok = True
    for r0 in range(0, m, chunk or max(1, m)):
        r1 = min(m, r0 + (chunk or m))
        ok = K.nvfp4_rows(src[r0:r1], s2, q[r0:r1], s[r0:r1], grid, r0) and ok
    return q, s, ok


def _w4a8(src: np.ndarray, chunk: int | None = None, grid: np.ndarray | None = None
          ) -> tuple[np.ndarray, np.ndarray, bool]:
    m, n = src.shape
    q, s = np.full((m, n // 2), 0x55, np.int8), np.full((m, n // 128), np.nan, np.float32)
    ok = True
    for r0 in range(0, m, chunk or max(1, m)):
        r1 = min(m, r0 + (chunk or m))
        ok = K.w4a8_rows(src[r0:r1], q[r0:r1], s[r0:r1], grid, r0) and ok
    return q, s, ok


def _assert_nvfp4(w: torch.Tensor, got: tuple[np.ndarray, np.ndarray, bool], s2: torch.Tensor) -> None:
    want_q, want_s, _ = quantize_nvfp4(w, s2)
    q, s, ok = got
    assert ok
    assert np.array_equal(s, want_s.view(torch.uint8).numpy()), f"{int((s != want_s.view(torch.uint8).numpy()).sum())}"
    assert np.array_equal(q, want_q.numpy()), f"{int((q != want_q.numpy()).sum())} of {q.size} bytes differ"


def _assert_w4a8(w: torch.Tensor, got: tuple[np.ndarray, np.ndarray, bool]) -> None:
    want_q, want_s = quantize_w4a8(w)
    q, s, ok = got
    assert ok
    assert np.array_equal(s.view(np.int32), want_s.numpy().view(np.int32))
    assert np.array_equal(q, want_q.numpy()), f"{int((q != want_q.numpy()).sum())} of {q.size} bytes differ"


def _weights(m: int, n: int, seed: int) -> torch.Tensor:
    """Gaussian weights with all-zero groups, an all-zero row and a signed zero."""
    w = torch.randn(m, n, generator=torch.Generator().manual_seed(seed)) / 45
    w[0, :128] = 0
    w[-1] = 0
    w[1, 3] = -0.0
    return w


@pytest.mark.parametrize("m,n", [(256, 256), (130, 384), (2, 128), (64, 1152)])
def test_float32_and_bf16_rows_equal_the_torch_encoders(m: int, n: int) -> None:
    """Row chunks of any size give the bytes of the whole-weight reference, from float32 and from BF16 bits."""
    w = _weights(m, n, m * n)
    s2 = nvfp4_scale_2(w)
    _assert_nvfp4(w, _nvfp4(w.numpy(), float(s2), chunk=37), s2)
    _assert_w4a8(w, _w4a8(w.numpy(), chunk=38))
    b = w.to(torch.bfloat16)
    bits = b.view(torch.int16).numpy()
    s2b = nvfp4_scale_2(b.float())
    _assert_nvfp4(b.float(), _nvfp4(bits, float(s2b), chunk=64), s2b)
    _assert_w4a8(b.float(), _w4a8(bits.view(np.uint16), chunk=50))


@pytest.mark.parametrize("m,n", [(256, 384), (200, 272), (576, 1024), (2, 128)])
def test_fp8_rows_equal_decoding_then_encoding(m: int, n: int) -> None:
    """FP8 bytes + block scales (partial edge blocks, chunks starting mid-block) give the bytes of
    ``fp8.dequantize`` followed by the torch encoder, without a float32 copy of the weight."""
    q8, grid = quantize(_weights(m, n, m + n))
    u8, g = q8.view(torch.uint8).numpy(), grid.numpy()
    w = dequantize(q8, grid)
    s2 = nvfp4_scale_2(w)
    _assert_nvfp4(w, _nvfp4(u8, float(s2), chunk=100, grid=g), s2)
    if n % 128 == 0:  # W4A8 groups are 128 inputs
        _assert_w4a8(w, _w4a8(u8, chunk=70, grid=g))
    ss = np.empty(m)
    assert K.row_stats(u8, ss, g) == float(w.abs().max()) == K.amax(u8, g)
    np.testing.assert_allclose(np.sqrt(ss), torch.linalg.vector_norm(w.double(), dim=1).numpy(), rtol=1e-6)


def test_nvfp4_codes_at_the_e2m1_bounds_and_ties() -> None:
    """With weight_scale_2 = 2^-8 and a group amax of 6 the divisor is exactly 1: every bound (ties round to the
    even code: 0.25 → 0, 0.75 → 2, 1.25 → 2, 1.75 → 4, 2.5 → 4, 3.5 → 6, 5 → 6), its float32 neighbours, and
    both signs; -0.0 keeps sign bit 0, a tiny negative value gets the negative-zero code 8."""
    bounds = np.float32([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0])
    near = np.concatenate([bounds, np.nextafter(bounds, np.float32(0)), np.nextafter(bounds, np.float32(9))])
    vals = np.concatenate([near, -near, np.float32([0.5, 1, 1.5, 2, 3, 4, -0.0, -1e-30, 1e-30])])
    w = np.zeros((vals.size, 16), np.float32)  # one value per row, beside the group amax
    w[:, 0], w[:, 1] = 6.0, vals
    s2 = torch.tensor(2.0 ** -8)
    q, s, ok = _nvfp4(w, float(s2))
    _assert_nvfp4(torch.from_numpy(w), (q, s, ok), s2)
    assert (s == 0x78).all()  # e4m3 256.0: the divisor 256 · 2^-8 is 1
    assert (q[:, 0] & 0xF == 7).all()  # 6.0, the group amax → the largest code
    code = q[:, 0] >> 4
    assert code[:7].tolist() == [0, 2, 2, 4, 4, 6, 6] and code[21:28].tolist() == [8, 10, 10, 12, 12, 14, 14]
    assert code[-3:].tolist() == [0, 8, 0]


def test_w4a8_rounds_half_to_even_and_clamps() -> None:
    """A group amax of 7 gives the scale 1: halves round to the even integer, ±7.5 clamps to 7 / -8."""
    halves = np.float32([0.5, 1.5, 2.5, 3.5, 4.5, 5.5, 6.5, -0.5, -1.5, -2.5, -6.5, -7.0, -0.0, 1e-30])
    w = np.zeros((2, 128), np.float32)
    w[:, 0] = 7.0
    w[0, 1:1 + halves.size] = halves
    w[1, :3] = [7.027, -7.027, 3.5]  # amax/7 rounds down to the bfloat16 1.0: quotients above 7 stay 7 / -7
    q, s, ok = _w4a8(w)
    _assert_w4a8(torch.from_numpy(w), (q, s, ok))
    assert s[1, 0] == 1.0
    nib = np.stack([(q.view(np.uint8) & 0xF), (q.view(np.uint8) >> 4)], -1).reshape(2, 128).astype(np.int8)
    codes = np.where(nib > 7, nib - 16, nib)
    assert codes[0, 1:1 + halves.size].tolist() == [0, 2, 2, 4, 4, 6, 6, 0, -2, -2, -6, -7, 0, 0]
    assert codes[1, :3].tolist() == [7, -7, 4]


def test_any_finite_float32_gives_the_reference_bytes() -> None:
    """Random finite bit patterns over the whole float32 range (subnormals, huge values, mixed magnitudes in a
    group), with a per-tensor scale from the data and from far outside it."""
    rng = np.random.default_rng(7)
    bits = rng.integers(0, 0x7F800000, (64, 256), dtype=np.int64).astype(np.int32)
    bits |= rng.integers(0, 2, bits.shape, dtype=np.int32) << 31
    x = bits.view(np.float32)
    x[8:16] = (rng.standard_normal((8, 256)) * 2.0 ** rng.integers(-140, 120, (8, 1))).astype(np.float32)
    w = torch.from_numpy(x.copy())
    for s2 in (nvfp4_scale_2(w), torch.tensor(1.0), torch.tensor(2.0 ** -140), torch.tensor(3e35)):
        _assert_nvfp4(w, _nvfp4(x, float(s2), chunk=9), s2)
    _assert_w4a8(w, _w4a8(x, chunk=10))


def test_degenerate_scales_follow_the_reference() -> None:
    """An all-zero tensor (weight_scale_2 = 0: NaN block scales, codes 0) and a W4A8 group whose scale rounds to 0
    in bfloat16 (codes from ±Inf and NaN quotients) give what torch gives."""
    z = np.zeros((4, 32), np.float32)
    s2 = nvfp4_scale_2(torch.from_numpy(z))
    q, s, ok = _nvfp4(z, float(s2))
    _assert_nvfp4(torch.from_numpy(z), (q, s, ok), s2)
    assert (s & 0x7F == 0x7F).all() and (q == 0).all()  # e4m3 NaN (0/0 keeps the sign x86 gives it)
    t = np.zeros((2, 128), np.float32)
    t[0, :3] = [1e-44, -1e-45, 0.0]
    q4, s4, ok = _w4a8(t)
    _assert_w4a8(torch.from_numpy(t), (q4, s4, ok))
    assert s4[0, 0] == 0 and q4.view(np.uint8)[0, 0] == (7 | (8 << 4))



def _element_loops(u8: np.ndarray, grid: np.ndarray, s2: float, r0: int = 0
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """NVFP4 and W4A8 of FP8 rows by the decode-then-encode loops (the byte loops' reference)."""
    m, n = u8.shape
    q, s = np.zeros((m, n // 2), np.uint8), np.zeros((m, n // 16), np.uint8)
    q4, s4 = np.zeros((m, n // 2), np.uint8), np.zeros((m, n // 128), np.float32)
    g, v = np.ascontiguousarray(grid, np.float32), e4m3_values()
    K._nvfp4(u8, g, np.int64(r0), np.int32(0), v, np.float32(s2), q, s)
    K._w4a8(u8, g, np.int64(r0), np.int32(0), v, q4, s4)
    return q, s, q4, s4


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_byte_loops_equal_the_element_loops_on_any_bytes_and_scales(seed: int) -> None:
    """Every non-NaN FP8 byte (both zeros, subnormals, ±448) under block scales spread over 2^±60 and per-tensor
    scales from far below to far above the data, in row chunks that start mid-band: the byte loops (codes by
    thresholds on the magnitudes) give the element loops' bytes exactly."""
    rng = np.random.default_rng(seed)
    m, n = 300, 1024
    u8 = rng.integers(0, 256, (m, n), dtype=np.uint8)
    u8[(u8 & 0x7F) == 0x7F] = 0x80  # no NaN bytes (-0 instead)
    u8[5, :64] = rng.integers(0, 4, 64)  # groups of tiny magnitudes and zeros
    u8[7] &= 0x8F
    grid = (2.0 ** rng.uniform(-60, 60, (3, 8))).astype(np.float32)
    for s2 in (1e-30, 2.0 ** -8, 3.7, 1e25):
        want = _element_loops(u8, grid, s2)
        for chunk in (300, 77):
            q, s = np.zeros_like(want[0]), np.zeros_like(want[1])
            q4, s4 = np.zeros_like(want[2]), np.zeros_like(want[3])
            for r0 in range(0, m, chunk):
                assert K._on_bytes(grid, r0, min(chunk, m - r0), np.float32(s2))
                assert K.nvfp4_rows(u8[r0:r0 + chunk], s2, q[r0:r0 + chunk], s[r0:r0 + chunk], grid, r0)
                assert K.w4a8_rows(u8[r0:r0 + chunk], q4[r0:r0 + chunk], s4[r0:r0 + chunk], grid, r0)
            assert np.array_equal(s, want[1]) and np.array_equal(q, want[0]), f"NVFP4 s2={s2} chunk={chunk}"
            assert np.array_equal(s4.view(np.int32), want[3].view(np.int32)) and np.array_equal(q4, want[2])


@pytest.mark.parametrize("bad", [0.0, -1.0, 1e-38, np.inf, np.nan, 2.0 ** 101])
def test_grids_outside_the_byte_loops_range_take_the_element_loops(bad: float) -> None:
    """A zero, negative, subnormal-making, infinite or NaN block scale in the rows' bands (or a per-tensor scale
    of 0) sends the rows to the element loops, whose bytes they then are; other bands keep the byte loops."""
    rng = np.random.default_rng(3)
    u8 = rng.integers(0, 0x7E, (256, 256), dtype=np.uint8)
    grid = np.full((2, 2), 1e-3, np.float32)
    grid[1, 1] = bad
    assert K._on_bytes(grid, 0, 128, np.float32(1e-4)) and not K._on_bytes(grid, 100, 29, np.float32(1e-4))
    assert not K._on_bytes(grid, 0, 128, np.float32(0.0))
    want = _element_loops(u8, grid, 1e-4)
    q, s = np.zeros_like(want[0]), np.zeros_like(want[1])
    q4, s4 = np.zeros_like(want[2]), np.zeros_like(want[3])
    K.nvfp4_rows(u8, 1e-4, q, s, grid)
    K.w4a8_rows(u8, q4, s4, grid)
    assert np.array_equal(q, want[0]) and np.array_equal(s, want[1])
    assert np.array_equal(q4, want[2]) and np.array_equal(s4.view(np.int32), want[3].view(np.int32))

def test_non_finite_sources_are_reported() -> None:
    """NaN/Inf in float rows, or a NaN byte (0x7F / 0xFF) in FP8 rows, make the loops return False and the
    statistics non-finite; finite rows return True."""
    w = np.ones((4, 128), np.float32)
    q, s, q4, s4 = (np.empty((4, 64), np.uint8), np.empty((4, 8), np.uint8), np.empty((4, 64), np.int8),
                    np.empty((4, 1), np.float32))
    assert K.nvfp4_rows(w, 1.0, q, s) and K.w4a8_rows(w, q4, s4)
    for bad in (np.nan, np.inf, -np.inf):
        v = w.copy()
        v[2, 100] = bad
        assert not K.nvfp4_rows(v, 1.0, q, s) and not K.w4a8_rows(v, q4, s4)
        assert not np.isfinite(K.row_stats(v, np.empty(4))) and not np.isfinite(K.amax(v))
    u8, grid = np.full((4, 128), 0x38, np.uint8), np.ones((1, 1), np.float32)
    assert K.nvfp4_rows(u8, 1.0, q, s, grid) and K.w4a8_rows(u8, q4, s4, grid)
    for nan in (0x7F, 0xFF):
        b = u8.copy()
        b[3, 5] = nan
        assert not K.nvfp4_rows(b, 1.0, q, s, grid) and not K.w4a8_rows(b, q4, s4, grid)
        assert np.isnan(K.row_stats(b, np.empty(4), grid)) and np.isnan(K.amax(b, grid))


def test_row_statistics_do_not_depend_on_the_chunking() -> None:
    """The sums of squares are the same bits however the rows are split (fixed lanes, whole rows), for float rows
    and FP8 bytes; the amax is exact."""
    w = _weights(300, 520, 1) * 7
    q8, grid = quantize(w[:, :512])
    for src, g, x in ((w.numpy(), None, w), (q8.view(torch.uint8).numpy(), grid.numpy(), dequantize(q8, grid))):
        whole, parts = np.empty(300), np.empty(300)
        a = K.row_stats(src, whole, g)
        tops = [K.row_stats(src[r0:r0 + 77], parts[r0:r0 + 77], g, r0) for r0 in range(0, 300, 77)]
        assert a == max(tops) == float(x.abs().max()) and np.array_equal(whole.view(np.int64), parts.view(np.int64))
        np.testing.assert_allclose(np.sqrt(whole), torch.linalg.vector_norm(x.double(), dim=1), rtol=1e-6)


def test_bad_arguments_are_refused() -> None:
    q, s = np.empty((2, 64), np.uint8), np.empty((2, 8), np.uint8)
    with pytest.raises(TypeError, match="float32, BF16 bits or FP8"):
        K.nvfp4_rows(np.zeros((2, 128), np.float64), 1.0, q, s)
    with pytest.raises(TypeError, match="FP8 rows are uint8"):
        K.w4a8_rows(np.zeros((2, 128), np.float32), q.view(np.int8), np.empty((2, 1), np.float32),
                    np.ones((1, 1), np.float32))
    with pytest.raises(ValueError, match="16-input groups"):
        K.nvfp4_rows(np.zeros((2, 120), np.float32), 1.0, q, s)
    with pytest.raises(ValueError, match="float64"):
        K.row_stats(np.zeros((2, 16), np.float32), np.empty(2, np.float32))


def test_statistics_never_wait_on_queued_reads() -> None:
    """A chunk that needs an expert's statistics before their pool items have started runs the reads itself (with
    two shards in flight those items can sit behind the waiting chunks in the queue: waiting on them deadlocked);
    an item that starts afterwards does not read again."""
    import threading

    from k2trt.checkpoint.stream import _Pieces

    calls: list[str] = []
    gate = threading.Event()

    def slow() -> int:
        calls.append("slow")
        gate.wait(5)
        return 1

    p = _Pieces({"queued": lambda: calls.append("queued") or 2, "running": slow})
    t = threading.Thread(target=p.run, args=("running",))
    t.start()
    while "slow" not in calls:
        pass
    threading.Timer(0.2, gate.set).start()
    assert p.results() == {"queued": 2, "running": 1}  # ran "queued" here, waited for "running"
    assert p.run("queued") == [] and calls.count("queued") == 1 and calls.count("slow") == 1
    t.join()
