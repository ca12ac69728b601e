"""The quantization metadata files of a checkpoint: ``hf_quant_config.json``, ``quant_cfg.json`` and config.json's
``quantization_config``, for every quantization ``k2trt convert`` writes.

TensorRT-LLM reads ``hf_quant_config.json`` (ModelOpt's legacy nested shape) before config.json (trtllm.md §5):

- block FP8 (K2's own format): written only to ask for an FP8 KV cache; ``exclude_modules`` is what TensorRT-LLM
  itself derives from K2's block-FP8 config.json (kv_b_proj dequantised at load time;
  ``tensorrt_llm/_torch/model_config.py``), so the file changes only the KV cache dtype;
- BF16: only ``kv_cache_quant_algo`` when an FP8 KV cache is asked for;
- NVFP4 (Blackwell): ``quant_algo`` NVFP4, ``group_size`` 16 and ``exclude_modules`` — every linear but the routed
  experts, summarised by modelopt's own prefix-wildcard rule; the split ``nvidia/Kimi-K2-Thinking-NVFP4`` ships;
- W4A8 (Hopper): ``MIXED_PRECISION`` with per-module ``quantized_layers`` (experts ``W4A8_AWQ`` group 128, the
  block-FP8 linears ``FP8_BLOCK_SCALES``) in TensorRT-LLM's module names (it fuses q_a_proj + kv_a_proj_with_mqa
  into ``fused_a`` and gate/up into ``gate_up_proj``), also written to ``quant_cfg.json`` — what TensorRT-LLM's
  ``examples/quantization/quantize_mixed_precision_moe.py`` produces.

For the ModelOpt layouts config.json carries the same information inline (modelopt's
``convert_hf_quant_config_format``). modelopt is imported inside functions only.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from k2trt import __version__
from k2trt.checkpoint import formats, names
from k2trt.checkpoint.quant4 import _modelopt, modelopt_version
from k2trt.spec import (BLOCK, EXPERT_ROLES, HF_QUANT_CONFIG, LINEAR_ROLES, NVFP4_GROUP, QUANT_ALGO, W4A8_GROUP,
                        ModelSpec)

QUANT_CFG_FILE = "quant_cfg.json"
FILES = (HF_QUANT_CONFIG, QUANT_CFG_FILE)
"""The metadata files this module writes (never carried as side files)."""

# TensorRT-LLM module names of the block-FP8 linears in a DeepseekV3 W4A8 MIXED_PRECISION checkpoint (newer releases
# rename the ``fused_a`` key themselves, older ones look it up under that name).
_W4A8_FP8_ATTN = ("fused_a", "q_b_proj", "kv_b_proj", "o_proj")
_W4A8_FP8_MLP = ("gate_up_proj", "down_proj")


def hf_quant_config(spec: ModelSpec, kv_fp8: bool) -> dict[str, Any] | None:
    """The ``hf_quant_config.json`` of a checkpoint of ``spec`` (by its quantization), or None when none is needed.

    Args:
        spec: the checkpoint's spec; its ``quantization`` decides the file.
        kv_fp8: ask TensorRT-LLM for an FP8 KV cache.
    Returns:
        The file's JSON object (NVFP4/W4A8 always; block FP8 and BF16 only for an FP8 KV cache).
    Example: ``hf_quant_config(spec.with_quantization(Quantization.requant("nvfp4")), False)["quantization"]
    ["quant_algo"]`` → ``"NVFP4"``.
    """
    q = spec.quantization
    target = q.target if q is not None else None
    kv = "FP8" if kv_fp8 else None
    if target == "nvfp4":
        mods, quantized = _linear_modules(spec)
        body: dict[str, Any] = {"quant_algo": QUANT_ALGO["nvfp4"], "kv_cache_quant_algo": kv,
                                "group_size": NVFP4_GROUP, "exclude_modules": sorted(exclude_modules(mods, quantized))}
        return {"producer": {"name": "modelopt", "version": modelopt_version()}, "quantization": body}
    if target == "w4a8":
        body = {"quant_algo": "MIXED_PRECISION", "kv_cache_quant_algo": kv,
                "quantized_layers": w4a8_quantized_layers(spec)}
        return {"producer": {"name": "modelopt", "version": modelopt_version()}, "quantization": body}
    if not kv_fp8:
        return None
    body = {}
    if q is not None and q.quant_method == "fp8":
        body.update(quant_algo="FP8_BLOCK_SCALES", group_size=BLOCK,
                    exclude_modules=["*kv_b_proj*", "*k_b_proj*", "*eh_proj"])
    body["kv_cache_quant_algo"] = kv
    return {"producer": {"name": "k2trt", "version": __version__}, "quantization": body}


def metadata_files(spec: ModelSpec, hq: dict[str, Any] | None) -> dict[str, Any]:
    """The metadata files a checkpoint of ``spec`` with ``hf_quant_config`` ``hq`` needs, name → JSON object:
    ``hf_quant_config.json`` (when ``hq``) and, for W4A8, ``quant_cfg.json``."""
    out: dict[str, Any] = {}
    if hq is not None:
        out[HF_QUANT_CONFIG] = hq
        if spec.quantization is not None and spec.quantization.target == "w4a8":
            out[QUANT_CFG_FILE] = hq["quantization"]
    return out


def config_json(spec: ModelSpec, hq: dict[str, Any] | None) -> dict[str, Any]:
    """config.json for a checkpoint of ``spec``: the spec's, with modelopt's inline ``quantization_config`` for the
    ModelOpt layouts (so transformers-based loaders see the same quantization as TensorRT-LLM)."""
    cfg = spec.to_config()
    q = spec.quantization
    if q is not None and q.target is not None and hq is not None:
        cfg["quantization_config"] = inline_quantization_config(hq)
    return cfg


def _linear_modules(spec: ModelSpec) -> tuple[list[str], set[str]]:
    """Every linear module and router of ``spec`` (HF names), and the set of routed-expert modules."""
    mods: list[str] = []
    quantized: set[str] = set()
    for t in spec.tensors():
        if t.scale_of is not None or not (t.role in LINEAR_ROLES or t.role in ("router", "lm_head")):
            continue
        m = names.module_name(formats.tensor_name(t))
        mods.append(m)
        if t.role in EXPERT_ROLES:
            quantized.add(m)
    return mods, quantized


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
        layer_cfg[m + ".awq_block_size"] = NVFP4_GROUP if m in quantized else 0
    out = qu.process_layer_quant_config(layer_cfg)
    return list(out.get("exclude_modules", []))


def w4a8_quantized_layers(spec: ModelSpec) -> dict[str, dict[str, object]]:
    """``quantized_layers`` of a DeepseekV3 W4A8 MIXED_PRECISION config, in TensorRT-LLM's module names."""
    fp8: dict[str, object] = {"quant_algo": "FP8_BLOCK_SCALES"}
    w4a8: dict[str, object] = {"quant_algo": QUANT_ALGO["w4a8"], "group_size": W4A8_GROUP}
    moe = set(spec.moe_layers)
    out: dict[str, dict[str, object]] = {}
    attn = _W4A8_FP8_ATTN if spec.q_lora_rank else ("fused_a", "q_proj", "kv_b_proj", "o_proj")
    for layer in range(spec.num_hidden_layers):
        p = f"model.layers.{layer}"
        for n in attn:
            out[f"{p}.self_attn.{n}"] = dict(fp8)
        if layer in moe:
            if spec.n_shared_experts > 0:
                for n in _W4A8_FP8_MLP:
                    out[f"{p}.mlp.shared_experts.{n}"] = dict(fp8)
            out[f"{p}.mlp.experts"] = dict(w4a8)
        else:
            for n in _W4A8_FP8_MLP:
                out[f"{p}.mlp.{n}"] = dict(fp8)
    return out


