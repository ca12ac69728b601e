"""Per-GPU memory: exact weight bytes per rank, MLA KV bytes per token, reserve, KV capacity and concurrency.

Weights: every tensor of ``spec.tensors()`` goes through :meth:`k2trt.mapping.Mapping.shard`; a rank's bytes are
the sum of its slices. K2 has 139,644 tensors, so the inventory is first folded into groups of identical
(role, shape, dtype, scale?) with per-layer counts (routed experts keep their ids); a rank's sum is then one
``shard`` call per group times the number of tensors it holds — exact, and milliseconds per layout.

Checkpoint formats: block-FP8 and BF16 bytes come from the inventory's dtypes. NVFP4 (a hook until
``checkpoint/`` describes NVFP4 tensors): routed-expert weights at 4.5 bits per element (E2M1 + one FP8 scale per
16) plus two FP32 per-tensor scales, everything else BF16 — the nvidia/Kimi-K2-Thinking-NVFP4 layout, ≈ 594 GB.

KV: MLA caches ``kv_lora_rank + qk_rope_head_dim`` (K2: 576) elements per token per layer; 2 bytes in BF16, 1 in
FP8. Without attention-DP every TP rank keeps the whole latent of every sequence (replicated); with attention-DP
each rank keeps its own requests' latents (one pool per rank); a pipeline stage keeps only its layers' latents.
TensorRT-LLM hands the KV pool ``free_gpu_memory_fraction`` (default 0.9) of the memory left after weights and the
activation reserve, in blocks of ``tokens_per_block`` (32) tokens.

Reserve (documented assumption, k2_numbers.md E2): 8 GiB per GPU for activations at ``max_num_tokens`` 8192, the
MoE workspace, CUDA graphs (up to ~200 MB each, TensorRT-LLM's CudaGraphConfig doc), NCCL buffers and allocator
slack. Override with ``reserve_gib``.

Load time (an estimate, used to budget start-up probes): every rank reads its own shard, so a load takes the largest
rank's weight bytes over the per-GPU read bandwidth of the checkpoint storage (``LOAD_GBPS``, an assumption a recipe
overrides with ``cluster.load_gbps``), plus a fixed engine start-up after the read (``ENGINE_START_S``, an assumption).

EPLB host copy: with online expert load balancing TensorRT-LLM's ``HostMoeTensorSharer`` has the ranks of each node
split *every* routed expert of every MoE layer between them and place their share in POSIX shared memory, so each node
holds one whole copy of the routed experts in ``/dev/shm`` (NVIDIA/TensorRT-LLM
``tensorrt_llm/_torch/modules/fused_moe/moe_load_balancer.py`` @ 000a01de: ``expert_start = local_rank *
expert_count // local_size``, one ``SharedMemory`` per layer and local rank). ``routed_expert_bytes`` sizes it from
the checkpoint's own tensors (its format's bytes; the release may keep them in another layout: an estimate).
"""

from __future__ import annotations

import bisect
import functools
import math
from dataclasses import dataclass, field, replace
from typing import Any, Literal, get_args

from k2trt.errors import ConfigError
from k2trt.mapping import EXPERT_ROLES, Mapping
from k2trt.plan.gpus import RESERVE_GIB, GiB, Gpu
from k2trt.spec import DTYPE_BYTES, ModelSpec, Quantization, TensorInfo
from k2trt.trtllm.render import KV_FRACTION

TOKENS_PER_BLOCK = 32  # KvCacheConfig.tokens_per_block default
KvDtype = Literal["fp8", "bf16"]
"""KV cache element type: one byte (FP8) or two (BF16) per element."""
DEFAULT_KV_DTYPE: KvDtype = "fp8"  # K2's FP8 KV cache halves the MLA latent's bytes; the recipes' default too
KV_BYTES: dict[str, int] = {"fp8": 1, "bf16": 2}
LOAD_GBPS = 0.5
"""Checkpoint read bandwidth per GPU during load, GB/s (10^9 bytes/s): 4 GB/s for an 8-GPU node reading shared
network storage. An assumption; a recipe sets its storage's with ``cluster.load_gbps``."""
ENGINE_START_S = 600.0
"""TensorRT-LLM's start-up after the weights are read (model construction, weight post-processing, CUDA-graph
capture, warm-up), seconds. An assumption: K2 start-ups of ten-odd minutes are what users report."""
REFERENCE_START_S = 30.0
"""The reference engine's start-up after its (CPU-sized) weights are read, seconds (assumption)."""

