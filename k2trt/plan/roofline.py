"""Roofline bounds: batch-1 decode tokens/s per user and prefill tokens/s, from bytes and FLOPs.

Decode (one user, one token): every rank reads its non-expert weights (its shard of attention, dense FFN, shared
experts, routers, its lm_head slice; one embedding row), its share of the *selected* routed experts, and the
sequence's MLA latent (every TP rank reads the whole latent without attention-DP; with it, only the serving rank).
Routed experts: top-k of n chosen uniformly (an assumption; real routing is skewed), so the busiest EP rank holds
E[max] of them — computed exactly from the multivariate hypergeometric distribution, not simulated. Time per token
is the busiest rank's bytes over its HBM bandwidth, summed over pipeline stages. k2_numbers.md E3 shows the same
method (its EP8 busiest-rank 2.57 experts was simulated; this is exact).

Communication floor (assumption, k2_numbers.md E3): 2 collectives per layer, each ≥ 10 µs across nodes over
InfiniBand and ≥ 5 µs inside an NVLink domain. Real batch-1 decode sits about an order of magnitude below the HBM
roofline (E3's measured references); these are bounds, not predictions.

Prefill: 2 FLOPs per active parameter per token (attention score FLOPs ignored, as in E3) at the GPU's dense peak
for the weight format (FP8 on FP8 GPUs, FP4 for NVFP4 on Blackwell, else BF16).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace
from typing import Any

from k2trt.mapping import EXPERT_ROLES, Mapping
from k2trt.plan.gpus import Gpu
from k2trt.plan.memory import inventory, kv_bytes_per_token, rank_bytes, tensor_bytes, weight_format
from k2trt.spec import ModelSpec

INTER_NODE_LATENCY_S = 10e-6
INTRA_NODE_LATENCY_S = 5e-6
COLLECTIVES_PER_LAYER = 2


@functools.lru_cache(maxsize=64)
def expected_max_experts(n_experts: int, top_k: int, ep: int) -> float:
    """E[max over EP ranks of the chosen experts a rank holds], top_k of n_experts uniformly, n/ep per rank.

    Exact: P(max ≤ m) = [x^k] (Σ_{c≤m} C(g,c) x^c)^ep / C(n,k) with g = n/ep.
    Example: ``expected_max_experts(384, 8, 8)`` ≈ 2.6.
    """
    g = n_experts // ep
    total = math.comb(n_experts, top_k)
    exp = 0.0
    for m in range(top_k):  # E[max] = Σ_{m≥0} P(max > m)
        poly = [1] + [0] * top_k
        base = [math.comb(g, c) if c <= m else 0 for c in range(top_k + 1)]
        for _ in range(ep):
            nxt = [0] * (top_k + 1)
            for i, a in enumerate(poly):
                if a:
                    for j in range(top_k + 1 - i):
                        if base[j]:
                            nxt[i + j] += a * base[j]
            poly = nxt
        exp += 1 - poly[top_k] / total
    return exp


def active_params(spec: ModelSpec, include_embedding: bool = False) -> int:
    """Parameters touched per token (from the folded inventory; K2: 31.7 B, 32.9 B with the embedding)."""
    total = 0
    k, n = spec.num_experts_per_tok, spec.n_routed_experts
    for g in inventory(spec).groups:
        t = g.sample
        if t.scale_of is not None or t.role == "inv_freq" or (t.role == "embed" and not include_embedding):
            continue
        if g.experts:
            total += t.numel * sum(len(ids) for ids in g.experts.values()) * k // n
        else:
            total += t.numel * sum(g.per_layer.values())
    return total


@dataclass(frozen=True)
class Roofline:
    """Bounds for one layout."""

    decode_ms_hbm: float
    """Batch-1 time per token from the busiest rank's HBM reads (summed over pipeline stages)."""
    decode_tps_hbm: float
    decode_ms_comm: float
    """Communication floor per token (assumption; see module docstring)."""
    decode_tps_bound: float
    """min(HBM bound, communication bound): the best batch-1 tokens/s per user can be."""
    busiest_rank_bytes: float
    busiest_ep_experts: float
    """Expected routed experts on the busiest EP rank per MoE layer."""
    prefill_tps: float
    """Peak-FLOPs prefill tokens/s for the whole instance."""
    flops_per_token: float

    def to_dict(self) -> dict[str, Any]:
        return {"decode_ms_hbm": round(self.decode_ms_hbm, 4), "decode_tps_hbm": round(self.decode_tps_hbm, 1),
                "decode_ms_comm": round(self.decode_ms_comm, 4), "decode_tps_bound": round(self.decode_tps_bound, 1),
                "busiest_rank_gb_per_token": round(self.busiest_rank_bytes / 1e9, 3),
                "busiest_ep_experts": round(self.busiest_ep_experts, 3),
                "prefill_tps": round(self.prefill_tps), "flops_per_token": self.flops_per_token}


