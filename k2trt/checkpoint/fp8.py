"""Block-FP8 math for K2's weights.

K2 stores every linear weight ``W`` (out × in) as float8 e4m3fn with a float32 ``weight_scale_inv`` of shape
``[ceil(out/128), ceil(in/128)]``: one scale per 128×128 block, and it is the *multiplier* for dequantisation
(``amax / 448``), not its inverse. Edge blocks are partial — K2's ``kv_a_proj_with_mqa`` has 576 = 4.5 × 128 rows — and
use the one scale of their block for the rows and columns that exist (kimi_formats.md §2.4, after DeepSeek-V3's
``weight_dequant``). Dequantisation is computed in float32 and rounded once to the output dtype.

Quantisation (BF16 → FP8) zero-pads partial blocks to 128 before taking the block amax, then crops. With that scheme
fp8 → bf16 → fp8 reproduces the original bytes exactly: the block maximum maps to ±448, dequantises to the original
bf16 amax, and so gives back the same scale; every other element moves by far less than half an e4m3 step.
torch is imported inside functions so that ``k2trt.checkpoint`` stays importable on a login node.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

BLOCK = 128
FP8_MAX = 448.0  # largest finite float8_e4m3fn
# A block of zeros still gets a positive scale (a zero scale is how inspect recognises a broken checkpoint).
_MIN_AMAX = 1e-12


def _expand(scale: "torch.Tensor", rows: int, cols: int, block: int) -> "torch.Tensor":
    # [Rb, Cb] -> [rows, cols]: each scale covers its block; crop the partial edge blocks.
    return scale.repeat_interleave(block, 0)[:rows].repeat_interleave(block, 1)[:, :cols]


def check_scale_shape(name: str, weight_shape: tuple[int, ...], scale_shape: tuple[int, ...],
                      block: int = BLOCK) -> None:
    """Raise CheckpointError if ``scale_shape`` is not the block grid of ``weight_shape``."""
    from k2trt.errors import CheckpointError

    want = tuple(-(-d // block) for d in weight_shape)
    if tuple(scale_shape) != want:
        raise CheckpointError(f"{name}: weight_scale_inv has shape {list(scale_shape)}, expected {list(want)} "
                              f"for a {list(weight_shape)} weight in {block}×{block} blocks",
                              "the scale does not belong to this weight; re-download or re-convert the shard")


def dequantize(weight: "torch.Tensor", scale_inv: "torch.Tensor", dtype: "torch.dtype | None" = None,
               block: int = BLOCK) -> "torch.Tensor":
    """FP8 weight × block scale → ``dtype`` (float32 by default), partial edge blocks cropped.

    Args:
        weight: float8_e4m3fn ``[M, N]``.
        scale_inv: float32 ``[ceil(M/128), ceil(N/128)]``.
        dtype: output dtype; the product is computed in float32 and rounded once.
    Returns:
        ``[M, N]`` tensor of ``dtype``.
    Example:
        ``w = dequantize(w_fp8, s, torch.bfloat16)``
    """
    import torch

    if weight.dim() != 2:
        raise ValueError(f"dequantize expects a 2-D weight, got shape {tuple(weight.shape)}")
    m, n = weight.shape
    check_scale_shape("weight", (m, n), tuple(scale_inv.shape), block)
    out = weight.to(torch.float32) * _expand(scale_inv.to(torch.float32), m, n, block)
    return out if dtype in (None, torch.float32) else out.to(dtype)


def quantize(weight: "torch.Tensor", block: int = BLOCK) -> "tuple[torch.Tensor, torch.Tensor]":
    """Quantise a 2-D weight to float8_e4m3fn with one float32 amax/448 scale per 128×128 block.

    Returns ``(fp8 [M, N], scale_inv float32 [ceil(M/128), ceil(N/128)])``.
    Example: ``q, s = quantize(w_bf16)``; ``dequantize(q, s, torch.bfloat16)`` ≈ ``w_bf16``.
    """
    import torch

    if weight.dim() != 2:
        raise ValueError(f"quantize expects a 2-D weight, got shape {tuple(weight.shape)}")
    m, n = weight.shape
    mb, nb = -(-m // block), -(-n // block)
    w = weight.to(torch.float32)
    padded = torch.zeros(mb * block, nb * block, dtype=torch.float32)
    padded[:m, :n] = w
    amax = padded.view(mb, block, nb, block).abs().amax(dim=(1, 3))  # [Mb, Nb]
    scale = amax.clamp_min(_MIN_AMAX) / FP8_MAX
    q = (w / _expand(scale, m, n, block)).clamp_(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return q, scale.contiguous()


def scale_problems(scale_inv: "torch.Tensor") -> str | None:
    """Why a scale tensor cannot be right (NaN, Inf, zero or negative entries), or None."""
    import torch

    s = scale_inv.to(torch.float32)
    if torch.isnan(s).any():
        return "contains NaN"
    if torch.isinf(s).any():
        return "contains Inf"
    if (s <= 0).any():
        return f"has {int((s <= 0).sum())} zero or negative entries"
    return None
