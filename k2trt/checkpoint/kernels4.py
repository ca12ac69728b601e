"""Compiled loops for the 4-bit targets (numba): NVFP4 and W4A8 (INT4) encoding of a weight's rows, and the
per-tensor statistics the routed experts' encodings need (amax, row norms).

The encoders are bit-identical to the torch reference math in ``quant4.py`` (``quantize_nvfp4``,
``quantize_w4a8``; tests/unit/test_requant.py ties those to modelopt's own functions) for every finite float32
input, and follow it where IEEE arithmetic takes it for the degenerate ones (an all-zero tensor's NVFP4
``weight_scale_2`` of 0 gives NaN block scales; a W4A8 group scale that rounds to 0 in bfloat16 gives codes 7, -8
and 0, as torch's float → int8 cast of ±Inf/NaN after its clamp): the same float32 divisions in the same order,
e4m3 rounding by ``kernels._e4m3``, bfloat16 rounding by ``kernels._bf16``, ``rint`` (half to even) for INT4.

- NVFP4, per 16 inputs of a row: ``b = amax / (6 · s2)`` (0 → 1, clamped to [2^-9, 448]) rounded to e4m3 is the
  block scale; each element divided by ``e4m3(b) · s2`` gets the e2m1 code of its magnitude — the number of
  modelopt's bounds (0.25, 0.75, …, 5) below it, where reaching 0.75, 1.75 or 3.5 exactly counts (ties round to
  the even code) — and the sign in bit 3; two codes per byte, the even column low.
- W4A8, per 128 inputs: ``s = bf16(amax / 7)`` (0 → 1 before the rounding); ``code = clamp(rint(x / s), -8, 7)``,
  two per byte along the input, the even column low.

Every loop takes a weight's rows from one of two sources, so no float32 copy of a whole weight is made: float32
(or BF16 bits) rows, or block-FP8 rows with the weight's scale grid, decoded one row at a time into a buffer that
stays in cache through ``kernels``' per-band table of ``e4m3(byte) × scale`` — the float32 product of
``fp8.dequantize_rows``, NaN for the NaN bytes. (Decoding the e4m3 bits arithmetically was 7× slower on random
bytes: the subnormal codes make subnormal float32 operands, which the CPU handles in microcode.) A row's group
maxima are taken on the magnitude bits (NaN's beat Inf's beat every number's), so one comparison tells a
non-finite row: the loops return False, and the converter refuses the weight.

Each row goes through a few simple passes (decode, group maxima, group scales, codes, packing the code pairs as
uint16 loads so the loop is contiguous); each vectorises (one core, 2048×7168 expert: 1.2 ns per weight for
NVFP4, 0.7 for W4A8). Fusing passes or gathering codes from per-scale tables in numba was 1.5-4× slower.

FP8 sources — the converter's case, K2-Instruct's experts — skip the decode altogether: within a 128×128 block a
code is a monotone function of the byte's magnitude, so each group's codes are counts of thresholds its bytes
reach, a few vector instructions per 16 bytes written as LLVM IR (the section "FP8 sources on the bytes" below).
Per K2 expert, one core: NVFP4 ~2×, W4A8 ~3× faster than decoding first, with the same bytes; grids outside a
sane range (zero, negative, non-finite or extreme scales) keep the decoding loops.

The row statistics (``row_stats``) are the largest magnitude — ``quant4.weight_scale_2``'s input, exact (a
maximum of the same float32 values) — and each row's sum of squares for ``quant4.activation_bounds``: for FP8 an
exact integer per 128-block (``e4m3(b)² · 2^18`` summed) times the block scale², otherwise float64 in 16 fixed lanes;
the same bits on every machine and for any row chunking (torch's float32 norms differ in the last bits).

Cached and GIL-free like ``kernels.py``; ``warm()`` loads them before a stream. Imported by the converter's chunk
functions only.
"""

from __future__ import annotations

