"""Block-FP8 linear algebra in K2's format: the activation quantiser and the block-scaled GEMM.

# M rows (tokens), N output features, K input features, Kb = ceil(K/128), Nb = ceil(N/128)

Weights are float8_e4m3fn ``[N, K]`` with a float32 ``scale_inv`` ``[Nb, Kb]``: one multiplier per 128×128 block,
partial edge blocks using the one scale of their block for the rows/columns that exist. Activations are quantised
dynamically per token per 128 columns: ``s = max(amax, 1e-4) / 448``, ``q = x / s`` (DeepSeek-V3's ``act_quant``,
kimi_formats.md §2.4). The GEMM accumulates in float32 one 128-wide K block at a time, applying
``a_scale[m, kb] · w_scale[n // 128, kb]`` to each block's partial product, and rounds once to ``out_dtype``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._runtime import (ACT_SCALE_MIN, BLOCK, FP8_MAX, cdiv, check_same_device, check_tensor, empty, interpreting,
                       load_kernels, require_triton)

if TYPE_CHECKING:
    import torch

_ACT_DTYPES = ("float32", "bfloat16", "float16")


def _act_dtypes() -> "tuple[torch.dtype, ...]":
    import torch

    return tuple(getattr(torch, d) for d in _ACT_DTYPES)


def act_quant(x: "torch.Tensor") -> "tuple[torch.Tensor, torch.Tensor]":
    """Quantise activations per token per 128 columns with the Triton kernel.

    Args:
        x: ``[M, K]`` float32/bf16/fp16.
    Returns:
        ``(q [M, K] float8_e4m3fn, scale [M, ceil(K/128)] float32)`` with ``x ≈ q · scale`` blockwise.
    Example:
        ``q, s = act_quant(hidden)``; ``fp8_gemm(q, s, w, w_scale)``.
    """
    import torch

    check_tensor("x", x, ndim=2, dtypes=_act_dtypes())
    require_triton(x.device)
    k = load_kernels("_fp8_kernel")
    m, kk = x.shape
    q = empty(m, kk, dtype=torch.float8_e4m3fn, device=x.device)
    s = empty(m, cdiv(kk, BLOCK), dtype=torch.float32, device=x.device)
    if m and kk:
        block_m = 16 if x.device.type == "cpu" else 4
        k.act_quant_kernel[(cdiv(m, block_m), cdiv(kk, BLOCK))](
            x, q, s, m, kk, x.stride(0), q.stride(0), s.stride(0), ACT_SCALE_MIN, BLOCK_M=block_m, BLOCK=BLOCK,
            EXACT=interpreting())
    return q, s


def act_quant_reference(x: "torch.Tensor") -> "tuple[torch.Tensor, torch.Tensor]":
    """Plain-torch twin of ``act_quant``."""
    import torch

    check_tensor("x", x, ndim=2, dtypes=_act_dtypes())
    m, kk = x.shape
    kb = cdiv(kk, BLOCK)
    xf = torch.nn.functional.pad(x.float(), (0, kb * BLOCK - kk))  # zero padding leaves the amax unchanged
    s = xf.view(m, kb, BLOCK).abs().amax(-1).clamp_min(ACT_SCALE_MIN) / FP8_MAX  # [M, Kb]
    q = (x.float() / _expand_cols(s, kk)).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return q, s


def _expand_cols(s: "torch.Tensor", cols: int) -> "torch.Tensor":
    return s.repeat_interleave(BLOCK, dim=-1)[..., :cols]


def dequant_weight(w: "torch.Tensor", scale: "torch.Tensor") -> "torch.Tensor":
    """``[N, K]`` float8 weight × its ``[Nb, Kb]`` block scales → float32 (partial edge blocks cropped)."""
    n, kk = w.shape
    full = scale.float().repeat_interleave(BLOCK, 0)[:n].repeat_interleave(BLOCK, 1)[:, :kk]
    return w.float() * full


def quantize_weight(w: "torch.Tensor") -> "tuple[torch.Tensor, torch.Tensor]":
    """Quantise a ``[N, K]`` weight to float8_e4m3fn with ``[Nb, Kb]`` float32 amax/448 block scales (partial
    blocks zero-padded for the amax, as DeepSeek's recipe); for tests and benchmarks."""
    import torch

    check_tensor("w", w, ndim=2, dtypes=_act_dtypes())
    n, kk = w.shape
    nb, kb = cdiv(n, BLOCK), cdiv(kk, BLOCK)
    padded = torch.nn.functional.pad(w.float(), (0, kb * BLOCK - kk, 0, nb * BLOCK - n))
    scale = padded.view(nb, BLOCK, kb, BLOCK).abs().amax(dim=(1, 3)).clamp_min(1e-12) / FP8_MAX  # [Nb, Kb]
    full = scale.repeat_interleave(BLOCK, 0)[:n].repeat_interleave(BLOCK, 1)[:, :kk]
    return (w.float() / full).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn), scale


