"""Triton kernels for block-FP8: the per-token activation quantiser and the block-scaled GEMM, plus the two grouped
MoE GEMMs built on the same inner loop (imported lazily; the only FP8 modules that import triton).

``EXACT`` (a constexpr, set under ``TRITON_INTERPRET=1``): Triton 3.9's interpreter narrows float32 to fp8 by cutting
mantissa bits and adding the first cut bit without carrying into the exponent (124.3 → 64.0 instead of 128.0) and
narrows to bf16 by truncation. With EXACT the kernels first round in float32 arithmetic to a value the narrow type
holds exactly (ties to even, as the GPU's cvt.rn does), so the cast is exact and CPU results are the GPU's.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def round_e4m3(v):
    # Nearest float8_e4m3fn value of float32 v (|v| ≤ 448), ties to even, computed in float32.
    exp = ((v.to(tl.int32, bitcast=True) >> 23) & 0xFF) - 127
    exp = tl.maximum(exp, -6)  # subnormals share the spacing of the lowest normal binade (2^-9)
    spacing = ((exp - 3 + 127) << 23).to(tl.float32, bitcast=True)  # 3 mantissa bits
    r = v / spacing  # exact: a power-of-two division, |r| ≤ 16
    r = (r + 12582912.0) - 12582912.0  # adding 1.5·2^23 rounds to an integer, ties to even
    return r * spacing


@triton.jit
def round_bf16(v):
    # Nearest bfloat16 value of float32 v, ties to even, as float32 (finite inputs).
    bits = v.to(tl.int32, bitcast=True)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & -65536
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def narrow(v, dtype: tl.constexpr, EXACT: tl.constexpr):
    # Cast float32 v to dtype; under EXACT, round first so the interpreter's cast has nothing left to round.
    if EXACT:
        if dtype == tl.float8e4nv:
            v = round_e4m3(v)
        elif dtype == tl.bfloat16:
            v = round_bf16(v)
    return v.to(dtype)


@triton.jit
def act_quant_kernel(x_ptr, q_ptr, s_ptr, M, K, stride_x, stride_q, stride_s, scale_min,
                     BLOCK_M: tl.constexpr, BLOCK: tl.constexpr, EXACT: tl.constexpr):
    # One program quantises BLOCK_M rows × one 128-column block: s = max(amax, 1e-4) / 448, q = x / s.
    pid_m = tl.program_id(0)
    kb = tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = kb * BLOCK + tl.arange(0, BLOCK)
    mask = (rows < M)[:, None] & (cols < K)[None, :]
    x = tl.load(x_ptr + rows[:, None] * stride_x + cols[None, :], mask=mask, other=0.0).to(tl.float32)
    s = tl.maximum(tl.max(tl.abs(x), axis=1), scale_min) / 448.0  # [BM]
    q = tl.clamp(x / s[:, None], -448.0, 448.0)
    tl.store(q_ptr + rows[:, None] * stride_q + cols[None, :], narrow(q, q_ptr.dtype.element_ty, EXACT), mask=mask)
    tl.store(s_ptr + rows * stride_s + kb, s, mask=rows < M)


@triton.jit
def fp8_gemm_kernel(a_ptr, as_ptr, w_ptr, ws_ptr, c_ptr, M, N, K, stride_a, stride_as, stride_w, stride_ws,
                    stride_c, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK: tl.constexpr,
                    EXACT: tl.constexpr):
    # C[M, N] = (A·a_scale) @ (W·w_scale)ᵀ with K stepped one 128-block at a time, so each step has one activation
    # scale per row and one weight scale per 128 output columns.
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK)
    rmask = rows < M
    cmask = cols < N
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for kb in range(0, tl.cdiv(K, BLOCK)):
        k = kb * BLOCK + offs_k
        kmask = k < K
        a = tl.load(a_ptr + rows[:, None] * stride_a + k[None, :], mask=rmask[:, None] & kmask[None, :], other=0.0)
        w = tl.load(w_ptr + cols[None, :] * stride_w + k[:, None], mask=kmask[:, None] & cmask[None, :], other=0.0)
        a_s = tl.load(as_ptr + rows * stride_as + kb, mask=rmask, other=0.0)  # [BM]
        w_s = tl.load(ws_ptr + (cols // BLOCK) * stride_ws + kb, mask=cmask, other=0.0)  # [BN]
        acc += tl.dot(a, w) * a_s[:, None] * w_s[None, :]
    tl.store(c_ptr + rows[:, None] * stride_c + cols[None, :], narrow(acc, c_ptr.dtype.element_ty, EXACT),
             mask=rmask[:, None] & cmask[None, :])


@triton.jit
def moe_gate_up_kernel(xq_ptr, xs_ptr, w1_ptr, s1_ptr, w3_ptr, s3_ptr, hq_ptr, hs_ptr, slots_ptr, block_expert_ptr,
                       S, H, F, E, stride_xq, stride_xs, stride_we, stride_wn, stride_se, stride_sn,
                       stride_hq, stride_hs, scale_min, TOP_K: tl.constexpr, BLOCK_M: tl.constexpr,
                       BLOCK: tl.constexpr, EXACT: tl.constexpr):
    # Rows are routed slots (token·k + j) of one expert; columns one 128-block of the expert FFN. Computes
    # silu(x·W1ᵀ) * (x·W3ᵀ) and quantises it per row for the down GEMM in the epilogue: the tile is exactly one
    # activation-scale block, so no second pass over the intermediate is needed.
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    e = tl.load(block_expert_ptr + pid_m)
    if e >= E:  # a block past the last expert's padded segment
        return
    slots = tl.load(slots_ptr + pid_m * BLOCK_M + tl.arange(0, BLOCK_M))  # [BM]; S marks padding
    valid = slots < S
    tok = tl.where(valid, slots // TOP_K, 0)
    cols = pid_n * BLOCK + tl.arange(0, BLOCK)
    cmask = cols < F
    offs_k = tl.arange(0, BLOCK)
    w1 = w1_ptr + e.to(tl.int64) * stride_we
    w3 = w3_ptr + e.to(tl.int64) * stride_we
    acc_g = tl.zeros([BLOCK_M, BLOCK], tl.float32)
    acc_u = tl.zeros([BLOCK_M, BLOCK], tl.float32)
    for kb in range(0, tl.cdiv(H, BLOCK)):
        k = kb * BLOCK + offs_k
        kmask = k < H
        a = tl.load(xq_ptr + tok[:, None] * stride_xq + k[None, :], mask=valid[:, None] & kmask[None, :], other=0.0)
        a_s = tl.load(xs_ptr + tok * stride_xs + kb, mask=valid, other=0.0)
        wmask = kmask[:, None] & cmask[None, :]
        wg = tl.load(w1 + cols[None, :] * stride_wn + k[:, None], mask=wmask, other=0.0)
        wu = tl.load(w3 + cols[None, :] * stride_wn + k[:, None], mask=wmask, other=0.0)
        sg = tl.load(s1_ptr + e * stride_se + pid_n * stride_sn + kb)
        su = tl.load(s3_ptr + e * stride_se + pid_n * stride_sn + kb)
        acc_g += tl.dot(a, wg) * (a_s[:, None] * sg)
        acc_u += tl.dot(a, wu) * (a_s[:, None] * su)
    h = acc_g * tl.sigmoid(acc_g) * acc_u  # [BM, 128]; masked columns are exactly 0
    s = tl.maximum(tl.max(tl.abs(h), axis=1), scale_min) / 448.0
    q = tl.clamp(h / s[:, None], -448.0, 448.0)
    tl.store(hq_ptr + slots[:, None] * stride_hq + cols[None, :], narrow(q, hq_ptr.dtype.element_ty, EXACT),
             mask=valid[:, None] & cmask[None, :])
    tl.store(hs_ptr + slots * stride_hs + pid_n, s, mask=valid)


@triton.jit
def moe_down_kernel(hq_ptr, hs_ptr, w2_ptr, s2_ptr, rw_ptr, y_ptr, slots_ptr, block_expert_ptr, S, H, F, E,
                    stride_hq, stride_hs, stride_we, stride_wn, stride_se, stride_sn, stride_y,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK: tl.constexpr):
    # y[slot] = router_weight[slot] · (h[slot] @ W2[e]ᵀ); the caller sums the k slots of each token.
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    e = tl.load(block_expert_ptr + pid_m)
    if e >= E:
        return
    slots = tl.load(slots_ptr + pid_m * BLOCK_M + tl.arange(0, BLOCK_M))
    valid = slots < S
    srow = tl.where(valid, slots, 0)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    cmask = cols < H
    offs_k = tl.arange(0, BLOCK)
    w2 = w2_ptr + e.to(tl.int64) * stride_we
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for kb in range(0, tl.cdiv(F, BLOCK)):
        k = kb * BLOCK + offs_k
        kmask = k < F
        a = tl.load(hq_ptr + srow[:, None] * stride_hq + k[None, :], mask=valid[:, None] & kmask[None, :], other=0.0)
        a_s = tl.load(hs_ptr + srow * stride_hs + kb, mask=valid, other=0.0)
        w = tl.load(w2 + cols[None, :] * stride_wn + k[:, None], mask=kmask[:, None] & cmask[None, :], other=0.0)
        w_s = tl.load(s2_ptr + e * stride_se + (cols // BLOCK) * stride_sn + kb, mask=cmask, other=0.0)
        acc += tl.dot(a, w) * a_s[:, None] * w_s[None, :]
    rw = tl.load(rw_ptr + srow, mask=valid, other=0.0)
    acc = acc * rw[:, None]
    tl.store(y_ptr + srow[:, None] * stride_y + cols[None, :], acc, mask=valid[:, None] & cmask[None, :])
