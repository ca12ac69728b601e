"""A response's output path in render mode: engine text deltas → gateway events.

``OutputChain`` chains, per response: ``EndTrim`` (a stop token's text at the very end) → ``ReasoningStream``
(thinking families: ``<think>`` … ``</think>`` becomes reasoning events, k2trt.chat.reasoning) → ``ToolCallStream``
(the content's tool calls, k2trt.chat.toolcalls) → ``Shaper`` (the request's tool policy). Every stage is
incremental and linear, so a streamed response costs what a non-streamed one does, and both give the same events
for any split of the engine's text.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from k2trt.chat import reasoning as rs
from k2trt.chat import toolcalls as tc
from k2trt.chat import vocab
from k2trt.gateway.errors import ApiError
from k2trt.gateway.events import Event, FinishReason, Job, Reasoning, Text, ToolArgs, ToolStart

_END_MARKERS = (vocab.IM_END, vocab.EOS)


class EndTrim:
    """Drops a stop token's text (``<|im_end|>``, ``[EOS]``) that an engine may append at the very end.

    Only a marker that ends the output is removed: a suffix that could begin one is held back until the next
    delta shows it was ordinary text. Work per delta is bounded by the marker length.
    """

    def __init__(self) -> None:
        self._hold = ""

    def feed(self, delta: str) -> str:
        buf = self._hold + delta
        keep = 0
        for m in _END_MARKERS:
            for n in range(min(len(m), len(buf)), 0, -1):
                if buf.endswith(m[:n]):
                    keep = max(keep, n)
                    break
        self._hold = buf[len(buf) - keep:] if keep else ""
        return buf[:len(buf) - keep] if keep else buf

    def finish(self) -> str:
        held, self._hold = self._hold, ""
        return "" if held in _END_MARKERS else held


class Shaper:
    """Applies the request's tool policy to parser events: discards calls ``tool_choice`` rules out, renumbers
    the kept ones densely, maps IDs the client sent back to the client's spelling, and checks the result."""

    def __init__(self, job: Job, id_back: dict[str, str]) -> None:
        self.job = job
        self.id_back = id_back
        self._kept: dict[int, int] = {}  # parser index -> output index
        self.n_calls = 0
        self.discarded = 0
        self._args: dict[int, list[str]] = {}  # output index -> argument fragments
        self._truncated: set[int] = set()  # output indices whose output ended inside the arguments

    def _keep(self, ev: tc.ToolCallStart) -> bool:
        choice = self.job.tool_choice
        if choice.mode == "none":
            return False
        if choice.mode == "named" and ev.name != choice.name:
            return False
        if not self.job.parallel_tool_calls and self.n_calls >= 1:
            return False
        return True

    def on(self, ev: tc.Event) -> Event | None:
        if isinstance(ev, tc.ContentDelta):
            return Text(ev.text) if ev.text else None
        if isinstance(ev, tc.ToolCallStart):
            if not self._keep(ev):
                self.discarded += 1
                return None
            idx = self._kept[ev.index] = self.n_calls
            self.n_calls += 1
            self._args[idx] = []
            return ToolStart(idx, self.id_back.get(ev.id, ev.id), ev.name)
        if isinstance(ev, tc.ToolCallArgs) and ev.index in self._kept:
            self._args[self._kept[ev.index]].append(ev.fragment)
            return ToolArgs(self._kept[ev.index], ev.fragment) if ev.fragment else None
        if isinstance(ev, tc.ToolCallEnd) and ev.index in self._kept and not ev.complete:
            self._truncated.add(self._kept[ev.index])
        return None

    def outcomes(self, dropped: int = 0) -> tuple[tuple[str, int], ...]:
        """The tool-call parse outcomes of the response so far, as ``(outcome, count)`` pairs: each kept call
        ``parsed`` (its arguments are JSON), ``invalid_arguments`` or ``truncated``; calls ``tool_choice`` ruled
        out ``discarded``; and the parser's ``dropped`` calls (an undeclared tool under ``unknown_tools="drop"``,
        or no name)."""
        tally: Counter[str] = Counter()
        for idx, frags in self._args.items():
            if idx in self._truncated:
                tally["truncated"] += 1
                continue
            text = "".join(frags).strip()
            try:
                json.loads(text or "{}")
                tally["parsed"] += 1
            except ValueError:
                tally["invalid_arguments"] += 1
        tally["discarded"] += self.discarded
        tally["dropped"] += dropped
        return tuple((k, n) for k, n in tally.items() if n)

    def finish_reason(self, engine_reason: str) -> FinishReason:
        if engine_reason == "length":
            return "length"
        return "tool_calls" if self.n_calls else "stop"

    def check(self) -> None:
        """Raise when ``required``/named tool choice was not honoured."""
        choice = self.job.tool_choice
        if choice.mode in ("required", "named") and not self.n_calls:
            want = f"a call to {choice.name!r}" if choice.mode == "named" else "a tool call"
            raise ApiError(502, f"tool_choice demanded {want} but the model produced none (its output was text "
                           "or an undeclared tool); retry or relax tool_choice", "model_output")



