"""The 4-bit number formats of K2's routed experts: NVFP4 and W4A8 INT4 through nvidia-modelopt, Moonshot's native
compressed-tensors INT4 through compressed-tensors, and back.

Which module gets which format is the spec's (``ModelSpec.linear_format``), the tensors' names and shapes are
``formats.py``'s rows, and the streaming conversion is the one pipeline (``plan.py``, ``convert.py``). This module
holds the math:

- NVFP4 (``quantize_nvfp4``): the arithmetic of modelopt's ``NVFP4QTensor.quantize`` — e2m1 codes packed two per
  byte (even column in the low nibble), one FP8-e4m3 ``weight_scale`` per 16 input elements (clamped to
  [2^-9, 448]), a per-tensor ``weight_scale_2 = amax / (6 · 448)`` — written on a group view (modelopt's own
  function is the test's reference). Dequantisation is modelopt's ``NVFP4QTensor.dequantize`` (its non-``fast``
  path is plain torch).
- W4A8 INT4 experts (``quantize_w4a8``): modelopt's INT4-AWQ group scale (``get_scaling_factor_from_weight``:
  amax/7 per 128 inputs, zero groups → 1) and its int4 rounding (``pack_int4_in_uint8``: round half to even,
  clamp), computed on a group view, packed along the *input* dimension, low nibble first — the ``W4A8_CUSTOM``
  layout TensorRT-LLM's DeepseekV3 loader reads on Hopper (its ``pack_int8_tensor_to_packed_int4``).
  Scales are rounded to bfloat16 first because the loader casts them to bfloat16; the stored F32 values are then
  exactly what the kernel multiplies by. modelopt has no CPU dequantiser for this layout, so ``dequantize_w4a8``
  is the few lines of nibble arithmetic below.
- compressed-tensors INT4 (``dequantize_ct_int4``): K2-Thinking / K2.5 / K2.6's routed experts. ``weight_packed``
  int32 holds 8 codes along the *input* dimension, code ``i`` of a word in bits ``4i..4i+3`` (lowest nibble
  first), each stored as ``code + 8``; ``weight_scale`` is BF16 per 32 inputs; ``w = code · scale``. Unpacking is
  the package's own ``unpack_from_int32``; the product is taken in float32 (exact: a 4-bit code times a BF16
  scale has at most 11 significant bits). ``quantize_ct_int4`` (the tiny INT4 checkpoints of synth) is the
  package's ``calculate_qparams`` (symmetric min-max: ``amax / 7.5``), BF16 scales, its ``quantize`` and
  ``pack_to_int32``.
- Activation scales: calibrated amax when ``--calib-data`` ran on a GPU node (``k2trt.reference.calibrate``), else the
  documented weight-only default ``activation_bounds``: hard upper bounds derived from the weights, so FP4/FP8
  activations are never clipped (they may be coarser than calibrated ones). ``input_scale`` = amax / (6 · 448) for
  NVFP4 (modelopt's ``get_activation_scaling_factor``), amax / 448 for W4A8's per-tensor FP8.

The dequantisers accept any row range and any whole-group column range, which is how ``reader.py`` reads one
rank's slice of a 4-bit expert. torch and modelopt are imported inside functions: ``k2trt.checkpoint`` stays
importable on a login node.
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING, Any

from k2trt.errors import CheckpointError
from k2trt.spec import CT_INT4_GROUP, CT_INT4_PACK, FP8_MAX, LINEAR_FORMATS, NVFP4_GROUP, W4A8_GROUP

if TYPE_CHECKING:
    import numpy as np
    import torch

E2M1_MAX = 6.0  # largest NVFP4 (e2m1) magnitude
E4M3_MAX = FP8_MAX  # largest float8_e4m3fn
INT4_MAX = 7.0  # modelopt's symmetric INT4 bound (codes -8..7)


_MODELOPT_FIX = "pip install nvidia-modelopt (the base package; its [hf] extra pins transformers)"


def _modelopt() -> Any:
    """modelopt's quantization/export modules, or a one-line error saying how to get them."""
    import warnings

    try:
        # modelopt warns at import that it was not tested with this transformers; k2trt uses only its tensor math
        warnings.filterwarnings("ignore", message="transformers .* is not tested with", category=UserWarning)
        from modelopt.torch.export import quant_utils
        from modelopt.torch.quantization.qtensor import NVFP4QTensor
    except ImportError as e:
        raise CheckpointError(f"nvidia-modelopt is needed for NVFP4/W4A8 requantization ({e})", _MODELOPT_FIX) from None
    return NVFP4QTensor, quant_utils


