"""Triton kernel of the K2 router (imported lazily by router.py; the only router module that imports triton)."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def route_kernel(logits_ptr, bias_ptr, ids_ptr, w_ptr, T, E, GROUP_SIZE, stride_l, stride_ids, stride_w, scale,
                 TOP_K: tl.constexpr, N_GROUP: tl.constexpr, TOPK_GROUP: tl.constexpr, HAS_BIAS: tl.constexpr,
                 RENORM: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_G: tl.constexpr,
                 BLOCK_K: tl.constexpr):
    # One program routes BLOCK_T tokens; the whole expert row (E ≤ BLOCK_E) sits in registers.
    pid = tl.program_id(0)
    rows = pid * BLOCK_T + tl.arange(0, BLOCK_T)  # [BT]
    cols = tl.arange(0, BLOCK_E)  # [BE]
    rmask = rows < T
    cmask = cols < E
    x = tl.load(logits_ptr + rows[:, None] * stride_l + cols[None, :], mask=rmask[:, None] & cmask[None, :],
                other=0.0).to(tl.float32)
    s = tl.sigmoid(x)  # [BT, BE] unbiased scores: these become the weights
    if HAS_BIAS:
        b = tl.load(bias_ptr + cols, mask=cmask, other=0.0).to(tl.float32)
        sel = s + b[None, :]  # biased scores: used for selection only
    else:
        sel = s
    sel = tl.where(cmask[None, :], sel, float("-inf"))  # padding columns never win

    if N_GROUP > 1:
        # Group score = sum of the group's two best biased scores; keep the TOPK_GROUP best groups.
        grp = cols // GROUP_SIZE  # [BE]; padding columns fall in no real group
        gcols = tl.arange(0, BLOCK_G)
        gscore = tl.full([BLOCK_T, BLOCK_G], float("-inf"), tl.float32)
        for g in tl.static_range(N_GROUP):
            v = tl.where((grp == g)[None, :], sel, float("-inf"))
            m1 = tl.max(v, axis=1)
            i1 = tl.min(tl.where(v == m1[:, None], cols[None, :], BLOCK_E), axis=1)
            m2 = tl.max(tl.where(cols[None, :] == i1[:, None], float("-inf"), v), axis=1)
            gscore = tl.where(gcols[None, :] == g, (m1 + m2)[:, None], gscore)
        keep = tl.zeros([BLOCK_T, BLOCK_E], tl.int32)  # 1 where the column's group is kept
        for _ in tl.static_range(TOPK_GROUP):
            gm = tl.max(gscore, axis=1)
            gi = tl.min(tl.where(gscore == gm[:, None], gcols[None, :], BLOCK_G), axis=1)
            keep = tl.where(grp[None, :] == gi[:, None], 1, keep)
            gscore = tl.where(gcols[None, :] == gi[:, None], float("-inf"), gscore)
        sel = tl.where(keep != 0, sel, float("-inf"))

    # Top-k by repeated arg-max (lowest index on ties), in descending order like torch.topk.
    kcols = tl.arange(0, BLOCK_K)
    ids = tl.zeros([BLOCK_T, BLOCK_K], tl.int32)
    wts = tl.zeros([BLOCK_T, BLOCK_K], tl.float32)
    for j in tl.static_range(TOP_K):
        mx = tl.max(sel, axis=1)
        idx = tl.min(tl.where(sel == mx[:, None], cols[None, :], BLOCK_E), axis=1)  # [BT]
        hit = cols[None, :] == idx[:, None]
        wj = tl.sum(tl.where(hit, s, 0.0), axis=1)  # the unbiased score of the chosen expert
        ids = tl.where(kcols[None, :] == j, idx[:, None], ids)
        wts = tl.where(kcols[None, :] == j, wj[:, None], wts)
        sel = tl.where(hit, float("-inf"), sel)
    if RENORM:
        wts = wts / tl.sum(wts, axis=1)[:, None]
    wts = wts * scale
    kmask = rmask[:, None] & (kcols[None, :] < TOP_K)
    tl.store(ids_ptr + rows[:, None] * stride_ids + kcols[None, :], ids, mask=kmask)
    tl.store(w_ptr + rows[:, None] * stride_w + kcols[None, :], wts, mask=kmask)
