"""Types and bounds of a config.json, checked before a ModelSpec is built from it.

A config.json is input like any other: a layer count of 10^8 would make the tensor inventory (one entry per tensor,
built by inspect, plan and convert) grow without bound, a string where a number belongs ends in a traceback deep
in the arithmetic, and ``"weight_block_size": "128"`` iterates as ``["1", "2", "8"]``. ``check_config`` refuses all
of these in one line naming the field, before anything is sized from the numbers.

The bounds are far above every DeepseekV3-architecture model (K2: 61 layers, hidden 7168, 384 experts, vocabulary
163,840, 256K context; the figures in k2_numbers.md) and low enough that the inventory stays bounded: at most
``MAX_EXPERT_SLOTS`` layer × routed-expert pairs (5.6× K2's 23,424). Depends only on ``k2trt.errors``; ``spec``
imports it.
"""

from __future__ import annotations

import json
import math
from typing import Any

from k2trt.errors import ConfigError

_INT_BOUNDS: dict[str, tuple[int, int]] = {
    # field: (least, most) — K2's value in the comment
    "vocab_size": (1, 2**24),              # 163,840
    "hidden_size": (1, 2**17),             # 7,168
    "intermediate_size": (1, 2**20),       # 18,432
    "moe_intermediate_size": (1, 2**18),   # 2,048
    "num_hidden_layers": (1, 2**10),       # 61
    "num_attention_heads": (1, 2**10),     # 64
    "num_key_value_heads": (1, 2**10),     # 64
    "q_lora_rank": (1, 2**16),             # 1,536 (null: a plain q_proj)
    "kv_lora_rank": (1, 2**16),            # 512
    "qk_nope_head_dim": (1, 2**12),        # 128
    "qk_rope_head_dim": (1, 2**12),        # 64
    "v_head_dim": (1, 2**12),              # 128
    "n_routed_experts": (1, 2**13),        # 384
    "n_shared_experts": (0, 2**6),         # 1
    "num_experts_per_tok": (1, 2**13),     # 8
    "n_group": (1, 2**13),                 # 1
    "topk_group": (1, 2**13),              # 1
    "first_k_dense_replace": (0, 2**10),   # 1
    "moe_layer_freq": (1, 2**10),          # 1
    "max_position_embeddings": (1, 2**24),  # 131,072 / 262,144
    "num_nextn_predict_layers": (0, 2**4),  # 0
}
_TOKEN_IDS = ("bos_token_id", "eos_token_id")  # an id, or a list of ids (transformers accepts both)
_POSITIVE_FLOATS = ("routed_scaling_factor", "rms_norm_eps", "rope_theta")
_BOOLS = ("norm_topk_prob", "tie_word_embeddings")
_STRINGS = ("topk_method", "scoring_func", "hidden_act")
_ROPE_NUMBERS = ("factor", "original_max_position_embeddings", "beta_fast", "beta_slow", "mscale", "mscale_all_dim")
_MAX_NUMBER = 1e15  # of any float field (K2's largest: rope_theta 50,000); keeps float() of a JSON integer finite
MAX_EXPERT_SLOTS = 2**17
"""Most (decoder + MTP layers) × routed experts a config may describe: bounds the tensor inventory."""
MAX_BLOCK = 2**16
"""Largest ``weight_block_size`` side accepted (K2: 128)."""


def check_config(cfg: dict[str, Any], where: str) -> None:
    """Refuse a config.json whose fields have the wrong JSON type or absurd values, before any use of them.

    Args:
        cfg: the parsed config.json (a dict).
        where: the file, for the message.
    Returns:
        None; raises ConfigError (one line: the field, what it holds, what it must be).
    Example: ``check_config({"num_hidden_layers": 10**8, ...}, "config.json")`` raises
    ``config.json: num_hidden_layers is 100000000, outside 1..1024``.
    """
    for name, (lo, hi) in _INT_BOUNDS.items():
        if cfg.get(name) is not None:
            _int(cfg[name], lo, hi, f"{where}: {name}")
    for name in _TOKEN_IDS:
        v = cfg.get(name)
        for i in (v if isinstance(v, list) else [] if v is None else [v]):
            _int(i, 0, 2**31 - 1, f"{where}: {name}")
    for name in _POSITIVE_FLOATS:
        if cfg.get(name) is not None:
            _number(cfg[name], f"{where}: {name}", positive=True)
    for name in _BOOLS:
        if cfg.get(name) is not None and not isinstance(cfg[name], bool):
            raise ConfigError(f"{where}: {name} is {_show(cfg[name])}, not true or false")
    for name in _STRINGS:
        if cfg.get(name) is not None and not isinstance(cfg[name], str):
            raise ConfigError(f"{where}: {name} is {_show(cfg[name])}, not a string")
    layers = (cfg.get("num_hidden_layers") or 0) + (cfg.get("num_nextn_predict_layers") or 0)
    if layers * (cfg.get("n_routed_experts") or 0) > MAX_EXPERT_SLOTS:
        raise ConfigError(f"{where}: {layers} layers × {cfg['n_routed_experts']} routed experts is more than the "
                          f"{MAX_EXPERT_SLOTS} expert slots k2trt plans for", "check num_hidden_layers and "
                          "n_routed_experts (Kimi K2: 61 × 384)")
    for key in ("rope_scaling", "rope_parameters"):
        _check_rope(cfg.get(key), f"{where}: {key}")
    q = cfg.get("quantization_config")
    if q is not None:
        check_quantization_config(q, f"{where}: quantization_config")


