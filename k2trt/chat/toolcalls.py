"""K2 tool-call parsing: one incremental parser for streaming and non-streaming output.

Grammar (kimi_formats.md §5.1)::

    [text]<|tool_calls_section_begin|>(<|tool_call_begin|>{id}<|tool_call_argument_begin|>{json}<|tool_call_end|>)+
    <|tool_calls_section_end|>          id = functions.{name}:{idx}, or a deviation (see below)

``ToolCallStream.feed(delta)`` runs a four-state machine (content → section → call id → arguments) over each
delta once. Only a suffix that could be the start of a marker (< 28 characters) and whitespace that could precede
``<|tool_call_end|>`` are held back, so total work is linear in the output length: nothing is re-scanned per
delta. ``parse_tool_calls(text)`` is ``feed(text)`` + ``finish()``, so both modes give identical results for any
split of the text (a unit test splits every example at every position).

Decisions where peers disagree (§5.6) and on the edge cases of §5.5:

- **Content after a section** is kept as content (lossless; a second section after it is parsed too). Peers drop
  it in non-streaming mode; K2 ends its turn right after the section, so this only matters for malformed output.
- **Empty content** is ``""`` here; the HTTP layer decides the wire form (OpenAI: ``null`` when there are calls).
- **Undeclared tools**: ``unknown_tools="keep"`` (default) returns them; ``"drop"`` discards them and their
  arguments entirely (no events; dense indices skip them). Without a ``tools`` list nothing is dropped.
- **Malformed JSON** is passed through byte for byte (``ToolCall.arguments_json()`` returns ``None``); the
  parser never repairs arguments, so streamed fragments always concatenate to the final arguments.
- **Name from ID**: strip whitespace and an optional ``functions.`` prefix, then the ``:{digits}`` suffix; dots,
  hyphens and digits in the name are kept (``functions.api.v2.search-web:3`` → ``api.v2.search-web``), as SGLang,
  TensorRT-LLM and sgl-router do; ``search:0`` (no prefix) gives ``search``. Only when that name is not declared
  are deviations recovered against the declared tools: the last dot segment, sanitised ``functions_{name}_{n}`` /
  ``functionsexec5`` forms, and — with exactly one declared tool — a bare counter or client ID (``3``, ``call_3``).
- **IDs** are returned as the model wrote them (whitespace stripped). **OpenAI ``index``** is the dense 0-based
  position in this response, never the ``:N`` suffix.
- **Arguments** lose leading and trailing whitespace (as the official regex's ``\\s*``); ``<|tool_call_begin|>``
  or a section end inside the arguments ends the call (MTP bundles, adjacent calls without ``<|tool_call_end|>``).
- **Truncated output** (the output ends inside a call's arguments, typically ``finish("length")``): a call whose
  header was complete is returned with its partial arguments and ``complete=False`` (its start and fragments were
  already streamed); a call cut inside its ID is dropped. A held-back partial marker at the end is released as
  ordinary text.
- **Missing section end** is tolerated; ``<|tool_call_begin|>`` outside a section opens one; the singular
  ``<|tool_call_section_begin|>``/``…_end|>`` variant is accepted; stray markers and non-whitespace noise between
  calls never leak into content (text between a section begin and ``<|tool_call_argument_begin|>`` without a
  ``<|tool_call_begin|>`` is taken as the ID). A call with a header but no argument begin gets ``""`` arguments.
- **finish_reason**: ``"tool_calls"`` when a call was returned and the engine stopped normally; ``"length"`` stays
  ``"length"`` even with calls.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Literal, Union

from k2trt.chat import vocab

UnknownTools = Literal["keep", "drop"]

# marker -> kind; both spellings of the section markers (llama.cpp PR #17376 saw the singular one)
_MARKERS: dict[str, str] = {
    vocab.SECTION_BEGIN: "SB", "<|tool_call_section_begin|>": "SB",
    vocab.SECTION_END: "SE", "<|tool_call_section_end|>": "SE",
    vocab.CALL_BEGIN: "CB", vocab.ARG_BEGIN: "AB", vocab.CALL_END: "CE",
}
_MAX_ID = 512  # an ID longer than this is garbage; keep only its start
_ID_RE = re.compile(r"(?:functions\.)?(?P<name>.+?):(?P<idx>\d+)", re.S)

_CONTENT, _SECTION, _ID, _ARGS = range(4)


def _marker_at(buf: str, i: int, markers: Iterable[str] = _MARKERS) -> tuple[str | None, bool]:
    """(the full marker at ``buf[i]`` or None, whether ``buf[i:]`` is a proper prefix of some marker).

    Shared with the reasoning parser (``k2trt.chat.reasoning``), which watches its own marker set."""
    rest = len(buf) - i
    partial = False
    for m in markers:
        if buf.startswith(m, i):
            return m, False
        if rest < len(m) and m.startswith(buf[i:]):
            partial = True
    return None, partial


@dataclass(frozen=True)
class ContentDelta:
    """Plain assistant text."""
    text: str


@dataclass(frozen=True)
class ToolCallStart:
    """A new tool call: sent once, before any of its arguments."""
    index: int
    """Dense 0-based position of the call in this response (the OpenAI ``index``)."""
    id: str
    """The ID as the model wrote it, e.g. ``functions.get_weather:0``."""
    name: str


@dataclass(frozen=True)
class ToolCallArgs:
    """A fragment of the arguments of call ``index``; the fragments concatenate to ``ToolCall.arguments``."""
    index: int
    fragment: str


@dataclass(frozen=True)
class ToolCallEnd:
    """Call ``index`` is over; ``complete`` is false when the output ended inside its arguments."""
    index: int
    complete: bool


@dataclass
class ToolCall:
    """A parsed tool call."""
    index: int
    id: str
    name: str
    arguments: str = ""
    """The raw argument text (JSON when the model behaved)."""
    complete: bool = True
    """False when the output ended inside the arguments (truncated, e.g. by ``max_tokens``)."""

    def arguments_json(self) -> Any:
        """The arguments parsed as JSON, or ``None`` when they are not valid JSON (``""`` gives ``{}``)."""
        if not self.arguments.strip():
            return {}
        try:
            return json.loads(self.arguments)
        except ValueError:
            return None

    def to_openai(self) -> dict[str, Any]:
        """The OpenAI ``tool_calls`` entry."""
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@dataclass(frozen=True)
class StreamDone:
    """The end of the stream, with the whole result."""
    finish_reason: str
    content: str
    calls: tuple[ToolCall, ...] = field(default_factory=tuple)


Event = Union[ContentDelta, ToolCallStart, ToolCallArgs, ToolCallEnd, StreamDone]


def tool_names(tools: Iterable[Any] | None) -> frozenset[str] | None:
    """Declared tool names from OpenAI tools (``{"function": {"name"}}``), Anthropic tools (``{"name"}``) or
    plain strings; ``None`` when ``tools`` is ``None``."""
    if tools is None:
        return None
    names = set()
    for t in tools:
        if isinstance(t, str):
            names.add(t)
        elif isinstance(t, dict):
            fn = t.get("function")
            n = fn.get("name") if isinstance(fn, dict) else t.get("name")
            if n:
                names.add(str(n))
    return frozenset(names)


def name_from_id(call_id: str, declared: frozenset[str] | None = None) -> str:
    """The function name encoded in a K2 tool-call ID (see the module docstring for the rules).

    Example:
        >>> name_from_id(" functions.my.ns.do-it:12\\n")
        'my.ns.do-it'
        >>> name_from_id("functions_get_weather_1", frozenset({"get_weather"}))
        'get_weather'
    """
    s = call_id.strip()
    m = _ID_RE.fullmatch(s)
    name = m["name"].strip() if m else s.removeprefix("functions.")
    if not declared or name in declared:
        return name
    core = re.sub(r"^functions[._]?", "", s)
    candidates = [name.rsplit(".", 1)[-1], core, re.sub(r"[_.:\-]?\d+$", "", core)]
    for cand in candidates:
        if cand in declared:
            return cand
    if len(declared) == 1 and (m is None or re.fullmatch(r"[\w\-]*\d+|call_\w+|toolu_\w+|[0-9a-fA-F\-]{32,36}",
                                                        s)):
        return next(iter(declared))  # a bare counter or client ID: the only declared tool
    return name


class ToolCallStream:
    """Incremental K2 tool-call parser producing OpenAI-style events.

    Args:
        tools: the request's declared tools (for ``unknown_tools`` and ID recovery); ``None`` = no checks.
        unknown_tools: ``"keep"`` returns calls to undeclared tools, ``"drop"`` discards them.

    Example:
        >>> s = ToolCallStream()
        >>> evs = s.feed("Hi<|tool_calls_section_begin|><|tool_call_begin|>functions.f:0<|tool_call_argu")
        >>> evs += s.feed('ment_begin|>{"a": 1}<|tool_call_end|><|tool_calls_section_end|>') + s.finish()
        >>> [type(e).__name__ for e in evs]
        ['ContentDelta', 'ToolCallStart', 'ToolCallArgs', 'ToolCallEnd', 'StreamDone']
    """

    def __init__(self, tools: Iterable[Any] | None = None, unknown_tools: UnknownTools = "keep") -> None:
        if unknown_tools not in ("keep", "drop"):
            raise ValueError(f"unknown_tools must be 'keep' or 'drop', not {unknown_tools!r}")
        self._declared = tool_names(tools)
        self._drop_unknown = unknown_tools == "drop" and self._declared is not None
        self._state = _CONTENT
        self._hold = ""  # a suffix that may be the start of a marker
        self._id: list[str] = []
        self._id_len = 0
        self._ws = ""  # whitespace inside arguments that may turn out to be trailing
        self._args_started = False
        self._call: ToolCall | None = None  # the call receiving arguments
        self._skip = False  # the current call is dropped: swallow its arguments
        self._content: list[str] = []
        self._args: list[str] = []
        self._calls: list[ToolCall] = []
        self._out: list[Event] = []
        self._done = False
        self.dropped = 0
        """Calls dropped so far: to an undeclared tool under ``unknown_tools="drop"``, or with no name."""

    # --- public -------------------------------------------------------------------------------------------
    def feed(self, delta: str) -> list[Event]:
        """Parse the next piece of model output; return the events it completes (possibly none)."""
        if self._done:
            raise RuntimeError("ToolCallStream.feed() after finish()")
        if not delta:
            return []
        buf = self._hold + delta if self._hold else delta
        self._hold = ""
        pos, n = 0, len(buf)
        while pos < n:
            i = buf.find("<", pos)
            while i != -1:
                if i + 1 < n and buf[i + 1] != "|":  # fast path: '<' not followed by '|' is text
                    i = buf.find("<", i + 1)
                    continue
                marker, partial = _marker_at(buf, i)
                if marker or partial:
                    break
                i = buf.find("<", i + 1)
            if i == -1:
                self._text(buf[pos:])
                break
            if i > pos:
                self._text(buf[pos:i])
            if marker is None:  # a possible marker runs past the end of this delta: hold it back
                self._hold = buf[i:]
                break
            self._marker(_MARKERS[marker])
            pos = i + len(marker)
        out, self._out = self._out, []
        return out

    def finish(self, reason: str = "stop") -> list[Event]:
        """End of output (``reason`` is the engine's finish reason); closes any open call, returns the last
        events ending with ``StreamDone``."""
        if self._done:
            raise RuntimeError("ToolCallStream.finish() called twice")
        if self._hold:  # a partial marker at the very end is ordinary text
            held, self._hold = self._hold, ""
            self._text(held)
        if self._state == _ARGS:
            self._end_call(complete=False)
        self._state = _CONTENT
        self._done = True
        calls = tuple(self._calls)
        fr = "tool_calls" if calls and reason == "stop" else reason
        self._out.append(StreamDone(fr, "".join(self._content), calls))
        out, self._out = self._out, []
        return out

    @property
    def calls(self) -> list[ToolCall]:
        """Calls started so far (arguments are filled in at ``ToolCallEnd``)."""
        return list(self._calls)

    # --- scanning -----------------------------------------------------------------------------------------
    def _text(self, t: str) -> None:
        st = self._state
        if st == _CONTENT:
            self._emit_content(t)
        elif st == _ARGS:
            self._args_text(t)
        elif self._id_len < _MAX_ID:  # _ID, and _SECTION noise (taken as the ID if an argument begin follows)
            t = t[:_MAX_ID - self._id_len]
            self._id.append(t)
            self._id_len += len(t)

    def _marker(self, kind: str) -> None:
        st = self._state
        if kind == "SB":
            if st == _CONTENT:
                self._enter_section()
            return  # a repeated section begin inside a section is noise
        if kind == "CB":
            if st == _ARGS:  # the next call begins: the model ended this one without <|tool_call_end|>
                self._end_call(complete=True)
            self._enter_id()
        elif kind == "AB":
            if st in (_ID, _SECTION):
                self._start_call()
        elif kind == "CE":
            if st == _ARGS:
                self._end_call(complete=True)
                self._enter_section()
            elif st == _ID:  # header without an argument begin: a call with no arguments
                if self._start_call():
                    self._end_call(complete=True)
                self._skip = False
                self._enter_section()
            elif st == _SECTION:
                self._enter_section()  # forget noise before a stray call end
        elif kind == "SE":
            if st == _ARGS:
                self._end_call(complete=True)
            self._enter_section()  # clears a partial header
            self._state = _CONTENT

    # --- state changes ------------------------------------------------------------------------------------
    def _enter_section(self) -> None:
        self._state = _SECTION
        self._id.clear()
        self._id_len = 0

    def _enter_id(self) -> None:
        self._state = _ID
        self._id.clear()
        self._id_len = 0

    def _start_call(self) -> bool:
        """Header complete: decide the name, emit the start. Returns whether the call is kept."""
        raw = "".join(self._id).strip()
        self._id.clear()
        self._id_len = 0
        self._state = _ARGS
        self._args_started = False
        self._ws = ""
        self._args = []
        name = name_from_id(raw, self._declared) if raw else ""
        if not name or (self._drop_unknown and name not in (self._declared or ())):
            self._skip, self._call = True, None
            self.dropped += 1
            return False
        self._skip = False
        self._call = ToolCall(len(self._calls), raw, name)
        self._calls.append(self._call)
        self._out.append(ToolCallStart(self._call.index, raw, name))
        return True

    def _end_call(self, complete: bool) -> None:
        call = self._call
        if call is not None and not self._skip:
            call.arguments = "".join(self._args)
            call.complete = complete
            self._out.append(ToolCallEnd(call.index, complete))
        self._call, self._skip, self._ws, self._args = None, False, "", []
        self._state = _SECTION

    # --- emission -----------------------------------------------------------------------------------------
    def _emit_content(self, t: str) -> None:
        self._content.append(t)
        last = self._out[-1] if self._out else None
        if isinstance(last, ContentDelta):
            self._out[-1] = ContentDelta(last.text + t)
        else:
            self._out.append(ContentDelta(t))

    def _args_text(self, t: str) -> None:
        if self._skip:
            return
        if not self._args_started:
            t = t.lstrip()
            if not t:
                return
            self._args_started = True
        body = t.rstrip()
        if not body:  # whitespace only: maybe trailing, hold it
            self._ws += t
            return
        frag = self._ws + body if self._ws else body
        self._ws = t[len(body):]
        self._args.append(frag)
        call = self._call
        assert call is not None
        last = self._out[-1] if self._out else None
        if isinstance(last, ToolCallArgs) and last.index == call.index:
            self._out[-1] = ToolCallArgs(call.index, last.fragment + frag)
        else:
            self._out.append(ToolCallArgs(call.index, frag))


def parse_tool_calls(text: str, tools: Iterable[Any] | None = None, *,
                     unknown_tools: UnknownTools = "keep") -> tuple[str, list[ToolCall]]:
    """Parse a complete K2 completion into content and tool calls (the streaming parser fed in one piece).

    Args:
        text: the model output after ``<|im_assistant|>assistant<|im_middle|>`` (tool-call markers included).
        tools: the declared tools (OpenAI or Anthropic shape, or names), for ``unknown_tools`` and ID recovery.
        unknown_tools: ``"keep"`` or ``"drop"`` calls to tools not in ``tools``.

    Returns:
        ``(content, calls)``: content is ``""`` when there is none; calls are in order with dense indices.

    Example:
        >>> content, calls = parse_tool_calls(
        ...     'Sure.<|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0'
        ...     '<|tool_call_argument_begin|>{"city": "Paris"}<|tool_call_end|><|tool_calls_section_end|>')
        >>> content, calls[0].name, calls[0].arguments_json()
        ('Sure.', 'get_weather', {'city': 'Paris'})
    """
    s = ToolCallStream(tools, unknown_tools)
    s.feed(text)
    done = s.finish("stop")[-1]
    assert isinstance(done, StreamDone)
    return done.content, list(done.calls)