def modelopt_version() -> str:
    """The installed nvidia-modelopt version (recorded as the checkpoint's producer), from the package's metadata:
    reading ``modelopt.__version__`` would import modelopt's modules, seconds of a small conversion's time."""
    from importlib import metadata

    try:
        return metadata.version("nvidia-modelopt")
    except metadata.PackageNotFoundError:
        raise CheckpointError("nvidia-modelopt is needed for NVFP4/W4A8 requantization (it is not installed)",
                              _MODELOPT_FIX) from None


# ---- NVFP4 ---------------------------------------------------------------------------------------------------

def weight_scale_2(*amax: float) -> "np.float32":
    """``weight_scale_2`` of tensors whose largest magnitudes are ``amax`` (gate and up of one expert share it):
    max amax / (6 · 448) in float32 (modelopt's ``get_weights_scaling_factor_2``; each float32 amax is exact here).

    Example: ``weight_scale_2(2688.0, 1.0)`` → ``np.float32(1.0)``.
    """
    import numpy as np

    return np.float32(max(amax)) / np.float32(E2M1_MAX * E4M3_MAX)


def nvfp4_scale_2(*weights: "torch.Tensor") -> "torch.Tensor":
    """``weight_scale_2`` shared by ``weights`` as a float32 [] tensor (``weight_scale_2`` of their amaxes)."""
    import torch

    return torch.tensor(float(weight_scale_2(*(float(w.abs().amax()) for w in weights))), dtype=torch.float32)


_E2M1_BOUNDS = (0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0)
"""Midpoints between the e2m1 magnitudes 0, 0.5, 1, 1.5, 2, 3, 4, 6 (modelopt's ``e2m1_bounds``)."""


