"""Compiled loops for the converter's hot paths (numba): block-FP8 quantisation (from BF16, float32, or packed
INT4 codes × group scales) and FP8 → BF16/float32 dequantisation.

Each is one pass over a chunk of rows that stays in cache, where the same math as torch/numpy operations costs a
pass over memory per operation (one 2048×7168 K2 expert on one core: BF16 → FP8 ~9 ms here against ~85 ms with
torch, FP8 → BF16 ~5 ms against ~45 ms with numpy's per-block table, INT4 → FP8 ~5 ms (~12 ms without the byte
shuffle below) against ~100 ms decoding with compressed-tensors and quantising with torch;
``bench/bench_convert.py`` prints all three). The results are bit-identical to the reference math —
``fp8.quantize``/``dequantize`` and the INT4 formats' dequantisation in ``quant4``: the same float32 products and
division, the same scale ``max(amax, 1e-12) / 448``, float32 → e4m3 rounded to nearest even exactly as torch's
cast, BF16 rounded to nearest even; tests/unit/test_kernels.py compares them byte for byte (e4m3 rounding over
every 97th float32 bit pattern in range; packed INT4 against compressed-tensors' own unpacking, every nibble in
both positions).

The float32 → e4m3 rounding is integer and float arithmetic on the float's bits: a normal result rounds the
magnitude to 3 mantissa bits by adding and subtracting ``2^(e+20)`` (the float32 ulp there is the e4m3 step);
a subnormal one (below 2^-6) is the float32 bits of ``|x| + 2^14`` (ulp 2^-9, e4m3's subnormal step) minus those of
``2^14``. Inputs are clamped to ±448 first, so nothing rounds past the largest finite code; a NaN or Inf anywhere
in a block makes its scale NaN/Inf (amaxes compare as bits), which the converter refuses.

The INT4 → FP8 loop unpacks the packed bytes itself (a 256-entry table of each byte's two codes) instead of
calling compressed-tensors' unpacking, which alone (~28 ms) costs twice the whole fused pass; compressed-tensors
stays the reader everywhere else and the test's oracle here. On x86 (SSSE3) it goes further: a 4-bit group has
only 16 distinct values, so each group's 16 encodings are computed once and a byte shuffle maps the packed
nibbles through them (~5 ms against ~12 ms for a K2-Thinking expert, group 32); other CPUs, and groups that are
not a multiple of 32 inputs, take the table loop.

Compiled on first use and cached next to this file (numba's ``cache=True``; ``NUMBA_CACHE_DIR`` moves it), so a
conversion pays the ~2 s compilation once per machine; ``warm()`` loads every loop before a conversion streams.
Every loop releases the GIL: the converter's worker threads run them in parallel. Imported by the converter only,
never on a login node's path.
"""

from __future__ import annotations

import functools
import platform

import numpy as np
from llvmlite import ir
from llvmlite.binding import get_host_cpu_features
from numba import njit, types
from numba.extending import intrinsic

from k2trt.spec import BLOCK, FP8_MAX

_JIT = {"nogil": True, "cache": True, "boundscheck": False, "error_model": "numpy"}
SHUFFLE = platform.machine().lower() in ("x86_64", "amd64") and bool(get_host_cpu_features().get("ssse3"))
"""Whether INT4 → FP8 maps codes by byte shuffle (``_quantize_packed_shuffled``, ~2.4× faster on a K2 expert)."""


@intrinsic
def _as_f32(typingctx, bits):  # type: ignore[no-untyped-def]
    """int32 bits → the float32 they encode (a register bitcast)."""
    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        return builder.bitcast(args[0], ir.FloatType())
    return types.float32(types.int32), codegen


@intrinsic
def _as_i32(typingctx, x):  # type: ignore[no-untyped-def]
    """float32 → its int32 bits."""
    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        return builder.bitcast(args[0], ir.IntType(32))
    return types.int32(types.float32), codegen