class OutputChain:
    """One response's parsers, chained (module docstring).

    Args:
        job: the request (its tools and tool policy).
        id_back: K2 tool-call ID → the client's spelling (from ``normalize_tool_call_ids``).
        unknown_tools: ``keep`` or ``drop`` calls to undeclared tools.
        reasoning: a ``ReasoningStream`` for thinking families (``opened`` set from the prompt), else ``None``.
    """

    def __init__(self, job: Job, id_back: dict[str, str], *, unknown_tools: Any = "drop",
                 reasoning: rs.ReasoningStream | None = None) -> None:
        self.shaper = Shaper(job, id_back)
        self._trim = EndTrim()
        self._reasoning = reasoning
        self._tools = tc.ToolCallStream(job.tools if job.tool_choice.mode != "none" else None, unknown_tools)
        self._seen: list[str] = []
        self.reasoning_done: rs.ReasoningDone | None = None

    @property
    def text(self) -> str:
        """The engine's output so far (stop-token text trimmed; prefill not included)."""
        return "".join(self._seen)

    def tool_outcomes(self) -> tuple[tuple[str, int], ...]:
        """The response's tool-call parse outcomes (``Shaper.outcomes``, with the parser's dropped calls)."""
        return self.shaper.outcomes(self._tools.dropped)

    def prefill(self, text: str) -> list[Event]:
        """Parse text the prompt was prefilled with (a tool-choice prefix): it is part of the parse, not of the
        output."""
        return self._parse(text) if text else []

    def feed(self, raw: str) -> list[Event]:
        """The engine's next text delta → events."""
        delta = self._trim.feed(raw)
        if not delta:
            return []
        self._seen.append(delta)
        return self._parse(delta)

    def finish(self, engine_reason: str) -> list[Event]:
        """End of output: the last events (no ``Finish``; the backend adds it with the usage)."""
        tail = self._trim.finish()
        self._seen.append(tail)
        out = self._parse(tail) if tail else []
        if self._reasoning is not None:
            for ev in self._reasoning.finish():
                if isinstance(ev, rs.ReasoningDone):
                    self.reasoning_done = ev
                else:
                    out += self._route(ev)
        out += self._shape(self._tools.finish(engine_reason))
        return out

    def _parse(self, text: str) -> list[Event]:
        if self._reasoning is None:
            return self._shape(self._tools.feed(text))
        out: list[Event] = []
        for ev in self._reasoning.feed(text):
            out += self._route(ev)
        return out

    def _route(self, ev: rs.Event) -> list[Event]:
        if isinstance(ev, rs.ReasoningDelta):
            return [Reasoning(ev.text)] if ev.text else []
        if isinstance(ev, tc.ContentDelta):
            return self._shape(self._tools.feed(ev.text))
        return []

    def _shape(self, events: list[tc.Event]) -> list[Event]:
        out = []
        for ev in events:
            shaped = self.shaper.on(ev)
            if shaped is not None:
                out.append(shaped)
        return out
