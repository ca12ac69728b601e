"""Anthropic Messages: request → ``Job`` (OpenAI terms, as vLLM maps it, plus Kimi's additions), and events →
the ``message`` object or its full event stream.

Mapping (kimi_formats.md §7):

- ``system`` (string or text blocks, joined without separator; Claude Code's billing-header block dropped) → one
  system message. ``tool_use`` blocks → assistant ``tool_calls`` (``input`` as JSON); ``tool_result`` blocks → tool
  messages (text parts joined with ``\\n``) carrying ``name`` = the matching ``tool_use`` name, so K2 sees
  ``<|im_system|>{function}<|im_middle|>``; ``thinking`` blocks are skipped (K2-Instruct has no thinking channel).
- ``toolu_…`` IDs are rewritten to ``functions.{name}:{k}`` before rendering (by the backend) and mapped back in the
  answer; a call the model makes anew gets a fresh ``toolu_`` ID (K2's ``functions.x:0`` is not a valid Anthropic
  ID), which the next request maps to K2's form again.
- ``tools[].input_schema`` → ``function.parameters``; ``tool_choice`` ``auto``/``any``/``tool``/``none`` → ``auto``/
  ``required``/named/``none``; ``disable_parallel_tool_use`` keeps the first call only.
- ``temperature`` × 0.6 (Moonshot's mapping: Claude's default 1.0 becomes K2's recommended 0.6).
- Stop reasons: ``tool_calls`` → ``tool_use``, ``length`` → ``max_tokens``, a matched ``stop_sequences`` entry →
  ``stop_sequence``, else ``end_turn``. ``tool_use.input`` is the parsed arguments; arguments that are not a JSON
  object (the model's mistake, passed through by the parser) give ``{}`` in the non-streaming answer, while a stream
  carries the raw text in its ``input_json_delta`` fragments.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from typing import Any, AsyncIterator

from k2trt.gateway.backend import dumps
from k2trt.gateway.errors import ApiError, bad_request
from k2trt.gateway.events import Event, Finish, Job, Started, Text, ToolArgs, ToolChoice, ToolStart, collect

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
        calls: list[dict[str, Any]] = []
        for j, b in enumerate(content):
            kind = b.get("type") if isinstance(b, dict) else None
            bw = f"{where}.content[{j}]"
            if kind == "text":
                texts.append(str(b.get("text") or ""))
            elif kind in ("thinking", "redacted_thinking"):
                continue
            elif kind == "tool_use" and role == "assistant":
                if not b.get("id") or not b.get("name"):
                    raise bad_request(f"{bw} (tool_use) needs id and name")
                tool_names[str(b["id"])] = str(b["name"])
                calls.append({"id": str(b["id"]), "type": "function",
                              "function": {"name": str(b["name"]),
                                           "arguments": json.dumps(b.get("input") or {}, ensure_ascii=False)}})
            elif kind == "tool_result" and role == "user":
                if texts:  # text before a result keeps its place in the conversation
                    out.append({"role": "user", "content": "".join(texts)})
                    texts = []
                tid = str(b.get("tool_use_id") or "")
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
            if calls:
                msg["tool_calls"] = calls
            out.append(msg)
        elif texts:
            out.append({"role": "user", "content": "".join(texts)})
    return out


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
            raise bad_request(f"tools[{i}] is a server tool ({t['type']}); only client tools with input_schema "
                              "are supported")
        schema = t.get("input_schema")
        if not isinstance(schema, dict):
            raise bad_request(f"tools[{i}] ({t['name']}) needs an input_schema object")
        fn: dict[str, Any] = {"name": str(t["name"])}
        if t.get("description"):
            fn["description"] = str(t["description"])
        fn["parameters"] = schema
        out.append({"type": "function", "function": fn})
    return out


def _tool_choice(raw: Any, tools: list[dict[str, Any]] | None) -> tuple[ToolChoice, bool]:
    if raw is None:
        return ToolChoice("auto"), True
    if not isinstance(raw, dict) or raw.get("type") not in ("auto", "any", "tool", "none"):
        raise bad_request('tool_choice must be {"type": "auto" | "any" | "tool" | "none"}')
    parallel = not raw.get("disable_parallel_tool_use", False)
    kind = raw["type"]
    if kind in ("any", "tool") and not tools:
        raise bad_request(f"tool_choice {kind!r} needs tools")
    if kind == "tool":
        name = raw.get("name")
        if name not in {t["function"]["name"] for t in tools or []}:
            raise bad_request(f"tool_choice names {name!r}, which is not in tools")
        return ToolChoice("named", str(name)), parallel
    return ToolChoice({"auto": "auto", "any": "required", "none": "none"}[kind]), parallel


def parse_request(body: dict[str, Any], temperature_scale: float) -> Job:
    """Validate a /v1/messages body into a ``Job``.

    Raises:
        ApiError: 400 naming the bad field.
    """
    max_tokens = body.get("max_tokens")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise bad_request(f"max_tokens is required and must be a positive integer, got {max_tokens!r}")
    t = body.get("temperature", 1.0)
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 <= t <= 1:
        raise bad_request(f"temperature must be a number in [0, 1], got {t!r}")
    top_p, top_k = body.get("top_p"), body.get("top_k")
    if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 <= top_p <= 1):
        raise bad_request(f"top_p must be a number in [0, 1], got {top_p!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0):
        raise bad_request(f"top_k must be a non-negative integer, got {top_k!r}")
    stop = body.get("stop_sequences") or []
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise bad_request("stop_sequences must be a list of strings")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise bad_request("stream must be true or false")
    tools = _tools(body.get("tools"))
    choice, parallel = _tool_choice(body.get("tool_choice"), tools)
    return Job(messages=to_messages(body.get("system"), body.get("messages")), tools=tools, tool_choice=choice,
               temperature=float(t) * temperature_scale, top_p=top_p, top_k=top_k or None, max_tokens=max_tokens,
               stop=[s for s in stop if s], stream=stream, parallel_tool_calls=parallel)


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
    if c.content or not c.calls:
        content.append({"type": "text", "text": c.content})
    for cid, name, args in c.calls:
        content.append({"type": "tool_use", "id": ids(cid), "name": name, "input": _input(args, name)})
    f = c.finish
    return {"id": f"msg_{uuid.uuid4().hex[:24]}", "type": "message", "role": "assistant", "model": model,
            "content": content, "stop_reason": _stop_reason(f), "stop_sequence": f.stop_sequence,
            "usage": {"input_tokens": f.prompt_tokens, "output_tokens": f.completion_tokens}}


def _sse(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {dumps(data)}\n\n"


async def stream(events: AsyncIterator[Event], model: str) -> AsyncIterator[str]:
    """The Messages event stream: message_start, ping, content_block_start/delta/stop per block, message_delta
    (stop reason, usage), message_stop. An ``ApiError`` after the start becomes an ``error`` event."""
    ids = _Ids()
    block, open_kind = -1, None
    started = False

    def start(prompt_tokens: int | None) -> list[str]:
        msg = {"id": f"msg_{uuid.uuid4().hex[:24]}", "type": "message", "role": "assistant", "model": model,
               "content": [], "stop_reason": None, "stop_sequence": None,
               "usage": {"input_tokens": prompt_tokens or 0, "output_tokens": 0}}
        return [_sse("message_start", {"type": "message_start", "message": msg}), _sse("ping", {"type": "ping"})]

    try:
        async for ev in events:
            if not started:
                started = True
                for line in start(ev.prompt_tokens if isinstance(ev, Started) else None):
                    yield line
            if isinstance(ev, Text):
                if open_kind != "text":
                    if open_kind:
                        yield _sse("content_block_stop", {"type": "content_block_stop", "index": block})
                    block, open_kind = block + 1, "text"
                    yield _sse("content_block_start", {"type": "content_block_start", "index": block,
                                                       "content_block": {"type": "text", "text": ""}})
                yield _sse("content_block_delta", {"type": "content_block_delta", "index": block,
                                                   "delta": {"type": "text_delta", "text": ev.text}})
            elif isinstance(ev, ToolStart):
                if open_kind:
                    yield _sse("content_block_stop", {"type": "content_block_stop", "index": block})
                block, open_kind = block + 1, "tool"
                yield _sse("content_block_start", {"type": "content_block_start", "index": block,
                                                   "content_block": {"type": "tool_use", "id": ids(ev.id),
                                                                     "name": ev.name, "input": {}}})
            elif isinstance(ev, ToolArgs):
                yield _sse("content_block_delta", {"type": "content_block_delta", "index": block,
                                                   "delta": {"type": "input_json_delta",
                                                             "partial_json": ev.fragment}})
            elif isinstance(ev, Finish):
                if open_kind:
                    yield _sse("content_block_stop", {"type": "content_block_stop", "index": block})
                    open_kind = None
                yield _sse("message_delta", {"type": "message_delta",
                                             "delta": {"stop_reason": _stop_reason(ev),
                                                       "stop_sequence": ev.stop_sequence},
                                             "usage": {"input_tokens": ev.prompt_tokens,
                                                       "output_tokens": ev.completion_tokens}})
                yield _sse("message_stop", {"type": "message_stop"})
    except ApiError as e:
        if not started:
            for line in start(None):
                yield line
        yield e.sse("anthropic")