import functools

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from k2trt.checkpoint.fp8 import e4m3_values
from k2trt.checkpoint.kernels import _JIT, _as_f32, _as_i32, _bf16, _e4m3, _gather, _table
from k2trt.checkpoint.quant4 import _E2M1_BOUNDS, E2M1_MAX, E4M3_MAX, INT4_MAX
from k2trt.spec import BLOCK, NVFP4_GROUP, W4A8_GROUP

_B = tuple(np.float32(b) for b in _E2M1_BOUNDS)  # 0.25 0.75 1.25 1.75 2.5 3.5 5: all exact in float32
_LANES = 16
_NO_GRID = np.zeros((0, 0), dtype=np.float32)


# ---- FP8 sources on the bytes ------------------------------------------------------------------------------
# Within one 128×128 block every input is e4m3(byte) × the block's scale s, and both encoders' codes are monotone
# in the byte's magnitude m = byte & 0x7F (float rounding is monotone): so a group's code for m is the number of
# thresholds m reaches — 7 for e2m1 (the bounds), 8 for INT4 (rint reaching 1..8) — and the sign comes from the
# byte (a negative value is a set sign bit with m > 0: -0 stays code 0, as torch's x < 0). A group's largest
# magnitude is its largest m (NaN bytes, m = 127, are largest too). The thresholds depend only on the block's
# scale and the group's scale, i.e. on (block column, largest m) within a band of 128 rows, and are found once per
# such pair by bisection with the element loop's own arithmetic; each group is then a few vector instructions on
# its 16 (or 128) bytes (generic LLVM vector IR: SSE/AVX on x86, NEON on Arm). Bit-identical to the decode-then-
# encode loops above while every scale is a normal positive float (and weight_scale_2 too); other grids take them.


def _vec(lanes):  # type: ignore[no-untyped-def]
    return ir.VectorType(ir.IntType(8), lanes)


def _load(builder, addr, lanes):  # type: ignore[no-untyped-def]
    return builder.load(builder.inttoptr(addr, _vec(lanes).as_pointer()), align=1)


def _splat(builder, word, k, lanes):  # type: ignore[no-untyped-def]
    # byte k of a uint64 in every lane
    v8 = builder.bitcast(word, _vec(8))
    return builder.shuffle_vector(v8, v8, ir.Constant(ir.VectorType(ir.IntType(32), lanes), [k] * lanes))


def _mag_max(lanes):  # type: ignore[no-untyped-def]
    @intrinsic
    def mag_max(typingctx, addr):  # type: ignore[no-untyped-def]
        """The largest magnitude (byte & 0x7F) of the FP8 bytes at ``addr``."""
        def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
            mag = builder.and_(_load(builder, args[0], lanes), _vec(lanes)([0x7F] * lanes))
            top = builder.module.declare_intrinsic(f"llvm.vector.reduce.umax.v{lanes}i8",
                                                   fnty=ir.FunctionType(ir.IntType(8), [_vec(lanes)]))
            return builder.call(top, [mag])
        return types.uint8(types.uintp), codegen
    return mag_max


