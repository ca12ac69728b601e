"""The table of conversion targets: what each ``k2trt convert --to`` writes.

A target is a row: the quantization of its output (from which ``ModelSpec.linear_format`` tells every linear role's
output storage format — the per-tensor ops follow from source format → output format, see ``plan.py``), whether it
moves whole files, and whether it takes calibration data. Its metadata files (config.json, hf_quant_config.json,
quant_cfg.json) follow from the output spec through ``quantcfg.py``; the side files (tokenizer, chat template,
generation config, remote code) are carried by every target.

=========  ========================================================================================================
target     output
=========  ========================================================================================================
trtllm     the directory to point ``trtllm-serve`` at: shards hard-linked (same filesystem) or copied, byte for byte
bf16       every quantized linear weight dequantised to BF16 (FP8 with the exact 128×128 block math), scales dropped
fp8-block  every linear weight in block FP8 (BF16 quantised with one amax/448 scale per 128×128 block; FP8 kept)
nvfp4      Blackwell: routed experts NVFP4 (modelopt), every other linear BF16
w4a8       Hopper: routed experts INT4 per 128 with FP8 activations, every other linear block FP8
ct-int4    K2-Thinking / K2.5's own layout: routed experts compressed-tensors INT4 (group 32, quantized by the package
           itself), every other linear BF16, K2-Thinking's ``quantization_config`` (for engines that load it, and
           the tiny K2's INT4 variant; TensorRT-LLM cannot, so ``--kv-cache-dtype fp8`` is refused)
=========  ========================================================================================================

Adding a target is a row here (plus, for a new output storage format, its ``encode`` in ``formats.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from k2trt.checkpoint import quantcfg
from k2trt.errors import CheckpointError
from k2trt.fsio import read_mapping
from k2trt.spec import HF_QUANT_CONFIG, ModelSpec, Quantization

KV_CACHE_DTYPES = ("auto", "fp8")
MODEL_TYPES = ("auto", "kimi_k2", "deepseek_v3")


@dataclass(frozen=True)
class Target:
    """One row of the target table."""

    name: str
    help: str
    quantization: Callable[[ModelSpec, bool], Quantization | None]
    """The output's quantization from the source spec and whether an FP8 KV cache is asked for."""
    whole_files: bool = False
    """Shards are linked or copied as files (no tensor is touched)."""
    calibrated: bool = False
    """Takes ``--calib-data`` (activation scales of 4-bit experts); its source must not be 4-bit already."""


TARGETS: dict[str, Target] = {t.name: t for t in (
    Target("trtllm", "the directory to point trtllm-serve at (shards hard-linked or copied, config and tokenizer "
           "carried)", lambda spec, kv: spec.quantization, whole_files=True),
    Target("bf16", "dequantise every quantized linear weight to BF16", lambda spec, kv: None),
    Target("fp8-block", "every linear weight in e4m3 with 128×128 block scales", lambda spec, kv: Quantization()),
    Target("nvfp4", "(Blackwell) NVFP4 routed experts, the rest BF16",
           lambda spec, kv: Quantization.requant("nvfp4", "FP8" if kv else None), calibrated=True),
    Target("w4a8", "(Hopper) INT4 routed experts with FP8 activations, the rest block FP8",
           lambda spec, kv: Quantization.requant("w4a8", "FP8" if kv else None), calibrated=True),
    Target("ct-int4", "K2-Thinking's own format: compressed-tensors INT4 routed experts (group 32), the rest BF16 "
           "(vLLM, SGLang and k2trt's reference engine load it; TensorRT-LLM does not)",
           lambda spec, kv: Quantization.compressed_int4()),
)}


def target(name: str) -> Target:
    """The row of ``name``, or CheckpointError listing the choices."""
    if name not in TARGETS:
        raise CheckpointError(f"unknown target {name!r}", f"choose one of {', '.join(TARGETS)}")
    return TARGETS[name]


