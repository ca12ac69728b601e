"""ModelSpec: the one place Kimi K2's dimensions live.

A ModelSpec is read from a checkpoint's ``config.json`` (``model_type`` ``kimi_k2`` or ``deepseek_v3``) or from a
preset, validated, and then answers every dimensional question the rest of k2trt asks: head dims, which layers are
MoE, the YaRN softmax scale, the full tensor inventory (``tensors()``: roles, shapes, dtypes, in each linear's
storage format from ``LINEAR_FORMATS``) and the parameter/byte math built on it. It also owns the block-FP8
constants and the scale grid (``BLOCK``, ``FP8_MAX``, ``scale_shape``). No torch here, and no tensor names (those
are ``checkpoint.names``'s): spec sits below every package that reads checkpoints.

Presets (their config.json is ``k2trt.presets``'s data): ``k2-instruct`` (0711, 128K), ``k2-instruct-0905``
(256K), ``k2-thinking`` (INT4 routed experts) and ``tiny`` / ``tiny-thinking`` — K2's exact structure at small
sizes (1 dense + 2 MoE layers, 16 routed experts, 1 shared, n_group 1, MLA with q_lora and kv_lora, and a ragged
``kv_a_proj_with_mqa`` of 320 rows so partial 128×128 scale blocks are exercised, as K2's 576 rows are).

Length: ~785 lines, over the 600 soft cap: the storage-format geometry (``LINEAR_FORMATS``, ~100 lines) lives here
because the inventory and the byte math need it and spec must not import ``checkpoint``.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal

from k2trt.configcheck import check_compressed_int4, check_config, check_quantization_config
from k2trt.errors import ConfigError
from k2trt.presets import K2_THINKING_QUANT, PRESETS, TINY_BPE_RANKS  # noqa: F401  (TINY_BPE_RANKS re-exported)

Dtype = Literal["F8_E4M3", "BF16", "F32", "F16", "U8", "I8", "F8_E8M0", "I32", "I64"]
DTYPE_BYTES: dict[str, float] = {
    "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1, "U8": 1, "I8": 1, "BOOL": 1, "BF16": 2, "F16": 2, "I16": 2, "U16": 2,
    "F32": 4, "I32": 4, "U32": 4, "I64": 8, "F64": 8, "U64": 8, "F4": 0.5,
}
"""Bytes per element of every safetensors dtype (the one table; ``checkpoint.files`` validates headers with it)."""

# ---- storage formats of a linear weight (geometry only: dtypes and shapes, no tensor names) ----------------------

BLOCK = 128
"""K2's ``weight_block_size``, both axes: one FP8 scale per 128×128 block."""
FP8_MAX = 448.0
"""Largest finite float8_e4m3fn."""
NVFP4_GROUP = 16
"""Input elements per NVFP4 block scale (fixed by the format)."""
W4A8_GROUP = 128
"""Input elements per INT4 group scale of the W4A8 experts (TensorRT-LLM's W4A8_CUSTOM kernels' group)."""
CT_INT4_GROUP = 32
"""Input elements per scale of compressed-tensors INT4 as K2-Thinking / K2.5 / K2.6 ship it (``group_size`` 32)."""
CT_INT4_PACK = 8
"""INT4 codes per int32 word of compressed-tensors ``pack-quantized`` (packed along the input dimension)."""
HF_QUANT_CONFIG = "hf_quant_config.json"
"""ModelOpt's quantization file, which TensorRT-LLM reads before config.json's ``quantization_config``."""
REQUANT_TARGETS = ("nvfp4", "w4a8")
"""ModelOpt layouts ``k2trt convert`` writes (routed experts in 4 bits)."""
CT_METHOD = "compressed-tensors"
"""config.json ``quant_method`` of Moonshot's native INT4 checkpoints (K2-Thinking, K2.5, K2.6)."""
QUANT_ALGO = {"nvfp4": "NVFP4", "w4a8": "W4A8_AWQ"}
"""ModelOpt/TensorRT-LLM ``quant_algo`` of the routed experts per requant target."""
QUANT_LAYOUTS: dict[str, tuple[str, str]] = {
    "bf16": ("bf16", "bf16"),
    "fp8": ("fp8", "fp8"),       # K2-Instruct / K2-0905: every linear in 128×128 block FP8
    "nvfp4": ("nvfp4", "bf16"),  # what nvidia/Kimi-K2-Thinking-NVFP4 ships
    "w4a8": ("int4", "fp8"),     # TensorRT-LLM's DeepSeek W4A8 recipe
    "ct-int4": ("ct-int4", "bf16"),  # K2-Thinking / K2.5 / K2.6: compressed-tensors INT4 experts, rest BF16
}
"""A checkpoint's quantization → the ``LINEAR_FORMATS`` of (its routed experts, every other linear)."""


@dataclass(frozen=True)
class Part:
    """One stored tensor of a linear weight ``[out, in]`` in a storage format.

    ``per`` is how many weight rows × columns one stored element covers (``(1, 2)``: two 4-bit codes per byte;
    ``(128, 128)``: one block scale), partial edge groups included; ``None`` means a fixed ``shape`` (a per-tensor
    scale). A reader widens a slice of the weight to whole ``per`` units and takes the matching slice of each part.
    """

    part: str
    dtype: str
    per: tuple[int, int] | None = (1, 1)
    shape: tuple[int, ...] = ()

    def shape_for(self, out: int, inp: int) -> tuple[int, ...]:
        """The stored shape for an ``[out, in]`` weight. Example: fp8 scale of (576, 7168) → (5, 56)."""
        return self.shape if self.per is None else scale_shape((out, inp), self.per)


