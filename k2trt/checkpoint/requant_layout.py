"""Tensor layout of K2's NVFP4 (Blackwell) and W4A8 (Hopper) checkpoints — names, dtypes, shapes; no torch.

Which precision each module gets, as TensorRT-LLM expects for DeepseekV3ForCausalLM checkpoints:

======================  ==============================================  ===========================================
module                  ``nvfp4`` (quant_algo NVFP4, ModelOpt unified)   ``w4a8`` (MIXED_PRECISION, W4A8_AWQ experts)
======================  ==============================================  ===========================================
routed experts          NVFP4: ``weight`` U8 [out, in/2] (two e2m1       INT4: ``weight`` I8 [out, in/2] (two int4
(gate/up/down)          codes per byte, even column in the low nibble),  per byte along in, even column in the low
                        ``weight_scale`` F8_E4M3 [out, in/16],           nibble), ``weight_scale_inv`` F32
                        ``weight_scale_2`` F32 [], ``input_scale``       [out, in/128] (amax/7 per group),
                        F32 []                                           ``input_scale`` F32 [1] (FP8 activation)
attention, shared       BF16 (dequantised from block FP8)                block FP8 + 128×128 ``weight_scale_inv``
experts, dense layer 0                                                   (unchanged from K2's checkpoint)
routers, norms, embed,  unchanged (BF16 / F32)                           unchanged
lm_head
======================  ==============================================  ===========================================

That split is what ``nvidia/Kimi-K2-Thinking-NVFP4`` ships (only the routed experts in NVFP4; it is what makes K2
NVFP4 ≈ 594 GB, k2_numbers.md) and what TensorRT-LLM's DeepSeek W4A8 recipe produces
(``examples/quantization/quantize_mixed_precision_moe.py``: INT4 experts in the ``W4A8_CUSTOM`` loading mode, the
rest block FP8). The W4A8 expert layout is that loading mode's: packed along the input dimension, per-128-group
``weight_scale_inv`` as the dequantisation multiplier, per-expert FP8 ``input_scale``, no ``weight_scale_2`` and
no ``pre_quant_scale``.

TensorRT-LLM checks that gate (w1) and up (w3) of an NVFP4 expert carry equal ``weight_scale_2`` and equal
``input_scale`` (they are fused into one GEMM), so both are computed from the pair (``requant.py``).
"""

from __future__ import annotations

NVFP4_GROUP = 16
"""Elements per NVFP4 block scale (fixed by the format)."""
W4A8_GROUP = 128
"""Input elements per INT4 group scale of the W4A8 experts (the W4A8_CUSTOM kernels' group)."""

WEIGHT = "weight"
WEIGHT_SCALE = "weight_scale"
WEIGHT_SCALE_2 = "weight_scale_2"
INPUT_SCALE = "input_scale"
WEIGHT_SCALE_INV = "weight_scale_inv"

TARGETS = ("nvfp4", "w4a8")
QUANT_ALGO = {"nvfp4": "NVFP4", "w4a8": "W4A8_AWQ"}
"""ModelOpt/TensorRT-LLM ``quant_algo`` of the routed experts per target."""
EXPERT_FORMAT = {"nvfp4": "nvfp4", "w4a8": "int4"}
OTHER_LINEAR_FORMAT = {"nvfp4": "bf16", "w4a8": "fp8"}
EXPERT_ROLES = frozenset({"expert_gate", "expert_up", "expert_down"})
QUANT_CFG_FILE = "quant_cfg.json"
HF_QUANT_CONFIG = "hf_quant_config.json"

# TensorRT-LLM module names of the block-FP8 linears in a DeepseekV3 W4A8 MIXED_PRECISION checkpoint (the loader
# fuses q_a_proj + kv_a_proj_with_mqa into ``fused_a`` and gate/up into ``gate_up_proj``; newer releases rename the
# ``fused_a`` key themselves, older ones look it up under that name).
_W4A8_FP8_ATTN = ("fused_a", "q_b_proj", "kv_b_proj", "o_proj")
_W4A8_FP8_MLP = ("gate_up_proj", "down_proj")


def module_name(weight_name: str) -> str:
    """``…q_b_proj.weight`` → ``…q_b_proj``."""
    suffix = "." + WEIGHT
    if not weight_name.endswith(suffix):
        raise ValueError(f"{weight_name!r} is not a linear weight name")
    return weight_name[: -len(suffix)]