def inline_quantization_config(hq: dict[str, Any]) -> dict[str, Any]:
    """config.json's ``quantization_config`` for ``hq``, by modelopt's ``convert_hf_quant_config_format``."""
    import warnings

    with warnings.catch_warnings():  # it has no compressed-tensors group for FP8_BLOCK_SCALES; the layer list stays
        warnings.simplefilter("ignore", UserWarning)
        return dict(_convert_hf_quant_config_format()(hq))


@functools.lru_cache(maxsize=1)
def _convert_hf_quant_config_format() -> Any:
    """modelopt's ``convert_hf_quant_config_format``. Its module needs only the standard library, but importing it
    by name first runs ``modelopt.torch``'s package init, which imports all of modelopt.torch (5 to 12 s on two
    cores, most of a small W4A8 conversion). So its file is loaded on its own; the import by name is the fallback
    for a modelopt whose module needs more."""
    import importlib.util

    found = importlib.util.find_spec("modelopt")  # finds the package without importing it
    roots = list(found.submodule_search_locations or []) if found else []
    path = Path(roots[0]) / "torch" / "export" / "convert_hf_config.py" if roots else None
    if path is not None and path.is_file():
        spec = importlib.util.spec_from_file_location("k2trt_modelopt_convert_hf_config", path)
        if spec is not None and spec.loader is not None:
            module = importlib.util.module_from_spec(spec)
            try:
                spec.loader.exec_module(module)
                return module.convert_hf_quant_config_format
            except (ImportError, AttributeError):  # it grew imports of its own package: the usual way below
                pass
    _modelopt()
    from modelopt.torch.export.convert_hf_config import convert_hf_quant_config_format

    return convert_hf_quant_config_format