WeightFormat = Literal["fp8_block", "bf16", "nvfp4", "w4a8"]
"""How a checkpoint stores its linear weights: K2's block FP8 (128×128 ``weight_scale_inv``), BF16, NVFP4 routed
experts (ModelOpt), or W4A8 routed experts with block FP8 elsewhere. Recipes and ``--weights`` name one of these;
``parse_weight_format`` also takes the spellings users meet elsewhere."""
WEIGHT_FORMATS: tuple[str, ...] = get_args(WeightFormat)
INT4_SOURCE = "int4"
"""``weight_format`` of Moonshot's native INT4 checkpoints (K2-Thinking, K2.5, K2.6: compressed-tensors
``pack-quantized`` experts). The planner sizes them and the reference engine reads them; TensorRT-LLM cannot load
them, so no recipe names this format — ``k2trt convert --to fp8-block|w4a8|nvfp4`` comes first."""
# Other spellings of the same formats: ``fp8`` (recipes and ``k2trt plan --weights`` before the formats had one
# name) and ``fp8-block`` (``k2trt convert --to``, whose choices are kebab-case like every k2trt flag value).
_WEIGHT_ALIASES = {"fp8": "fp8_block", "fp8-block": "fp8_block"}


def parse_weight_format(text: str) -> WeightFormat:
    """A weight format from any of its spellings.

    Args:
        text: ``fp8_block`` (also ``fp8`` or ``fp8-block``), ``bf16``, ``nvfp4`` or ``w4a8``; case-insensitive.
    Returns:
        The canonical name, as ``weight_format`` reports it.
    Raises:
        ConfigError: not a weight format (one line, listing them).
    Example:
        >>> parse_weight_format("fp8")
        'fp8_block'
    """
    key = str(text).strip().lower()
    key = _WEIGHT_ALIASES.get(key, key)
    if key not in WEIGHT_FORMATS:
        raise ConfigError(f"{text!r} is not a weight format", "use fp8 (fp8_block), bf16, nvfp4 or w4a8")
    return key  # type: ignore[return-value]


def convert_target(fmt: WeightFormat) -> str:
    """The ``k2trt convert --to`` choice that writes ``fmt`` (its kebab-case spelling)."""
    return fmt.replace("_", "-")


def with_weights(spec: ModelSpec, fmt: WeightFormat) -> ModelSpec:
    """``spec`` re-described as stored in ``fmt`` (what ``k2trt convert --to`` would write), for planning a
    checkpoint that does not exist yet. A K2.5 converts to its text model alone (``multimodal`` dropped)."""
    spec = replace(spec, multimodal=None)
    if fmt == "bf16":
        return spec.with_quantization(None)
    return spec.with_quantization(Quantization() if fmt == "fp8_block" else Quantization.requant(fmt))
NVFP4_BYTES_PER_ELEM = 0.5 + 1 / 16  # E2M1 + an FP8 scale per 16 elements
NVFP4_BYTES_PER_TENSOR = 8  # weight_scale_2 and input_scale, FP32 each

CATEGORY = {
    "embed": "embedding", "lm_head": "lm_head", "final_norm": "norms", "input_norm": "norms",
    "post_norm": "norms", "q_a_norm": "norms", "kv_a_norm": "norms", "inv_freq": "norms",
    "q_a": "attention", "q_b": "attention", "q": "attention", "kv_a": "attention", "kv_b": "attention",
    "o": "attention", "dense_gate": "dense_ffn", "dense_up": "dense_ffn", "dense_down": "dense_ffn",
    "router": "routers", "router_bias": "routers", "shared_gate": "shared_experts", "shared_up": "shared_experts",
    "shared_down": "shared_experts", "expert_gate": "routed_experts", "expert_up": "routed_experts",
    "expert_down": "routed_experts",
}


