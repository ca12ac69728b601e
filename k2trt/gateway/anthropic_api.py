"""Anthropic Messages: request → ``Job`` (OpenAI terms, as vLLM maps it, plus Kimi's additions), and events →
the ``message`` object or its full event stream.

Mapping (kimi_formats.md §7):

- ``system`` (string or text blocks, joined without separator; Claude Code's billing-header block dropped) → one
  system message. ``tool_use`` blocks → assistant ``tool_calls`` (``input`` as JSON); ``tool_result`` blocks → tool
  messages (text parts joined with ``\\n``) carrying ``name`` = the matching ``tool_use`` name, so K2 sees
  ``<|im_system|>{function}<|im_middle|>``; ``thinking`` blocks become the assistant message's
  ``reasoning_content`` (joined without separator; their ``signature`` is not checked), which the thinking
  families' templates replay; ``redacted_thinking`` blocks are skipped.
- ``thinking``: ``{"type": "enabled", "budget_tokens": N}`` (N ≥ 1024 and below ``max_tokens``, Anthropic's rules)
  switches thinking on, ``{"type": "disabled"}`` off; absent, the model family's default applies (K2's thinking
  models think). The budget is validated but not enforced: the engine has no thinking budget, so ``max_tokens``
  alone bounds the output. A switch the model does not have is a 400.
- ``toolu_…`` IDs are rewritten to ``functions.{name}:{k}`` before rendering (by the backend) and mapped back in the
  answer; a call the model makes anew gets a fresh ``toolu_`` ID (K2's ``functions.x:0`` is not a valid Anthropic
  ID), which the next request maps to K2's form again.
- ``tools[].input_schema`` → ``function.parameters``; ``tool_choice`` ``auto``/``any``/``tool``/``none`` → ``auto``/
  ``required``/named/``none``; ``disable_parallel_tool_use`` keeps the first call only.
- ``temperature`` × 0.6 (Moonshot's mapping: Claude's default 1.0 becomes K2's recommended 0.6); a request without
  one gets the family's recommendation for the mode (0.6 instant, 1.0 thinking).
- Output: a ``thinking`` block (with a ``signature``: a SHA-256 digest of its text, so clients that require one
  have it — not a secret) before the text and ``tool_use`` blocks; streamed as ``content_block_start`` (thinking),
  ``thinking_delta`` events, a ``signature_delta``, ``content_block_stop``, as the SDK expects.
- Validation: unknown top-level fields, ``temperature``/``top_p`` not finite or outside [0, 1], ``top_k`` not an
  integer in [0, 2³¹−1], ``max_tokens`` not in [1, 2³¹−1], a bad ``thinking`` object, content blocks whose fields
  have the wrong types (``text``, ``tool_use`` ``id``/``name``/``input``, ``tool_result`` ``tool_use_id``), a tool or
  ``tool_choice.name`` outside Anthropic's ``^[a-zA-Z0-9_-]{1,64}$`` → 400 in Anthropic's shape (``{"type":
  "error", "error": {"type": "invalid_request_error"}}``); a ``model`` this gateway does not serve → 404
  ``not_found_error``. A temperature that vanishes after the ×0.6 (below 1e-5) is greedy.
- Stop reasons: ``tool_calls`` → ``tool_use``, ``length`` → ``max_tokens``, a matched ``stop_sequences`` entry →
  ``stop_sequence``, else ``end_turn``. ``tool_use.input`` is the parsed arguments; arguments that are not a JSON
  object (the model's mistake, passed through by the parser) give ``{}`` in the non-streaming answer, while a stream
  carries the raw text in its ``input_json_delta`` fragments.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import uuid
from typing import Any, AsyncIterator

from k2trt import sampling as rules
from k2trt.gateway.backend import dumps
from k2trt.gateway.errors import ApiError, bad_request
from k2trt.gateway.events import (Event, Finish, Job, Reasoning, Started, Text, ToolArgs, ToolChoice, ToolStart,
                                  check_model, collect, tool_name)
from k2trt.gateway.usage import anthropic_usage

log = logging.getLogger("k2trt.gateway")
_VALID_ID = re.compile(r"[A-Za-z0-9_-]+")
_BILLING = "x-anthropic-billing-header"


def _text_of(blocks: Any, where: str, sep: str) -> str:
    if blocks is None:
        return ""
    if isinstance(blocks, str):
        return blocks
    if not isinstance(blocks, list):
        raise bad_request(f"{where} must be a string or a list of text blocks")
    out = []
    for b in blocks:
        if not isinstance(b, dict) or b.get("type") != "text" or not isinstance(b.get("text"), str):
            kind = b.get("type") if isinstance(b, dict) else type(b).__name__
            raise bad_request(f"{where} has a {kind!r} block; only text blocks are supported here (Kimi K2 "
                              "Instruct reads text only)")
        out.append(b["text"])
    return sep.join(out)


def _system(raw: Any) -> str:
    if isinstance(raw, list):
        raw = [b for b in raw if not (isinstance(b, dict) and str(b.get("text", "")).startswith(_BILLING))]
    return _text_of(raw, "system", "")


def to_messages(system: Any, raw: Any) -> list[dict[str, Any]]:
    """Anthropic ``system`` + ``messages`` → OpenAI-style messages (module docstring)."""
    if not isinstance(raw, list) or not raw:
        raise bad_request("messages must be a non-empty list")
    out: list[dict[str, Any]] = []
    sys_text = _system(system)
    if sys_text:
        out.append({"role": "system", "content": sys_text})
    tool_names: dict[str, str] = {}
    for i, m in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(m, dict) or m.get("role") not in ("user", "assistant"):
            raise bad_request(f"{where}.role must be 'user' or 'assistant'")
        role, content = m["role"], m.get("content")
        if isinstance(content, str):
            out.append({"role": role, "content": content})
            continue
        if not isinstance(content, list):
            raise bad_request(f"{where}.content must be a string or a list of content blocks")
        texts: list[str] = []
        thoughts: list[str] = []
        calls: list[dict[str, Any]] = []
        for j, b in enumerate(content):
            kind = b.get("type") if isinstance(b, dict) else None
            bw = f"{where}.content[{j}]"
            if kind == "text":
                texts.append(_string(b, "text", bw))
            elif kind == "thinking" and role == "assistant":
                thoughts.append(_string(b, "thinking", bw))
            elif kind == "redacted_thinking":
                continue
            elif kind == "tool_use" and role == "assistant":
                cid, name, args = _string(b, "id", bw), _string(b, "name", bw), b.get("input")
                if not cid or not name:
                    raise bad_request(f"{bw} (tool_use) needs id and name")
                if not isinstance(args, (dict, type(None))):
                    raise bad_request(f"{bw}.input must be an object")
                tool_names[cid] = name
                calls.append({"id": cid, "type": "function",
                              "function": {"name": name, "arguments": json.dumps(args or {}, ensure_ascii=False)}})
            elif kind == "tool_result" and role == "user":
                if texts:  # text before a result keeps its place in the conversation
                    out.append({"role": "user", "content": "".join(texts)})
                    texts = []
                tid = _string(b, "tool_use_id", bw)
                if not tid:
                    raise bad_request(f"{bw} (tool_result) needs tool_use_id")
                msg = {"role": "tool", "tool_call_id": tid, "content": _text_of(b.get("content"), bw, "\n")}
                if tid in tool_names:
                    msg["name"] = tool_names[tid]
                out.append(msg)
            else:
                raise bad_request(f"{bw} has unsupported block type {kind!r} for a {role} message")
        if role == "assistant":
            msg = {"role": "assistant", "content": "".join(texts)}
            if "".join(thoughts):
                msg["reasoning_content"] = "".join(thoughts)
            if calls:
                msg["tool_calls"] = calls
            out.append(msg)
        elif texts:
            out.append({"role": "user", "content": "".join(texts)})
    return out


def _string(block: dict[str, Any], key: str, where: str) -> str:
    v = block.get(key)
    if v is None:
        return ""
    if not isinstance(v, str):
        raise bad_request(f"{where}.{key} must be a string, got {type(v).__name__}")
    return v


def _tools(raw: Any) -> list[dict[str, Any]] | None:
    if raw is None or raw == []:
        return None
    if not isinstance(raw, list):
        raise bad_request("tools must be a list")
    out = []
    for i, t in enumerate(raw):
        if not isinstance(t, dict) or not t.get("name"):
            raise bad_request(f"tools[{i}] needs a name")
        if t.get("type") not in (None, "custom"):
            raise bad_request(f"tools[{i}] is a server tool ({t['type']!r}); only client tools with input_schema "
                              "are supported")
        name = tool_name(t["name"], f"tools[{i}].name")
        schema = t.get("input_schema")
        if not isinstance(schema, dict):
            raise bad_request(f"tools[{i}] ({name}) needs an input_schema object")
        fn: dict[str, Any] = {"name": name}
        if t.get("description"):
            fn["description"] = _string(t, "description", f"tools[{i}]")
        fn["parameters"] = schema
        out.append({"type": "function", "function": fn})
    return out


def _tool_choice(raw: Any, tools: list[dict[str, Any]] | None) -> tuple[ToolChoice, bool]:
    if raw is None:
        return ToolChoice("auto"), True
    if not isinstance(raw, dict) or raw.get("type") not in ("auto", "any", "tool", "none"):
        raise bad_request('tool_choice must be {"type": "auto" | "any" | "tool" | "none"}')
    no_parallel = raw.get("disable_parallel_tool_use", False)
    if not isinstance(no_parallel, bool):
        raise bad_request("tool_choice.disable_parallel_tool_use must be true or false")
    kind = raw["type"]
    if kind in ("any", "tool") and not tools:
        raise bad_request(f"tool_choice {kind!r} needs tools")
    if kind == "tool":
        name = tool_name(raw.get("name"), "tool_choice.name")
        if name not in {t["function"]["name"] for t in tools or []}:
            raise bad_request(f"tool_choice names {name!r}, which is not in tools")
        return ToolChoice("named", name), not no_parallel
    return ToolChoice({"auto": "auto", "any": "required", "none": "none"}[kind]), not no_parallel


_FIELDS = frozenset({"model", "messages", "max_tokens", "system", "metadata", "stop_sequences", "stream",
                     "temperature", "top_p", "top_k", "tools", "tool_choice", "thinking", "service_tier"})
"""Top-level fields of a Messages request this gateway reads; anything else is a 400, as Anthropic answers."""
MIN_THINKING_BUDGET = 1024  # Anthropic's minimum budget_tokens


def _thinking(raw: Any, max_tokens: int) -> bool | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or raw.get("type") not in ("enabled", "disabled"):
        raise bad_request('thinking must be {"type": "enabled", "budget_tokens": N} or {"type": "disabled"}')
    if raw["type"] == "disabled":
        return False
    b = raw.get("budget_tokens")
    if isinstance(b, bool) or not isinstance(b, int) or not MIN_THINKING_BUDGET <= b < max_tokens:
        raise bad_request(f"thinking.budget_tokens must be an integer ≥ {MIN_THINKING_BUDGET} and below max_tokens "
                          f"({max_tokens}), got {b!r}")
    return True


def _sampling(body: dict[str, Any]) -> tuple[int, float | None, float | None, int | None]:
    """``(max_tokens, temperature, top_p, top_k)``, each finite, in range and representable."""
    if body.get("max_tokens") is None:
        raise bad_request("max_tokens is required (a positive integer)")
    try:
        max_tokens = rules.integer(body["max_tokens"], "max_tokens", 1, rules.INT32_MAX)
        t, p, k = (body.get(key) for key in ("temperature", "top_p", "top_k"))
        return (max_tokens, None if t is None else rules.number(t, "temperature", 0.0, 1.0),
                None if p is None else rules.number(p, "top_p", 0.0, 1.0),
                None if k is None else rules.integer(k, "top_k", 0, rules.INT32_MAX))
    except rules.SamplingValueError as e:
        raise bad_request(str(e)) from None


def parse_request(body: dict[str, Any], temperature_scale: float, *, models: frozenset[str] | None = None) -> Job:
    """Validate a /v1/messages body into a ``Job`` (mapping and rules in the module docstring).

    Args:
        body: the request body.
        temperature_scale: a request's own temperature is multiplied by this.
        models: the model ids served (``None``: any).

    Raises:
        ApiError: 400 naming the bad field; 404 for a model this gateway does not serve.
    """
    check_model(body, models)
    unknown = sorted(set(body) - _FIELDS)
    if unknown:
        raise bad_request(f"{unknown[0]}: Extra inputs are not permitted")
    max_tokens, t, top_p, top_k = _sampling(body)
    if not isinstance(body.get("metadata") or {}, dict):
        raise bad_request("metadata must be an object")
    stop = body.get("stop_sequences") or []
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise bad_request("stop_sequences must be a list of strings")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise bad_request("stream must be true or false")
    tools = _tools(body.get("tools"))
    choice, parallel = _tool_choice(body.get("tool_choice"), tools)
    return Job(messages=to_messages(body.get("system"), body.get("messages")), tools=tools, tool_choice=choice,
               temperature=None if t is None else rules.temperature(t * temperature_scale), top_p=top_p,
               top_k=top_k or None,
               max_tokens=max_tokens, stop=[s for s in stop if s], stream=stream, parallel_tool_calls=parallel,
               thinking=_thinking(body.get("thinking"), max_tokens))


def _stop_reason(f: Finish) -> str:
    if f.reason == "tool_calls":
        return "tool_use"
    if f.reason == "length":
        return "max_tokens"
    return "stop_sequence" if f.stop_sequence else "end_turn"


class _Ids:
    """Anthropic IDs for the calls of one response: valid client IDs kept, K2 IDs replaced by ``toolu_…``."""

    def __init__(self) -> None:
        self._m: dict[str, str] = {}

    def __call__(self, k2_id: str) -> str:
        if _VALID_ID.fullmatch(k2_id):
            return k2_id
        if k2_id not in self._m:
            self._m[k2_id] = f"toolu_{uuid.uuid4().hex[:24]}"
        return self._m[k2_id]


def _input(args: str, name: str) -> dict[str, Any]:
    try:
        obj = json.loads(args) if args.strip() else {}
    except ValueError:
        obj = None
    if not isinstance(obj, dict):
        log.warning("tool call %s: arguments are not a JSON object; returning input {}", name)
        return {}
    return obj


def response(events: list[Event], model: str) -> dict[str, Any]:
    """The non-streaming ``message`` object."""
    c = collect(events)
    ids = _Ids()
    content: list[dict[str, Any]] = []
    if c.reasoning:
        content.append({"type": "thinking", "thinking": c.reasoning, "signature": signature(c.reasoning)})
    if c.content or not (c.calls or c.reasoning):
        content.append({"type": "text", "text": c.content})
    for cid, name, args in c.calls:
        content.append({"type": "tool_use", "id": ids(cid), "name": name, "input": _input(args, name)})
    f = c.finish
    return {"id": f"msg_{uuid.uuid4().hex[:24]}", "type": "message", "role": "assistant", "model": model,
            "content": content, "stop_reason": _stop_reason(f), "stop_sequence": f.stop_sequence,
            "usage": anthropic_usage(f)}


def signature(thinking: str) -> str:
    """A thinking block's ``signature``: a digest of its text (integrity only; nothing secret)."""
    return base64.b64encode(hashlib.sha256(thinking.encode()).digest()).decode()