def _code_map(lanes, int4):  # type: ignore[no-untyped-def]
    @intrinsic
    def code_map(typingctx, src, dst, thr):  # type: ignore[no-untyped-def]
        """FP8 bytes at ``src`` → 4-bit codes packed at ``dst`` (even lane low). ``thr``: the thresholds minus
        one, a byte each; a = how many of them a byte's magnitude exceeds. e2m1: a, | 8 when negative; INT4:
        min(a, 7), or -a when negative."""
        def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
            vt = _vec(lanes)
            b = _load(builder, args[0], lanes)
            mag = builder.and_(b, vt([0x7F] * lanes))
            neg = builder.and_(builder.icmp_signed("<", b, vt([0] * lanes)),
                               builder.icmp_unsigned("!=", mag, vt([0] * lanes)))
            a = vt([0] * lanes)
            for k in range(8 if int4 else 7):  # magnitudes are <= 127: signed byte compares
                a = builder.sub(a, builder.sext(builder.icmp_signed(">", mag, _splat(builder, args[2], k, lanes)), vt))
            if int4:
                pos = builder.select(builder.icmp_unsigned(">", a, vt([7] * lanes)), vt([7] * lanes), a)
                codes = builder.select(neg, builder.and_(builder.sub(vt([0] * lanes), a), vt([15] * lanes)), pos)
            else:
                codes = builder.or_(a, builder.select(neg, vt([8] * lanes), vt([0] * lanes)))
            w16 = ir.VectorType(ir.IntType(16), lanes // 2)
            w = builder.bitcast(codes, w16)
            out = builder.trunc(builder.or_(w, builder.lshr(w, w16([4] * (lanes // 2)))), _vec(lanes // 2))
            builder.store(out, builder.inttoptr(args[1], _vec(lanes // 2).as_pointer()), align=1)
            return context.get_dummy_value()
        return types.none(types.uintp, types.uintp, types.uint64), codegen
    return code_map


_mag_max16, _mag_max64 = _mag_max(16), _mag_max(64)
_e2m1_map16, _int4_map64 = _code_map(16, False), _code_map(64, True)
_SANE = (np.float32(2.0 ** -100), np.float32(2.0 ** 100))
"""Scales in this range keep every product and quotient the thresholds rely on normal and non-zero."""
BYTES = True
"""Whether FP8 sources take the byte loops (the bench turns it off to time the decoding loops beside them)."""


@njit(inline="always")
def _row(src, grid, first_row, shift, i, values, prod, buf):  # type: ignore[no-untyped-def]
    # buf[:] = float32 values of weight row first_row + i: FP8 bytes × block scale by the band's table prod
    # (rebuilt at each band's first row) when there is a grid, else the float32 bits in src (int32, shift 0) or
    # BF16 bits (int16, shift 16)
    if grid.shape[0]:
        if i == 0 or (first_row + i) % BLOCK == 0:
            _table(values, grid, (first_row + i) // BLOCK, prod)
        _gather(src[i], prod, buf)
    else:
        _bits(src[i], shift, buf)


@njit(inline="always")
def _bits(seg, shift, buf):  # type: ignore[no-untyped-def]
    for j in range(seg.shape[0]):
        buf[j] = _as_f32(np.int32(seg[j]) << shift)


@njit(inline="always")
def _tops(x, group, tops):  # type: ignore[no-untyped-def]
    # tops[g]: the bits of group g's largest magnitude (compared as integers: NaN > Inf > numbers); True when all
    # are finite
    worst = np.int32(0)
    for g in range(tops.shape[0]):
        seg, t = x[g * group:(g + 1) * group], np.int32(0)
        for j in range(seg.shape[0]):
            t = max(t, _as_i32(seg[j]) & np.int32(0x7FFFFFFF))
        tops[g] = t
        worst = max(worst, t)
    return worst < np.int32(0x7F800000)


@njit(inline="always")
def _e2m1(x):  # type: ignore[no-untyped-def]
    # e2m1 code of x (already divided by its scale): bounds below |x|, ties to the even code; sign in bit 3
    a = abs(x)
    return (np.int32(x < np.float32(0.0)) << np.int32(3)) + np.int32(a > _B[0]) + np.int32(a >= _B[1]) \
        + np.int32(a > _B[2]) + np.int32(a >= _B[3]) + np.int32(a > _B[4]) + np.int32(a >= _B[5]) \
        + np.int32(a > _B[6])


@njit(inline="always")
def _pack(codes, q):  # type: ignore[no-untyped-def]
    # q[k] = codes[2k] | codes[2k+1] << 4 (each < 16), read as little-endian uint16 pairs so the loop is contiguous
    pairs = codes.view(np.uint16)
    for k in range(q.shape[0]):
        v = pairs[k]
        q[k] = np.uint8((v | (v >> np.uint16(4))) & np.uint16(0xFF))


@njit(inline="always")
def _nvfp4_scale(amax, d6):  # type: ignore[no-untyped-def]
    # a group's e4m3 block-scale code from its largest magnitude; d6 = 6 · weight_scale_2
    b = amax / d6
    b = np.float32(1.0) if b == np.float32(0.0) else b
    # 0/0 (s2 = 0) stays NaN through torch's clamp and becomes the e4m3 NaN of the same sign
    nan = np.uint8(np.int32(0x7F) | ((_as_i32(b) >> np.int32(24)) & np.int32(0x80)))
    return _e4m3(min(max(b, np.float32(2.0 ** -9)), np.float32(E4M3_MAX))) if b == b else nan


@njit(inline="always")
def _w4a8_scale(amax):  # type: ignore[no-untyped-def]
    # a group's scale from its largest magnitude: amax / 7 (0 → 1), rounded to the loader's bfloat16, as float32
    s = amax / np.float32(INT4_MAX)
    s = np.float32(1.0) if s == np.float32(0.0) else s
    return _as_f32(np.int32(_bf16(s)) << np.int32(16))


@njit(inline="always")
def _nvfp4_row(x, s2, values, q, sc, tops, dens, codes):  # type: ignore[no-untyped-def]
    # x: f32 [N] → q: u8 [N/2], sc: u8 [N/16] e4m3 block scales; False when x holds NaN/Inf.
    # Three passes over the row, each a simple loop: group maxima, block scales, codes (then the packing)
    ok = _tops(x, NVFP4_GROUP, tops)
    d6 = np.float32(E2M1_MAX) * s2
    for g in range(tops.shape[0]):
        code = _nvfp4_scale(_as_f32(tops[g]), d6)
        sc[g] = code
        dens[g] = values[code] * s2
    for g in range(tops.shape[0]):
        seg, out, den = x[g * NVFP4_GROUP:(g + 1) * NVFP4_GROUP], codes[g * NVFP4_GROUP:(g + 1) * NVFP4_GROUP], dens[g]
        for j in range(seg.shape[0]):
            out[j] = np.uint8(_e2m1(seg[j] / den))
    _pack(codes, q)
    return ok


@njit(inline="always")
def _int4(y):  # type: ignore[no-untyped-def]
    # round half to even, clamp to -8..7, low nibble; NaN → 0 (torch's cast of the NaN its clamp keeps)
    r = np.rint(y)
    c = np.int32(min(max(r, np.float32(-8.0)), np.float32(7.0))) if r == r else np.int32(0)
    return c & np.int32(0xF)


@njit(inline="always")
def _w4a8_row(x, q, sc, tops, codes):  # type: ignore[no-untyped-def]
    # x: f32 [N] → q: u8 view of int8 [N/2], sc: f32 [N/128]; False when x holds NaN/Inf
    ok = _tops(x, W4A8_GROUP, tops)
    for g in range(tops.shape[0]):
        s = _w4a8_scale(_as_f32(tops[g]))
        sc[g] = s
        seg, out = x[g * W4A8_GROUP:(g + 1) * W4A8_GROUP], codes[g * W4A8_GROUP:(g + 1) * W4A8_GROUP]
        for j in range(seg.shape[0]):
            out[j] = np.uint8(_int4(seg[j] / s))
    _pack(codes, q)
    return ok


@njit(**_JIT)
def _nvfp4(src, grid, first_row, shift, values, s2, q, sc):  # type: ignore[no-untyped-def]
    n = q.shape[1] * 2
    buf, codes = np.empty(n, np.float32), np.empty(n, np.uint8)
    tops, dens = np.empty(sc.shape[1], np.int32), np.empty(sc.shape[1], np.float32)
    prod = np.empty((grid.shape[1], 256), np.float32)
    ok = True
    for i in range(src.shape[0]):
        _row(src, grid, first_row, shift, i, values, prod, buf)
        ok = _nvfp4_row(buf, s2, values, q[i], sc[i], tops, dens, codes) and ok
    return ok


@njit(**_JIT)
def _w4a8(src, grid, first_row, shift, values, q, sc):  # type: ignore[no-untyped-def]
    n = q.shape[1] * 2
    buf, codes = np.empty(n, np.float32), np.empty(n, np.uint8)
    tops, prod = np.empty(sc.shape[1], np.int32), np.empty((grid.shape[1], 256), np.float32)
    ok = True
    for i in range(src.shape[0]):
        _row(src, grid, first_row, shift, i, values, prod, buf)
        ok = _w4a8_row(buf, q[i], sc[i], tops, codes) and ok
    return ok


@njit(**_JIT)
def _stats(src, shift, sumsq):  # type: ignore[no-untyped-def]
    # float32/BF16 bits rows: sumsq[i] = Σ_j x[i, j]² (float64 in 16 lanes, j mod 16, then the lanes in order: the
    # same sum on every machine); returns the bits of the largest |x|
    n = src.shape[1]
    buf, lanes, one = np.empty(n, np.float32), np.empty(_LANES, np.float64), np.empty(1, np.int32)
    top = np.int32(0)
    for i in range(src.shape[0]):
        _bits(src[i], shift, buf)
        _tops(buf, n, one)
        top = max(top, one[0])
        lanes[:] = 0.0
        for j0 in range(0, n - n % _LANES, _LANES):
            seg = buf[j0:j0 + _LANES]
            for k in range(_LANES):
                v = np.float64(seg[k])
                lanes[k] += v * v
        for j in range(n - n % _LANES, n):
            v = np.float64(buf[j])
            lanes[j % _LANES] += v * v
        acc = 0.0
        for k in range(_LANES):
            acc += lanes[k]
        sumsq[i] = acc
    return top


@njit(**_JIT)
def _stats_fp8(u8, grid, first_row, values, squares, sumsq):  # type: ignore[no-untyped-def]
    # FP8 rows, on the bytes: per 128-block, Σ v² as an exact integer (squares[b] = e4m3(b)² · 2^18) and the
    # largest magnitude byte; sumsq[i] = 2^-18 Σ_blocks scale² · Σ v² (float64, blocks in order); returns the bits
    # of the largest |e4m3(b) × scale| (NaN's when a NaN byte is there)
    top = np.int32(0)
    for i in range(u8.shape[0]):
        srow, row, acc = grid[(first_row + i) // BLOCK], u8[i], 0.0
        for c in range(srow.shape[0]):
            seg, t, mx = row[c * BLOCK:(c + 1) * BLOCK], np.int64(0), np.uint8(0)
            for j in range(seg.shape[0]):
                t += squares[seg[j]]
                mx = max(mx, seg[j] & np.uint8(0x7F))
            s = np.float64(srow[c])
            acc += s * s * np.float64(t)
            top = max(top, _as_i32(values[mx] * srow[c]) & np.int32(0x7FFFFFFF))
        sumsq[i] = acc * 2.0 ** -18
    return top


@njit(**_JIT)
def _amax(src, grid, first_row, shift, values):  # type: ignore[no-untyped-def]
    # the bits of the largest |x| (NaN's when one is NaN): on FP8 bytes, each block's largest magnitude byte × scale
    top = np.int32(0)
    for i in range(src.shape[0]):
        row = src[i]
        if grid.shape[0]:
            srow, at = grid[(first_row + i) // BLOCK], src.ctypes.data + i * src.strides[0]
            for c in range(srow.shape[0]):
                seg, mx = row[c * BLOCK:(c + 1) * BLOCK], np.uint8(0)
                if seg.shape[0] == BLOCK:  # (rows are contiguous: _source)
                    mx = max(_mag_max64(at + c * BLOCK), _mag_max64(at + c * BLOCK + 64))
                else:
                    for j in range(seg.shape[0]):
                        mx = max(mx, seg[j] & np.uint8(0x7F))
                top = max(top, _as_i32(values[mx] * srow[c]) & np.int32(0x7FFFFFFF))
        else:
            for j in range(row.shape[0]):
                top = max(top, (np.int32(row[j]) << shift) & np.int32(0x7FFFFFFF))
    return top


@njit(inline="always")
def _first_above(values, s, den, k, lo, int4):  # type: ignore[no-untyped-def]
    # the smallest magnitude m >= lo whose code exceeds k (127: none), by bisection; the element loops' arithmetic
    hi = 127
    while lo < hi:
        mid = (lo + hi) >> 1
        y = (values[mid] * s) / den
        above = min(np.rint(y), np.float32(8.0)) > np.float32(k) if int4 else _e2m1(y) > k
        if above:
            hi = mid
        else:
            lo = mid + 1
    return lo


@njit(inline="always")
def _thresholds(values, s, den, int4):  # type: ignore[no-untyped-def]
    # the thresholds minus one, byte k of a uint64 (as the maps compare them)
    w, m = np.uint64(0), 0
    for k in range(8 if int4 else 7):
        m = _first_above(values, s, den, k, m, int4)
        w |= np.uint64((m - 1) & 0xFF) << np.uint64(8 * k)
    return w


@njit(nogil=True, cache=True, boundscheck=False, error_model="numpy")
def _nvfp4_miss(values, s, s2, d6, c, mx, band, stamp, codes, thr):  # type: ignore[no-untyped-def]
    # the scale code and thresholds of a group whose largest magnitude is mx in block column c (as _nvfp4_row)
    code = _nvfp4_scale(values[mx] * abs(s), d6)
    codes[c, mx], thr[c, mx], stamp[c, mx] = code, _thresholds(values, s, values[code] * s2, False), band


@njit(**_JIT)
def _nvfp4_bytes(u8, grid, first_row, values, s2, q, sc):  # type: ignore[no-untyped-def]
    rows, n = u8.shape
    nb = -(-n // BLOCK)
    thr, codes = np.zeros((nb, 128), np.uint64), np.zeros((nb, 128), np.uint8)
    stamp = np.full((nb, 128), -1, np.int64)
    d6, top = np.float32(E2M1_MAX) * s2, np.uint8(0)
    p0, q0, qs = u8.ctypes.data, q.ctypes.data, q.strides[0]
    for i in range(rows):
        band = (first_row + i) // BLOCK
        for g in range(n // NVFP4_GROUP):
            c, at = g * NVFP4_GROUP // BLOCK, p0 + i * n + g * NVFP4_GROUP
            mx = _mag_max16(at)
            if stamp[c, mx] != band:
                _nvfp4_miss(values, grid[band, c], s2, d6, c, mx, band, stamp, codes, thr)
            top = max(top, mx)  # (a running flag here, `ok and ...`, made this loop 5× slower)
            sc[i, g] = codes[c, mx]
            _e2m1_map16(at, q0 + i * qs + g * (NVFP4_GROUP // 2), thr[c, mx])
    return top != 0x7F


@njit(**_JIT)
def _w4a8_bytes(u8, grid, first_row, values, q, sc):  # type: ignore[no-untyped-def]
    # W4A8 groups are the blocks' rows (128 inputs): the group scale is a function of the largest magnitude
    rows, n = u8.shape
    nb = n // BLOCK
    thr, scales = np.zeros((nb, 128), np.uint64), np.zeros((nb, 128), np.float32)
    stamp = np.full((nb, 128), -1, np.int64)
    top = np.uint8(0)
    p0, q0, qs = u8.ctypes.data, q.ctypes.data, q.strides[0]
    for i in range(rows):
        band = (first_row + i) // BLOCK
        for c in range(nb):
            at, out = p0 + i * n + c * BLOCK, q0 + i * qs + c * (BLOCK // 2)
            mx = max(_mag_max64(at), _mag_max64(at + 64))
            if stamp[c, mx] != band:
                s = grid[band, c]
                t = _w4a8_scale(values[mx] * abs(s))
                scales[c, mx], thr[c, mx], stamp[c, mx] = t, _thresholds(values, s, t, True), band
            top = max(top, mx)
            sc[i, c] = scales[c, mx]
            _int4_map64(at, out, thr[c, mx])
            _int4_map64(at + 64, out + 32, thr[c, mx])
    return top != 0x7F


def _on_bytes(grid: np.ndarray, first_row: int, rows: int, *scales: float) -> bool:
    """Whether the byte loops apply: the grid's bands under these rows and the extra scales are all in _SANE."""
    g = grid[first_row // BLOCK:(first_row + max(rows, 1) - 1) // BLOCK + 1]
    lo, hi = _SANE
    return bool(g.size and (g > lo).all() and (g < hi).all() and all(lo < s < hi for s in scales))


def _source(src: np.ndarray, grid: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.int32]:
    """(rows as the loops read them, the scale grid or none, the bit shift) of a float32 / BF16-bits / FP8 source."""
    if grid is not None:
        if src.dtype != np.uint8:
            raise TypeError(f"FP8 rows are uint8 bytes, not {src.dtype}")
        return np.ascontiguousarray(src), np.ascontiguousarray(grid, dtype=np.float32), np.int32(0)
    if src.dtype == np.float32:
        return np.ascontiguousarray(src).view(np.int32), _NO_GRID, np.int32(0)
    if src.dtype in (np.int16, np.uint16):
        return np.ascontiguousarray(src).view(np.int16), _NO_GRID, np.int32(16)
    raise TypeError(f"4-bit encoders take float32, BF16 bits or FP8 bytes with their grid, not {src.dtype}")


def _check(src: np.ndarray, q: np.ndarray, scale: np.ndarray, group: int) -> None:
    rows, cols = src.shape
    if cols % group or q.shape != (rows, cols // 2) or scale.shape != (rows, cols // group):
        raise ValueError(f"a [{rows}, {cols}] source needs {group}-input groups, q [{rows}, {cols // 2}] and "
                         f"scale [{rows}, {cols // group}]; got q {list(q.shape)}, scale {list(scale.shape)}")


def nvfp4_rows(src: np.ndarray, s2: float, q: np.ndarray, scale: np.ndarray, grid: np.ndarray | None = None,
               first_row: int = 0) -> bool:
    """NVFP4 encoding of a weight's rows, bit-identical to ``quant4.quantize_nvfp4`` on those rows.

    Args:
        src: ``[R, N]`` rows: float32, BF16 bits (int16/uint16), or FP8 bytes (uint8) with ``grid``.
        s2: the tensor's ``weight_scale_2`` (float32; the gate/up pair's for those).
        q: uint8 ``[R, N/2]`` to fill (two e2m1 codes per byte, even column low).
        scale: uint8 ``[R, N/16]`` to fill with the e4m3 block scales (``weight_scale``'s bytes).
        grid: an FP8 source's float32 ``weight_scale_inv`` (the whole weight's); ``first_row``: its row of ``src[0]``.
    Returns:
        False when a source value is NaN/Inf (the output is then meaningless), else True.
    Example: ``nvfp4_rows(w, s2, q, s)``; ``q, s`` equal ``quantize_nvfp4(torch.from_numpy(w), s2)[:2]``'s bytes.
    """
    rows, grid_, shift = _source(src, grid)
    _check(src, q, scale, NVFP4_GROUP)
    if BYTES and grid is not None and q.strides[1] == 1 and _on_bytes(grid_, first_row, src.shape[0],
                                                                     np.float32(s2)):
        return bool(_nvfp4_bytes(rows, grid_, np.int64(first_row), e4m3_values(), np.float32(s2), q, scale))
    return bool(_nvfp4(rows, grid_, np.int64(first_row), shift, e4m3_values(), np.float32(s2), q, scale))


def w4a8_rows(src: np.ndarray, q: np.ndarray, scale: np.ndarray, grid: np.ndarray | None = None,
              first_row: int = 0) -> bool:
    """W4A8 (INT4 per 128 inputs, W4A8_CUSTOM layout) encoding of a weight's rows, bit-identical to
    ``quant4.quantize_w4a8`` on those rows.

    Args:
        src, grid, first_row: as ``nvfp4_rows``.
        q: int8 or uint8 ``[R, N/2]`` to fill (two codes per byte along the input, even column low).
        scale: float32 ``[R, N/128]`` to fill (``weight_scale_inv``, bfloat16-rounded).
    Returns:
        False when a source value is NaN/Inf, else True.
    Example: ``w4a8_rows(w, q, s)``; ``q, s`` equal ``quantize_w4a8(torch.from_numpy(w))``.
    """
    rows, grid_, shift = _source(src, grid)
    _check(src, q, scale, W4A8_GROUP)
    if BYTES and grid is not None and q.strides[1] == 1 and _on_bytes(grid_, first_row, src.shape[0]):
        return bool(_w4a8_bytes(rows, grid_, np.int64(first_row), e4m3_values(), q.view(np.uint8), scale))
    return bool(_w4a8(rows, grid_, np.int64(first_row), shift, e4m3_values(), q.view(np.uint8), scale))


def row_stats(src: np.ndarray, sumsq: np.ndarray, grid: np.ndarray | None = None, first_row: int = 0
              ) -> np.float32:
    """Each row's sum of squares into ``sumsq`` (float64 ``[R]``), and the rows' largest magnitude (float32;
    NaN or Inf when a value is). Sources as ``nvfp4_rows``.

    Example: ``amax = row_stats(w, ss)``; ``amax == np.abs(w).max()`` and ``np.sqrt(ss)`` ≈ the row norms.
    """
    rows, grid_, shift = _source(src, grid)
    if sumsq.shape != (src.shape[0],) or sumsq.dtype != np.float64:
        raise ValueError(f"sumsq must be float64 [{src.shape[0]}], not {sumsq.dtype} {list(sumsq.shape)}")
    if grid is None:
        top = _stats(rows, shift, sumsq)
    else:
        top = _stats_fp8(rows, grid_, np.int64(first_row), e4m3_values(), _squares(), sumsq)
    return np.int32(top).view(np.float32)


def amax(src: np.ndarray, grid: np.ndarray | None = None, first_row: int = 0) -> np.float32:
    """The largest magnitude of a weight's rows (float32; NaN or Inf when a value is), sources as ``nvfp4_rows``.

    Example: ``amax(u8, grid)`` equals ``fp8.dequantize(w, s).abs().max()``.
    """
    rows, grid_, shift = _source(src, grid)
    return np.int32(_amax(rows, grid_, np.int64(first_row), shift, e4m3_values())).view(np.float32)


@functools.lru_cache(maxsize=1)
def _squares() -> np.ndarray:
    """e4m3(b)² · 2^18 for each byte b, exact int64 (the smallest square is 2^-18); 0 for the NaN bytes."""
    v = e4m3_values().astype(np.float64)
    return np.where(np.isnan(v), 0.0, v * v * 2.0 ** 18).astype(np.int64)


def warm() -> None:
    """Load (or compile, the first time on a machine) every loop for the sources the converter uses."""
    u8 = np.zeros((1, 128), np.uint8)
    for src, grid in ((np.zeros((1, 128), np.float32), None), (np.zeros((1, 128), np.int16), None),
                      (u8, np.ones((1, 1), np.float32)), (u8, np.zeros((1, 1), np.float32))):  # bytes / decoding
        nvfp4_rows(src, 1.0, np.zeros((1, 64), np.uint8), np.zeros((1, 8), np.uint8), grid)
        w4a8_rows(src, np.zeros((1, 64), np.int8), np.zeros((1, 1), np.float32), grid)
        row_stats(src, np.zeros(1, np.float64), grid)
        amax(src, grid)
