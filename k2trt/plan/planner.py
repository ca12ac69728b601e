"""The planner: for a model, a cluster and a context, judge one layout or enumerate and rank them all.

Ranking (valid layouts only): layouts with no error first, then fewest pipeline stages (each token crosses every
stage in turn, and TensorRT-LLM's DeepSeek/K2 guides use TP × EP, not PP), then fewest warnings, then most
concurrent full-context sequences, then the highest batch-1 decode bound. Invalid layouts keep the one-line reason the Mapping
or the memory plan gave. ``Plan.to_dict`` is the ``--json`` output; ``render_table`` and ``to_markdown`` are the
human views (the latter is a bundle's PLAN.md).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

from k2trt.errors import K2trtError, PlanError
from k2trt.layout import Layout
from k2trt.mapping import GPUS_PER_NODE
from k2trt.plan.gpus import GiB, Gpu
from k2trt.plan.memory import (DEFAULT_KV_DTYPE, KV_BYTES, LOAD_GBPS, KvDtype, MemoryPlan, inventory,
                               memory_plan, parse_weight_format, weight_format, with_weights)
from k2trt.plan.roofline import Roofline, roofline
from k2trt.plan.rules import Finding, RuleContext, evaluate
from k2trt.spec import ModelSpec, preset
from k2trt.trtllm.render import KV_FRACTION

DEFAULT_PRESET = "k2-instruct"
"""The model planned when neither a checkpoint nor a preset is named (and a recipe's ``model.preset``)."""
DEFAULT_CONTEXT = preset(DEFAULT_PRESET).max_position_embeddings
"""K2's whole context (131,072 tokens): what a deployment must hold unless told otherwise."""


@dataclass(frozen=True)
class Cluster:
    """GPU kind × nodes × GPUs per node."""

    gpu: Gpu
    """Catalog entry."""
    nodes: int = 1
    """Nodes in the instance."""
    gpus_per_node: int = GPUS_PER_NODE
    """GPUs (ranks) per node."""

    @property
    def world_size(self) -> int:
        return self.nodes * self.gpus_per_node

    def __str__(self) -> str:
        return f"{self.nodes}×{self.gpus_per_node} {self.gpu.name}"


@dataclass(frozen=True)
class PlanRequest:
    """Everything a plan depends on."""

    spec: ModelSpec
    """The model (preset or checkpoint config)."""
    cluster: Cluster
    """Where it runs."""
    context: int = DEFAULT_CONTEXT
    """Tokens per sequence (prompt + output) the deployment must hold."""
    kv_dtype: KvDtype = DEFAULT_KV_DTYPE
    """KV cache dtype: ``fp8`` or ``bf16``."""
    kv_fraction: float = KV_FRACTION
    """TensorRT-LLM ``kv_cache_config.free_gpu_memory_fraction``."""
    reserve_gib: float | None = None
    """Activation / CUDA-graph / workspace reserve per GPU; None: the GPU's default (8 GiB, CPU ranks 0.5)."""
    release: str | None = None
    """TensorRT-LLM schema profile the rules consider (None: not release-specific)."""
    eplb_online: bool = False
    """The serve config enables online expert load balancing."""
    tool_parser: bool = False
    """trtllm-serve runs with a tool parser."""
    model_name: str = "model"
    """Label for reports (preset name or checkpoint path)."""
    load_gbps: float = LOAD_GBPS
    """Checkpoint read bandwidth per GPU, GB/s, for the load-time estimate (an assumption unless measured)."""

    @property
    def reserve(self) -> float:
        return self.cluster.gpu.reserve_gib if self.reserve_gib is None else self.reserve_gib

    def validate(self) -> None:
        if self.context < 1:
            raise PlanError(f"context {self.context} must be ≥ 1")
        if self.kv_dtype not in KV_BYTES:
            raise PlanError(f"kv dtype {self.kv_dtype!r} is not fp8 or bf16")
        if not 0 < self.kv_fraction <= 1:
            raise PlanError(f"KV memory fraction {self.kv_fraction} must be in (0, 1]")
        if self.load_gbps <= 0:
            raise PlanError(f"storage bandwidth {self.load_gbps} GB/s must be > 0")


@dataclass
class LayoutPlan:
    """One layout's verdict."""

    layout: Layout
    invalid: str | None = None
    """Why the layout cannot be built at all (Mapping/shape rules), else None."""
    memory: MemoryPlan | None = None
    roofline: Roofline | None = None
    findings: list[Finding] = field(default_factory=list)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "warning"]

    @property
    def ok(self) -> bool:
        """Valid and fits (warnings allowed)."""
        return self.invalid is None and not self.errors

    def sort_key(self) -> tuple[Any, ...]:
        if self.invalid is not None or self.memory is None or self.roofline is None:
            return (2, 0, 0, 0)
        return (0 if self.ok else 1, self.layout.pp, len(self.warnings), -self.memory.max_sequences,
                -self.roofline.decode_tps_bound)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"layout": str(self.layout), "ok": self.ok}
        if self.invalid:
            d["invalid"] = self.invalid
            return d
        assert self.memory is not None and self.roofline is not None
        d["memory"] = self.memory.to_dict()
        d["roofline"] = self.roofline.to_dict()
        d["findings"] = [f.to_dict() for f in self.findings]
        return d