@dataclass(frozen=True)
class LinearFormat:
    """How a 2-D linear weight is stored: its parts (weight first) and what its shape must divide into."""

    name: str
    parts: tuple[Part, ...]
    multiple_of: tuple[int, int] = (1, 1)
    """(out, in) must be multiples of these (packing and group sizes)."""

    @property
    def packed(self) -> int:
        """Weight elements per stored weight element (2 for the 4-bit formats)."""
        per = self.parts[0].per
        return 1 if per is None else per[1]

    def check(self, what: str, shape: tuple[int, ...]) -> None:
        """Raise ValueError when ``shape`` cannot be stored in this format."""
        if len(shape) != 2:
            raise ValueError(f"{what}: {self.name} needs a 2-D weight, got {list(shape)}")
        (out, inp), (mo, mi) = shape, self.multiple_of
        if out % mo or inp % mi:
            raise ValueError(f"{what}: {list(shape)} cannot be stored as {self.name}: needs out a multiple of "
                             f"{mo} and in a multiple of {mi}")


LINEAR_FORMATS: dict[str, LinearFormat] = {f.name: f for f in (
    LinearFormat("bf16", (Part("weight", "BF16"),)),
    LinearFormat("fp8", (Part("weight", "F8_E4M3"), Part("scale", "F32", (BLOCK, BLOCK)))),
    LinearFormat("nvfp4", (Part("weight", "U8", (1, 2)), Part("scale", "F8_E4M3", (1, NVFP4_GROUP)),
                           Part("scale_2", "F32", None, ()), Part("input_scale", "F32", None, ())),
                 (1, NVFP4_GROUP)),
    LinearFormat("int4", (Part("weight", "I8", (1, 2)), Part("scale", "F32", (1, W4A8_GROUP)),
                          Part("input_scale", "F32", None, (1,))), (2, W4A8_GROUP)),
    # compressed-tensors pack-quantized: 8 codes per int32 along the input, a BF16 scale per 32 inputs, and the
    # declared [out, in] as a tensor
    LinearFormat("ct-int4", (Part("weight", "I32", (1, CT_INT4_PACK)), Part("scale", "BF16", (1, CT_INT4_GROUP)),
                             Part("shape", "I64", None, (2,))), (1, CT_INT4_GROUP)),
)}
"""Every storage format of a linear weight, by name: the geometry ``plan`` counts and ``checkpoint`` reads (the HF
suffix of each part and the dequantisation math are ``checkpoint.formats``'s row of the same name)."""

SUPPORTED_MODEL_TYPES = ("kimi_k2", "deepseek_v3")


@dataclass(frozen=True, slots=True)
class TensorInfo:
    """One stored tensor of a checkpoint: what it is (role/layer/expert and, for a linear weight, its storage
    format and part), its shape and safetensors dtype. The Hugging Face name is ``checkpoint.formats``'s to spell
    (``tensor_name(t)``)."""

    role: str
    shape: tuple[int, ...]
    dtype: str
    layer: int | None = None
    expert: int | None = None
    fmt: str | None = None
    """Storage format (``LINEAR_FORMATS``) of a linear weight's part; None for norms, embeddings, routers."""
    part: str = "weight"
    """Which stored tensor of the linear this is: ``weight`` or a scale part (``scale``, ``scale_2``, ...)."""
    packed: int = 1
    """Weight elements per stored element: 2 for the 4-bit NVFP4/INT4 weights (two codes per byte), else 1."""

    @property
    def name(self) -> str:
        """A readable identifier, unique in the inventory (``layers.3.experts.7.expert_down.scale``) — not the
        Hugging Face name, which ``checkpoint.formats.tensor_name`` spells."""
        where = "" if self.layer is None else f"layers.{self.layer}."
        where += "" if self.expert is None else f"experts.{self.expert}."
        return f"{where}{self.role}" + ("" if self.part == "weight" else f".{self.part}")

    @property
    def scale_of(self) -> str | None:
        """For a scale part, the ``name`` of the weight it belongs to; None for a weight."""
        return None if self.part == "weight" else self.name.rsplit(".", 1)[0]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def params(self) -> int:
        """Model parameters this tensor stores (``numel`` × ``packed``; scales count as none by the callers)."""
        return self.numel * self.packed

    @property
    def nbytes(self) -> int:
        return int(self.numel * DTYPE_BYTES[self.dtype])

    @property
    def is_fp8(self) -> bool:
        return self.dtype == "F8_E4M3"


