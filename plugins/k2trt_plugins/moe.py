"""K2's routed experts as two grouped block-FP8 GEMMs over the routed tokens.

# T tokens, H hidden (K2: 7168), F expert FFN width (K2: 2048; 128 per rank at MoE-TP16), E local experts,
# k experts per token, S = T·k routed slots (slot = token·k + j), BM rows per GEMM tile

out[t] = Σ_j w[t, j] · W2[e_j] · (silu(W1[e_j]·x̂[t]) ⊙ (W3[e_j]·x̂[t]))ˆ, where x̂ is ``x`` quantised per token per
128 columns and ``h``ˆ the SwiGLU output quantised the same way (in float32, before any rounding to bf16). Every W is
float8_e4m3fn with 128×128 ``scale_inv`` blocks: W1 = gate_proj, W3 = up_proj ``[E, F, H]``, W2 = down_proj
``[E, H, F]`` (TensorRT-LLM's w1/w3/w2 naming).

The Triton path groups the S slots by expert (``align_slots``: a stable sort, each expert's run padded to a multiple
of BM, computed with tensor ops so nothing syncs with the host), then
  1. gate/up kernel: one tile = BM slots of one expert × one 128-column block of F; SwiGLU and the activation
     quantisation of h happen in its epilogue (a tile is exactly one activation-scale block);
  2. down kernel: BM slots × BN hidden columns, scaled by the slot's router weight, written per slot in float32;
  3. the k slots of each token are summed (deterministic, no atomics) and rounded once to x's dtype.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._runtime import (ACT_SCALE_MIN, BLOCK, cdiv, check_same_device, check_tensor, empty, interpreting,
                       load_kernels, require_triton)
from .fp8 import act_quant, act_quant_reference, fp8_gemm_reference

if TYPE_CHECKING:
    import torch


def _check(x: "torch.Tensor", topk_ids: "torch.Tensor", topk_weights: "torch.Tensor", w1: "torch.Tensor",
           s1: "torch.Tensor", w3: "torch.Tensor", s3: "torch.Tensor", w2: "torch.Tensor",
           s2: "torch.Tensor") -> None:
    import torch

    check_tensor("x", x, ndim=2, dtypes=(torch.bfloat16, torch.float16, torch.float32))
    t, h = x.shape
    check_tensor("topk_ids", topk_ids, ndim=2, dtypes=(torch.int32, torch.int64), shape=(t, None))
    k = topk_ids.shape[1]
    check_tensor("topk_weights", topk_weights, ndim=2, dtypes=(torch.float32,), shape=(t, k))
    fp8 = (torch.float8_e4m3fn,)
    check_tensor("w1", w1, ndim=3, dtypes=fp8, shape=(None, None, h))
    e, f = w1.shape[0], w1.shape[1]
    check_tensor("w3", w3, ndim=3, dtypes=fp8, shape=(e, f, h))
    check_tensor("w2", w2, ndim=3, dtypes=fp8, shape=(e, h, f))
    f32 = (torch.float32,)
    check_tensor("s1", s1, ndim=3, dtypes=f32, shape=(e, cdiv(f, BLOCK), cdiv(h, BLOCK)))
    check_tensor("s3", s3, ndim=3, dtypes=f32, shape=(e, cdiv(f, BLOCK), cdiv(h, BLOCK)))
    check_tensor("s2", s2, ndim=3, dtypes=f32, shape=(e, cdiv(h, BLOCK), cdiv(f, BLOCK)))
    for name, w in (("w1", w1), ("w3", w3), ("w2", w2), ("s1", s1), ("s3", s3), ("s2", s2)):
        if not w.is_contiguous():
            raise ValueError(f"{name} must be contiguous, got strides {w.stride()} for shape {tuple(w.shape)}")
    check_same_device(x=x, topk_ids=topk_ids, topk_weights=topk_weights, w1=w1, w2=w2, w3=w3)


def align_slots(topk_ids: "torch.Tensor", num_experts: int, block_m: int) -> "tuple[torch.Tensor, torch.Tensor]":
    """Group routed slots by expert, each expert's run padded to a multiple of ``block_m``.

    Returns ``(slots [L] int32, block_expert [L/block_m] int32)``: ``slots`` lists slot ids (token·k + j) expert by
    expert with padding entries equal to S = T·k; ``block_expert[b]`` is the expert of rows ``b·block_m …``, or
    ``num_experts`` for blocks past the end. L = S + min(E, S)·(block_m − 1) rounded up, so no host sync is needed.
    """
    import torch

    dev = topk_ids.device
    flat = topk_ids.reshape(-1).long()  # [S]
    s = flat.numel()
    counts = torch.bincount(flat, minlength=num_experts)[:num_experts]  # [E]
    padded = (counts + block_m - 1) // block_m * block_m
    pad_end = padded.cumsum(0)
    pad_start = pad_end - padded
    order = torch.argsort(flat, stable=True)  # slots sorted by expert
    e_sorted = flat[order]
    start = counts.cumsum(0) - counts
    pos = pad_start[e_sorted] + torch.arange(s, device=dev) - start[e_sorted]
    length = cdiv(s + min(num_experts, s) * (block_m - 1), block_m) * block_m
    slots = torch.full((length,), s, dtype=torch.int32, device=dev)
    slots[pos] = order.to(torch.int32)
    block_start = torch.arange(0, length, block_m, device=dev)
    block_expert = torch.searchsorted(pad_end, block_start, right=True).to(torch.int32)  # E past the end
    return slots, block_expert


def moe_fp8(x: "torch.Tensor", topk_ids: "torch.Tensor", topk_weights: "torch.Tensor", w1: "torch.Tensor",
            s1: "torch.Tensor", w3: "torch.Tensor", s3: "torch.Tensor", w2: "torch.Tensor",
            s2: "torch.Tensor") -> "torch.Tensor":
    """Routed-expert FFN over block-FP8 weights with the Triton grouped GEMMs.

    Args:
        x: ``[T, H]`` bf16/fp16/fp32 hidden states.
        topk_ids: ``[T, k]`` int32/int64 expert ids in ``0..E-1`` (from ``route``; ids of other ranks' experts must
            be remapped or dropped by the caller).
        topk_weights: ``[T, k]`` float32 router weights (already × routed_scaling_factor).
        w1, w3: ``[E, F, H]`` float8_e4m3fn gate/up weights; s1, s3 ``[E, ceil(F/128), ceil(H/128)]`` float32.
        w2: ``[E, H, F]`` float8_e4m3fn down weight; s2 ``[E, ceil(H/128), ceil(F/128)]`` float32.
    Returns:
        ``[T, H]`` in x's dtype: Σ_j w[t, j] · expert_{ids[t, j]}(x[t]).
    Example:
        ``y = moe_fp8(x, *route(logits, bias, 8, routed_scaling_factor=2.827), w1, s1, w3, s3, w2, s2)``
    """
    import torch

    _check(x, topk_ids, topk_weights, w1, s1, w3, s3, w2, s2)
    require_triton(x.device, fp8=True)
    kern = load_kernels("_fp8_kernel")
    t, h = x.shape
    k = topk_ids.shape[1]
    e, f = w1.shape[0], w1.shape[1]
    s = t * k
    if s == 0:
        return torch.zeros_like(x)
    cpu = x.device.type == "cpu"
    block_m = 16 if (cpu or s <= 64 * e) else 64  # decode: few slots per expert, small tiles waste less
    slots, block_expert = align_slots(topk_ids, e, block_m)
    n_blocks = block_expert.numel()
    xq, xs = act_quant(x)
    hq = empty(s, f, dtype=torch.float8_e4m3fn, device=x.device)
    hs = empty(s, cdiv(f, BLOCK), dtype=torch.float32, device=x.device)
    kern.moe_gate_up_kernel[(n_blocks, cdiv(f, BLOCK))](
        xq, xs, w1, s1, w3, s3, hq, hs, slots, block_expert, s, h, f, e, xq.stride(0), xs.stride(0),
        w1.stride(0), w1.stride(1), s1.stride(0), s1.stride(1), hq.stride(0), hs.stride(0), ACT_SCALE_MIN,
        TOP_K=k, BLOCK_M=block_m, BLOCK=BLOCK, EXACT=interpreting())
    y = empty(s, h, dtype=torch.float32, device=x.device)  # per-slot, already × router weight
    rw = topk_weights.reshape(-1).contiguous()
    block_n = 128
    kern.moe_down_kernel[(n_blocks, cdiv(h, block_n))](
        hq, hs, w2, s2, rw, y, slots, block_expert, s, h, f, e, hq.stride(0), hs.stride(0), w2.stride(0),
        w2.stride(1), s2.stride(0), s2.stride(1), y.stride(0), BLOCK_M=block_m, BLOCK_N=block_n, BLOCK=BLOCK)
    return y.view(t, k, h).sum(1).to(x.dtype)


def moe_fp8_reference(x: "torch.Tensor", topk_ids: "torch.Tensor", topk_weights: "torch.Tensor",
                      w1: "torch.Tensor", s1: "torch.Tensor", w3: "torch.Tensor", s3: "torch.Tensor",
                      w2: "torch.Tensor", s2: "torch.Tensor") -> "torch.Tensor":
    """Plain-torch twin of ``moe_fp8``: a loop over the experts that received tokens."""
    import torch

    _check(x, topk_ids, topk_weights, w1, s1, w3, s3, w2, s2)
    t, h = x.shape
    k = topk_ids.shape[1]
    xq, xs = act_quant_reference(x)
    y = torch.zeros(t * k, h, dtype=torch.float32, device=x.device)  # per slot, like the kernel
    flat = topk_ids.reshape(-1).long()
    for e in flat.unique().tolist():
        slot = (flat == e).nonzero().squeeze(1)  # [n]
        tok = slot // k
        g = fp8_gemm_reference(xq[tok], xs[tok], w1[e], s1[e], torch.float32)  # [n, F]
        u = fp8_gemm_reference(xq[tok], xs[tok], w3[e], s3[e], torch.float32)
        hq, hs = act_quant_reference(torch.nn.functional.silu(g) * u)
        y[slot] = fp8_gemm_reference(hq, hs, w2[e], s2[e], torch.float32) * topk_weights.reshape(-1)[slot, None]
    return y.view(t, k, h).sum(1).to(x.dtype)