def weight_format(spec: ModelSpec) -> str:
    """The spec's :data:`WeightFormat` from its quantization (config.json / hf_quant_config); another
    ``quant_method`` (a format k2trt does not plan) is returned as it is named."""
    q = spec.quantization
    if q is None:
        return "bf16"
    if q.is_int4_source:  # Moonshot's compressed-tensors INT4 (K2-Thinking, K2.5): read, never served by TensorRT-LLM
        return INT4_SOURCE
    if q.target is not None:  # k2trt convert --to nvfp4|w4a8, or a ModelOpt export: the inventory is exact
        return q.target
    if q.quant_method == "fp8":
        return "fp8_block"
    algo = str((spec.raw.get("quantization_config") or {}).get("quant_algo", "")).lower()
    if q.quant_method.lower() in ("nvfp4", "fp4") or "nvfp4" in algo:
        return "nvfp4"
    return q.quant_method


def tensor_bytes(t: TensorInfo, numel: int, fmt: str) -> float:
    """Bytes of ``numel`` elements of tensor ``t`` in checkpoint format ``fmt``."""
    if fmt == "nvfp4" and t.role in EXPERT_ROLES and t.scale_of is None and t.dtype != "U8":
        return numel * NVFP4_BYTES_PER_ELEM  # a BF16-described expert of a non-ModelOpt NVFP4 config
    return numel * DTYPE_BYTES[t.dtype]


@dataclass
class _Group:
    sample: TensorInfo
    per_layer: dict[int | None, int] = field(default_factory=dict)
    experts: dict[int, list[int]] = field(default_factory=dict)


@dataclass(frozen=True)
class Inventory:
    """The tensor inventory folded into groups of identical tensors (see module docstring)."""

    spec: ModelSpec
    groups: tuple[Any, ...]
    total_bytes: float
    tensors: int


@functools.lru_cache(maxsize=8)
def inventory(spec: ModelSpec) -> Inventory:
    """Fold ``spec.tensors()`` into groups (cached per spec)."""
    fmt = weight_format(spec)
    groups: dict[tuple[Any, ...], _Group] = {}
    total = 0.0
    ts = spec.tensors()
    for t in ts:
        key = (t.role, t.shape, t.dtype, t.scale_of is not None)
        g = groups.get(key)
        if g is None:
            g = groups[key] = _Group(replace(t, expert=None if t.expert is None else 0))
        if t.expert is not None:
            g.experts.setdefault(t.layer or 0, []).append(t.expert)
        else:
            g.per_layer[t.layer] = g.per_layer.get(t.layer, 0) + 1
        total += tensor_bytes(t, t.numel, fmt)
    frozen = []
    for g in groups.values():
        for ids in g.experts.values():
            ids.sort()
        frozen.append(g)
    return Inventory(spec, tuple(frozen), total, len(ts))


@dataclass(frozen=True)
class RankBytes:
    """What one rank holds."""

    rank: int
    total: float
    by_category: dict[str, float]


def rank_bytes(mapping: Mapping, rank: int, spec: ModelSpec | None = None) -> RankBytes:
    """Exact weight bytes held by ``rank`` (as TensorRT-LLM's loader shards them), by category.

    Example: K2 FP8 at ``Mapping(16, tp=16, moe_ep=8)`` → about 60 GiB on every rank.
    """
    spec = spec or mapping.spec
    assert spec is not None, "rank_bytes needs the model spec"
    inv = inventory(spec)
    fmt = weight_format(spec)
    layers = mapping.layers(rank, spec.num_hidden_layers) if mapping.pp > 1 else None
    owned = mapping.experts(rank, spec.n_routed_experts)
    by: dict[str, float] = {}
    for g in inv.groups:
        t = g.sample
        if g.experts:
            n, at = 0, None
            for layer, ids in g.experts.items():
                if layers is None or layer in layers:
                    n += bisect.bisect_left(ids, owned.stop) - bisect.bisect_left(ids, owned.start)
                    at = layer
            if n == 0:
                continue
            s = mapping.shard(replace(t, expert=owned.start, layer=at), rank, spec)
        else:
            n = 0
            held_layer = None
            for layer, c in g.per_layer.items():
                if layers is None or layer is None or layer in layers:
                    n += c
                    held_layer = layer
            if n == 0:
                continue
            s = mapping.shard(replace(t, layer=held_layer), rank, spec)
        if not s.held:
            continue
        b = n * tensor_bytes(t, s.numel, fmt)
        if fmt == "nvfp4" and t.role in EXPERT_ROLES and t.scale_of is None and t.dtype != "U8":
            b += n * NVFP4_BYTES_PER_TENSOR
        cat = CATEGORY.get(t.role, "other")
        by[cat] = by.get(cat, 0.0) + b
    return RankBytes(rank, sum(by.values()), by)