@dataclass(frozen=True)
class Metadata:
    """The non-shard files a conversion writes (besides the index and the side files)."""

    config: dict[str, Any] | None
    """The new config.json, or None to copy the source's byte for byte."""
    files: dict[str, Any]
    """Metadata file name → JSON object to write, or None to copy the source's file."""
    hf_quant_config: dict[str, Any] | None
    """What ``hf_quant_config.json`` will hold (for the plan report)."""


def metadata(t: Target, src: Path, spec: ModelSpec, out: ModelSpec, kv_fp8: bool, model_type: str,
             notes: list[str]) -> Metadata:
    """config.json, hf_quant_config.json and quant_cfg.json of target ``t`` converting ``src`` (spec ``spec``) to a
    checkpoint of ``out``; appends what changed to ``notes``."""
    files: dict[str, Any] = {}
    if t.whole_files and not kv_fp8:  # passthrough: the source's own quantization files, verbatim
        src_hq = src / HF_QUANT_CONFIG
        hq = read_mapping(src_hq, what="source file", error=CheckpointError) if src_hq.exists() else None
        files = {n: None for n in quantcfg.FILES if (src / n).exists()}
    else:
        hq = quantcfg.hf_quant_config(out, kv_fp8)
        files = quantcfg.metadata_files(out, hq)
        dropped = [n for n in quantcfg.FILES if (src / n).exists() and n not in files]
        notes += [f"not carried: {n} (it describes the source's quantization)" for n in dropped]
    raw = read_mapping(src / "config.json", what="source config", error=CheckpointError)
    if t.whole_files:
        cfg: dict[str, Any] = dict(raw)
    else:
        cfg = quantcfg.config_json(out, hq)
        if spec.quantization != out.quantization and not t.calibrated:  # (those note their quantization)
            notes.append("config.json: quantization_config " + ("removed" if out.quantization is None else
                         f"{out.quantization.describe()}"))
    cfg = _model_type(src, cfg, t, model_type, notes)
    return Metadata(None if (t.whole_files and cfg == raw) else cfg, files, hq)


def _model_type(src: Path, cfg: dict[str, Any], t: Target, model_type: str, notes: list[str]) -> dict[str, Any]:
    """config.json's ``model_type``: ``auto`` keeps ``kimi_k2`` where its remote-code files are in SRC.

    TensorRT-LLM picks the model class from ``architectures`` (DeepseekV3ForCausalLM) but loads the config with
    transformers, which does not know ``kimi_k2``: K2 ships ``configuration_deepseek.py`` through ``auto_map`` and
    needs ``trust_remote_code``. When those files are not in SRC, ``auto`` writes ``deepseek_v3`` for the trtllm
    target (built into transformers) and drops the dangling ``auto_map`` (Moonshot's advice for engines without
    kimi_k2).
    """
    cfg = dict(cfg)
    mt = model_type
    missing = _missing_remote_code(src, cfg)
    if mt == "auto":
        mt = "deepseek_v3" if (t.whole_files and cfg.get("model_type") == "kimi_k2" and missing) \
            else str(cfg.get("model_type"))
    if mt != cfg.get("model_type"):
        notes.append(f"config.json: model_type {cfg.get('model_type')} → {mt}"
                     + (f" ({', '.join(missing)} not in SRC)" if missing else ""))
        cfg["model_type"] = mt
    if missing and cfg.get("model_type") != "kimi_k2" and "auto_map" in cfg:
        cfg.pop("auto_map")
        notes.append("config.json: auto_map removed (its remote-code files are not in SRC)")
    return cfg


def _missing_remote_code(src: Path, cfg: dict[str, Any]) -> list[str]:
    mods: set[str] = set()
    for v in (cfg.get("auto_map") or {}).values():
        for ref in (v if isinstance(v, list) else [v]):
            if isinstance(ref, str) and "." in ref:
                mods.add(ref.split("--")[-1].rsplit(".", 1)[0] + ".py")
    return sorted(m for m in mods if not (src / m).is_file())