def _expert_bytes_per_rank(spec: ModelSpec, mapping: Mapping, rank: int) -> float:
    """Bytes of one routed expert's shard (gate+up+down and scales) held by ``rank``, one layer."""
    fmt = weight_format(spec)
    owned = mapping.experts(rank, spec.n_routed_experts)
    b = 0.0
    for g in inventory(spec).groups:
        if g.sample.role in EXPERT_ROLES:
            layer = next(iter(g.experts))
            s = mapping.shard(replace(g.sample, expert=owned.start, layer=layer), rank, spec)
            b += tensor_bytes(g.sample, s.numel, fmt)
    return b


def roofline(spec: ModelSpec, mapping: Mapping, gpu: Gpu, context: int, kv_dtype: str = "fp8") -> Roofline:
    """Batch-1 decode and prefill bounds for ``mapping`` on ``gpu`` at ``context`` tokens of history."""
    bw = gpu.hbm_tbps * 1e12
    e_busy = expected_max_experts(spec.n_routed_experts, spec.num_experts_per_tok, mapping.ep)
    moe_layers = len(spec.moe_layers)
    total_s, worst = 0.0, 0.0
    for p in range(mapping.pp):
        r = p * mapping.tp  # tp_rank 0 of the stage holds the widest shards
        rb = rank_bytes(mapping, r, spec)
        stage_layers = mapping.layers(r, spec.num_hidden_layers)
        stage_moe = sum(1 for i in stage_layers if spec.is_moe_layer(i)) if mapping.pp > 1 else moe_layers
        nonexp = rb.total - rb.by_category.get("routed_experts", 0.0) - rb.by_category.get("embedding", 0.0)
        nonexp += spec.hidden_size * 2 if p == 0 else 0  # one embedding row
        experts = stage_moe * e_busy * _expert_bytes_per_rank(spec, mapping, r)
        kv = kv_bytes_per_token(spec, kv_dtype, len(stage_layers)) * context
        b = nonexp + experts + kv
        worst = max(worst, b)
        total_s += b / bw
    multi = mapping.world_size > min(gpu.nvlink_domain, mapping.gpus_per_node)
    lat = INTER_NODE_LATENCY_S if multi else INTRA_NODE_LATENCY_S
    comm_s = COLLECTIVES_PER_LAYER * spec.num_hidden_layers * lat if mapping.world_size > 1 else 0.0
    fmt = weight_format(spec)
    if fmt == "nvfp4" and gpu.fp4:
        tflops = gpu.fp4_tflops
    elif fmt in ("fp8_block", "nvfp4", "w4a8") and gpu.fp8:  # W4A8: INT4 weights, FP8 activations and MMA
        tflops = gpu.fp8_tflops
    else:
        tflops = gpu.bf16_tflops
    flops = 2.0 * active_params(spec, include_embedding=True)
    prefill = mapping.world_size * tflops * 1e12 / flops
    hbm_tps = 1 / total_s
    return Roofline(total_s * 1e3, hbm_tps, comm_s * 1e3, min(hbm_tps, 1 / comm_s if comm_s else math.inf),
                    worst, e_busy, prefill, flops)
