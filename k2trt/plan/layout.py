"""Parallel layouts: the ``tp16ep8adp`` syntax, conversion to a Mapping, and enumeration for a cluster.

Syntax (case-insensitive, tokens in any order, optionally separated by ``,``/``-``/``_``): ``tp<N>`` (required),
``ep<N>`` (MoE expert parallel), ``mtp<N>`` (MoE tensor parallel), ``pp<N>`` (pipeline stages), ``adp``
(attention data parallel). Unset MoE sizes resolve as TensorRT-LLM does (k2trt.mapping). Examples: ``tp16ep8``,
``tp16ep16adp``, ``tp8pp2``, ``tp4,ep2,adp``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from k2trt.errors import PlanError
from k2trt.mapping import Mapping
from k2trt.spec import ModelSpec

_TOKEN = re.compile(r"(tp|ep|mtp|moetp|pp)(\d+)|(adp)", re.I)


@dataclass(frozen=True)
class Layout:
    """A parallel layout of one serving instance."""

    tp: int
    """Tensor-parallel size (attention, dense FFN, shared experts; the MoE world)."""
    ep: int | None = None
    """MoE expert-parallel size (None: TensorRT-LLM's default resolution)."""
    moe_tp: int | None = None
    """MoE tensor-parallel size (None: resolved from tp and ep)."""
    pp: int = 1
    """Pipeline stages."""
    adp: bool = False
    """Attention data parallel (TensorRT-LLM ``enable_attention_dp``)."""

    @property
    def world_size(self) -> int:
        return self.tp * self.pp

    def mapping(self, gpus_per_node: int = 8, spec: ModelSpec | None = None) -> Mapping:
        """The TensorRT-LLM Mapping of this layout (raises PlanError for inconsistent sizes)."""
        return Mapping(self.world_size, self.tp, self.pp, self.ep, self.moe_tp, self.adp, gpus_per_node, spec)

    @property
    def name(self) -> str:
        """Canonical spelling, e.g. ``tp16ep8`` or ``tp16ep16adp``."""
        m = self.mapping()
        s = f"tp{self.tp}"
        if self.pp > 1:
            s += f"pp{self.pp}"
        if m.ep > 1:
            s += f"ep{m.ep}"
        return s + ("adp" if self.adp else "")

    def __str__(self) -> str:
        try:
            return self.name
        except PlanError:
            return f"tp{self.tp}ep{self.ep}mtp{self.moe_tp}pp{self.pp}{'adp' if self.adp else ''}"


def parse_layout(text: str) -> Layout:
    """Parse ``tp16ep8adp``-style text. Raises PlanError with the accepted syntax.

    Example: ``parse_layout("tp16ep8adp")`` → ``Layout(tp=16, ep=8, adp=True)``.
    """
    s = re.sub(r"[\s,_\-]+", "", text.lower())
    pos, vals, adp = 0, {}, False
    for m in _TOKEN.finditer(s):
        if m.start() != pos:
            break
        pos = m.end()
        if m.group(3):
            adp = True
        else:
            key = "mtp" if m.group(1) == "moetp" else m.group(1)
            if key in vals:
                raise PlanError(f"layout {text!r} gives {key} twice")
            vals[key] = int(m.group(2))
    if pos != len(s) or "tp" not in vals:
        raise PlanError(f"{text!r} is not a layout",
                        "write tp<N>[ep<N>][mtp<N>][pp<N>][adp], e.g. tp16ep8 or tp16ep16adp")
    if any(v < 1 for v in vals.values()):
        raise PlanError(f"layout {text!r}: sizes must be ≥ 1")
    return Layout(vals["tp"], vals.get("ep"), vals.get("mtp"), vals.get("pp", 1), adp)


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