def check_quantization_config(q: Any, where: str) -> None:
    """Refuse a ``quantization_config`` (or hf_quant_config.json ``quantization``) of the wrong JSON types.

    Args:
        q: the object as parsed.
        where: file and key, for the message.
    Returns:
        None; raises ConfigError. ``weight_block_size`` must be two positive integers (a string such as ``"128"``
        would otherwise iterate character by character); the names (``quant_method``, ``fmt``, ``quant_algo``, ...)
        strings; ``quantized_layers`` an object of objects.
    Example: ``check_quantization_config({"quant_method": "fp8", "weight_block_size": "128"}, "config.json")``
    raises ``config.json: weight_block_size is "128", not a list of 2 integers``.
    """
    if not isinstance(q, dict):
        raise ConfigError(f"{where} is {_show(q)}, not an object")
    for name in ("quant_method", "fmt", "activation_scheme", "quant_algo", "kv_cache_quant_algo",
                 "quant_algo_experts"):
        if q.get(name) is not None and not isinstance(q[name], str):
            raise ConfigError(f"{where}: {name} is {_show(q[name])}, not a string")
    bs = q.get("weight_block_size")
    if bs is not None:
        if not isinstance(bs, list) or len(bs) != 2:
            raise ConfigError(f"{where}: weight_block_size is {_show(bs)}, not a list of 2 integers",
                              "K2's block FP8 has [128, 128]")
        for v in bs:
            _int(v, 1, MAX_BLOCK, f"{where}: weight_block_size")
    if q.get("group_size") is not None:
        _int(q["group_size"], 1, MAX_BLOCK, f"{where}: group_size")
    layers = q.get("quantized_layers")
    if layers is not None and not (isinstance(layers, dict) and all(isinstance(v, dict) for v in layers.values())):
        raise ConfigError(f"{where}: quantized_layers is {_show(layers)}, not an object of per-module objects")
    kv = q.get("kv_cache_scheme")
    if kv is not None and not isinstance(kv, dict):
        raise ConfigError(f"{where}: kv_cache_scheme is {_show(kv)}, not an object")


def check_compressed_int4(q: dict[str, Any], where: str, group_size: int) -> None:
    """Refuse a compressed-tensors ``quantization_config`` other than Moonshot's INT4 layout (K2-Thinking / K2.5 /
    K2.6): format ``pack-quantized``, one config group of symmetric 4-bit ``int`` weights, ``group`` strategy with
    ``group_size``, no activation quantization.

    Args:
        q: config.json's ``quantization_config`` (``quant_method`` ``compressed-tensors``).
        where: file, for the message.
        group_size: the group size k2trt's storage format reads (32).
    Returns:
        None; raises ConfigError naming the field.
    Example: a ``group_size`` of 128 raises ``config.json: config_groups.group_0.weights.group_size is 128, not 32``.
    """
    fix = f"k2trt reads compressed-tensors pack-quantized INT4 with group_size {group_size} (K2-Thinking / K2.5)"
    groups = q.get("config_groups")
    if q.get("format") != "pack-quantized" or not isinstance(groups, dict) or len(groups) != 1:
        raise ConfigError(f"{where}: compressed-tensors format {q.get('format')!r} with "
                          f"{len(groups) if isinstance(groups, dict) else 'no'} config groups is not supported", fix)
    (name, g), = groups.items()
    w = g.get("weights") if isinstance(g, dict) else None
    if not isinstance(w, dict):
        raise ConfigError(f"{where}: config_groups.{name} has no weights", fix)
    want = {"num_bits": 4, "type": "int", "strategy": "group", "symmetric": True, "group_size": group_size}
    for k, v in want.items():
        if w.get(k) != v:
            raise ConfigError(f"{where}: config_groups.{name}.weights.{k} is {_show(w.get(k))}, not {v!r}", fix)
    if g.get("input_activations") is not None:
        raise ConfigError(f"{where}: config_groups.{name} quantizes activations; INT4 weight-only is expected", fix)


def _check_rope(rs: Any, where: str) -> None:
    if rs is None:
        return
    if not isinstance(rs, dict):
        raise ConfigError(f"{where} is {_show(rs)}, not an object")
    for k in ("type", "rope_type"):
        if rs.get(k) is not None and not isinstance(rs[k], str):
            raise ConfigError(f"{where}: {k} is {_show(rs[k])}, not a string")
    for k in _ROPE_NUMBERS:
        if rs.get(k) is not None:
            _number(rs[k], f"{where}: {k}", positive=False)


def _int(v: Any, lo: int, hi: int, what: str) -> None:
    if not isinstance(v, int) or isinstance(v, bool):
        raise ConfigError(f"{what} is {_show(v)}, not an integer")
    if v < lo:  # the wording spec.validate has always used
        raise ConfigError(f"{what} must be a {'positive' if lo > 0 else 'non-negative'} integer, got {v}")
    if v > hi:
        raise ConfigError(f"{what} is {_show(v)}, outside {lo}..{hi}")


def _number(v: Any, what: str, positive: bool) -> None:
    if not isinstance(v, (int, float)) or isinstance(v, bool) or (isinstance(v, float) and not math.isfinite(v)):
        raise ConfigError(f"{what} is {_show(v)}, not a finite number")
    if v > _MAX_NUMBER:
        raise ConfigError(f"{what} is {_show(v)}, more than {_MAX_NUMBER:g}")
    if v < 0 or (positive and v == 0):
        raise ConfigError(f"{what} is {_show(v)}, not {'positive' if positive else 'non-negative'}")


def _show(v: Any) -> str:
    """A value for a one-line message: JSON-ish and cut to 40 characters."""
    try:
        s = json.dumps(v)
    except (TypeError, ValueError):
        s = repr(v)
    return s if len(s) <= 40 else s[:37] + "..."