@dataclass
class Plan:
    """The result: every judged layout, best first."""

    request: PlanRequest
    layouts: list[LayoutPlan]

    @property
    def best(self) -> LayoutPlan | None:
        return self.layouts[0] if self.layouts and self.layouts[0].ok else None

    def to_dict(self) -> dict[str, Any]:
        r = self.request
        inv = inventory(r.spec)
        return {
            "model": r.model_name, "weight_format": weight_format(r.spec), "tensors": inv.tensors,
            "checkpoint_gib": round(inv.total_bytes / GiB, 2),
            "cluster": {"gpu": r.cluster.gpu.key, "gpu_name": r.cluster.gpu.name, "nodes": r.cluster.nodes,
                        "gpus_per_node": r.cluster.gpus_per_node},
            "context": r.context, "kv_dtype": r.kv_dtype, "kv_fraction": r.kv_fraction, "reserve_gib": r.reserve,
            "release": r.release, "load_gbps": r.load_gbps, "layouts": [lp.to_dict() for lp in self.layouts],
        }


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def candidate_layouts(world_size: int, spec: ModelSpec) -> list[Layout]:
    """Every tp × pp = world_size, ep | tp, with and without attention-DP (valid or not; the planner judges)."""
    out: list[Layout] = []
    for pp in _divisors(world_size):
        if pp > spec.num_hidden_layers:
            continue
        tp = world_size // pp
        for ep in _divisors(tp):
            for adp in (False, True):
                if adp and tp == 1:
                    continue
                out.append(Layout(tp, ep, None, pp, adp))
    return out


def plan_layout(req: PlanRequest, layout: Layout) -> LayoutPlan:
    """Judge one layout: Mapping validity, exact memory, roofline and rule findings."""
    req.validate()
    lp = LayoutPlan(layout)
    if layout.world_size != req.cluster.world_size:
        lp.invalid = (f"{layout} uses {layout.world_size} GPUs but the cluster has {req.cluster.world_size} "
                      f"({req.cluster})")
        return lp
    try:
        m = layout.mapping(req.cluster.gpus_per_node, req.spec)
        m.check(samples=[g.sample for g in inventory(req.spec).groups])
    except PlanError as e:
        lp.invalid = str(e)
        return lp
    lp.memory = memory_plan(req.spec, m, req.cluster.gpu, req.context, req.kv_dtype, req.kv_fraction,
                            req.reserve, load_gbps=req.load_gbps, eplb_online=req.eplb_online)
    lp.roofline = roofline(req.spec, m, req.cluster.gpu, req.context, req.kv_dtype)
    lp.findings = evaluate(RuleContext(req.spec, m, req.cluster.gpu, req.context, lp.memory, req.release,
                                       req.eplb_online, req.tool_parser))
    return lp


def plan(req: PlanRequest, layouts: list[Layout] | None = None) -> Plan:
    """Judge ``layouts`` (default: every candidate for the cluster) and rank them best first.

    Example: ``plan(PlanRequest(preset("k2-instruct"), Cluster(gpu("h200"), 2))).best.layout`` → a tp16 layout.
    """
    cands = layouts if layouts is not None else candidate_layouts(req.cluster.world_size, req.spec)
    judged = [plan_layout(req, lay) for lay in cands]
    judged.sort(key=LayoutPlan.sort_key)
    return Plan(req, judged)


# ---- rendering -------------------------------------------------------------------------------------------------

def _row(lp: LayoutPlan) -> list[str]:
    m, r = lp.memory, lp.roofline
    assert m is not None and r is not None
    verdict = "error" if lp.errors else (f"{len(lp.warnings)} warning(s)" if lp.warnings else "ok")
    return [str(lp.layout), f"{m.weights_max / GiB:.2f}", f"{m.kv_budget / GiB:.1f}", f"{m.kv_tokens_per_gpu:,}",
            f"{m.system_kv_tokens:,}", str(m.max_sequences), f"{r.decode_tps_bound:,.0f}", f"{r.prefill_tps:,.0f}",
            verdict]