def _check_gemm(a: "torch.Tensor", a_scale: "torch.Tensor", w: "torch.Tensor", w_scale: "torch.Tensor",
                out_dtype: "torch.dtype") -> None:
    import torch

    check_tensor("a", a, ndim=2, dtypes=(torch.float8_e4m3fn,))
    m, kk = a.shape
    check_tensor("w", w, ndim=2, dtypes=(torch.float8_e4m3fn,), shape=(None, kk))
    n = w.shape[0]
    check_tensor("a_scale", a_scale, ndim=2, dtypes=(torch.float32,), shape=(m, cdiv(kk, BLOCK)))
    check_tensor("w_scale", w_scale, ndim=2, dtypes=(torch.float32,), shape=(cdiv(n, BLOCK), cdiv(kk, BLOCK)))
    check_same_device(a=a, a_scale=a_scale, w=w, w_scale=w_scale)
    if out_dtype not in _act_dtypes():
        raise ValueError(f"out_dtype must be one of {', '.join(_ACT_DTYPES)}, got {out_dtype}")


def fp8_gemm(a: "torch.Tensor", a_scale: "torch.Tensor", w: "torch.Tensor", w_scale: "torch.Tensor",
             out_dtype: "torch.dtype | None" = None) -> "torch.Tensor":
    """Block-scaled FP8 GEMM ``(a·a_scale) @ (w·w_scale)ᵀ`` with the Triton kernel.

    Args:
        a: ``[M, K]`` float8_e4m3fn activations, ``a_scale`` ``[M, ceil(K/128)]`` float32 (from ``act_quant``).
        w: ``[N, K]`` float8_e4m3fn weight, ``w_scale`` ``[ceil(N/128), ceil(K/128)]`` float32 (the checkpoint's
            ``weight_scale_inv``).
        out_dtype: bf16 (default), fp16 or float32.
    Returns:
        ``[M, N]`` of ``out_dtype``.
    Example:
        ``y = fp8_gemm(*act_quant(x), w_fp8, w_scale_inv)``
    """
    import torch

    out_dtype = out_dtype or torch.bfloat16
    _check_gemm(a, a_scale, w, w_scale, out_dtype)
    require_triton(a.device, fp8=True)
    k = load_kernels("_fp8_kernel")
    m, n = a.shape[0], w.shape[0]
    c = empty(m, n, dtype=out_dtype, device=a.device)
    if m and n:
        cpu = a.device.type == "cpu"
        block_m = 16 if (cpu or m <= 16) else (32 if m <= 32 else 64)
        block_n = 128
        k.fp8_gemm_kernel[(cdiv(m, block_m), cdiv(n, block_n))](
            a, a_scale, w, w_scale, c, m, n, a.shape[1], a.stride(0), a_scale.stride(0), w.stride(0),
            w_scale.stride(0), c.stride(0), BLOCK_M=block_m, BLOCK_N=block_n, BLOCK=BLOCK, EXACT=interpreting())
    return c


def fp8_gemm_reference(a: "torch.Tensor", a_scale: "torch.Tensor", w: "torch.Tensor", w_scale: "torch.Tensor",
                       out_dtype: "torch.dtype | None" = None) -> "torch.Tensor":
    """Plain-torch twin of ``fp8_gemm``: dequantise both sides to float32, one matmul, one rounding."""
    import torch

    out_dtype = out_dtype or torch.bfloat16
    _check_gemm(a, a_scale, w, w_scale, out_dtype)
    a32 = a.float() * _expand_cols(a_scale, a.shape[1])  # [M, K]
    return (a32 @ dequant_weight(w, w_scale).T).to(out_dtype)


def fp8_linear(x: "torch.Tensor", w: "torch.Tensor", w_scale: "torch.Tensor",
               out_dtype: "torch.dtype | None" = None) -> "torch.Tensor":
    """``act_quant`` then ``fp8_gemm``: a K2 FP8 linear layer on ``x [M, K]`` (output in x's dtype by default)."""
    q, s = act_quant(x)
    return fp8_gemm(q, s, w, w_scale, out_dtype or x.dtype)


def fp8_linear_reference(x: "torch.Tensor", w: "torch.Tensor", w_scale: "torch.Tensor",
                         out_dtype: "torch.dtype | None" = None) -> "torch.Tensor":
    """Plain-torch twin of ``fp8_linear``."""
    q, s = act_quant_reference(x)
    return fp8_gemm_reference(q, s, w, w_scale, out_dtype or x.dtype)