@njit(inline="always")
def _e4m3(x):  # type: ignore[no-untyped-def]
    """float32 in [-448, 448] → float8_e4m3fn byte, round to nearest even (module docstring)."""
    ax = abs(x)
    magic = _as_f32((_as_i32(ax) & np.int32(0x7F800000)) + np.int32(20 << 23))
    normal = (_as_i32((ax + magic) - magic) >> np.int32(20)) - np.int32(960)
    sub = _as_i32(ax + np.float32(16384.0)) - np.int32(0x46800000)
    code = sub if ax < np.float32(0.015625) else normal
    return np.uint8(code | ((_as_i32(x) >> np.int32(24)) & np.int32(0x80)))


@njit(inline="always")
def _scales(top, r0, inv, scale):  # type: ignore[no-untyped-def]
    # per block column: the amax bits → scale max(amax, 1e-12) / 448 (NaN stays NaN); one row of the grid
    for c in range(top.shape[0]):
        amax = _as_f32(top[c])
        inv[c] = (amax if not amax < np.float32(1e-12) else np.float32(1e-12)) / np.float32(FP8_MAX)
        scale[r0 // BLOCK, c] = inv[c]


@njit(**_JIT)
def _quantize(src, shift, q, scale):  # type: ignore[no-untyped-def]
    # src: int16 BF16 bits (shift 16) or int32 float32 bits (shift 0), [R, N]; R rows start on a block boundary.
    # Row-major passes over each 128-row band (amax, then encode); the inner loops run over one block's 128
    # columns from 0, so they vectorise (no negative-index checks)
    rows, cols = src.shape
    nb = -(-cols // BLOCK)
    top, inv = np.zeros(nb, np.int32), np.zeros(nb, np.float32)
    lim = np.float32(FP8_MAX)
    for r0 in range(0, rows, BLOCK):
        r1 = min(rows, r0 + BLOCK)
        top[:] = 0   # each block's largest magnitude, compared as bits (NaN's bits beat every number)
        for i in range(r0, r1):
            for c in range(nb):
                seg, t = src[i, c * BLOCK:(c + 1) * BLOCK], top[c]
                for j in range(seg.shape[0]):
                    t = max(t, (np.int32(seg[j]) << shift) & np.int32(0x7FFFFFFF))
                top[c] = t
        _scales(top, r0, inv, scale)
        for i in range(r0, r1):
            for c in range(nb):
                seg, out, s = src[i, c * BLOCK:(c + 1) * BLOCK], q[i, c * BLOCK:(c + 1) * BLOCK], inv[c]
                for j in range(seg.shape[0]):
                    x = _as_f32(np.int32(seg[j]) << shift) / s
                    out[j] = _e4m3(min(max(x, -lim), lim))


@njit(inline="always")
def _unpack_row(row, pairs, c64):  # type: ignore[no-untyped-def]
    # packed bytes → float32 codes, two at a time: pairs[b] holds byte b's (low, high) codes as one 64-bit word
    for k in range(row.shape[0]):
        c64[k] = pairs[row[k]]


@njit(**_JIT)
def _quantize_packed(packed, gscale, pairs, q, scale):  # type: ignore[no-untyped-def]
    # packed: uint8 [R, N/2], column 2k in byte k's low nibble; gscale: float32 [R, N/group], group | 128.
    # Each row is unpacked into a float32 scratch row (by byte-pair table), then as _quantize with value =
    # code × group scale, recomputed in the encode pass rather than kept for the whole band
    rows, half = packed.shape
    cols, ng = 2 * half, gscale.shape[1]
    nb, group = -(-cols // BLOCK), cols // ng
    top, inv = np.zeros(nb, np.int32), np.zeros(nb, np.float32)
    codes = np.empty(cols, np.float32)
    c64 = codes.view(np.int64)
    lim, mask = np.float32(FP8_MAX), np.int32(0x7FFFFFFF)
    for r0 in range(0, rows, BLOCK):
        r1 = min(rows, r0 + BLOCK)
        top[:] = 0
        for i in range(r0, r1):
            _unpack_row(packed[i], pairs, c64)
            for g in range(ng):
                seg, sc, c = codes[g * group:(g + 1) * group], gscale[i, g], g * group // BLOCK
                t = top[c]
                for j in range(seg.shape[0]):
                    t = max(t, _as_i32(seg[j] * sc) & mask)
                top[c] = t
        _scales(top, r0, inv, scale)
        for i in range(r0, r1):
            _unpack_row(packed[i], pairs, c64)
            for g in range(ng):
                seg, out = codes[g * group:(g + 1) * group], q[i, g * group:(g + 1) * group]
                sc, s = gscale[i, g], inv[g * group // BLOCK]
                for j in range(seg.shape[0]):
                    out[j] = _e4m3(min(max((seg[j] * sc) / s, -lim), lim))


# ---- INT4 codes by byte shuffle (x86 SSSE3 ``pshufb``) ------------------------------------------------------
# A 4-bit group holds only 16 distinct values, so per group the loop encodes the 16 code values once into a
# 16-byte table, and one byte shuffle per 16 packed bytes maps all 32 nibbles through it (and through a table of
# |code| for the amax). Same products, same division, same rounding per element: bit-identical to
# _quantize_packed, which stays the loop on CPUs without the instruction.

_I8X16 = ir.VectorType(ir.IntType(8), 16)


def _table16(builder, lo, hi):  # type: ignore[no-untyped-def]
    # two uint64 → the 16-byte table they hold (little-endian: byte v is code v's entry)
    v = ir.VectorType(ir.IntType(64), 2)(ir.Undefined)
    v = builder.insert_element(v, lo, ir.Constant(ir.IntType(32), 0))
    v = builder.insert_element(v, hi, ir.Constant(ir.IntType(32), 1))
    return builder.bitcast(v, _I8X16)


def _shuffle(builder, table, idx):  # type: ignore[no-untyped-def]
    fn = builder.module.declare_intrinsic("llvm.x86.ssse3.pshuf.b.128",
                                          fnty=ir.FunctionType(_I8X16, [_I8X16, _I8X16]))
    return builder.call(fn, [table, idx])


def _nibble_codes(builder, addr):  # type: ignore[no-untyped-def]
    # 16 packed bytes at addr → (low nibbles, high nibbles)
    b = builder.load(builder.inttoptr(addr, _I8X16.as_pointer()), align=1)
    return builder.and_(b, _I8X16([15] * 16)), builder.lshr(b, _I8X16([4] * 16))


@intrinsic
def _nibble_max(typingctx, addr, t0, t1):  # type: ignore[no-untyped-def]
    """The largest ``table[code]`` over the 32 nibbles of the 16 bytes at ``addr`` (``t0``, ``t1``: the table)."""
    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        lo, hi = _nibble_codes(builder, args[0])
        table = _table16(builder, args[1], args[2])
        pair = ir.FunctionType(_I8X16, [_I8X16, _I8X16])
        m = builder.call(builder.module.declare_intrinsic("llvm.umax.v16i8", fnty=pair),
                         [_shuffle(builder, table, lo), _shuffle(builder, table, hi)])
        top = builder.module.declare_intrinsic("llvm.vector.reduce.umax.v16i8",
                                               fnty=ir.FunctionType(ir.IntType(8), [_I8X16]))
        return builder.call(top, [m])
    return types.uint8(types.uintp, types.uint64, types.uint64), codegen


@intrinsic
def _nibble_map(typingctx, src, dst, t0, t1):  # type: ignore[no-untyped-def]
    """``dst[2k], dst[2k + 1] = table[low nibble of src[k]], table[high nibble]`` for k < 16."""
    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        lo, hi = _nibble_codes(builder, args[0])
        table = _table16(builder, args[2], args[3])
        zip_ = ir.Constant(ir.VectorType(ir.IntType(32), 32), [x for k in range(16) for x in (k, 16 + k)])
        out = builder.shuffle_vector(_shuffle(builder, table, lo), _shuffle(builder, table, hi), zip_)
        builder.store(out, builder.inttoptr(args[1], ir.VectorType(ir.IntType(8), 32).as_pointer()), align=1)
        return context.get_dummy_value()
    return types.none(types.uintp, types.uintp, types.uint64, types.uint64), codegen


@njit(**_JIT)
def _quantize_packed_shuffled(packed, gscale, values, magnitudes, q, scale):  # type: ignore[no-untyped-def]
    # as _quantize_packed; groups of a multiple of 32 inputs (16 packed bytes), q rows q.strides[0] apart.
    # values[v]: nibble v's code as float32; magnitudes: |code| as 16 bytes (two uint64)
    rows, half = packed.shape
    cols, ng = 2 * half, gscale.shape[1]
    nb, group = -(-cols // BLOCK), cols // ng
    hg = group // 2
    top, inv = np.zeros(nb, np.int32), np.zeros(nb, np.float32)
    tables = np.empty((ng, 16), np.uint8)
    t64 = tables.view(np.uint64)
    m0, m1 = magnitudes[0], magnitudes[1]
    lim, mask = np.float32(FP8_MAX), np.int32(0x7FFFFFFF)
    p0, q0, qstride = packed.ctypes.data, q.ctypes.data, q.strides[0]
    for r0 in range(0, rows, BLOCK):
        r1 = min(rows, r0 + BLOCK)
        top[:] = 0
        for i in range(r0, r1):
            for g in range(ng):
                sc, c = gscale[i, g], g * group // BLOCK
                if abs(sc) < np.float32(np.inf):  # |code × sc| is largest at the largest |code| (monotone rounding)
                    m = np.uint8(0)
                    for k in range(g * hg, (g + 1) * hg, 16):
                        m = max(m, _nibble_max(p0 + i * half + k, m0, m1))
                    t = _as_i32(np.float32(m) * abs(sc)) & mask
                else:  # Inf × a zero code is NaN, Inf × the rest Inf: element by element, as _quantize_packed
                    t = np.int32(0)
                    for k in range(g * hg, (g + 1) * hg):
                        b = packed[i, k]
                        t = max(t, _as_i32(values[b & 15] * sc) & mask, _as_i32(values[b >> 4] * sc) & mask)
                top[c] = max(top[c], t)
        _scales(top, r0, inv, scale)
        for i in range(r0, r1):
            for g in range(ng):  # every group's table first: the loop over 16 values vectorises
                sc, s = gscale[i, g], inv[g * group // BLOCK]
                for v in range(16):
                    tables[g, v] = _e4m3(min(max((values[v] * sc) / s, -lim), lim))
            for g in range(ng):
                for k in range(g * hg, (g + 1) * hg, 16):
                    _nibble_map(p0 + i * half + k, q0 + i * qstride + 2 * k, t64[g, 0], t64[g, 1])


@njit(**_JIT)
def _e4m3_array(x, q):  # type: ignore[no-untyped-def]
    for j in range(x.shape[0]):
        q[j] = _e4m3(min(max(x[j], np.float32(-FP8_MAX)), np.float32(FP8_MAX)))


@njit(inline="always")
def _bf16(x):  # type: ignore[no-untyped-def]
    """float32 → BF16 bits, round to nearest even; NaN → 0x7FC0 (as torch rounds it)."""
    u = _as_i32(x)
    if x != x:
        return np.uint16(0x7FC0)
    return np.uint16(((u + np.int32(0x7FFF) + ((u >> np.int32(16)) & np.int32(1))) >> np.int32(16)) & 0xFFFF)


@njit(inline="always")
def _table(values, scale, b, prod):  # type: ignore[no-untyped-def]
    # prod[c, v]: float32 value of e4m3 byte v times the scale of block (b, c)
    for c in range(scale.shape[1]):
        for v in range(256):
            prod[c, v] = values[v] * scale[b, c]


@njit(inline="always")
def _gather(codes, table, out):  # type: ignore[no-untyped-def]
    # one row: out[j] = table[block column of j][codes[j]]
    for c in range(table.shape[0]):
        t, src, dst = table[c], codes[c * BLOCK:(c + 1) * BLOCK], out[c * BLOCK:(c + 1) * BLOCK]
        for j in range(src.shape[0]):
            dst[j] = t[src[j]]


@njit(**_JIT)
def _dequantize_f32(u8, scale, first_row, values, out):  # type: ignore[no-untyped-def]
    rows, cols = u8.shape
    prod = np.empty((scale.shape[1], 256), dtype=np.float32)
    for i in range(rows):
        if i == 0 or (first_row + i) % BLOCK == 0:
            _table(values, scale, (first_row + i) // BLOCK, prod)
        _gather(u8[i], prod, out[i])


@njit(**_JIT)
def _dequantize_bf16(u8, scale, first_row, values, out):  # type: ignore[no-untyped-def]
    rows, cols = u8.shape
    prod = np.empty((scale.shape[1], 256), dtype=np.float32)
    bits = np.empty((scale.shape[1], 256), dtype=np.uint16)
    for i in range(rows):
        if i == 0 or (first_row + i) % BLOCK == 0:
            _table(values, scale, (first_row + i) // BLOCK, prod)
            for c in range(prod.shape[0]):
                for v in range(256):
                    bits[c, v] = _bf16(prod[c, v])
        _gather(u8[i], bits, out[i])


def quantize_rows(src: np.ndarray, q: np.ndarray, scale: np.ndarray) -> None:
    """Block-FP8 quantisation of whole block rows: ``src`` → ``q`` and its rows of the scale grid.

    Args:
        src: ``[R, N]`` BF16 bits (int16/uint16) or float32, the weight's rows from a multiple of 128.
        q: uint8 ``[R, N]`` to fill with float8_e4m3fn bytes.
        scale: float32 ``[ceil(R/128), ceil(N/128)]`` to fill (the ``weight_scale_inv`` rows of these blocks).
    Example: ``quantize_rows(bits, q, s)`` equals ``fp8.quantize(torch.from_numpy(bits).view(torch.bfloat16))``.
    """
    if src.dtype == np.float32:
        _quantize(np.ascontiguousarray(src).view(np.int32), np.int32(0), q, scale)
    elif src.dtype in (np.int16, np.uint16):
        _quantize(np.ascontiguousarray(src).view(np.int16), np.int32(16), q, scale)
    else:
        raise TypeError(f"quantize_rows takes BF16 bits or float32, not {src.dtype}")


def quantize_packed_rows(packed: np.ndarray, group_scale: np.ndarray, signed: bool, q: np.ndarray,
                         scale: np.ndarray) -> None:
    """Block-FP8 quantisation of a 4-bit group-quantised weight's rows, straight from its packed bytes: each
    element is ``f32(code) × its group's scale`` (the INT4 formats' dequantisation), then as ``quantize_rows``.

    Args:
        packed: uint8 ``[R, N/2]``, two codes per byte, column 2k in byte k's low nibble (compressed-tensors'
            int32 words read little-endian, or W4A8's bytes); rows from a multiple of 128.
        group_scale: float32 ``[R, N / group]``; ``group`` divides 128.
        signed: nibbles are two's-complement int4 (W4A8) rather than offset-binary ``code + 8`` (compressed-tensors).
        q, scale: as ``quantize_rows``.
    Example: ``quantize_packed_rows(raw, gs, False, q, s)`` equals ``fp8.quantize(quant4.dequantize_ct_int4(…))``.
    """
    rows, half = packed.shape
    groups = group_scale.shape[1] if group_scale.ndim == 2 else 0
    if packed.dtype != np.uint8 or group_scale.shape[0] != rows or not groups or half % groups \
            or BLOCK % (2 * half // groups):
        raise ValueError(f"{list(group_scale.shape)} group scales for {list(packed.shape)} packed bytes: need one "
                         f"scale per group of each row, groups dividing {BLOCK} inputs")
    if q.dtype != np.uint8 or q.shape != (rows, 2 * half) or scale.shape[0] < -(-rows // BLOCK) \
            or scale.shape[1] != -(-2 * half // BLOCK):
        raise ValueError(f"{list(q.shape)} codes and {list(scale.shape)} scales for {list(packed.shape)} packed "
                         f"bytes: need uint8 [{rows}, {2 * half}] and one scale per {BLOCK}×{BLOCK} block")
    packed, group_scale = np.ascontiguousarray(packed), np.ascontiguousarray(group_scale, dtype=np.float32)
    if SHUFFLE and (2 * half // groups) % 32 == 0 and q.strides[1] == 1:
        _quantize_packed_shuffled(packed, group_scale, *_code_tables(signed), q, scale)
    else:
        _quantize_packed(packed, group_scale, _code_pairs(signed), q, scale)


@functools.lru_cache(maxsize=2)
def _code_tables(signed: bool) -> tuple[np.ndarray, np.ndarray]:
    """(float32 [16]: nibble v's code, uint64 [2]: the 16 bytes |code|); a nibble is two's complement (signed) or
    ``code + 8``."""
    n = np.arange(16)
    code = ((n ^ 8) - 8) if signed else (n - 8)
    values, magnitudes = code.astype(np.float32), np.abs(code).astype(np.uint8).view(np.uint64)
    values.flags.writeable = magnitudes.flags.writeable = False
    return values, magnitudes


@functools.lru_cache(maxsize=2)
def _code_pairs(signed: bool) -> np.ndarray:
    """int64 [256]: byte b's two 4-bit codes as float32 (low nibble first, ``_code_tables``), one 64-bit word per
    byte."""
    values, b = _code_tables(signed)[0], np.arange(256)
    pairs = np.stack([values[b & 15], values[b >> 4]], axis=1).view(np.int64).reshape(256)
    pairs.flags.writeable = False
    return pairs


def e4m3_bytes(x: np.ndarray) -> np.ndarray:
    """float32 → float8_e4m3fn bytes (clamped to ±448 first; finite input), the encoder ``quantize_rows`` uses."""
    flat = np.ascontiguousarray(x, dtype=np.float32).reshape(-1)
    out = np.empty(flat.shape, dtype=np.uint8)
    _e4m3_array(flat, out)
    return out.reshape(np.shape(x))


def dequantize_rows(u8: np.ndarray, scale: np.ndarray, first_row: int, values: np.ndarray, out: np.ndarray) -> None:
    """FP8 bytes ``u8 [R, N]`` (weight rows ``first_row…``) × their block scales → ``out``: float32 products, or
    their BF16 bits (uint16/int16) rounded once. ``values`` are the 256 e4m3 values (``fp8.e4m3_values``)."""
    scale = np.ascontiguousarray(scale, dtype=np.float32)
    if out.dtype == np.float32:
        _dequantize_f32(u8, scale, first_row, values, out)
    elif out.dtype in (np.int16, np.uint16):
        _dequantize_bf16(u8, scale, first_row, values, out.view(np.uint16))
    else:
        raise TypeError(f"dequantize_rows writes float32 or BF16 bits, not {out.dtype}")


@njit(**_JIT)
def _bf16_array(x, out):  # type: ignore[no-untyped-def]
    for j in range(x.shape[0]):
        out[j] = _bf16(x[j])


def bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 → BF16 bit patterns (uint16), the rounding ``dequantize_rows`` uses: nearest even, NaN → 0x7FC0."""
    flat = np.ascontiguousarray(x, dtype=np.float32).reshape(-1)
    out = np.empty(flat.shape, dtype=np.uint16)
    _bf16_array(flat, out)
    return out.reshape(np.shape(x))


def warm() -> None:
    """Load (or compile, the first time on a machine) every loop for the dtypes the converter uses."""
    bits, f32 = np.zeros((1, 1), np.int16), np.zeros((1, 1), np.float32)
    q, s = np.zeros((1, 1), np.uint8), np.zeros((1, 1), np.float32)
    quantize_rows(bits, q, s)
    quantize_rows(f32, q, s)
    quantize_packed_rows(np.zeros((1, 1), np.uint8), f32, False, np.zeros((1, 2), np.uint8), s)
    quantize_packed_rows(np.zeros((1, 16), np.uint8), f32, False, np.zeros((1, 32), np.uint8), s)  # shuffled
    values = np.zeros(256, np.float32)
    values.flags.writeable = False  # as fp8.e4m3_values() hands it over (a read-only array is its own signature)
    dequantize_rows(q, s, 0, values, np.zeros((1, 1), np.uint16))
    dequantize_rows(q, s, 0, values, np.zeros((1, 1), np.float32))
