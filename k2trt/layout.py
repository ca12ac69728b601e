"""The parallel layout of one serving instance: the ``tp16ep8adp`` syntax and its TensorRT-LLM ``Mapping``. No torch.

One type for every user of a layout: recipes hold it (parsed once, when the recipe loads), the planner judges it,
the bundle builder turns it into engine argv, and the reference engine shards its weights by it. Sizes left unset
resolve as TensorRT-LLM resolves them (:class:`k2trt.mapping.Mapping`).

Syntax (case-insensitive, tokens in any order, optionally separated by ``,``/``-``/``_``/spaces): ``tp<N>``
(required), ``ep<N>`` (MoE expert parallel), ``mtp<N>`` or ``moetp<N>`` (MoE tensor parallel), ``pp<N>`` (pipeline
stages), ``adp`` (attention data parallel). Examples: ``tp16ep8``, ``tp16ep16adp``, ``tp8pp2``, ``tp4,ep2,adp``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from k2trt.errors import PlanError
from k2trt.mapping import GPUS_PER_NODE, Mapping
from k2trt.spec import ModelSpec

_TOKEN = re.compile(r"(tp|ep|mtp|moetp|pp)(\d+)|(adp)", re.I)
SYNTAX = "write tp<N>[ep<N>][mtp<N>][pp<N>][adp], e.g. tp16ep8 or tp16ep16adp"


@dataclass(frozen=True)
class Layout:
    """A parallel layout of one serving instance.

    Example: ``Layout.parse("tp4,ep2,adp")`` → ``Layout(tp=4, ep=2, adp=True)``; its ``world_size`` is 4 and
    ``str()`` gives the canonical ``tp4ep2adp``.
    """

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

    @classmethod
    def parse(cls, text: str) -> Layout:
        """Parse ``tp16ep8adp``-style text (the module docstring has the syntax).

        Args:
            text: the layout as a user writes it.
        Returns:
            The Layout.
        Raises:
            PlanError: the text is not a layout, gives a size twice, or gives a size below 1 (one line, with the
                accepted syntax).
        Example:
            >>> Layout.parse("TP16EP16ADP")
            Layout(tp=16, ep=16, moe_tp=None, pp=1, adp=True)
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
            raise PlanError(f"{text!r} is not a layout", SYNTAX)
        if any(v < 1 for v in vals.values()):
            raise PlanError(f"layout {text!r}: sizes must be ≥ 1")
        return cls(vals["tp"], vals.get("ep"), vals.get("mtp"), vals.get("pp", 1), adp)

    @property
    def world_size(self) -> int:
        """Ranks (GPUs) of one instance: tp × pp."""
        return self.tp * self.pp

    def mapping(self, gpus_per_node: int = GPUS_PER_NODE, spec: ModelSpec | None = None) -> Mapping:
        """The TensorRT-LLM Mapping of this layout (raises PlanError for inconsistent sizes).

        Model-dependent checks (experts, heads, FP8 blocks) are ``Mapping.check``'s; the planner and the reference
        engine call it with what they know.
        """
        return Mapping(self.world_size, self.tp, self.pp, self.ep, self.moe_tp, self.adp, gpus_per_node, spec)

    def text(self, sep: str = "") -> str:
        """The canonical spelling with ``sep`` between tokens: ``tp16ep8`` (``sep=""``), ``tp4,ep2,adp``
        (``sep=","``). MoE sizes are written as the resolved expert-parallel size (omitted when 1)."""
        m = self.mapping()
        parts = [f"tp{self.tp}"] + ([f"pp{self.pp}"] if self.pp > 1 else []) + ([f"ep{m.ep}"] if m.ep > 1 else [])
        return sep.join(parts + (["adp"] if self.adp else []))

    @property
    def name(self) -> str:
        """Canonical spelling, e.g. ``tp16ep8`` or ``tp16ep16adp``."""
        return self.text()

    def __str__(self) -> str:
        try:
            return self.name
        except PlanError:  # sizes that do not resolve still print, so error messages can name them
            return f"tp{self.tp}ep{self.ep}mtp{self.moe_tp}pp{self.pp}{'adp' if self.adp else ''}"
