"""The compatibility rule table: ``Rule(id, severity, predicate, reason)`` over a planned layout.

Rules report; they never change a setting (STYLE P14). ``error`` means the layout cannot serve (the planner marks it
unfit and ``k2trt build`` refuses); ``warning`` means it runs but the user should know why it may disappoint;
``info`` is context. Facts behind each rule are cited in its reason text's source comment.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from k2trt.mapping import Mapping
from k2trt.plan.gpus import GiB, Gpu
from k2trt.plan.memory import INT4_SOURCE, MemoryPlan, weight_format
from k2trt.spec import ModelSpec
from k2trt.trtllm import known
from k2trt.trtllm.deploy import EPLB_SHM_DEFAULT, EPLB_SHM_VAR
from k2trt.trtllm.render import SERVE_EXE, TOOL_PARSER_ARGS, TRUST_REMOTE_CODE_FLAG

MIN_VIABLE_SEQUENCES = 4  # fewer concurrent full-context sequences than this is not a serving deployment (assumption)
MARGINAL_WEIGHT_SHARE = 0.70  # weights above 70% of usable memory leave KV room for short contexts only (assumption)
FEW_HEADS = 4  # trtllm.md §5: "4 heads per rank at TP16 is an unusual shape"


@dataclass(frozen=True)
class RuleContext:
    """What a rule can look at."""

    spec: ModelSpec
    mapping: Mapping
    gpu: Gpu
    context: int
    memory: MemoryPlan
    release: str | None = None
    """TensorRT-LLM schema profile name (``1.3.0rc24``) or None when unknown; release facts come from
    ``k2trt.trtllm.known.RELEASE_FACTS`` for that profile, never from another release's."""
    eplb_online: bool = False
    """moe_config.load_balancer.layer_updates_per_iter > 0."""
    tool_parser: bool = False
    """trtllm-serve runs with --tool_parser."""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Finding:
    """One rule that fired."""

    rule: str
    severity: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"rule": self.rule, "severity": self.severity, "message": self.message}


@dataclass(frozen=True)
class Rule:
    """(reason, predicate): ``reason(ctx)`` is reported when ``predicate(ctx)`` holds."""

    id: str
    severity: str
    predicate: Callable[[RuleContext], bool]
    reason: Callable[[RuleContext], str]


def _heads_per_rank(c: RuleContext) -> int:
    return c.spec.num_attention_heads // c.mapping.attn_tp