@dataclass(frozen=True)
class Quantization:
    """The checkpoint's quantization: K2's own ``quantization_config`` (fp8 / e4m3 / [128, 128] / dynamic), or a
    ModelOpt requantization (``quant_method`` ``modelopt``) read from ``hf_quant_config.json``: NVFP4 routed experts
    (Blackwell) or W4A8 routed experts with block-FP8 elsewhere (Hopper), or compressed-tensors INT4 routed experts
    with BF16 elsewhere (K2-Thinking / K2.5 / K2.6, ``quant_method`` ``compressed-tensors``); ``linear_format``
    says which role gets which ``LINEAR_FORMATS`` entry."""

    quant_method: str = "fp8"
    fmt: str = "e4m3"
    weight_block_size: tuple[int, int] = (BLOCK, BLOCK)
    activation_scheme: str = "dynamic"
    quant_algo: str | None = None
    """ModelOpt quant_algo of the routed experts: ``NVFP4`` or ``W4A8_AWQ`` (None for K2's block FP8)."""
    group_size: int | None = None
    """Elements per weight scale of the routed experts (NVFP4: 16, W4A8: 128)."""
    kv_cache_quant_algo: str | None = None
    """``FP8`` when the checkpoint asks for an FP8 KV cache."""

    @classmethod
    def requant(cls, target: str, kv_cache_quant_algo: str | None = None) -> "Quantization":
        """The quantization ``k2trt convert --to nvfp4|w4a8`` writes."""
        if target not in REQUANT_TARGETS:
            raise ConfigError(f"unknown requantization target {target!r}",
                              f"choose one of {', '.join(REQUANT_TARGETS)}")
        group = NVFP4_GROUP if target == "nvfp4" else W4A8_GROUP
        return cls("modelopt", "nvfp4" if target == "nvfp4" else "int4", (0, 0), "static", QUANT_ALGO[target],
                   group, kv_cache_quant_algo)

    @classmethod
    def compressed_int4(cls) -> "Quantization":
        """K2-Thinking's own quantization: compressed-tensors ``pack-quantized`` INT4 routed experts, group 32."""
        return cls(CT_METHOD, "int4", (0, 0), "none", None, CT_INT4_GROUP)

    @property
    def target(self) -> str | None:
        """``nvfp4`` / ``w4a8`` for a ModelOpt requantized checkpoint, None otherwise."""
        if self.quant_method != "modelopt":
            return None
        return {v: k for k, v in QUANT_ALGO.items()}.get(self.quant_algo or "")

    @property
    def is_int4_source(self) -> bool:
        """Moonshot's native INT4 (compressed-tensors): TensorRT-LLM cannot load it; ``k2trt convert`` must run."""
        return self.quant_method == CT_METHOD

    @property
    def layout(self) -> str:
        """The ``QUANT_LAYOUTS`` row of this quantization."""
        if self.is_int4_source:
            return "ct-int4"
        return self.target or ("fp8" if self.quant_method == "fp8" else "bf16")

    def linear_format(self, role: str) -> str:
        """The ``LINEAR_FORMATS`` name a linear role is stored in (``QUANT_LAYOUTS``)."""
        experts, rest = QUANT_LAYOUTS[self.layout]
        return experts if role in EXPERT_ROLES else rest

    def describe(self) -> str:
        """One line for reports: ``fp8 e4m3 [128, 128]``, ``modelopt NVFP4 experts (group 16), rest bf16``."""
        t = self.target
        if self.is_int4_source:
            return f"compressed-tensors INT4 experts (pack-quantized, symmetric, group {self.group_size}), rest bf16"
        if t is None:
            return f"{self.quant_method} {self.fmt} {list(self.weight_block_size)}"
        rest = "bf16" if t == "nvfp4" else "fp8 [128, 128]"
        kv = f", kv {self.kv_cache_quant_algo}" if self.kv_cache_quant_algo else ""
        return f"modelopt {self.quant_algo} experts (group {self.group_size}), rest {rest}{kv}"