def check_shape(name: str, shape: tuple[int, ...], fmt: str) -> None:
    """Raise ValueError when a weight cannot be stored in ``fmt`` (block sizes must divide its input dim)."""
    if len(shape) != 2:
        raise ValueError(f"{name}: {fmt} needs a 2-D weight, got {list(shape)}")
    out, inp = shape
    if fmt == "nvfp4" and inp % NVFP4_GROUP:
        raise ValueError(f"{name}: input dim {inp} is not a multiple of the NVFP4 block {NVFP4_GROUP}")
    if fmt == "int4" and (inp % W4A8_GROUP or out % 2):
        raise ValueError(f"{name}: {list(shape)} needs an input dim that is a multiple of {W4A8_GROUP} for W4A8")


def linear_tensors(weight_name: str, shape: tuple[int, ...], fmt: str
                   ) -> list[tuple[str, str, tuple[int, ...], int]]:
    """The tensors one linear weight becomes in ``fmt``: ``[(name, dtype, shape, packed)]``, weight first.

    ``packed`` is the number of weight elements per stored element (2 for the 4-bit formats, else 1).
    ``fmt`` is ``bf16``, ``fp8`` (128×128 block scales), ``nvfp4`` or ``int4`` (W4A8 experts).
    Example: ``linear_tensors("m.experts.0.up_proj.weight", (2048, 7168), "nvfp4")[1]`` →
    ``("m.experts.0.up_proj.weight_scale", "F8_E4M3", (2048, 448), 1)``.
    """
    mod = module_name(weight_name)
    out, inp = shape
    if fmt == "bf16":
        return [(weight_name, "BF16", shape, 1)]
    if fmt == "fp8":
        return [(weight_name, "F8_E4M3", shape, 1),
                (f"{weight_name}_scale_inv", "F32", (-(-out // 128), -(-inp // 128)), 1)]
    check_shape(weight_name, shape, fmt)
    if fmt == "nvfp4":
        return [(weight_name, "U8", (out, inp // 2), 2),
                (f"{mod}.{WEIGHT_SCALE}", "F8_E4M3", (out, inp // NVFP4_GROUP), 1),
                (f"{mod}.{WEIGHT_SCALE_2}", "F32", (), 1),
                (f"{mod}.{INPUT_SCALE}", "F32", (), 1)]
    if fmt == "int4":
        return [(weight_name, "I8", (out, inp // 2), 2),
                (f"{mod}.{WEIGHT_SCALE_INV}", "F32", (out, inp // W4A8_GROUP), 1),
                (f"{mod}.{INPUT_SCALE}", "F32", (1,), 1)]
    raise ValueError(f"unknown linear format {fmt!r}")


def linear_format(role: str, target: str | None, source_fp8: bool = True) -> str:
    """Storage format of a linear role: ``target`` None keeps the source's (``fp8`` or ``bf16``)."""
    if target is None:
        return "fp8" if source_fp8 else "bf16"
    if target not in TARGETS:
        raise ValueError(f"unknown requant target {target!r}")
    return EXPERT_FORMAT[target] if role in EXPERT_ROLES else OTHER_LINEAR_FORMAT[target]


def w4a8_quantized_layers(num_layers: int, moe_layers: list[int], q_lora: bool, has_shared: bool
                          ) -> dict[str, dict[str, object]]:
    """``quantized_layers`` of a DeepseekV3 W4A8 MIXED_PRECISION config, in TensorRT-LLM's module names."""
    fp8: dict[str, object] = {"quant_algo": "FP8_BLOCK_SCALES"}
    w4a8: dict[str, object] = {"quant_algo": QUANT_ALGO["w4a8"], "group_size": W4A8_GROUP}
    moe = set(moe_layers)
    out: dict[str, dict[str, object]] = {}
    attn = _W4A8_FP8_ATTN if q_lora else ("fused_a", "q_proj", "kv_b_proj", "o_proj")
    for layer in range(num_layers):
        p = f"model.layers.{layer}"
        for n in attn:
            out[f"{p}.self_attn.{n}"] = dict(fp8)
        if layer in moe:
            if has_shared:
                for n in _W4A8_FP8_MLP:
                    out[f"{p}.mlp.shared_experts.{n}"] = dict(fp8)
            out[f"{p}.mlp.experts"] = dict(w4a8)
        else:
            for n in _W4A8_FP8_MLP:
                out[f"{p}.mlp.{n}"] = dict(fp8)
    return out