def quantize_nvfp4(weight: "torch.Tensor", scale_2: "torch.Tensor | None" = None
                   ) -> "tuple[torch.Tensor, torch.Tensor, torch.Tensor]":
    """A 2-D weight → NVFP4: modelopt's ``NVFP4QTensor.quantize`` arithmetic on a ``[M, N/16, 16]`` view (CPU).

    The per-16 block scale is ``amax / (6 · weight_scale_2)`` (zero → 1) clamped to [2^-9, 448] and cast to e4m3;
    each element, divided by ``block scale · weight_scale_2``, rounds to the nearest e2m1 value — code = how many
    of modelopt's bounds lie below its magnitude, plus one exactly at 0.75, 1.75 and 3.5 (ties to even), sign in
    bit 3 — and two codes pack per byte, the even column low. Comparisons replace modelopt's ``searchsorted``
    (the same codes for finite inputs, which the converter guarantees; tests/unit/test_requant.py checks it
    against modelopt itself), several times faster.

    Args:
        weight: ``[out, in]`` float tensor, ``in`` a multiple of 16.
        scale_2: per-tensor ``weight_scale_2`` (default from this weight's amax); pass the pair's for gate/up.
    Returns:
        ``(packed uint8 [out, in/2], weight_scale float8_e4m3fn [out, in/16], weight_scale_2 float32 [])``.
    Example:
        ``q, s, s2 = quantize_nvfp4(w)``; ``dequantize_nvfp4(q, s, s2)`` ≈ ``w``.
    """
    import torch

    LINEAR_FORMATS["nvfp4"].check("weight", tuple(weight.shape))
    m, n = weight.shape
    g = weight.to(torch.float32).view(m, n // NVFP4_GROUP, NVFP4_GROUP)           # [M, N/16, 16]
    s2 = (nvfp4_scale_2(g) if scale_2 is None else scale_2).to(torch.float32).reshape(())
    block = g.abs().amax(dim=-1) / (E2M1_MAX * s2)                               # [M, N/16]
    block[block == 0] = 1.0
    scale = block.clamp(min=2**-9, max=E4M3_MAX).to(torch.float8_e4m3fn)
    x = g / (scale.to(torch.float32) * s2).unsqueeze(-1)                          # [M, N/16, 16]
    mag = x.abs()
    code = (x < 0).to(torch.uint8) << 3
    for b in _E2M1_BOUNDS:
        code += mag > b
    for b in _E2M1_BOUNDS[1::2]:  # exactly halfway to an odd code: round up to the even one
        code += mag == b
    code = code.view(m, n)
    return (code[:, 1::2] << 4) | code[:, 0::2], scale.contiguous(), s2


def _check_group_scale(what: str, scale: "torch.Tensor", m: int, n: int, group: int, weight: str, rule: str,
                       fix: str) -> None:
    """Refuse a 4-bit weight's per-group scale whose shape is not ``[M, N / group]`` (one line naming the fix)."""
    if tuple(scale.shape) != (m, n // group):
        raise CheckpointError(f"{what} has shape {list(scale.shape)}, expected {[m, n // group]} for a [{m}, {n}] "
                              f"{weight} ({rule})", f"the scale does not belong to this weight; {fix}")


def dequantize_nvfp4(packed: "torch.Tensor", weight_scale: "torch.Tensor", weight_scale_2: "torch.Tensor",
                     dtype: "torch.dtype | None" = None) -> "torch.Tensor":
    """NVFP4 → float with modelopt's ``NVFP4QTensor.dequantize`` (any row range / whole-16-group column range).

    Args:
        packed: uint8 ``[M, N/2]``; weight_scale: float8_e4m3fn ``[M, N/16]``; weight_scale_2: float32, 1 element.
    Returns:
        ``[M, N]`` in ``dtype`` (float32 by default).
    """
    import torch

    nvfp4, _ = _modelopt()
    m, half = packed.shape
    n = 2 * half
    _check_group_scale("NVFP4 weight_scale", weight_scale, m, n, NVFP4_GROUP, "weight", "one e4m3 scale per 16 inputs",
                       "re-run k2trt convert")
    qt = nvfp4(torch.Size((m, n)), torch.float32, packed.view(torch.uint8))
    out = qt.dequantize(torch.float32, scale=weight_scale.view(torch.float8_e4m3fn),
                        double_scale=weight_scale_2.to(torch.float32).reshape(()), block_sizes={-1: NVFP4_GROUP})
    return out if dtype in (None, torch.float32) else out.to(dtype)


# ---- W4A8 (INT4 experts, TensorRT-LLM W4A8_CUSTOM layout) ----------------------------------------------------

def _unpack_nibbles(packed: "torch.Tensor") -> "tuple[torch.Tensor, torch.Tensor]":
    """Signed int4 (low, high) nibbles of int8/uint8 bytes as int8."""
    import torch

    b = packed.view(torch.uint8).to(torch.int16)
    lo = ((b & 0xF) ^ 8) - 8
    hi = ((b >> 4) ^ 8) - 8
    return lo.to(torch.int8), hi.to(torch.int8)


def pack_int4_along_input(codes: "torch.Tensor") -> "torch.Tensor":
    """int8 codes in -8..7 ``[M, N]`` → int8 ``[M, N/2]``, column 2j in the low nibble, 2j+1 in the high one."""
    import torch

    c = codes.to(torch.int16) & 0xF
    return (c[:, 0::2] | (c[:, 1::2] << 4)).to(torch.uint8).view(torch.int8).contiguous()


def quantize_w4a8(weight: "torch.Tensor") -> "tuple[torch.Tensor, torch.Tensor]":
    """A 2-D expert weight → INT4 per-128-group (modelopt's INT4-AWQ math), TensorRT-LLM W4A8_CUSTOM layout.

    The arithmetic of modelopt's ``get_scaling_factor_from_weight`` (amax/7 per group, an all-zero group → 1) and
    ``pack_int4_in_uint8`` (``round(w / scale)`` half to even, clamped to -8..7), on a ``[M, N/128, 128]`` view
    instead of modelopt's per-column gather and row-pair packing — the same codes, several times faster
    (tests/unit/test_requant.py checks it against modelopt itself), packed along the input dimension.
    Returns ``(packed int8 [out, in/2], weight_scale_inv float32 [out, in/128])`` with ``w ≈ code · scale``.
    Example: ``q, s = quantize_w4a8(w)``; ``dequantize_w4a8(q, s)`` ≈ ``w``.
    """
    import torch

    LINEAR_FORMATS["int4"].check("weight", tuple(weight.shape))
    m, n = weight.shape
    g = weight.to(torch.float32).view(m, n // W4A8_GROUP, W4A8_GROUP)         # [M, N/128, 128]
    scale = g.abs().amax(dim=-1) / INT4_MAX                                   # [M, N/128]
    scale[scale == 0] = 1.0
    scale = scale.to(torch.bfloat16).to(torch.float32)  # the Hopper loader casts the scales to bf16
    codes = (g / scale[..., None]).round_().clamp_(-8, 7).to(torch.int8).view(m, n)
    return pack_int4_along_input(codes), scale.contiguous()


def dequantize_w4a8(packed: "torch.Tensor", scale: "torch.Tensor", dtype: "torch.dtype | None" = None
                    ) -> "torch.Tensor":
    """W4A8_CUSTOM INT4 → float: ``code · scale`` per 128-input group (any rows / whole-group column range).

    Args:
        packed: int8 ``[M, N/2]`` (column 2j in the low nibble); scale: ``[M, N/128]``.
    Returns:
        ``[M, N]`` in ``dtype`` (float32 by default).
    """
    import torch

    m, half = packed.shape
    n = 2 * half
    _check_group_scale("W4A8 weight_scale_inv", scale, m, n, W4A8_GROUP, "INT4 weight", "one scale per 128 inputs",
                       "re-run k2trt convert")
    lo, hi = _unpack_nibbles(packed)
    codes = torch.stack([lo, hi], dim=-1).reshape(m, n).to(torch.float32)  # [M, N]
    out = codes * scale.to(torch.float32).repeat_interleave(W4A8_GROUP, dim=1)
    return out if dtype in (None, torch.float32) else out.to(dtype)


# ---- compressed-tensors INT4 (K2-Thinking's own experts) --------------------------------------------------------

@functools.lru_cache(maxsize=1)
def load_compressed_tensors() -> Any:
    """compressed-tensors' pack/unpack and quantization modules, or a one-line error saying how to get them."""
    try:
        from compressed_tensors.compressors.pack_quantized import helpers
        from compressed_tensors.quantization import QuantizationArgs
        from compressed_tensors.quantization.lifecycle import forward
        from compressed_tensors.quantization.utils import calculate_qparams
    except ImportError as e:
        raise CheckpointError(f"compressed-tensors is needed to read INT4 K2-Thinking/K2.5 checkpoints ({e})",
                              "pip install compressed-tensors") from None
    args = QuantizationArgs(num_bits=4, type="int", symmetric=True, strategy="group", group_size=CT_INT4_GROUP)
    return helpers, forward, calculate_qparams, args


def dequantize_ct_int4(packed: "torch.Tensor", scale: "torch.Tensor", dtype: "torch.dtype | None" = None
                       ) -> "torch.Tensor":
    """compressed-tensors ``pack-quantized`` INT4 → float: ``code · scale`` per 32-input group.

    Any row range and any whole-group column range (32 inputs = 4 packed words) decodes on its own.

    Args:
        packed: int32 ``[M, N/8]`` (``weight_packed``); scale: ``[M, N/32]`` (``weight_scale``, BF16).
    Returns:
        ``[M, N]`` in ``dtype`` (float32 by default).
    Example: ``dequantize_ct_int4(*quantize_ct_int4(w)[:2])`` ≈ ``w``.
    """
    import torch

    helpers, _, _, _ = load_compressed_tensors()
    m, words = packed.shape
    n = words * CT_INT4_PACK
    _check_group_scale("INT4 weight_scale", scale, m, n, CT_INT4_GROUP, "weight_packed",
                       f"one scale per {CT_INT4_GROUP} inputs", "re-download it")
    codes = helpers.unpack_from_int32(packed.contiguous(), 4, torch.Size((m, n)))          # int8 [M, N]
    out = codes.to(torch.float32)                                                           # [M, N]
    out.view(m, n // CT_INT4_GROUP, CT_INT4_GROUP).mul_(scale.to(torch.float32).unsqueeze(-1))  # in place: ⅓ faster
    return out if dtype in (None, torch.float32) else out.to(dtype)


def quantize_ct_int4(weight: "torch.Tensor") -> "tuple[torch.Tensor, torch.Tensor, torch.Tensor]":
    """A 2-D weight → compressed-tensors INT4 (symmetric, group 32), by the package's own math.

    Returns ``(weight_packed int32 [out, in/8], weight_scale bfloat16 [out, in/32], weight_shape int64 [2])``.
    Example: ``p, s, _ = quantize_ct_int4(w)``; ``dequantize_ct_int4(p, s)`` ≈ ``w``.
    """
    import torch

    helpers, forward, calculate_qparams, args = load_compressed_tensors()
    LINEAR_FORMATS["ct-int4"].check("weight", tuple(weight.shape))
    m, n = weight.shape
    w = weight.to(torch.float32)
    g = w.view(m, n // CT_INT4_GROUP, CT_INT4_GROUP)                                         # [M, N/32, 32]
    scale, zp = calculate_qparams(g.amin(-1), g.amax(-1), args)
    scale = scale.to(torch.bfloat16)
    codes = forward.quantize(w, scale.to(torch.float32), zp, args, dtype=torch.int8)       # [M, N]
    return (helpers.pack_to_int32(codes, 4), scale.contiguous(),
            torch.tensor([m, n], dtype=torch.int64))


# ---- activation scales -----------------------------------------------------------------------------------------

def activation_bounds(norm_max: float, row_norms_max: float, hidden: int) -> tuple[float, float]:
    """The weight-only default activation amax of one expert: ``(gate/up input bound, down input bound)``.

    The FFN input is RMSNorm(h) ⊙ w: its rms is 1 before the weight, so ``|x_i| ≤ √D · max|w|`` and
    ``‖x‖₂ ≤ √D · max|w|``. The down input ``silu(g_i) · u_i`` has ``|silu(g)| ≤ |g|`` and ``|g_i| ≤ ‖G_i‖₂ ‖x‖₂``, so
    ``≤ max_i ‖G_i‖₂ ‖U_i‖₂ · D · max|w|²``. Both are hard bounds (no activation can clip); the second is loose, so
    calibrate (``--calib-data`` on a GPU node) for the best per-tensor FP8 (W4A8) resolution.

    Args:
        norm_max: ``max|w|`` of the layer's post-attention norm weight.
        row_norms_max: ``max_i ‖G_i‖₂ ‖U_i‖₂`` over the rows of the expert's gate and up weights.
        hidden: the model's hidden size D.
    Example: ``activation_bounds(1.0, 2.0, 4)`` → ``(2.0, 8.0)``.
    """
    x_max = math.sqrt(hidden) * norm_max
    return x_max, row_norms_max * x_max * x_max


def input_scale(amax: float, target: str) -> "np.ndarray":
    """``input_scale`` for an activation amax: NVFP4 amax/(6·448) as float32 [], W4A8 FP8 amax/448 as [1]."""
    import numpy as np

    a = max(float(amax), 1e-12)
    if target == "nvfp4":
        return np.array(a / (E2M1_MAX * E4M3_MAX), dtype=np.float32)
    return np.array([a / E4M3_MAX], dtype=np.float32)