@dataclass(frozen=True)
class ModelSpec:
    """Kimi K2 / DeepSeek-V3 architecture, as read from config.json. Field names follow config.json."""

    model_type: str = "kimi_k2"
    """``kimi_k2`` or ``deepseek_v3`` (same architecture, DeepseekV3ForCausalLM)."""
    vocab_size: int = 163840
    """Embedding rows: 163,584 BPE ranks + 256 reserved special ids for K2."""
    hidden_size: int = 7168
    """Model width."""
    intermediate_size: int = 18432
    """FFN width of the dense (first_k_dense_replace) layers."""
    moe_intermediate_size: int = 2048
    """FFN width of each routed and shared expert."""
    num_hidden_layers: int = 61
    """Decoder layers (no MTP layer is counted here)."""
    num_attention_heads: int = 64
    """MLA query heads."""
    num_key_value_heads: int = 64
    """Reported KV heads (MLA shares one latent; kept for config fidelity)."""
    q_lora_rank: int | None = 1536
    """Rank of the query down-projection (None: a plain q_proj)."""
    kv_lora_rank: int = 512
    """Rank of the compressed KV latent (what the KV cache stores, plus the rope key)."""
    qk_nope_head_dim: int = 128
    """Per-head query/key width without RoPE."""
    qk_rope_head_dim: int = 64
    """Per-head RoPE width (the rope key is shared across heads)."""
    v_head_dim: int = 128
    """Per-head value width."""
    n_routed_experts: int = 384
    """Routed experts per MoE layer."""
    n_shared_experts: int = 1
    """Shared experts per MoE layer (stored fused as one FFN of n_shared × moe_intermediate)."""
    num_experts_per_tok: int = 8
    """Routed experts chosen per token (top-k)."""
    n_group: int = 1
    """Expert groups for group-limited routing (K2: 1, i.e. no grouping)."""
    topk_group: int = 1
    """Groups kept per token before the top-k."""
    topk_method: str = "noaux_tc"
    """``noaux_tc``: selection uses scores + e_score_correction_bias; weights use the unbiased scores."""
    scoring_func: str = "sigmoid"
    """Router score function."""
    routed_scaling_factor: float = 2.827
    """Multiplier on the routed experts' combined weights."""
    norm_topk_prob: bool = True
    """Normalise the chosen experts' weights to sum to 1 before scaling."""
    first_k_dense_replace: int = 1
    """The first k layers use a dense FFN instead of MoE."""
    moe_layer_freq: int = 1
    """Every moe_layer_freq-th layer after first_k_dense_replace is MoE."""
    hidden_act: str = "silu"
    """FFN activation (SwiGLU gate)."""
    rms_norm_eps: float = 1e-6
    """RMSNorm epsilon."""
    rope_theta: float = 50000.0
    """RoPE base."""
    rope_scaling: dict[str, Any] | None = field(default=None, hash=False, compare=False)
    """YaRN parameters (type, factor, original_max_position_embeddings, beta_fast, beta_slow, mscale, mscale_all_dim)."""
    max_position_embeddings: int = 131072
    """Advertised context length."""
    tie_word_embeddings: bool = False
    """K2 keeps a separate lm_head."""
    bos_token_id: int = 163584
    """``[BOS]``."""
    eos_token_id: int = 163585
    """``[EOS]`` (turns end with ``<|im_end|>``; stop on both)."""
    num_nextn_predict_layers: int = 0
    """MTP layers stored after the decoder layers (K2: none)."""
    quantization: Quantization | None = field(default_factory=Quantization)
    """Block-FP8 quantization of the linear weights, or None for a BF16 checkpoint."""
    rotary_inv_freq_tensors: bool = False
    """Whether the checkpoint stores ``rotary_emb.inv_freq`` per layer (K2 0711 does; never loaded)."""
    raw: dict[str, Any] = field(default_factory=dict, hash=False, compare=False, repr=False)
    """The config.json this spec was read from, verbatim (written back by synth and convert); for K2.5 its
    ``text_config``."""
    multimodal: dict[str, Any] | None = field(default=None, hash=False, compare=False, repr=False)
    """K2.5 / K2.6 (``KimiK25ForConditionalGeneration``): the config.json around ``text_config`` (architectures,
    ``vision_config``, ...). k2trt reads, plans and converts the text model; the vision tower is carried or
    dropped, never run — images are not served. None for K2 / K2-Thinking."""

    # ---- construction -------------------------------------------------------------------------------------

    @classmethod
    def from_config(cls, source: str | Path | dict[str, Any]) -> "ModelSpec":
        """Read a spec from a checkpoint directory, a config.json path, or a config dict.

        Raises ConfigError for unknown model types, missing fields and inconsistent routing.
        Example: ``ModelSpec.from_config("/models/Kimi-K2-Instruct").n_routed_experts`` → 384.
        """
        if isinstance(source, dict):
            cfg = copy.deepcopy(source)
            where = "config"
        else:
            path = Path(source)
            if path.is_dir():
                path = path / "config.json"
            where = str(path)
            if path.exists() and not path.is_file():  # a FIFO would block the read forever
                raise ConfigError(f"{path}: not a regular file", "point at a Hugging Face checkpoint directory")
            try:
                cfg = json.loads(path.read_text())
            except FileNotFoundError:
                raise ConfigError(f"{path}: no config.json", "point at a Hugging Face checkpoint directory") from None
            except json.JSONDecodeError as e:
                raise ConfigError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}") from None
            except (UnicodeDecodeError, RecursionError):  # not UTF-8; nested past the parser's depth
                raise ConfigError(f"{path}: not a JSON config file") from None
        if not isinstance(cfg, dict):
            raise ConfigError(f"{where}: expected a JSON object")
        outer, cfg = _unnest_k25(cfg, where)
        mt = cfg.get("model_type")
        if not isinstance(mt, str) or mt not in SUPPORTED_MODEL_TYPES:
            raise ConfigError(
                f"{where}: model_type {mt!r} is not supported",
                f"k2trt reads {' and '.join(SUPPORTED_MODEL_TYPES)} (DeepseekV3ForCausalLM) checkpoints",
            )
        check_config(cfg, where)  # types and bounds first: nothing below sizes anything from an absurd number
        q = cfg.get("quantization_config")
        quant = None
        hq = _hf_quant_config(path.parent) if not isinstance(source, dict) else None
        hq_algo = (hq.get("quantization", hq) or {}).get("quant_algo") if hq is not None else None
        if hq is not None and hq_algo not in (None, "FP8_BLOCK_SCALES", "fp8_pb_wo"):
            quant = _modelopt_quantization(hq, where)  # TensorRT-LLM reads hf_quant_config.json first
        elif q and str(q.get("quant_method", "")).startswith("modelopt"):
            quant = _modelopt_quantization(q, where)
        elif q and q.get("quant_method") == CT_METHOD:  # Moonshot's INT4: the one layout k2trt reads, or an error
            check_compressed_int4(q, where, CT_INT4_GROUP)
            quant = Quantization.compressed_int4()
        elif q:
            if q.get("quant_method") != "fp8":
                # NVFP4/W4A8 and others are described by hf_quant_config.json; keep the raw dict.
                quant = Quantization(quant_method=str(q.get("quant_method")), fmt=str(q.get("fmt", "")),
                                     weight_block_size=tuple(q.get("weight_block_size") or (0, 0)),  # type: ignore[arg-type]
                                     activation_scheme=str(q.get("activation_scheme", "")))
            else:
                bs = q.get("weight_block_size") or [BLOCK, BLOCK]
                quant = Quantization("fp8", str(q.get("fmt", "e4m3")), (int(bs[0]), int(bs[1])),
                                     str(q.get("activation_scheme", "dynamic")))
        kw: dict[str, Any] = {}
        for f in _CONFIG_FIELDS:
            if f in cfg and cfg[f] is not None:
                kw[f] = cfg[f]
            elif f in _REQUIRED:
                raise ConfigError(f"{where}: missing field {f!r}", "is this a DeepseekV3-architecture config.json?")
        if "q_lora_rank" in cfg:
            kw["q_lora_rank"] = cfg["q_lora_rank"]
        rs = cfg.get("rope_scaling") or cfg.get("rope_parameters")
        kw["rope_scaling"] = dict(rs) if rs else None
        try:
            spec = cls(quantization=quant, raw=cfg, multimodal=outer, **kw)
        except TypeError as e:  # a field of the wrong type in the JSON
            raise ConfigError(f"{where}: {e}") from None
        spec.validate(where)
        return spec

    def validate(self, where: str = "config") -> None:
        """Cross-field checks; raises ConfigError naming the numbers."""
        ints = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "kv_lora_rank",
                "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim", "n_routed_experts", "num_experts_per_tok",
                "n_group", "topk_group", "moe_intermediate_size", "intermediate_size")
        for name in ints:
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                raise ConfigError(f"{where}: {name} must be a positive integer, got {v!r}")
        if self.n_routed_experts % self.n_group:
            raise ConfigError(f"{where}: n_routed_experts {self.n_routed_experts} is not divisible by "
                              f"n_group {self.n_group}", "group-limited routing needs equal groups")
        if self.topk_group > self.n_group:
            raise ConfigError(f"{where}: topk_group {self.topk_group} > n_group {self.n_group}")
        if self.num_experts_per_tok > self.n_routed_experts // self.n_group * self.topk_group:
            raise ConfigError(
                f"{where}: num_experts_per_tok {self.num_experts_per_tok} exceeds the "
                f"{self.n_routed_experts // self.n_group * self.topk_group} experts in the kept groups "
                f"({self.topk_group} of {self.n_group} groups × {self.n_routed_experts // self.n_group})")
        if self.n_group > 1 and (self.n_routed_experts // self.n_group) < 2:
            raise ConfigError(f"{where}: groups of {self.n_routed_experts // self.n_group} expert cannot be "
                              "scored by their top-2 sum")
        if self.qk_rope_head_dim % 2:
            raise ConfigError(f"{where}: qk_rope_head_dim {self.qk_rope_head_dim} must be even for RoPE")
        if self.scoring_func not in ("sigmoid", "softmax"):
            raise ConfigError(f"{where}: scoring_func {self.scoring_func!r} is not sigmoid or softmax")
        if self.topk_method not in ("noaux_tc", "greedy", "group_limited_greedy"):
            raise ConfigError(f"{where}: topk_method {self.topk_method!r} is not supported")
        if not 0 <= self.first_k_dense_replace <= self.num_hidden_layers:
            raise ConfigError(f"{where}: first_k_dense_replace {self.first_k_dense_replace} is outside "
                              f"0..{self.num_hidden_layers}")
        if self.moe_layer_freq < 1:
            raise ConfigError(f"{where}: moe_layer_freq must be ≥ 1")
        if self.quantization and self.quantization.quant_method == "fp8":
            if self.quantization.fmt != "e4m3":
                raise ConfigError(f"{where}: FP8 format {self.quantization.fmt!r} is not supported (e4m3 only)")
        if self.quantization is not None and self.quantization.layout not in ("fp8", "bf16"):
            for role, shape in (("expert_gate", (self.moe_intermediate_size, self.hidden_size)),
                                ("expert_down", (self.hidden_size, self.moe_intermediate_size))):
                try:
                    LINEAR_FORMATS[self.quantization.linear_format(role)].check(role, shape)
                except ValueError as e:
                    raise ConfigError(f"{where}: {e}") from None
        rs = self.rope_scaling
        if rs:
            kind = rs.get("type") or rs.get("rope_type")
            if kind not in ("yarn", "default", None):
                raise ConfigError(f"{where}: rope_scaling type {kind!r} is not supported (yarn only)")

    # ---- derived dimensions ------------------------------------------------------------------------------

    @property
    def qk_head_dim(self) -> int:
        """Query/key head width: nope + rope (K2: 192)."""
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    @property
    def kv_a_out(self) -> int:
        """Rows of kv_a_proj_with_mqa: the latent plus the shared rope key (K2: 576)."""
        return self.kv_lora_rank + self.qk_rope_head_dim

    @property
    def kv_cache_elems_per_token_per_layer(self) -> int:
        """MLA caches the latent and the rope key: 576 elements per token per layer for K2."""
        return self.kv_lora_rank + self.qk_rope_head_dim

    @property
    def fp8(self) -> bool:
        return self.quantization is not None and self.quantization.quant_method == "fp8"

    @property
    def has_router_bias(self) -> bool:
        """noaux_tc routing carries ``e_score_correction_bias`` (used for selection only)."""
        return self.topk_method == "noaux_tc"

    def is_moe_layer(self, layer: int) -> bool:
        return layer >= self.first_k_dense_replace and layer % self.moe_layer_freq == 0

    @property
    def moe_layers(self) -> list[int]:
        return [i for i in range(self.num_hidden_layers) if self.is_moe_layer(i)]

    @property
    def yarn(self) -> dict[str, float] | None:
        """The YaRN parameters with DeepSeek's defaults filled in, or None when RoPE is unscaled."""
        rs = self.rope_scaling
        if not rs or (rs.get("type") or rs.get("rope_type")) not in ("yarn",):
            return None
        return {
            "factor": float(rs.get("factor", 1.0)),
            "original_max_position_embeddings": float(rs.get("original_max_position_embeddings", 4096)),
            "beta_fast": float(rs.get("beta_fast", 32)),
            "beta_slow": float(rs.get("beta_slow", 1)),
            "mscale": float(rs.get("mscale", 1.0)),
            "mscale_all_dim": float(rs.get("mscale_all_dim", 0.0)),
        }

    @property
    def softmax_scale(self) -> float:
        """Attention scale: qk_head_dim^-0.5 × mscale² with DeepSeek's YaRN rule (K2 0711: ≈0.130861)."""
        scale = self.qk_head_dim ** -0.5
        y = self.yarn
        if y and y["factor"] > 1 and y["mscale_all_dim"]:
            m = 0.1 * y["mscale_all_dim"] * math.log(y["factor"]) + 1.0
            scale *= m * m
        return scale

    # ---- tensor inventory --------------------------------------------------------------------------------

    def _layer_shapes(self, layer: int) -> Iterator[tuple[str, tuple[int, ...], str, int | None]]:
        h, nh = self.hidden_size, self.num_attention_heads
        lin = "LINEAR"  # expanded per storage format by tensors()
        yield "input_norm", (h,), "BF16", None
        if self.q_lora_rank:
            yield "q_a", (self.q_lora_rank, h), lin, None
            yield "q_a_norm", (self.q_lora_rank,), "BF16", None
            yield "q_b", (nh * self.qk_head_dim, self.q_lora_rank), lin, None
        else:
            yield "q", (nh * self.qk_head_dim, h), lin, None
        yield "kv_a", (self.kv_a_out, h), lin, None
        yield "kv_a_norm", (self.kv_lora_rank,), "BF16", None
        yield "kv_b", (nh * (self.qk_nope_head_dim + self.v_head_dim), self.kv_lora_rank), lin, None
        yield "o", (h, nh * self.v_head_dim), lin, None
        if self.rotary_inv_freq_tensors:
            yield "inv_freq", (_K2_INV_FREQ_LEN,), "BF16", None
        yield "post_norm", (h,), "BF16", None
        if not self.is_moe_layer(layer):
            f = self.intermediate_size
            yield "dense_gate", (f, h), lin, None
            yield "dense_up", (f, h), lin, None
            yield "dense_down", (h, f), lin, None
            return
        f = self.moe_intermediate_size
        yield "router", (self.n_routed_experts, h), "BF16", None
        if self.has_router_bias:
            yield "router_bias", (self.n_routed_experts,), "F32", None
        for e in range(self.n_routed_experts):
            yield "expert_gate", (f, h), lin, e
            yield "expert_up", (f, h), lin, e
            yield "expert_down", (h, f), lin, e
        if self.n_shared_experts:
            fs = f * self.n_shared_experts
            yield "shared_gate", (fs, h), lin, None
            yield "shared_up", (fs, h), lin, None
            yield "shared_down", (h, fs), lin, None

    def tensors(self) -> list[TensorInfo]:
        """The full tensor inventory of this model's HF checkpoint, FP8 scales included.

        For the ``k2-instruct`` preset this is the real 0711 checkpoint: 139,644 tensors, 1,026,470,731,056
        elements (kimi_formats.md §2.2). Order: embed, layers 0..N-1, final norm, lm_head.
        """
        out: list[TensorInfo] = [TensorInfo("embed", (self.vocab_size, self.hidden_size), "BF16")]
        for layer in range(self.num_hidden_layers):
            for role, shape, dtype, expert in self._layer_shapes(layer):
                if dtype != "LINEAR":
                    out.append(TensorInfo(role, shape, dtype, layer, expert))
                    continue
                f = LINEAR_FORMATS[self.linear_format(role)]
                for p in f.parts:
                    out.append(TensorInfo(role, p.shape_for(*shape), p.dtype, layer, expert, f.name, p.part,
                                          f.packed if p.part == "weight" else 1))
        out.append(TensorInfo("final_norm", (self.hidden_size,), "BF16"))
        if not self.tie_word_embeddings:
            out.append(TensorInfo("lm_head", (self.vocab_size, self.hidden_size), "BF16"))
        return out

    def linear_format(self, role: str) -> str:
        """The ``LINEAR_FORMATS`` name linear ``role`` is stored in under this spec's quantization."""
        return "bf16" if self.quantization is None else self.quantization.linear_format(role)

    # ---- parameter and byte math -------------------------------------------------------------------------

    def param_count(self) -> int:
        """Model parameters (scales and unused inv_freq excluded). K2: 1,026.4 B."""
        return sum(t.params for t in self.tensors() if t.scale_of is None and t.role not in IGNORED_ROLES)

    def active_param_count(self, include_embedding: bool = False) -> int:
        """Parameters touched per token: all but the unchosen routed experts. K2: 31.7 B (32.9 B with embed)."""
        total = 0
        k = self.num_experts_per_tok
        for t in self.tensors():
            if t.scale_of is not None or t.role in IGNORED_ROLES:
                continue
            if t.role == "embed" and not include_embedding:
                continue
            if t.expert is not None:
                total += t.params * k if t.expert == 0 else 0  # k chosen experts per token
                continue
            total += t.params
        return total

    def bytes_by_dtype(self) -> dict[str, int]:
        """Checkpoint bytes per safetensors dtype (scales counted under F32)."""
        out: dict[str, int] = {}
        for t in self.tensors():
            out[t.dtype] = out.get(t.dtype, 0) + t.nbytes
        return out

    def checkpoint_bytes(self) -> int:
        """Total tensor bytes of the checkpoint (headers excluded). K2 0711 FP8 ≈ 1,029 GB."""
        return sum(self.bytes_by_dtype().values())

    # ---- config.json ---------------------------------------------------------------------------------------

    def to_multimodal_config(self) -> dict[str, Any]:
        """K2.5's own nested config.json (``text_config`` inside ``KimiK25ForConditionalGeneration``'s); for other
        models ``to_config()``."""
        if self.multimodal is None:
            return self.to_config()
        text = self.to_config()
        text.pop("architectures", None)
        return dict(sorted({**copy.deepcopy(self.multimodal), "text_config": text}.items()))

    def to_config(self) -> dict[str, Any]:
        """The config.json for this spec: the one it was read from, with k2trt's fields written over it (for K2.5
        the text model alone, as a DeepseekV3ForCausalLM config: what a text-only conversion writes)."""
        cfg = copy.deepcopy(self.raw)
        if self.multimodal is not None:  # transformers' own DeepseekV3 config: no remote code needed
            cfg["architectures"] = ["DeepseekV3ForCausalLM"]
            cfg.pop("auto_map", None)
        for f in _CONFIG_FIELDS:
            cfg[f] = getattr(self, f)
        cfg["q_lora_rank"] = self.q_lora_rank
        cfg["rope_scaling"] = copy.deepcopy(self.rope_scaling)
        if self.quantization is None:
            cfg.pop("quantization_config", None)
        elif self.quantization.quant_method == "fp8":
            cfg["quantization_config"] = {
                "activation_scheme": self.quantization.activation_scheme,
                "fmt": self.quantization.fmt,
                "quant_method": "fp8",
                "weight_block_size": list(self.quantization.weight_block_size),
            }
        elif self.quantization.is_int4_source:  # the checkpoint's own config (groups, ignore list) travels verbatim
            if (cfg.get("quantization_config") or {}).get("quant_method") != CT_METHOD:
                cfg["quantization_config"] = copy.deepcopy(K2_THINKING_QUANT)
        elif not str((cfg.get("quantization_config") or {}).get("quant_method", "")).startswith("modelopt"):
            # a ModelOpt checkpoint's inline config is written by requant (modelopt's own converter); a minimal one
            # here keeps the spec readable when only config.json travels
            cfg["quantization_config"] = {"quant_method": "modelopt", "quant_algo": self.quantization.quant_algo,
                                          "group_size": self.quantization.group_size}
        return dict(sorted(cfg.items()))

    def with_quantization(self, quant: Quantization | None) -> "ModelSpec":
        """The same model with different weight quantization (e.g. None after an FP8→BF16 conversion)."""
        import dataclasses

        return dataclasses.replace(self, quantization=quant)


def _hf_quant_config(model_dir: Path) -> dict[str, Any] | None:
    """``hf_quant_config.json`` of a checkpoint directory (TensorRT-LLM reads it before config.json), or None."""
    p = model_dir / HF_QUANT_CONFIG
    if not p.is_file():
        return None
    try:
        d = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{p}: invalid JSON at line {e.lineno}: {e.msg}") from None
    if not isinstance(d, dict):
        raise ConfigError(f"{p}: expected a JSON object")
    return d


def _modelopt_quantization(hq: dict[str, Any], where: str) -> Quantization | None:
    """A Quantization from a ModelOpt config: legacy ``{"quantization": {...}}`` or the flat inline shape.

    ``NVFP4`` → NVFP4 experts; ``MIXED_PRECISION`` whose quantized_layers put ``W4A8_AWQ`` on the experts → W4A8;
    ``FP8_BLOCK_SCALES`` / ``fp8_pb_wo`` → K2's block FP8. Anything else raises ConfigError naming the algorithm.
    """
    q = hq.get("quantization", hq)
    check_quantization_config(q, f"{where}: quantization")
    algo = q.get("quant_algo")
    kv = q.get("kv_cache_quant_algo")
    if kv is None and isinstance(q.get("kv_cache_scheme"), dict):
        kv = "FP8" if q["kv_cache_scheme"].get("num_bits") == 8 else None
    if algo in ("FP8_BLOCK_SCALES", "fp8_pb_wo"):
        return Quantization()
    if algo == "NVFP4":
        return Quantization.requant("nvfp4", kv)
    if algo == "MIXED_PRECISION":
        layers = q.get("quantized_layers") or {}
        algos = {str(v.get("quant_algo")) for k, v in layers.items() if isinstance(v, dict) and
                 k.endswith(".mlp.experts")}
        if algos == {QUANT_ALGO["w4a8"]} or (not layers and q.get("quant_algo_experts") == "W4A8_AWQ"):
            return Quantization.requant("w4a8", kv)
        raise ConfigError(f"{where}: MIXED_PRECISION with expert algorithms {sorted(algos) or 'none listed'} is "
                          "not a layout k2trt reads", "k2trt reads NVFP4 and W4A8_AWQ-expert checkpoints")
    raise ConfigError(f"{where}: ModelOpt quant_algo {algo!r} is not supported",
                      "k2trt reads FP8_BLOCK_SCALES, NVFP4 and W4A8 (MIXED_PRECISION with W4A8_AWQ experts)")


K25_ARCHITECTURE = "KimiK25ForConditionalGeneration"


def _unnest_k25(cfg: dict[str, Any], where: str) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """(the outer config, the text model's config) of a K2.5 / K2.6 config.json; (None, cfg) for any other.

    The language model's fields live under ``text_config``; ``quantization_config`` may sit at either level (the
    text model's wins). The text model reads as ``deepseek_v3``: what a text-only conversion writes is transformers'
    own DeepseekV3 (K2.5's remote code configures the multimodal model, not this one).
    """
    if cfg.get("model_type") != "kimi_k25" and K25_ARCHITECTURE not in (cfg.get("architectures") or []):
        return None, cfg
    text = cfg.get("text_config")
    if not isinstance(text, dict):
        raise ConfigError(f"{where}: a {K25_ARCHITECTURE} config.json without a text_config object",
                          "is this K2.5's config.json?")
    outer = {k: v for k, v in cfg.items() if k != "text_config"}
    text = copy.deepcopy(text)
    if "quantization_config" not in text and "quantization_config" in outer:
        text["quantization_config"] = copy.deepcopy(outer["quantization_config"])
    text["model_type"] = "deepseek_v3"
    return outer, text


def scale_shape(shape: tuple[int, ...], block: int | tuple[int, ...] = BLOCK) -> tuple[int, ...]:
    """Shape of the scale grid of a weight: ceil(rows/128) × ceil(cols/128) for block FP8 (partial blocks
    included), or per axis for other groupings (``block=(1, 16)``: NVFP4's per-16 scales).

    The one place a scale grid is computed (``Part.shape_for`` and the converters use it).
    Example: ``scale_shape((576, 7168))`` → ``(5, 56)``.
    """
    blocks = (block,) * len(shape) if isinstance(block, int) else block
    return tuple(-(-d // b) for d, b in zip(shape, blocks))


# The 2-D linear weights: the tensors K2 stores in block FP8 (kimi_formats.md §2.3).
LINEAR_ROLES = frozenset({"q_a", "q_b", "q", "kv_a", "kv_b", "o", "dense_gate", "dense_up", "dense_down",
                          "expert_gate", "expert_up", "expert_down", "shared_gate", "shared_up", "shared_down"})
EXPERT_ROLES = frozenset({"expert_gate", "expert_up", "expert_down"})
"""The routed experts' linear roles (what the 4-bit formats quantise)."""
IGNORED_ROLES = frozenset({"inv_freq"})
"""Roles that are tolerated in a checkpoint but never loaded into a model."""
# K2 0711 stores rotary_emb.inv_freq with a reported shape of [56] (kimi_formats.md §2.2); it is never loaded.
_K2_INV_FREQ_LEN = 56

_CONFIG_FIELDS = (
    "model_type", "vocab_size", "hidden_size", "intermediate_size", "moe_intermediate_size", "num_hidden_layers",
    "num_attention_heads", "num_key_value_heads", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim",
    "v_head_dim", "n_routed_experts", "n_shared_experts", "num_experts_per_tok", "n_group", "topk_group",
    "topk_method", "scoring_func", "routed_scaling_factor", "norm_topk_prob", "first_k_dense_replace",
    "moe_layer_freq", "hidden_act", "rms_norm_eps", "rope_theta", "max_position_embeddings", "tie_word_embeddings",
    "bos_token_id", "eos_token_id", "num_nextn_predict_layers",
)
_REQUIRED = frozenset({"vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "kv_lora_rank",
                       "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim", "n_routed_experts",
                       "num_experts_per_tok", "moe_intermediate_size", "intermediate_size"})


# ---- presets (their config.json data is ``k2trt.presets``'s) ---------------------------------------------

def preset(name: str) -> ModelSpec:
    """A named ModelSpec (``k2trt.presets``): ``k2-instruct``, ``k2-instruct-0905``, ``k2-thinking``, ``tiny``, ``tiny-thinking``.

    Example: ``preset("k2-instruct").param_count()`` → 1,026,4xx,xxx,xxx.
    """
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}", f"choose one of {', '.join(PRESETS)}")
    cfg, inv_freq = PRESETS[name]
    import dataclasses

    return dataclasses.replace(ModelSpec.from_config(cfg), rotary_inv_freq_tensors=inv_freq)


def load(source: str | Path) -> ModelSpec:
    """A spec from a preset name or a checkpoint directory / config.json path."""
    if str(source) in PRESETS:
        return preset(str(source))
    return ModelSpec.from_config(source)
