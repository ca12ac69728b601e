"""The gateway's internal vocabulary: a ``Job`` (what either API asked for, in OpenAI terms) and the output
events a backend produces for it. Both API front ends turn the same events into their own wire format.

Also the request rules both APIs share: ``TOOL_NAME`` (the tool-name pattern both document) and ``check_model``
(the model ids this gateway answers to)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal, Union

from k2trt.chat import reasoning as rs
from k2trt.chat import toolcalls as tc
from k2trt.gateway.errors import ApiError, bad_request

FinishReason = Literal["stop", "length", "tool_calls"]

TOOL_NAME = re.compile(r"[a-zA-Z0-9_-]{1,64}")
"""A tool's name, as both APIs document it: OpenAI's function name ("a-z, A-Z, 0-9, underscores and dashes, at most
64", openai-python ``types/shared_params/function_definition.py``) and Anthropic's ``^[a-zA-Z0-9_-]{1,64}$``
(platform.claude.com, "Define tools"). It keeps a name from ever carrying K2's markers into a prompt."""


def tool_name(name: Any, where: str, param: str | None = None) -> str:
    """``name`` if it is a string matching ``TOOL_NAME``, else a 400 naming ``where``."""
    if not isinstance(name, str) or not TOOL_NAME.fullmatch(name):
        shown = repr(name) if len(repr(name)) <= 80 else repr(name)[:77] + "..."
        raise bad_request(f"{where} {shown} is not a valid tool name: use 1 to 64 of a-z, A-Z, 0-9, '_' and '-'",
                          param)
    return name


def check_model(body: dict[str, Any], models: frozenset[str] | None) -> None:
    """Refuse a ``model`` this gateway does not serve (404 ``model_not_found``); ``models`` None accepts any.
    A request without ``model`` is for the served model."""
    model = body.get("model")
    if model is None:
        return
    if not isinstance(model, str):
        raise bad_request(f"model must be a string, got {type(model).__name__}", "model")
    if models is not None and model not in models:
        shown = repr(model) if len(model) <= 80 else repr(model[:77] + "...")
        raise ApiError(404, f"The model {shown} does not exist: this gateway serves {', '.join(sorted(models))} "
                       "(GET /v1/models lists them)", "model_not_found", "model")


@dataclass(frozen=True)
class ToolChoice:
    """``auto`` (the model decides), ``none`` (tools not declared, calls discarded), ``required`` (at least one
    call) or ``named`` (a call to ``name``)."""

    mode: Literal["auto", "none", "required", "named"] = "auto"
    name: str | None = None


@dataclass
class Job:
    """One chat request, whichever API it came in through."""

    messages: list[dict[str, Any]]
    """OpenAI-style messages; assistant turns may carry ``reasoning_content`` (earlier thinking to replay)."""
    tools: list[dict[str, Any]] | None = None
    tool_choice: ToolChoice = field(default_factory=ToolChoice)
    temperature: float | None = None
    """``None``: the model family's recommended value for the thinking mode (``k2trt.chat.families``)."""
    top_p: float | None = None
    """``None``: the family's recommended value, if it has one."""
    top_k: int | None = None
    max_tokens: int | None = None
    stop: list[str] = field(default_factory=list)
    stream: bool = False
    parallel_tool_calls: bool = True
    ignore_eos: bool = False
    """Generate exactly max_tokens (benchmarks with a fixed output length); the engine ignores stop tokens."""
    thinking: bool | None = None
    """Thinking on/off for this request; ``None``: the family's default."""
    preserve_thinking: bool | None = None
    """Keep every earlier turn's reasoning in the prompt (K2.6's template switch); ``None``: the family's default."""
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    seed: int | None = None

    @property
    def tool_names(self) -> set[str]:
        return {t["function"]["name"] for t in self.tools or []}


@dataclass(frozen=True)
class Started:
    """The engine accepted the request and began answering (sent before any output event when streaming)."""
    prompt_tokens: int | None


# Output text, reasoning and tool-call events are the parsers' own (k2trt.chat.reasoning, k2trt.chat.toolcalls); the
# gateway passes on the calls the request's tool_choice keeps, re-indexed densely (``index`` is never the model's
# ``:N``), with IDs mapped back to the client's spelling (output.Shaper).
Text = tc.ContentDelta
Reasoning = rs.ReasoningDelta
ToolStart = tc.ToolCallStart
ToolArgs = tc.ToolCallArgs


@dataclass(frozen=True)
class Finish:
    """The end of a response and its token accounting (``k2trt.gateway.usage`` computes it and writes each API's
    usage object from it)."""
    reason: FinishReason
    prompt_tokens: int
    """Tokens of the prompt the engine received (the rendered conversation and any tool-choice prefill)."""
    completion_tokens: int
    stop_sequence: str | None = None
    reasoning_tokens: int = 0
    """Completion tokens spent on reasoning (think markers included)."""
    cached_tokens: int = 0
    """Prompt tokens the engine served from its prefix cache, when it reports them."""
    tool_calls: tuple[tuple[str, int], ...] = ()
    """Tool-call parse outcomes of the response as ``(outcome, count)`` pairs (``Shaper.outcomes``)."""


Event = Union[Started, Text, Reasoning, ToolStart, ToolArgs, Finish]


@dataclass
class Collected:
    """A whole response assembled from events (the non-streaming shape)."""

    content: str
    calls: list[tuple[str, str, str]]
    """``(id, name, arguments)`` in index order."""
    finish: Finish
    reasoning: str = ""


def collect(events: list[Event]) -> Collected:
    """Fold a complete event list into content, reasoning, calls and the finish event."""
    text: list[str] = []
    thought: list[str] = []
    calls: dict[int, list[str]] = {}
    finish: Finish | None = None
    for ev in events:
        if isinstance(ev, Reasoning):
            thought.append(ev.text)
        elif isinstance(ev, Text):
            text.append(ev.text)
        elif isinstance(ev, ToolStart):
            calls[ev.index] = [ev.id, ev.name, ""]
        elif isinstance(ev, ToolArgs):
            calls[ev.index][2] += ev.fragment
        elif isinstance(ev, Finish):
            finish = ev
    assert finish is not None, "a backend always ends with Finish"
    return Collected("".join(text), [(c[0], c[1], c[2]) for _, c in sorted(calls.items())], finish,
                     "".join(thought))