def _sse(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {dumps(data)}\n\n"


class _Blocks:
    """The content blocks of a streamed message: opens and closes them (a thinking block ends with its
    ``signature_delta``) and numbers them."""

    def __init__(self) -> None:
        self.index = -1
        self.kind: str | None = None
        self._thought: list[str] = []

    def close(self) -> list[str]:
        out = []
        if self.kind == "thinking":
            out.append(_sse("content_block_delta", {"type": "content_block_delta", "index": self.index, "delta": {
                "type": "signature_delta", "signature": signature("".join(self._thought))}}))
        if self.kind:
            out.append(_sse("content_block_stop", {"type": "content_block_stop", "index": self.index}))
        self.kind, self._thought = None, []
        return out

    def open(self, kind: str, block: dict[str, Any]) -> list[str]:
        out = self.close()
        self.index, self.kind = self.index + 1, kind
        return out + [_sse("content_block_start", {"type": "content_block_start", "index": self.index,
                                                   "content_block": block})]

    def delta(self, delta: dict[str, Any]) -> str:
        if delta["type"] == "thinking_delta":
            self._thought.append(delta["thinking"])
        return _sse("content_block_delta", {"type": "content_block_delta", "index": self.index, "delta": delta})


async def stream(events: AsyncIterator[Event], model: str) -> AsyncIterator[str]:
    """The Messages event stream: message_start, ping, content_block_start/delta/stop per block (thinking, text,
    tool_use), message_delta (stop reason, usage), message_stop. An ``ApiError`` after the start becomes an
    ``error`` event."""
    ids = _Ids()
    blocks = _Blocks()
    started = False

    def start(prompt_tokens: int | None) -> list[str]:
        msg = {"id": f"msg_{uuid.uuid4().hex[:24]}", "type": "message", "role": "assistant", "model": model,
               "content": [], "stop_reason": None, "stop_sequence": None,
               "usage": {"input_tokens": prompt_tokens or 0, "output_tokens": 0}}
        return [_sse("message_start", {"type": "message_start", "message": msg}), _sse("ping", {"type": "ping"})]

    try:
        async for ev in events:
            out: list[str] = []
            if not started:
                started = True
                out += start(ev.prompt_tokens if isinstance(ev, Started) else None)
            if isinstance(ev, Reasoning):
                if blocks.kind != "thinking":
                    out += blocks.open("thinking", {"type": "thinking", "thinking": "", "signature": ""})
                out.append(blocks.delta({"type": "thinking_delta", "thinking": ev.text}))
            elif isinstance(ev, Text):
                if blocks.kind != "text":
                    out += blocks.open("text", {"type": "text", "text": ""})
                out.append(blocks.delta({"type": "text_delta", "text": ev.text}))
            elif isinstance(ev, ToolStart):
                out += blocks.open("tool", {"type": "tool_use", "id": ids(ev.id), "name": ev.name, "input": {}})
            elif isinstance(ev, ToolArgs):
                out.append(blocks.delta({"type": "input_json_delta", "partial_json": ev.fragment}))
            elif isinstance(ev, Finish):
                out += blocks.close()
                out.append(_sse("message_delta", {"type": "message_delta",
                                                  "delta": {"stop_reason": _stop_reason(ev),
                                                            "stop_sequence": ev.stop_sequence},
                                                  "usage": anthropic_usage(ev)}))
                out.append(_sse("message_stop", {"type": "message_stop"}))
            for line in out:
                yield line
    except ApiError as e:
        if not started:
            for line in start(None):
                yield line
        yield e.sse("anthropic")
