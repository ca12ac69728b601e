"""Block-FP8 math for K2's weights.

K2 stores every linear weight ``W`` (out × in) as float8 e4m3fn with a float32 ``weight_scale_inv`` of shape
``[ceil(out/128), ceil(in/128)]``: one scale per 128×128 block, and it is the *multiplier* for dequantisation
(``amax / 448``), not its inverse. Edge blocks are partial — K2's ``kv_a_proj_with_mqa`` has 576 = 4.5 × 128 rows — and
use the one scale of their block for the rows and columns that exist (kimi_formats.md §2.4, after DeepSeek-V3's
``weight_dequant``). Dequantisation is computed in float32 and rounded once to the output dtype.

Quantisation (BF16 → FP8) zero-pads partial blocks to 128 before taking the block amax, then crops. With that scheme
fp8 → bf16 → fp8 reproduces the original bytes exactly: the block maximum maps to ±448, dequantises to the original
bf16 amax, and so gives back the same scale; every other element moves by far less than half an e4m3 step.
The block constants and the scale grid are ``k2trt.spec``'s (``BLOCK``, ``FP8_MAX``, ``scale_shape``). Besides the
torch reference math, ``dequantize_rows`` is the converter's path: an e4m3 byte has 256 values, so each
128×128 block has only 256 possible outputs ``bf16(f32(v) × scale)``; they are computed once per block with the
same float32 product and single rounding, then gathered per element (a compiled loop, ``kernels.py``) —
bit-identical to ``dequantize(…, bfloat16)`` and many times faster than torch's fp8 → float cast, without torch.
The converter quantises with ``kernels.quantize_rows``, bit-identical to ``quantize`` here (the reference).
torch is imported inside functions so that ``k2trt.checkpoint`` stays importable on a login node.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from k2trt.spec import BLOCK, FP8_MAX
from k2trt.spec import scale_shape as grid_shape

if TYPE_CHECKING:
    import numpy as np
    import torch

# A block of zeros still gets a positive scale (a zero scale is how inspect recognises a broken checkpoint).
_MIN_AMAX = 1e-12


def _expand(scale: "torch.Tensor", rows: int, cols: int, block: int) -> "torch.Tensor":
    # [Rb, Cb] -> [rows, cols]: each scale covers its block; crop the partial edge blocks.
    return scale.repeat_interleave(block, 0)[:rows].repeat_interleave(block, 1)[:, :cols]


def check_scale_shape(name: str, weight_shape: tuple[int, ...], scale_shape: tuple[int, ...],
                      block: int = BLOCK) -> None:
    """Raise CheckpointError if ``scale_shape`` is not the block grid of ``weight_shape``."""
    from k2trt.errors import CheckpointError

    want = grid_shape(tuple(weight_shape), block)
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
    mb, nb = grid_shape((m, n), block)
    # abs and max are exact in the input's own float dtype, and the division promotes to float32 as it goes:
    # the same values as converting first, with half the memory traffic for a BF16 input
    w = weight if weight.is_floating_point() and weight.element_size() >= 2 else weight.to(torch.float32)
    ragged = bool(m % block or n % block)
    if ragged:
        padded = torch.zeros(mb * block, nb * block, dtype=torch.float32)
        padded[:m, :n] = w
        w = padded
    v = w.view(mb, block, nb, block)                                      # [Mb, 128, Nb, 128]
    amax = v.abs().amax(dim=3).amax(dim=1).to(torch.float32)             # [Mb, Nb]
    scale = amax.clamp_min(_MIN_AMAX) / FP8_MAX
    x = v / scale[:, None, :, None]                                       # float32
    q = x.clamp_(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).view(mb * block, -1)
    return (q[:m, :n].contiguous() if ragged else q), scale.contiguous()


def scale_problems(scale_inv: Any) -> str | None:
    """Why a scale tensor (torch or numpy) cannot be right (NaN, Inf, zero or negative entries), or None."""
    import numpy as np

    s = scale_inv.to(__import__("torch").float32).numpy() if hasattr(scale_inv, "numpy") and not \
        isinstance(scale_inv, np.ndarray) else np.asarray(scale_inv, dtype=np.float32)
    if np.isnan(s).any():
        return "contains NaN"
    if np.isinf(s).any():
        return "contains Inf"
    if (s <= 0).any():
        return f"has {int((s <= 0).sum())} zero or negative entries"
    return None


# ---- numpy: FP8 → float32 or BF16 bits by table, bit-identical to dequantize(…) ------------------------------

@functools.lru_cache(maxsize=1)
def e4m3_values() -> "np.ndarray":
    """The float32 value of each of the 256 float8_e4m3fn bytes (0x7F and 0xFF are NaN; no infinities);
    read-only, computed once."""
    import numpy as np

    b = np.arange(256, dtype=np.int32)
    e, m = (b >> 3) & 0xF, (b & 7).astype(np.float64)
    mag = np.where(e == 0, m / 8 * 2.0 ** -6, (1 + m / 8) * np.exp2(e - 7.0))
    mag[(b & 0x7F) == 0x7F] = np.nan
    out = np.where(b & 0x80, -mag, mag).astype(np.float32)
    out.flags.writeable = False
    return out


def dequantize_rows(u8: "np.ndarray", scale: "np.ndarray", first_row: int, out: "np.ndarray") -> None:
    """FP8 bytes → ``out`` by per-block lookup table, for rows ``first_row…`` of a weight with its whole scale grid.

    Args:
        u8: uint8 ``[R, N]``, rows ``first_row .. first_row+R`` of the weight (any start row).
        scale: float32 ``[ceil(M/128), ceil(N/128)]``, the weight's scale grid.
        first_row: the weight row ``u8[0]`` is.
        out: ``[R, N]`` to fill: float32 (the exact float32 product ``f32(v) × scale``) or uint16/int16 (its
            BF16 bits, rounded once).
    Example: ``dequantize_rows(raw, s, 0, out)``; for a uint16 ``out``, ``torch.from_numpy(out).view(
    torch.bfloat16)`` equals ``dequantize(w, s, torch.bfloat16)``.
    """
    from k2trt.checkpoint import kernels

    kernels.dequantize_rows(u8, scale, first_row, e4m3_values(), out)
