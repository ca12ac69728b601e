"""Per-tensor NVFP4 / W4A8 requantization of K2 through nvidia-modelopt's number formats, and their dequantisation.

The layout (which module gets which precision, tensor names, dtypes, shapes) is in ``requant_layout.py``; the
streaming conversion of a whole checkpoint in ``requant_run.py``. This module holds the math:

- NVFP4 (``quantize_nvfp4``): modelopt's ``NVFP4QTensor.quantize`` — e2m1 codes packed two per byte (even column
  in the low nibble), one FP8-e4m3 ``weight_scale`` per 16 input elements (clamped to [2^-9, 448]), a per-tensor
  ``weight_scale_2 = amax / (6 · 448)``. It runs on CPU (only modelopt's fake-quant *forward* needs CUDA).
  Dequantisation is modelopt's ``NVFP4QTensor.dequantize`` (its non-``fast`` path is plain torch).
- W4A8 INT4 experts (``quantize_w4a8``): modelopt's INT4-AWQ group scale (``get_scaling_factor_from_weight``:
  amax/7 per 128 inputs, zero groups → 1) and its int4 rounding/packing (``pack_int4_in_uint8``, which packs two
  *output* rows per byte: modelopt's VANILLA layout), re-packed along the *input* dimension, low nibble first — the
  ``W4A8_CUSTOM`` layout TensorRT-LLM's DeepseekV3 loader reads on Hopper (its ``pack_int8_tensor_to_packed_int4``).
  Scales are rounded to bfloat16 first because the loader casts them to bfloat16; the stored F32 values are then
  exactly what the kernel multiplies by. modelopt has no CPU dequantiser for this layout, so ``dequantize_w4a8``
  is the few lines of nibble arithmetic below.
- Activation scales: calibrated amax when ``--calib-data`` ran on a GPU node (``calibrate`` below), else the
  documented weight-only default ``activation_bounds``: hard upper bounds derived from the weights, so FP4/FP8
  activations are never clipped (they may be coarser than calibrated ones). ``input_scale`` = amax / (6 · 448) for
  NVFP4 (modelopt's ``get_activation_scaling_factor``), amax / 448 for W4A8's per-tensor FP8.

``read_quantized`` is the hook the reference engine's checkpoint reader calls for U8/I8 weights (any row range,
column ranges widened to whole scale groups), so ``k2trt verify`` compares an NVFP4/W4A8 output with its FP8 source.
torch and modelopt are imported inside functions: ``k2trt.checkpoint`` stays importable on a login node.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from k2trt.checkpoint import names
from k2trt.checkpoint import requant_layout as rq
from k2trt.errors import CheckpointError

if TYPE_CHECKING:
    import torch

E2M1_MAX = 6.0  # largest NVFP4 (e2m1) magnitude
E4M3_MAX = 448.0  # largest float8_e4m3fn
INT4_MAX = 7.0  # modelopt's symmetric INT4 bound (codes -8..7)
Span = tuple[int, int]
SliceFn = Callable[[str, "Span | None", "Span | None"], "torch.Tensor"]


def _modelopt() -> Any:
    """modelopt's quantization/export modules, or a one-line error saying how to get them."""
    import warnings

    try:
        # modelopt warns at import that it was not tested with this transformers; k2trt uses only its tensor math
        warnings.filterwarnings("ignore", message="transformers .* is not tested with", category=UserWarning)
        from modelopt.torch.export import quant_utils
        from modelopt.torch.quantization.qtensor import NVFP4QTensor
    except ImportError as e:
        raise CheckpointError(f"nvidia-modelopt is needed for NVFP4/W4A8 requantization ({e})",
                              "pip install nvidia-modelopt (the base package; its [hf] extra pins transformers)"
                              ) from None
    return NVFP4QTensor, quant_utils


def modelopt_version() -> str:
    """The installed nvidia-modelopt version (recorded as the checkpoint's producer)."""
    _modelopt()
    import modelopt

    return str(modelopt.__version__)


# ---- NVFP4 ---------------------------------------------------------------------------------------------------

def nvfp4_scale_2(*weights: "torch.Tensor") -> "torch.Tensor":
    """``weight_scale_2`` shared by ``weights`` (gate and up of one expert): max amax / (6 · 448), float32 []."""
    import torch

    nvfp4, _ = _modelopt()
    return torch.stack([nvfp4.get_weights_scaling_factor_2(w.float()).reshape(()) for w in weights]).max()


