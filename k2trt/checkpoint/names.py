"""Every Hugging Face tensor name of a Kimi K2 / DeepSeek-V3 checkpoint, and the rules that parse them.

This module spells the HF names of the roles (DESIGN.md); ``formats.py`` spells the suffixes of each storage
format's parts (``weight_scale_inv``, ``weight_scale_2`` ...). Other modules speak of *roles* ("q_b",
"expert_down", ...) and ask here for the name of a role at a layer/expert, or for the role of a name. The role
vocabulary itself (which roles a K2 layer has, their shapes) is ``k2trt.spec``'s.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from k2trt.spec import IGNORED_ROLES  # noqa: F401  (re-exported: callers filter inventories with it)

SCALE_SUFFIX = "_scale_inv"
INDEX_FILE = "model.safetensors.index.json"

EMBED = "model.embed_tokens.weight"
FINAL_NORM = "model.norm.weight"
LM_HEAD = "lm_head.weight"
GLOBAL = {"embed": EMBED, "final_norm": FINAL_NORM, "lm_head": LM_HEAD}

# role -> name below "model.layers.{L}."; "{E}" is the routed-expert index.
LAYER = {
    "input_norm": "input_layernorm.weight",
    "post_norm": "post_attention_layernorm.weight",
    "q_a": "self_attn.q_a_proj.weight",
    "q_a_norm": "self_attn.q_a_layernorm.weight",
    "q_b": "self_attn.q_b_proj.weight",
    "q": "self_attn.q_proj.weight",  # only when q_lora_rank is null (DeepSeek-V2-Lite style)
    "kv_a": "self_attn.kv_a_proj_with_mqa.weight",
    "kv_a_norm": "self_attn.kv_a_layernorm.weight",
    "kv_b": "self_attn.kv_b_proj.weight",
    "o": "self_attn.o_proj.weight",
    "inv_freq": "self_attn.rotary_emb.inv_freq",  # present in K2 0711, never loaded (RoPE is recomputed)
    "dense_gate": "mlp.gate_proj.weight",
    "dense_up": "mlp.up_proj.weight",
    "dense_down": "mlp.down_proj.weight",
    "router": "mlp.gate.weight",
    "router_bias": "mlp.gate.e_score_correction_bias",
    "shared_gate": "mlp.shared_experts.gate_proj.weight",
    "shared_up": "mlp.shared_experts.up_proj.weight",
    "shared_down": "mlp.shared_experts.down_proj.weight",
    "expert_gate": "mlp.experts.{E}.gate_proj.weight",
    "expert_up": "mlp.experts.{E}.up_proj.weight",
    "expert_down": "mlp.experts.{E}.down_proj.weight",
}


_LAYER_RE = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
_EXPERT_RE = re.compile(r"^mlp\.experts\.(\d+)\.(gate|up|down)_proj\.weight$")
_BY_SUFFIX = {v: k for k, v in LAYER.items() if "{E}" not in v}
_BY_GLOBAL = {v: k for k, v in GLOBAL.items()}


# K2.5 / K2.6 (KimiK25ForConditionalGeneration) nest the language model under this prefix and add a vision tower
# and projector (docs/reference/k2_int4.md §1); k2trt reads the text model and carries or drops the rest.
TEXT_PREFIX = "language_model."
VISION_PREFIXES = ("vision_tower.", "mm_projector.")


def text_name(name: str) -> str | None:
    """A K2.5 tensor name as the text model's (``language_model.model.…`` → ``model.…``); None for a vision-tower or
    projector tensor; any other name unchanged (K2 / K2-Thinking checkpoints have no prefix)."""
    if name.startswith(TEXT_PREFIX):
        return name[len(TEXT_PREFIX):]
    return None if name.startswith(VISION_PREFIXES) else name


def strip_text_prefix(entries: "dict[str, Any]") -> "tuple[dict[str, Any], dict[str, Any]]":
    """Split a K2.5 checkpoint's tensor entries (name → ``TensorEntry``) into the text model's, renamed without
    ``language_model.``, and the vision tower's (by their own names). Other checkpoints come back unchanged."""
    if not any(n.startswith(TEXT_PREFIX) for n in entries):
        return entries, {}
    from dataclasses import replace

    text: dict[str, Any] = {}
    vision: dict[str, Any] = {}
    for n, e in entries.items():
        t = text_name(n)
        if t is None:
            vision[n] = e
        else:
            text[t] = replace(e, name=t) if t != n else e
    return text, vision


