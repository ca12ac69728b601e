"""MLA decode over K2's latent KV cache with absorbed W_UK / W_UV, split-K over the sequence.

# B sequences, H query heads on this rank (K2 at TP16: 4), Dn qk_nope (128), R qk_rope (64), Dv v_head (128),
# C kv_lora_rank (512), D = C + R (576) cache row, P pages of PAGE tokens, L positions of a sequence

K2 caches one row per token and layer: the normalised latent ``c`` [C] followed by the shared, rotated rope key
``k_pe`` [R]. ``kv_b_proj`` viewed as ``[H, Dn + Dv, C]`` gives per head W_UK = rows ``:Dn`` and W_UV = rows ``Dn:``.
Absorbing them (DeepSeek-V3's "absorb" path):
    q_lat[h]   = q_nope[h] @ W_UK[h]                       # [C]
    score[h,s] = (q_lat[h]·c[s] + q_pe[h]·k_pe[s]) · softmax_scale
    o_lat[h]   = Σ_s softmax(score[h])[s] · c[s]           # [C]
    out[h]     = W_UV[h] @ o_lat[h]                        # [Dv]
which equals attention with per-head keys ``[W_UK c ‖ k_pe]`` and values ``W_UV c`` but reads only D elements per
cached token for all heads together. ``softmax_scale`` is an argument: K2 uses the YaRN-corrected one.

The Triton path: q_lat and the output projection are batched matmuls (torch, float32); the attention runs as
``num_splits`` programs per sequence, each over one slice of positions for up to 16 heads (online softmax, float32,
partial output and log-sum-exp written out), then a second kernel merges the slices. The cache is paged:
``kv_cache [P, PAGE, D]`` with ``block_table [B, pages]``; a contiguous ``[B, Lmax, D]`` cache is the special case
``kv_cache`` as is, ``block_table = arange(B)[:, None]``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._runtime import (cdiv, check_same_device, check_tensor, empty, interpreting, load_kernels, next_pow2,
                       require_triton)

if TYPE_CHECKING:
    import torch


def _check(q_nope: "torch.Tensor", q_pe: "torch.Tensor", kv_cache: "torch.Tensor", block_table: "torch.Tensor",
           seq_lens: "torch.Tensor", w_uk: "torch.Tensor", w_uv: "torch.Tensor", softmax_scale: float,
           num_splits: int | None) -> None:
    import torch

    floats = (torch.bfloat16, torch.float16, torch.float32)
    check_tensor("q_nope", q_nope, ndim=3, dtypes=floats)
    b, h, dn = q_nope.shape
    check_tensor("q_pe", q_pe, ndim=3, dtypes=floats, shape=(b, h, None))
    r = q_pe.shape[2]
    check_tensor("w_uk", w_uk, ndim=3, dtypes=floats, shape=(h, dn, None))
    c = w_uk.shape[2]
    check_tensor("w_uv", w_uv, ndim=3, dtypes=floats, shape=(h, None, c))
    check_tensor("kv_cache", kv_cache, ndim=3, dtypes=floats, shape=(None, None, c + r))
    if not kv_cache.is_contiguous():
        raise ValueError(f"kv_cache must be contiguous [pages, PAGE, {c + r}], got strides {kv_cache.stride()}")
    check_tensor("block_table", block_table, ndim=2, dtypes=(torch.int32,), shape=(b, None))
    check_tensor("seq_lens", seq_lens, ndim=1, dtypes=(torch.int32,), shape=(b,))
    check_same_device(q_nope=q_nope, q_pe=q_pe, kv_cache=kv_cache, block_table=block_table, seq_lens=seq_lens,
                      w_uk=w_uk, w_uv=w_uv)
    if not softmax_scale > 0:
        raise ValueError(f"softmax_scale must be positive, got {softmax_scale}")
    if num_splits is not None and num_splits < 1:
        raise ValueError(f"num_splits must be ≥ 1, got {num_splits}")


def _default_splits(batch: int, capacity: int, block_s: int, head_blocks: int, device: "torch.device") -> int:
    """Enough programs to fill the GPU (≈2 per SM), never slices shorter than 4 tiles."""
    import torch

    if device.type == "cuda":
        sms = torch.cuda.get_device_properties(device).multi_processor_count
        want = cdiv(2 * sms, batch * head_blocks)
    else:
        want = 4
    return max(1, min(want, cdiv(capacity, 4 * block_s), 64))


def mla_decode(q_nope: "torch.Tensor", q_pe: "torch.Tensor", kv_cache: "torch.Tensor", block_table: "torch.Tensor",
               seq_lens: "torch.Tensor", w_uk: "torch.Tensor", w_uv: "torch.Tensor", softmax_scale: float,
               num_splits: int | None = None) -> "torch.Tensor":
    """One decode step of absorbed MLA with the Triton split-K kernels.

    Args:
        q_nope: ``[B, H, Dn]`` query without RoPE; q_pe ``[B, H, R]`` rotated rope query.
        kv_cache: ``[P, PAGE, C+R]`` latent ‖ rope key rows; block_table ``[B, pages]`` int32 page ids;
            seq_lens ``[B]`` int32, each ≥ 1 and ≤ pages·PAGE (not checked: that would sync with the device).
        w_uk: ``[H, Dn, C]`` and w_uv ``[H, Dv, C]``: this rank's heads of kv_b_proj (dequantised).
        softmax_scale: K2: ``ModelSpec.softmax_scale`` (YaRN-corrected, ≈0.1309 for 0711).
        num_splits: sequence slices per sequence (None: fill the device).
    Returns:
        ``[B, H, Dv]`` in q_nope's dtype.
    Example:
        ``o = mla_decode(qn, qp, cache, bt, lens, kv_b.view(H, 256, 512)[:, :128], kv_b.view(H, 256, 512)[:, 128:],
        spec.softmax_scale)``
    """
    import torch

    _check(q_nope, q_pe, kv_cache, block_table, seq_lens, w_uk, w_uv, softmax_scale, num_splits)
    require_triton(q_nope.device)
    kern = load_kernels("_mla_kernel")
    b, h, _ = q_nope.shape
    c, r = w_uk.shape[2], q_pe.shape[2]
    page = kv_cache.shape[1]
    dev = q_nope.device
    if b == 0:
        return empty(0, h, w_uv.shape[1], dtype=q_nope.dtype, device=dev)
    q_lat = torch.einsum("bhd,hdc->bhc", q_nope.float(), w_uk.float()).contiguous()  # [B, H, C]
    block_h = 16  # tl.dot needs ≥ 16 rows: 4–16 heads fill one block (padding heads masked), more take several
    # 16 positions per step: the float32 operand tiles (tf32x3 splits each in two) of a 16 × 512 latent tile stay
    # well inside Hopper's 227 KB of shared memory; decode is bound by HBM, not by the step count.
    block_s = 16
    head_blocks = cdiv(h, block_h)
    capacity = block_table.shape[1] * page
    splits = num_splits or _default_splits(b, capacity, block_s, head_blocks, dev)
    chunk = cdiv(cdiv(capacity, splits), block_s) * block_s
    o_part = empty(b, splits, h, c, dtype=torch.float32, device=dev)
    lse = empty(b, splits, h, dtype=torch.float32, device=dev)
    kern.mla_split_kernel[(b, splits, head_blocks)](
        q_lat, q_pe, kv_cache, block_table, seq_lens, o_part, lse, h, c, r, chunk, float(softmax_scale),
        q_lat.stride(0), q_lat.stride(1), q_pe.stride(0), q_pe.stride(1), kv_cache.stride(1), block_table.stride(0),
        o_part.stride(0), o_part.stride(1), o_part.stride(2), lse.stride(0), lse.stride(1),
        PAGE=page, BLOCK_H=block_h, BLOCK_S=block_s, BLOCK_C=next_pow2(c), BLOCK_R=next_pow2(r),
        PRECISION="ieee" if interpreting() else "tf32x3", num_warps=4, num_stages=2)
    o_lat = empty(b, h, c, dtype=torch.float32, device=dev)
    kern.mla_reduce_kernel[(b, h)](
        o_part, lse, o_lat, h, c, splits, o_part.stride(0), o_part.stride(1), o_part.stride(2), lse.stride(0),
        lse.stride(1), o_lat.stride(0), o_lat.stride(1), BLOCK_SPLIT=next_pow2(splits), BLOCK_C=next_pow2(c))
    return torch.einsum("bhc,hdc->bhd", o_lat, w_uv.float()).to(q_nope.dtype)


def mla_decode_reference(q_nope: "torch.Tensor", q_pe: "torch.Tensor", kv_cache: "torch.Tensor",
                         block_table: "torch.Tensor", seq_lens: "torch.Tensor", w_uk: "torch.Tensor",
                         w_uv: "torch.Tensor", softmax_scale: float, num_splits: int | None = None) -> "torch.Tensor":
    """Plain-torch twin of ``mla_decode`` (float32, one softmax per sequence; ``num_splits`` does not change it)."""
    import torch

    _check(q_nope, q_pe, kv_cache, block_table, seq_lens, w_uk, w_uv, softmax_scale, num_splits)
    b, h, _ = q_nope.shape
    c = w_uk.shape[2]
    page = kv_cache.shape[1]
    rows = kv_cache.reshape(-1, kv_cache.shape[2])  # [P·PAGE, D]
    outs = []
    for i, n in enumerate(seq_lens.tolist()):
        pos = torch.arange(n, device=kv_cache.device)
        kv = rows[block_table[i, pos // page].long() * page + pos % page].float()  # [L, D]
        lat, k_pe = kv[:, :c], kv[:, c:]
        q_lat = torch.einsum("hd,hdc->hc", q_nope[i].float(), w_uk.float())  # [H, C]
        scores = (q_lat @ lat.T + q_pe[i].float() @ k_pe.T) * softmax_scale  # [H, L]
        o_lat = scores.softmax(-1) @ lat  # [H, C]
        outs.append(torch.einsum("hc,hdc->hd", o_lat, w_uv.float()))
    return torch.stack(outs).to(q_nope.dtype) if outs else torch.empty(
        0, h, w_uv.shape[1], dtype=q_nope.dtype, device=q_nope.device)