def _cross_node_moe_tp(c: RuleContext) -> list[list[int]]:
    m = c.mapping
    return [g for g in m.groups("moe_tp") if len({r // m.gpus_per_node for r in g}) > 1] if m.mtp > 1 else []


def _over_fused_limit(c: RuleContext) -> tuple[int, int] | None:
    """The release's fused-routing limit (experts, top-k) when K2 exceeds it, else None (also when unknown)."""
    lim = known.release_fact(c.release, "fused_routing_limit")
    if lim and (c.spec.n_routed_experts > lim[0] or c.spec.num_experts_per_tok > lim[1]):
        return int(lim[0]), int(lim[1])
    return None


def _weight_share(c: RuleContext) -> float:
    return c.memory.weights_max / c.memory.usable


RULES: tuple[Rule, ...] = (
    Rule("no-fp8", "error",
         lambda c: weight_format(c.spec) in ("fp8_block", "w4a8") and not c.gpu.fp8 and not c.gpu.reference_only,
         lambda c: f"{c.gpu.name} has no FP8 tensor cores and TensorRT-LLM's block-FP8 and W4A8 paths need Hopper "
                   "or newer; convert to BF16 (twice the bytes) or use H100/H200/H20/B200"),
    Rule("no-fp4", "error",
         lambda c: weight_format(c.spec) == "nvfp4" and not c.gpu.fp4 and not c.gpu.reference_only,
         lambda c: f"NVFP4 checkpoints need FP4 tensor cores (Blackwell); {c.gpu.name} has none"),
    Rule("weights-do-not-fit", "error",
         lambda c: c.memory.weights_max + c.memory.reserve > c.memory.usable,
         lambda c: f"weights {c.memory.weights_max / GiB:.1f} GiB + reserve {c.memory.reserve / GiB:.0f} GiB exceed "
                   f"the {c.memory.usable / GiB:.1f} GiB usable on {c.gpu.name}; use more GPUs or fewer bytes"),
    Rule("context-does-not-fit", "error",
         lambda c: c.memory.weights_max + c.memory.reserve <= c.memory.usable and c.memory.max_sequences < 1,
         lambda c: f"the KV pool holds {c.memory.kv_tokens_per_gpu:,} tokens per GPU, less than one {c.context:,}-"
                   "token sequence; shorten the context, use FP8 KV or more GPUs"),
    Rule("context-not-viable", "warning",
         lambda c: 1 <= c.memory.max_sequences < MIN_VIABLE_SEQUENCES,
         lambda c: f"only {c.memory.max_sequences} concurrent {c.context:,}-token sequence(s) fit "
                   f"({c.memory.kv_tokens_per_gpu:,} KV tokens per GPU): not viable for serving at this context "
                   "(k2_numbers E2: 16 GPUs minimum for FP8 at 128K)"),
    Rule("marginal-memory", "warning",
         lambda c: _weight_share(c) > MARGINAL_WEIGHT_SHARE and c.memory.weights_max + c.memory.reserve
         <= c.memory.usable,
         lambda c: f"marginal: weights take {_weight_share(c):.0%} of each {c.gpu.name}, leaving "
                   f"{c.memory.kv_budget / GiB:.1f} GiB of KV per GPU — short contexts or few users only"),
    Rule("few-heads-per-rank", "warning",
         lambda c: not c.mapping.enable_attention_dp and c.mapping.attn_tp > 1 and _heads_per_rank(c) <= FEW_HEADS,
         lambda c: f"{_heads_per_rank(c)} attention heads per rank at TP{c.mapping.tp} is an unusual MLA shape with "
                   f"no TensorRT-LLM report for K2 (trtllm.md §5); validate it, or use attention-DP "
                   f"(e.g. tp{c.mapping.tp}ep{c.mapping.tp}adp)"),
    Rule("moe-tp-spans-nodes", "warning",
         lambda c: bool(_cross_node_moe_tp(c)),
         lambda c: f"MoE-TP groups {_cross_node_moe_tp(c)[:3]}… span nodes, so every MoE layer all-reduces expert "
                   f"partial sums across nodes; ep{c.mapping.tp} (MoE-TP 1) keeps experts whole"),
    Rule("routing-unfused", "warning",
         lambda c: c.spec.n_group == 1 and c.spec.topk_group == 1
         and known.release_fact(c.release, "routing_unfused_k2") is True,
         lambda c: "K2's n_group=1/topk_group=1 routing takes TensorRT-LLM's unfused PyTorch fallback on early-2026 "
                   "main builds (log: 'not supported by the fused routing kernel'); PR #13032/#13186 (Apr 2026) "
                   "loosened it — check the pinned build's log"),
    Rule("routing-over-fused-limit", "warning",
         lambda c: _over_fused_limit(c) is not None,
         lambda c: f"{c.spec.n_routed_experts} experts / top-{c.spec.num_experts_per_tok} exceed the fused "
                   f"noaux_tc kernel's limit (≤{_over_fused_limit(c)[0]}, ≤{_over_fused_limit(c)[1]}) on "  # type: ignore[index]
                   f"TensorRT-LLM {c.release}: routing runs unfused"),
    Rule("w4a8-not-loadable", "error",
         lambda c: weight_format(c.spec) == "w4a8" and c.release is not None
         and known.release_fact(c.release, "w4a8_mixed_precision") is not True,
         lambda c: f"W4A8 checkpoints declare quant_algo MIXED_PRECISION, and TensorRT-LLM's DeepseekV3 decoder "
                   f"layer asserts on it ({known.W4A8_EVIDENCE}); "
                   + (f"{c.release} does not load it" if known.release_fact(c.release, "w4a8_mixed_precision")
                      is False else f"that {c.release} loads it is not established")
                   + ", so the recipe is refused — serve the FP8 checkpoint (k2-h200-2x8-*) instead"),
    Rule("int4-not-loadable", "error",
         lambda c: weight_format(c.spec) == INT4_SOURCE and not c.gpu.reference_only,
         lambda c: "Moonshot's INT4 experts (compressed-tensors pack-quantized) are not loadable by TensorRT-LLM: its "
                   "compressed-tensors loader takes FP8, NVFP4 and MXFP4 groups (docs/reference/k2_int4.md §4); "
                   f"convert first: k2trt convert SRC DST --to {'nvfp4' if c.gpu.fp4 else 'fp8-block'}, and plan "
                   f"--weights {'nvfp4' if c.gpu.fp4 else 'fp8'}"),
    Rule("k25-text-only", "info",
         lambda c: c.spec.multimodal is not None,
         lambda c: "K2.5 / K2.6: k2trt plans and serves the text model (a text-only DeepseekV3 conversion); the "
                   "vision tower is not carried — images are not served"),
    Rule("eplb-needs-shm", "warning",
         lambda c: c.eplb_online,
         lambda c: f"online EPLB keeps a host copy of every routed expert in each node's /dev/shm "
                   f"({c.memory.eplb_shm_bytes / GiB:,.0f} GiB; {EPLB_SHM_VAR}={EPLB_SHM_DEFAULT}): run "
                   f"containers with --ipc=host or a /dev/shm that large, and clean /dev/shm/{EPLB_SHM_DEFAULT}_* after a "
                   "crash"),
    Rule("tool-parser-multinode", "warning",
         lambda c: c.tool_parser and c.mapping.nodes > 1,
         lambda c: f"multi-node {SERVE_EXE} with {' '.join((TRUST_REMOTE_CODE_FLAG, *TOOL_PARSER_ARGS))} hung on "
                   "builds before PR #11383 (Feb 2026, nvbugs/5823783); the k2trt gateway can parse tool calls "
                   "instead"),
)


def evaluate(ctx: RuleContext, rules: tuple[Rule, ...] = RULES) -> list[Finding]:
    """Every rule that fires for ``ctx``, errors first."""
    out = [Finding(r.id, r.severity, r.reason(ctx)) for r in rules if r.predicate(ctx)]
    order = {"error": 0, "warning": 1, "info": 2}
    return sorted(out, key=lambda f: order[f.severity])