HEADER = ["layout", "weights GiB/GPU", "KV GiB/GPU", "KV tokens/GPU", "KV tokens total", "seqs @ctx",
          "decode tok/s/user ≤", "prefill tok/s ≤", "verdict"]


def render_table(p: Plan, console: Any = None, show_invalid: bool = True) -> None:
    """Print the plan as rich tables (judged layouts, then invalid ones with reasons, then findings)."""
    from rich.console import Console
    from rich.table import Table

    con = console or Console(highlight=False, width=None if sys.stdout.isatty() else 160)
    r = p.request
    inv = inventory(r.spec)
    con.print(f"[bold]{r.model_name}[/bold] ({weight_format(r.spec)}, {inv.tensors:,} tensors, "
              f"{inv.total_bytes / GiB:,.1f} GiB) on {r.cluster}; context {r.context:,}, KV {r.kv_dtype}, "
              f"KV fraction {r.kv_fraction}, reserve {r.reserve} GiB/GPU")
    t = Table(*HEADER, title="layouts (best first)")
    valid = [lp for lp in p.layouts if lp.invalid is None]
    for lp in valid:
        t.add_row(*_row(lp))
    if valid:
        con.print(t)
    if show_invalid:
        for lp in p.layouts:
            if lp.invalid:
                con.print(f"  [dim]invalid {lp.layout}: {lp.invalid}[/dim]", soft_wrap=True)
    style = {"error": "red", "warning": "yellow", "info": "dim"}
    for lp in valid[:3] if len(valid) > 1 else valid:
        for f in lp.findings:
            con.print(f"  [{style[f.severity]}]{f.severity}[/] {lp.layout}: {f.message}", soft_wrap=True)
    if p.best is None:
        con.print("[red]no layout fits this cluster[/red]")
    else:
        con.print(f"[green]best: {p.best.layout}[/green]")


def to_markdown(p: Plan, only_first: bool = False) -> str:
    """The plan as Markdown (a bundle's PLAN.md)."""
    r = p.request
    inv = inventory(r.spec)
    lines = [f"# Plan: {r.model_name} on {r.cluster}", "",
             f"- weights: {weight_format(r.spec)}, {inv.tensors:,} tensors, {inv.total_bytes / GiB:,.1f} GiB",
             f"- context {r.context:,} tokens, KV {r.kv_dtype}, KV fraction {r.kv_fraction}, "
             f"reserve {r.reserve} GiB/GPU", "",
             "| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    judged = [lp for lp in p.layouts if lp.invalid is None]
    for lp in judged[:1] if only_first else judged:
        lines.append("| " + " | ".join(_row(lp)) + " |")
    for lp in judged[:1] if only_first else judged:
        if lp.memory is not None:
            m = lp.memory
            cats = ", ".join(f"{k} {v / GiB:.2f}" for k, v in sorted(m.by_category.items()) if v)
            lines += ["", f"**{lp.layout}** weights per GPU (GiB): {cats}.",
                      f"Estimated load: {m.load_s / 60:.0f} min ({m.weights_max / GiB:.1f} GiB per GPU at "
                      f"{r.load_gbps:g} GB/s per GPU, then the engine's start-up; an estimate)."]
            if m.eplb_shm_bytes:
                lines.append(f"Online EPLB keeps {m.eplb_shm_bytes / GiB:,.0f} GiB of routed experts in each "
                             "node's /dev/shm.")
        for f in lp.findings:
            lines.append(f"- {f.severity}: {f.message}")
    for lp in p.layouts:
        if lp.invalid:
            lines.append(f"- invalid {lp.layout}: {lp.invalid}")
    return "\n".join(lines) + "\n"


def resolve_spec(checkpoint: str | None = None, preset_name: str | None = None,
                 weights: str | None = None) -> tuple[ModelSpec, str]:
    """The model to plan: a checkpoint's config.json or a preset, optionally re-described as another weight format
    (any spelling ``parse_weight_format`` takes; ``nvfp4`` / ``w4a8``: what ``k2trt convert --to`` would write)."""
    if checkpoint and preset_name:
        raise PlanError("give --checkpoint or --preset, not both")
    if checkpoint:
        spec, name = ModelSpec.from_config(checkpoint), str(checkpoint)
    else:
        name = preset_name or DEFAULT_PRESET
        spec = preset(name)
    if weights:
        try:
            fmt = parse_weight_format(weights)
        except K2trtError as e:
            raise PlanError(f"weight format: {e}") from None
        spec = with_weights(spec, fmt)
    return spec, name