def kv_bytes_per_token(spec: ModelSpec, kv_dtype: str, layers: int | None = None) -> int:
    """MLA latent KV bytes per token over ``layers`` layers (default all). K2 BF16: 70,272; FP8: 35,136."""
    n = spec.num_hidden_layers if layers is None else layers
    return n * spec.kv_cache_elems_per_token_per_layer * KV_BYTES[kv_dtype]


@dataclass(frozen=True)
class MemoryPlan:
    """Per-GPU memory and KV capacity of one layout on one GPU kind."""

    weights_max: float
    """Largest per-rank weight bytes (the rank that limits the KV pool)."""
    weights_min: float
    """Smallest per-rank weight bytes."""
    by_category: dict[str, float]
    """Categories of the largest rank, bytes."""
    usable: float
    reserve: float
    kv_fraction: float
    kv_budget: float
    """Bytes per GPU handed to the KV pool."""
    kv_bytes_per_token: int
    """Per rank (its stage's layers)."""
    kv_tokens_per_gpu: int
    pools: int
    """Independent KV pools per instance: tp under attention-DP, else 1."""
    seq_tokens: int
    """Tokens one full-context sequence occupies (rounded up to whole KV blocks)."""
    max_sequences: int
    """Concurrent full-context sequences the instance can hold."""
    fits: bool
    """Weights + reserve fit and at least one full-context sequence fits."""
    load_s: float = 0.0
    """Estimated seconds from launch to serving: the largest shard at the storage's per-GPU bandwidth plus the
    engine's start-up (module docstring; an estimate)."""
    eplb_shm_bytes: float = 0.0
    """Host shared memory each node needs for online EPLB's copy of the routed experts; 0 without online EPLB."""

    @property
    def system_kv_tokens(self) -> int:
        return self.kv_tokens_per_gpu * self.pools

    def to_dict(self) -> dict[str, Any]:
        g = GiB
        return {
            "weights_gib_max": round(self.weights_max / g, 3), "weights_gib_min": round(self.weights_min / g, 3),
            "weights_gib_by_category": {k: round(v / g, 3) for k, v in sorted(self.by_category.items())},
            "usable_gib": self.usable / g, "reserve_gib": self.reserve / g, "kv_fraction": self.kv_fraction,
            "kv_budget_gib": round(self.kv_budget / g, 3), "kv_bytes_per_token": self.kv_bytes_per_token,
            "kv_tokens_per_gpu": self.kv_tokens_per_gpu, "kv_pools": self.pools,
            "system_kv_tokens": self.system_kv_tokens, "seq_tokens": self.seq_tokens,
            "max_sequences": self.max_sequences, "fits": self.fits, "load_s": round(self.load_s, 1),
            "eplb_shm_gib": round(self.eplb_shm_bytes / g, 3),
        }


