"""OpenAI Chat Completions: request validation → ``Job``, and events → the response or its SSE stream.

Wire choices: ``content`` is ``null`` when the answer is only tool calls (as OpenAI does), ``""`` for an empty text
answer; tool-call IDs are the model's own (``functions.{name}:{k}``, which K2 expects back in history), except
that an ID the client sent earlier is returned in the client's spelling. The stream starts with a role chunk, sends
each call's ``id``/``name`` before its argument fragments, ends with a ``finish_reason`` chunk, then — with
``stream_options.include_usage`` — a usage chunk with empty ``choices``, then ``data: [DONE]``.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, AsyncIterator

from k2trt.gateway.backend import dumps
from k2trt.gateway.errors import ApiError, bad_request
from k2trt.gateway.events import Event, Finish, Job, Text, ToolArgs, ToolChoice, ToolStart, collect

_ROLES = ("system", "developer", "user", "assistant", "tool")


def _number(body: dict[str, Any], key: str, lo: float, hi: float) -> float | None:
    v = body.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
        raise bad_request(f"{key} must be a number in [{lo:g}, {hi:g}], got {v!r}", key)
    return float(v)


def _positive_int(body: dict[str, Any], key: str) -> int | None:
    v = body.get(key)
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise bad_request(f"{key} must be a positive integer, got {v!r}", key)
    return v


def _stop_list(v: Any, key: str) -> list[str]:
    if v is None:
        return []
    if isinstance(v, str):
        return [v] if v else []
    if isinstance(v, list) and all(isinstance(s, str) for s in v):
        return [s for s in v if s]
    raise bad_request(f"{key} must be a string or a list of strings", key)


def check_tools(tools: Any, key: str = "tools") -> list[dict[str, Any]] | None:
    """Validate an OpenAI ``tools`` array; returns it (``None`` when absent or empty)."""
    if tools is None or tools == []:
        return None
    if not isinstance(tools, list):
        raise bad_request(f"{key} must be a list of function tools", key)
    for i, t in enumerate(tools):
        fn = t.get("function") if isinstance(t, dict) else None
        if not isinstance(t, dict) or t.get("type", "function") != "function" or not isinstance(fn, dict) \
                or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise bad_request(f'{key}[{i}] must be {{"type": "function", "function": {{"name": …, '
                              '"parameters": …}}', key)
    return tools


def _messages(raw: Any) -> list[dict[str, Any]]:
    if not isinstance(raw, list) or not raw:
        raise bad_request("messages must be a non-empty list", "messages")
    out = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict) or m.get("role") not in _ROLES:
            raise bad_request(f"messages[{i}] needs a role among {', '.join(_ROLES)}", "messages")
        m = dict(m)
        if m["role"] == "developer":  # OpenAI's newer name for the system role
            m["role"] = "system"
        content = m.get("content")
        if isinstance(content, list):
            for part in content:
                if not isinstance(part, dict) or part.get("type", "text") != "text":
                    kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                    raise bad_request(f"messages[{i}] has a {kind!r} content part; Kimi K2 Instruct reads text "
                                      "only", "messages")
        elif content is not None and not isinstance(content, str):
            raise bad_request(f"messages[{i}].content must be a string, a list of text parts or null", "messages")
        if m["role"] == "tool" and not m.get("tool_call_id"):
            raise bad_request(f"messages[{i}] is a tool message without tool_call_id", "messages")
        out.append(m)
    return out


def _tool_choice(raw: Any, tools: list[dict[str, Any]] | None) -> ToolChoice:
    if raw is None or raw == "auto":
        return ToolChoice("auto")
    if raw == "none":
        return ToolChoice("none")
    if raw == "required":
        if not tools:
            raise bad_request("tool_choice 'required' needs tools", "tool_choice")
        return ToolChoice("required")
    if isinstance(raw, dict) and raw.get("type", "function") == "function" and \
            isinstance(raw.get("function"), dict) and raw["function"].get("name"):
        name = str(raw["function"]["name"])
        if name not in {t["function"]["name"] for t in tools or []}:
            raise bad_request(f"tool_choice names {name!r}, which is not in tools", "tool_choice")
        return ToolChoice("named", name)
    raise bad_request('tool_choice must be "auto", "none", "required" or {"type": "function", "function": '
                      '{"name": …}}', "tool_choice")


def parse_request(body: dict[str, Any], default_temperature: float) -> tuple[Job, bool]:
    """Validate a /v1/chat/completions body. Returns the job and ``include_usage``.

    Raises:
        ApiError: 400 naming the bad field.
    """
    n = body.get("n")
    if n not in (None, 1):
        raise bad_request(f"n={n!r} is not supported: this server returns one choice per request (n=1)", "n")
    fmt = body.get("response_format")
    if fmt is not None and (not isinstance(fmt, dict) or fmt.get("type", "text") != "text"):
        raise bad_request("response_format other than text is not supported by the render gateway (no guided "
                          "decoding); ask for JSON in the prompt, or use --mode passthrough", "response_format")
    if body.get("logprobs"):
        raise bad_request("logprobs are not supported by the render gateway", "logprobs")
    messages = _messages(body.get("messages"))
    tools = check_tools(body.get("tools"))
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise bad_request("stream must be true or false", "stream")
    opts = body.get("stream_options") or {}
    if not isinstance(opts, dict):
        raise bad_request("stream_options must be an object", "stream_options")
    temperature = _number(body, "temperature", 0.0, 2.0)
    ptc = body.get("parallel_tool_calls", True)
    ignore_eos = body.get("ignore_eos", False)
    if not isinstance(ignore_eos, bool):
        raise bad_request("ignore_eos must be true or false", "ignore_eos")
    job = Job(messages=messages, tools=tools, tool_choice=_tool_choice(body.get("tool_choice"), tools),
              temperature=default_temperature if temperature is None else temperature,
              top_p=_number(body, "top_p", 0.0, 1.0),
              max_tokens=_positive_int(body, "max_completion_tokens") or _positive_int(body, "max_tokens"),
              stop=_stop_list(body.get("stop"), "stop"), stream=stream, parallel_tool_calls=ptc is not False,
              ignore_eos=ignore_eos)
    return job, bool(stream and opts.get("include_usage"))


def _usage(f: Finish) -> dict[str, int]:
    return {"prompt_tokens": f.prompt_tokens, "completion_tokens": f.completion_tokens,
            "total_tokens": f.prompt_tokens + f.completion_tokens}


def response(events: list[Event], model: str) -> dict[str, Any]:
    """The non-streaming ``chat.completion`` object."""
    c = collect(events)
    msg: dict[str, Any] = {"role": "assistant", "content": c.content if c.content or not c.calls else None}
    if c.calls:
        msg["tool_calls"] = [{"id": i, "type": "function", "function": {"name": n, "arguments": a}}
                             for i, n, a in c.calls]
    return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": model, "choices": [{"index": 0, "message": msg, "logprobs": None,
                                         "finish_reason": c.finish.reason}],
            "usage": _usage(c.finish)}


async def stream(events: AsyncIterator[Event], model: str, include_usage: bool) -> AsyncIterator[str]:
    """SSE lines for a streaming response. An ``ApiError`` after the first byte becomes an error event."""
    base = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion.chunk", "created": int(time.time()),
            "model": model}
    extra = {"usage": None} if include_usage else {}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
        return "data: " + dumps({**base, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                                      "finish_reason": finish}], **extra}) + "\n\n"

    yield chunk({"role": "assistant", "content": ""})
    try:
        async for ev in events:
            if isinstance(ev, Text):
                yield chunk({"content": ev.text})
            elif isinstance(ev, ToolStart):
                yield chunk({"tool_calls": [{"index": ev.index, "id": ev.id, "type": "function",
                                             "function": {"name": ev.name, "arguments": ""}}]})
            elif isinstance(ev, ToolArgs):
                yield chunk({"tool_calls": [{"index": ev.index, "function": {"arguments": ev.fragment}}]})
            elif isinstance(ev, Finish):
                yield chunk({}, ev.reason)
                if include_usage:
                    yield "data: " + dumps({**base, "choices": [], "usage": _usage(ev)}) + "\n\n"
    except ApiError as e:
        yield e.sse("openai")
    yield "data: [DONE]\n\n"