def quantize_nvfp4(weight: "torch.Tensor", scale_2: "torch.Tensor | None" = None
                   ) -> "tuple[torch.Tensor, torch.Tensor, torch.Tensor]":
    """A 2-D weight → NVFP4 with modelopt's ``NVFP4QTensor.quantize`` (CPU).

    Args:
        weight: ``[out, in]`` float tensor, ``in`` a multiple of 16.
        scale_2: per-tensor ``weight_scale_2`` (default from this weight's amax); pass the pair's for gate/up.
    Returns:
        ``(packed uint8 [out, in/2], weight_scale float8_e4m3fn [out, in/16], weight_scale_2 float32 [])``.
    Example:
        ``q, s, s2 = quantize_nvfp4(w)``; ``dequantize_nvfp4(q, s, s2)`` ≈ ``w``.
    """
    import torch

    nvfp4, _ = _modelopt()
    rq.check_shape("weight", tuple(weight.shape), "nvfp4")
    w = weight.to(torch.float32)
    s2 = (nvfp4_scale_2(w) if scale_2 is None else scale_2).to(torch.float32).reshape(())
    qt, scale, s2 = nvfp4.quantize(w, rq.NVFP4_GROUP, None, s2, try_tensorrt=False)
    return qt._quantized_data.contiguous(), scale.contiguous(), s2.to(torch.float32).reshape(())


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
    if tuple(weight_scale.shape) != (m, n // rq.NVFP4_GROUP):
        raise CheckpointError(f"NVFP4 weight_scale has shape {list(weight_scale.shape)}, expected "
                              f"{[m, n // rq.NVFP4_GROUP]} for a [{m}, {n}] weight (one e4m3 scale per 16 inputs)",
                              "the scale does not belong to this weight; re-run k2trt convert")
    qt = nvfp4(torch.Size((m, n)), torch.float32, packed.view(torch.uint8))
    out = qt.dequantize(torch.float32, scale=weight_scale.view(torch.float8_e4m3fn),
                        double_scale=weight_scale_2.to(torch.float32).reshape(()), block_sizes={-1: rq.NVFP4_GROUP})
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

    Returns ``(packed int8 [out, in/2], weight_scale_inv float32 [out, in/128])`` with ``w ≈ code · scale``.
    Example: ``q, s = quantize_w4a8(w)``; ``dequantize_w4a8(q, s)`` ≈ ``w``.
    """
    import torch

    _, qu = _modelopt()
    rq.check_shape("weight", tuple(weight.shape), "int4")
    w = weight.to(torch.float32)
    # modelopt: amax/7 per group; round to bf16 first because the Hopper loader casts the scales to bf16
    scale = qu.get_scaling_factor_from_weight(w, rq.W4A8_GROUP).to(torch.bfloat16).to(torch.float32)  # [M, N/128]
    by_rows = qu.pack_int4_in_uint8(w, scale, rq.W4A8_GROUP)  # [M/2, N]: rows 2i (low) and 2i+1 (high)
    lo, hi = _unpack_nibbles(by_rows)
    codes = torch.stack([lo, hi], dim=1).reshape(w.shape)   # [M, N] int8, back in row order
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
    if tuple(scale.shape) != (m, n // rq.W4A8_GROUP):
        raise CheckpointError(f"W4A8 weight_scale_inv has shape {list(scale.shape)}, expected "
                              f"{[m, n // rq.W4A8_GROUP]} for a [{m}, {n}] INT4 weight (one scale per 128 inputs)",
                              "the scale does not belong to this weight; re-run k2trt convert")
    lo, hi = _unpack_nibbles(packed)
    codes = torch.stack([lo, hi], dim=-1).reshape(m, n).to(torch.float32)  # [M, N]
    out = codes * scale.to(torch.float32).repeat_interleave(rq.W4A8_GROUP, dim=1)
    return out if dtype in (None, torch.float32) else out.to(dtype)


# ---- the reader hook (reference engine, verify) ---------------------------------------------------------------

def read_quantized(slice_fn: SliceFn, name: str, stored_shape: tuple[int, ...], dtype: str,
                   has: Callable[[str], bool], rows: Span | None = None, cols: Span | None = None
                   ) -> "torch.Tensor":
    """Read and dequantise rows/cols of an NVFP4 (U8) or W4A8 (I8) weight as float32 ``[rows, cols]``.

    Args:
        slice_fn: ``slice_fn(tensor_name, rows, cols)`` → that slice of a stored tensor (None: the whole axis).
        name: the weight's name (``….weight``); stored_shape: its stored (packed) shape; dtype: ``U8`` or ``I8``.
        has: whether the checkpoint holds a tensor name.
        rows, cols: the slice of the *logical* ``[out, in]`` weight; columns are widened to whole scale groups.
    Returns:
        The float32 slice. CheckpointError when the weight's scales are missing.
    """
    mod = rq.module_name(name)
    m, n = stored_shape[0], 2 * stored_shape[1]
    r0, r1 = rows or (0, m)
    c0, c1 = cols or (0, n)
    if dtype == "U8":
        g, scale_name = rq.NVFP4_GROUP, f"{mod}.{rq.WEIGHT_SCALE}"
        need = (scale_name, f"{mod}.{rq.WEIGHT_SCALE_2}")
    elif dtype == "I8":
        g, scale_name = rq.W4A8_GROUP, f"{mod}.{rq.WEIGHT_SCALE_INV}"
        need = (scale_name,)
    else:
        raise ValueError(f"{name}: {dtype} is not a 4-bit weight dtype")
    for s in need:
        if not has(s):
            raise CheckpointError(f"4-bit weight {name!r} has no {s!r}",
                                  "the checkpoint is incomplete; re-run k2trt convert --to nvfp4|w4a8")
    g0, g1 = c0 // g, -(-c1 // g)  # whole groups covering the columns
    q = slice_fn(name, (r0, r1), (g0 * g // 2, min(g1 * g, n) // 2))
    s = slice_fn(scale_name, (r0, r1), (g0, g1))
    if dtype == "U8":
        full = dequantize_nvfp4(q, s, slice_fn(need[1], None, None))
    else:
        full = dequantize_w4a8(q, s)
    return full[:, c0 - g0 * g: c1 - g0 * g].contiguous()


def weight_fn(model_dir: str | Path, dtype: "torch.dtype | None" = None) -> Callable[..., "torch.Tensor"]:
    """``get(role, layer, expert)`` for ``reference.model.Transformer`` over any k2trt checkpoint format.

    Block FP8, NVFP4/W4A8 and BF16 alike, through the one reader (``checkpoint.reader.CheckpointReader``).
    Example: ``Transformer(spec, weight_fn("/tmp/k2-nvfp4"))``.
    """
    import torch

    from k2trt.checkpoint.reader import CheckpointReader

    rd = CheckpointReader(Path(model_dir))
    out_dtype = dtype or torch.float32
    return lambda role, layer, expert: rd.get(role, layer, expert, dtype=out_dtype)


# ---- activation scales -----------------------------------------------------------------------------------------

def activation_bounds(norm_weight: "torch.Tensor", gate: "torch.Tensor", up: "torch.Tensor", hidden: int
                      ) -> tuple[float, float]:
    """The weight-only default activation amax of one expert: ``(gate/up input bound, down input bound)``.

    The FFN input is RMSNorm(h) ⊙ w: its rms is 1 before the weight, so ``|x_i| ≤ √D · max|w|`` and
    ``‖x‖₂ ≤ √D · max|w|``. The down input ``silu(g_i) · u_i`` has ``|silu(g)| ≤ |g|`` and ``|g_i| ≤ ‖G_i‖₂ ‖x‖₂``, so
    ``≤ max_i ‖G_i‖₂ ‖U_i‖₂ · D · max|w|²``. Both are hard bounds (no activation can clip); the second is loose, so
    calibrate (``--calib-data`` on a GPU node) for the best per-tensor FP8 (W4A8) resolution.
    """
    import torch

    wmax = float(norm_weight.float().abs().max())
    x_max = math.sqrt(hidden) * wmax
    rows = (torch.linalg.vector_norm(gate.float(), dim=1) * torch.linalg.vector_norm(up.float(), dim=1)).max()
    return x_max, float(rows) * x_max * x_max


def input_scale(amax: float, target: str) -> "torch.Tensor":
    """``input_scale`` for an activation amax: NVFP4 amax/(6·448) as float32 [], W4A8 FP8 amax/448 as [1]."""
    import torch

    a = max(float(amax), 1e-12)
    if target == "nvfp4":
        return torch.tensor(a / (E2M1_MAX * E4M3_MAX), dtype=torch.float32)
    return torch.tensor([a / E4M3_MAX], dtype=torch.float32)


# ---- configs ---------------------------------------------------------------------------------------------------

def exclude_modules(linear_modules: list[str], quantized: set[str]) -> list[str]:
    """``exclude_modules`` for an NVFP4 checkpoint, summarised by modelopt's own prefix-wildcard rule.

    Args:
        linear_modules: every linear module (``….q_b_proj``) and router (``….mlp.gate``) of the checkpoint.
        quantized: those stored in NVFP4 (the routed experts).
    """
    _, qu = _modelopt()
    layer_cfg: dict[str, Any] = {}
    for m in linear_modules:
        layer_cfg[m + ".quantization"] = "nvfp4" if m in quantized else None  # modelopt's QUANTIZATION_NONE
        layer_cfg[m + ".awq_block_size"] = rq.NVFP4_GROUP if m in quantized else 0
    out = qu.process_layer_quant_config(layer_cfg)
    return list(out.get("exclude_modules", []))


def hf_quant_config(target: str, excluded: list[str], layers: dict[str, Any] | None,
                    kv_cache_quant_algo: str | None = None) -> dict[str, Any]:
    """The ``hf_quant_config.json`` TensorRT-LLM reads first (ModelOpt's legacy nested shape).

    NVFP4: ``quant_algo`` NVFP4, ``group_size`` 16, ``exclude_modules``. W4A8: ``MIXED_PRECISION`` with per-module
    ``quantized_layers`` (experts W4A8_AWQ, the block-FP8 linears FP8_BLOCK_SCALES), also written to quant_cfg.json.
    """
    q: dict[str, Any] = {"quant_algo": rq.QUANT_ALGO[target] if target == "nvfp4" else "MIXED_PRECISION",
                         "kv_cache_quant_algo": kv_cache_quant_algo}
    if target == "nvfp4":
        q["group_size"] = rq.NVFP4_GROUP
        q["exclude_modules"] = sorted(excluded)
    else:
        q["quantized_layers"] = layers or {}
    return {"producer": {"name": "modelopt", "version": modelopt_version()}, "quantization": q}


def inline_quantization_config(hq: dict[str, Any]) -> dict[str, Any]:
    """config.json's ``quantization_config`` for ``hq``, by modelopt's ``convert_hf_quant_config_format``."""
    import warnings

    _modelopt()
    from modelopt.torch.export.convert_hf_config import convert_hf_quant_config_format

    with warnings.catch_warnings():  # it has no compressed-tensors group for FP8_BLOCK_SCALES; the layer list stays
        warnings.simplefilter("ignore", UserWarning)
        return dict(convert_hf_quant_config_format(hq))


# ---- calibration (GPU node) ------------------------------------------------------------------------------------

def calibrate(src: str | Path, calib_data: str | Path, *, device: str = "cuda", max_prompts: int = 64,
              max_len: int = 512) -> dict[str, float]:
    """Measure the routed experts' input amax on ``calib_data`` with the reference model on a CUDA device.

    Every expert sees every calibration token (its input is hooked at the MoE, as modelopt's DeepSeek PTQ routes
    all tokens to all experts), so no expert is left uncalibrated. ``calib_data`` is JSON lines, each
    ``{"input_ids": [...]}`` or ``{"text": "..."}`` (tokenized with the checkpoint's tokenizer).
    Returns ``{module name: amax}`` for every expert gate/up/down; pass it as ``RequantOptions.calib_amax``.
    Raises CheckpointError when no CUDA device is present (the weight-only path needs none).
    """
    import torch

    if not device.startswith("cuda") or not torch.cuda.is_available():
        raise CheckpointError(
            f"--calib-data needs a CUDA device, but torch.cuda.is_available() is False here (torch "
            f"{torch.__version__}, CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')})",
            "run on a GPU node, or drop --calib-data to use the weight-only activation bounds")
    from k2trt.reference.model import Transformer
    from k2trt.spec import ModelSpec

    spec = ModelSpec.from_config(src)
    prompts = _calib_prompts(Path(src), Path(calib_data), max_prompts, max_len)
    model = Transformer(spec, weight_fn(src, torch.bfloat16)).to(device).eval()
    amax: dict[str, float] = {}

    def hook(layer: int) -> Any:
        def pre(mod: Any, args: tuple[Any, ...]) -> None:
            x = args[0].reshape(-1, args[0].shape[-1])                          # [M, D]
            xa = float(x.abs().max())
            for e, mlp in zip(mod.expert_ids, mod.experts):
                a = torch.nn.functional.silu(x @ mlp.w1.T) * (x @ mlp.w3.T)     # [M, F]
                for role, v in (("expert_gate", xa), ("expert_up", xa), ("expert_down", float(a.abs().max()))):
                    m = rq.module_name(names.name_of(role, layer, e))
                    amax[m] = max(amax.get(m, 0.0), v)
        return pre

    for i, blk in enumerate(model.layers):
        if blk.is_moe:
            blk.ffn.register_forward_pre_hook(hook(i))
    with torch.no_grad():
        for ids in prompts:
            model(torch.tensor([ids], device=device))
    return amax


def _calib_prompts(src: Path, path: Path, n: int, max_len: int) -> list[list[int]]:
    if not path.is_file():
        raise CheckpointError(f"--calib-data {path} is not a file", "pass a JSON-lines file of prompts")
    out: list[list[int]] = []
    tok = None
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{path}:{i}: not JSON ({e.msg})", 'each line: {"text": …} or {"input_ids": […]}')
        if "input_ids" in rec:
            ids = [int(t) for t in rec["input_ids"]]
        else:
            if tok is None:
                from k2trt.chat.tokenizer import K2Tokenizer

                tok = K2Tokenizer.from_dir(src)
            ids = tok.encode(str(rec.get("text", "")))
        if ids:
            out.append(ids[:max_len])
        if len(out) >= n:
            break
    if not out:
        raise CheckpointError(f"{path}: no prompts", 'each line: {"text": …} or {"input_ids": […]}')
    return out