def memory_plan(spec: ModelSpec, mapping: Mapping, gpu: Gpu, context: int, kv_dtype: str = "fp8",
                kv_fraction: float = KV_FRACTION, reserve_gib: float = RESERVE_GIB, *,
                load_gbps: float = LOAD_GBPS, eplb_online: bool = False) -> MemoryPlan:
    """Weights per GPU, the KV pool left over, how many ``context``-token sequences fit, the load estimate and the
    EPLB host copy.

    Args:
        spec: the model; mapping: a layout bound to it (checked); gpu: catalog entry; context: tokens per sequence;
        kv_dtype: ``fp8`` or ``bf16``; kv_fraction: TensorRT-LLM's ``free_gpu_memory_fraction``;
        reserve_gib: activation/CUDA-graph/workspace reserve; load_gbps: checkpoint read bandwidth per GPU, GB/s;
        eplb_online: the engine runs online expert load balancing (sizes ``eplb_shm_bytes``).
    """
    per_rank = [rank_bytes(mapping, r, spec) for r in extreme_ranks(mapping)]
    worst = max(per_rank, key=lambda rb: rb.total)
    usable = gpu.usable_gib * GiB
    reserve = reserve_gib * GiB
    free = usable - worst.total - reserve
    budget = max(0.0, free) * kv_fraction
    stage_layers = max(len(mapping.layers(r, spec.num_hidden_layers)) for r in range(0, mapping.world_size,
                                                                                        mapping.tp))
    kvpt = kv_bytes_per_token(spec, kv_dtype, stage_layers)
    tokens = int(budget // kvpt) // TOKENS_PER_BLOCK * TOKENS_PER_BLOCK
    pools = mapping.tp if mapping.enable_attention_dp else 1
    seq = -(-context // TOKENS_PER_BLOCK) * TOKENS_PER_BLOCK
    max_seqs = pools * (tokens // seq)
    start = REFERENCE_START_S if gpu.reference_only else ENGINE_START_S
    return MemoryPlan(worst.total, min(rb.total for rb in per_rank), worst.by_category, usable, reserve,
                      kv_fraction, budget, kvpt, tokens, pools, seq, max_seqs, free > 0 and max_seqs >= 1,
                      load_seconds(worst.total, load_gbps, start),
                      routed_expert_bytes(spec) if eplb_online else 0.0)


def load_seconds(weights_per_gpu: float, gbps: float = LOAD_GBPS, start_s: float = ENGINE_START_S) -> float:
    """Estimated seconds from launch to serving: ``weights_per_gpu`` bytes read at ``gbps`` GB/s, plus ``start_s``.

    Example: ``load_seconds(60e9)`` → 720.0 (120 s of reading at 0.5 GB/s, then 600 s of start-up).
    """
    if gbps <= 0:
        raise ConfigError(f"storage bandwidth {gbps} GB/s must be > 0", "set cluster.load_gbps to a positive number")
    return weights_per_gpu / (gbps * 1e9) + start_s


READY_MARGIN = 2.0
"""How many times the load estimate a launcher waits for the engine before giving up: the estimate rests on assumed
bandwidths (``LOAD_GBPS``, ``ENGINE_START_S``), so a load at half the assumed pace still makes it."""
MIN_READY_S = 600
"""The shortest wait for readiness, seconds, however small the estimate (the tiny reference model's)."""


def ready_budget_s(load_s: float) -> int:
    """Seconds to wait for an engine to become ready given the plan's load estimate: ``READY_MARGIN`` × ``load_s``,
    never under ``MIN_READY_S``. One budget for every launcher: ``k2trt serve``'s readiness wait
    (``launch.json`` ``ready_timeout_s``) and the Kubernetes start-up probe.

    Args:
        load_s: the plan's load estimate (``MemoryPlan.load_s``, ``load_seconds``), seconds.
    Returns:
        Whole seconds.
    Example:
        >>> ready_budget_s(720.0), ready_budget_s(45.0)
        (1440, 600)
    """
    return int(max(MIN_READY_S, math.ceil(READY_MARGIN * load_s)))


def routed_expert_bytes(spec: ModelSpec) -> float:
    """Bytes of every routed expert of every MoE layer (weights and their scales) in the checkpoint's format: the
    host copy online EPLB keeps in each node's ``/dev/shm`` (module docstring).

    Example: K2-Instruct block FP8 → about 0.95 TiB.
    """
    fmt = weight_format(spec)
    total = 0.0
    for g in inventory(spec).groups:
        if g.experts:
            n = sum(len(ids) for ids in g.experts.values())
            t = g.sample
            total += n * tensor_bytes(t, t.numel, fmt)
            if fmt == "nvfp4" and t.role in EXPERT_ROLES and t.scale_of is None and t.dtype != "U8":
                total += n * NVFP4_BYTES_PER_TENSOR
    return total



def extreme_ranks(m: Mapping) -> list[int]:
    """The first and last rank of every pipeline stage: they hold the largest and smallest shards.

    Every split is ``ceil(dim/n)`` wide except a shorter last part, and a stage's first rank (tp_rank 0) holds
    part 0 of every split while its last rank (tp_rank tp-1) holds part n-1 of every n-way split (n divides tp);
    EP ranks hold equal expert counts. So the max and min over these ranks are the max and min over all ranks
    (tests/unit/test_plan.py checks it against every rank).
    """
    out: list[int] = []
    for p in range(m.pp):
        out += sorted({p * m.tp, p * m.tp + m.tp - 1})
    return out
