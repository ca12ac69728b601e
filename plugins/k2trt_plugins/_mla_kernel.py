"""Triton kernels of the absorbed MLA decode: split-K attention over the latent cache, and the split reduction
(imported lazily by mla.py; the only MLA module that imports triton)."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def mla_split_kernel(qlat_ptr, qpe_ptr, kv_ptr, bt_ptr, lens_ptr, o_ptr, lse_ptr, H, C, R, chunk, scale,
                     stride_qb, stride_qh, stride_pb, stride_ph, stride_kvrow, stride_btb,
                     stride_ob, stride_os, stride_oh, stride_lb, stride_ls,
                     PAGE: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr,
                     BLOCK_R: tl.constexpr, PRECISION: tl.constexpr):
    # One program: one sequence b, one slice of its positions, BLOCK_H heads. All heads share the latent, so each
    # KV tile is read once for every head of the slice (the point of absorbed MLA at 4–16 heads per rank).
    b = tl.program_id(0)
    split = tl.program_id(1)
    hb = tl.program_id(2)
    heads = hb * BLOCK_H + tl.arange(0, BLOCK_H)
    hmask = heads < H
    offs_c = tl.arange(0, BLOCK_C)
    offs_r = tl.arange(0, BLOCK_R)
    cmask = offs_c < C
    rmask = offs_r < R
    q = tl.load(qlat_ptr + b * stride_qb + heads[:, None] * stride_qh + offs_c[None, :],
                mask=hmask[:, None] & cmask[None, :], other=0.0).to(tl.float32)  # [BH, C]
    qp = tl.load(qpe_ptr + b * stride_pb + heads[:, None] * stride_ph + offs_r[None, :],
                 mask=hmask[:, None] & rmask[None, :], other=0.0).to(tl.float32)  # [BH, R]
    seq_len = tl.load(lens_ptr + b)
    start = split * chunk
    end = tl.minimum(start + chunk, seq_len)
    m = tl.full([BLOCK_H], float("-inf"), tl.float32)
    l = tl.zeros([BLOCK_H], tl.float32)
    acc = tl.zeros([BLOCK_H, BLOCK_C], tl.float32)
    for s0 in range(start, end, BLOCK_S):
        pos = s0 + tl.arange(0, BLOCK_S)
        smask = pos < end
        page = tl.load(bt_ptr + b * stride_btb + pos // PAGE, mask=smask, other=0)
        row = (page.to(tl.int64) * PAGE + pos % PAGE) * stride_kvrow  # [BS]
        kv = tl.load(kv_ptr + row[:, None] + offs_c[None, :], mask=smask[:, None] & cmask[None, :],
                     other=0.0).to(tl.float32)  # [BS, C] latent
        kpe = tl.load(kv_ptr + row[:, None] + C + offs_r[None, :], mask=smask[:, None] & rmask[None, :],
                      other=0.0).to(tl.float32)  # [BS, R] shared rope key
        sc = tl.dot(q, tl.trans(kv), input_precision=PRECISION)
        sc += tl.dot(qp, tl.trans(kpe), input_precision=PRECISION)  # [BH, BS]
        sc = tl.where(smask[None, :], sc * scale, float("-inf"))
        m_new = tl.maximum(m, tl.max(sc, axis=1))
        alpha = tl.exp(m - m_new)
        p = tl.exp(sc - m_new[:, None])
        l = l * alpha + tl.sum(p, axis=1)
        acc = acc * alpha[:, None] + tl.dot(p, kv, input_precision=PRECISION)
        m = m_new
    # An empty slice (start ≥ seq_len) leaves l = 0: lse = -inf, and the reduction gives it weight 0.
    has = l > 0
    o = acc / tl.where(has, l, 1.0)[:, None]
    lse = tl.where(has, m + tl.log(tl.where(has, l, 1.0)), float("-inf"))
    tl.store(o_ptr + b * stride_ob + split * stride_os + heads[:, None] * stride_oh + offs_c[None, :], o,
             mask=hmask[:, None] & cmask[None, :])
    tl.store(lse_ptr + b * stride_lb + split * stride_ls + heads, lse, mask=hmask)


@triton.jit
def mla_reduce_kernel(o_ptr, lse_ptr, out_ptr, H, C, NSPLIT, stride_ob, stride_os, stride_oh, stride_lb,
                      stride_ls, stride_outb, stride_outh, BLOCK_SPLIT: tl.constexpr, BLOCK_C: tl.constexpr):
    # out[b, h] = Σ_i exp(lse_i − max) · o_i / Σ_i exp(lse_i − max) over the splits.
    b = tl.program_id(0)
    h = tl.program_id(1)
    offs_s = tl.arange(0, BLOCK_SPLIT)
    offs_c = tl.arange(0, BLOCK_C)
    smask = offs_s < NSPLIT
    lse = tl.load(lse_ptr + b * stride_lb + offs_s * stride_ls + h, mask=smask, other=float("-inf"))
    mx = tl.max(lse, axis=0)
    w = tl.where(smask & (lse > float("-inf")), tl.exp(lse - mx), 0.0)  # [BSPLIT]
    o = tl.load(o_ptr + b * stride_ob + offs_s[:, None] * stride_os + h * stride_oh + offs_c[None, :],
                mask=smask[:, None] & (offs_c < C)[None, :], other=0.0)
    out = tl.sum(o * w[:, None], axis=0) / tl.sum(w, axis=0)
    tl.store(out_ptr + b * stride_outb + h * stride_outh + offs_c, out, mask=offs_c < C)