def vision_tensors(vision: dict[str, Any], text_hidden: int) -> list[tuple[str, tuple[int, ...]]]:
    """The vision tower + projector tensors ``synth`` writes for a K2.5 ``vision_config`` (BF16; MoonViT-shaped:
    patch embedding, ``depth`` pre-norm blocks, a 2×2-merge projector into the text model's width). Carried, never
    run: k2trt serves text only."""
    d, f, depth = int(vision["hidden_size"]), int(vision["intermediate_size"]), int(vision["num_hidden_layers"])
    patch = int(vision.get("patch_size", 14))
    merge = 4 * d  # merge_kernel_size [2, 2]
    out: list[tuple[str, tuple[int, ...]]] = [("vision_tower.patch_embed.proj.weight", (d, 3 * patch * patch))]
    for i in range(depth):
        b = f"vision_tower.encoder.blocks.{i}"
        out += [(f"{b}.norm0.weight", (d,)), (f"{b}.wqkv.weight", (3 * d, d)), (f"{b}.wo.weight", (d, d)),
                (f"{b}.norm1.weight", (d,)), (f"{b}.mlp.fc0.weight", (f, d)), (f"{b}.mlp.fc1.weight", (d, f))]
    out += [("vision_tower.encoder.final_layernorm.weight", (d,)), ("mm_projector.pre_norm.weight", (d,)),
            ("mm_projector.proj.0.weight", (merge, merge)), ("mm_projector.proj.2.weight", (text_hidden, merge))]
    return out


@dataclass(frozen=True)
class ParsedName:
    """What a tensor name means: its role, layer and expert (None where not applicable), and whether it is the
    ``weight_scale_inv`` of an FP8 weight."""

    role: str
    layer: int | None = None
    expert: int | None = None
    is_scale: bool = False


def name_of(role: str, layer: int | None = None, expert: int | None = None) -> str:
    """The HF tensor name of ``role`` at ``layer`` (and ``expert`` for routed experts).

    Example: ``name_of("kv_a", 0)`` → ``"model.layers.0.self_attn.kv_a_proj_with_mqa.weight"``.
    """
    if role in GLOBAL:
        return GLOBAL[role]
    if role not in LAYER:
        raise KeyError(f"unknown tensor role {role!r}")
    if layer is None:
        raise ValueError(f"role {role!r} needs a layer index")
    suffix = LAYER[role]
    if "{E}" in suffix:
        if expert is None:
            raise ValueError(f"role {role!r} needs an expert index")
        suffix = suffix.replace("{E}", str(expert))
    return f"model.layers.{layer}.{suffix}"


def module_name(weight_name: str) -> str:
    """The module of a linear weight: ``…q_b_proj.weight`` → ``…q_b_proj`` (ValueError for other names)."""
    if not weight_name.endswith(".weight"):
        raise ValueError(f"{weight_name!r} is not a linear weight name")
    return weight_name[: -len(".weight")]


def scale_name(weight_name: str) -> str:
    """The name of the block scale of an FP8 weight (``…weight`` → ``…weight_scale_inv``)."""
    return weight_name + SCALE_SUFFIX


def parse(name: str) -> ParsedName | None:
    """The role of an HF tensor name, or None for a name K2 does not have.

    Example: ``parse("model.layers.3.mlp.experts.7.down_proj.weight_scale_inv")`` →
    ``ParsedName("expert_down", 3, 7, is_scale=True)``.
    """
    is_scale = name.endswith(SCALE_SUFFIX)
    base = name[: -len(SCALE_SUFFIX)] if is_scale else name
    if base in _BY_GLOBAL:
        return ParsedName(_BY_GLOBAL[base], is_scale=is_scale)
    m = _LAYER_RE.match(base)
    if not m:
        return None
    layer, rest = int(m.group(1)), m.group(2)
    if rest in _BY_SUFFIX:
        return ParsedName(_BY_SUFFIX[rest], layer, None, is_scale)
    e = _EXPERT_RE.match(rest)
    if e:
        return ParsedName(f"expert_{e.group(2)}", layer, int(e.group(1)), is_scale)
    return None
