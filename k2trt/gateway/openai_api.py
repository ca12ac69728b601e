"""OpenAI Chat Completions: request validation → ``Job``, and events → the response or its SSE stream.

Wire choices: ``content`` is ``null`` when the answer is only tool calls (as OpenAI does), ``""`` for an empty text
answer; ``reasoning_content`` (thinking families) is the model's reasoning, ``null`` when it wrote none; tool-call
IDs are the model's own (``functions.{name}:{k}``, which K2 expects back in history), except that an ID the client
sent earlier is returned in the client's spelling. The stream starts with a role chunk, sends reasoning as
``delta.reasoning_content`` chunks, each call's ``id``/``name`` before its argument fragments (continuation chunks
carry only ``index`` and ``arguments``), ends with a ``finish_reason`` chunk whose ``delta`` is empty, then — with
``stream_options.include_usage`` — a usage chunk with empty ``choices`` (``prompt_tokens_details.cached_tokens``,
``completion_tokens_details.reasoning_tokens``), then ``data: [DONE]``.

Validation (``parse_request``, the one place a request is checked) answers with a 400 in OpenAI's error shape
(``{"error": {"message", "type": "invalid_request_error", "param", "code"}}``), naming the field, rather than
ignoring what the model cannot do:

- an unknown top-level field (OpenAI's own API refuses them too);
- ``n`` other than 1 — one choice per request, as Moonshot's API answers ``n=2`` (k2_family.md §3);
- a ``model`` this gateway does not serve: 404 ``model_not_found`` (the served name and ``--model-alias`` ids are
  served; no ``model`` means the served one);
- sampling values that are not finite or out of range — ``temperature`` ∉ [0, 2], ``top_p`` ∉ [0, 1],
  ``presence_penalty``/``frequency_penalty`` ∉ [-2, 2] (NaN, Infinity and 1e400 included), a ``seed`` that is not an
  integer in [0, 2⁶³−1], ``top_k`` not an integer in [-1, 2³¹−1], ``max_tokens`` not in [1, 2³¹−1]; a temperature
  below 1e-5 is sent as 0 (greedy: ``k2trt.sampling``);
- a malformed message: non-string ``content`` parts, ``name`` or ``tool_call_id``, assistant ``tool_calls`` that
  are not ``{"id": str, "type": "function", "function": {"name": str, "arguments": str | object}}``;
- a tool (or a named ``tool_choice``) whose name is not 1–64 of ``a-zA-Z0-9_-`` (OpenAI's rule; it also keeps K2's
  markers out of the prompt);
- ``logprobs``/``top_logprobs``, ``logit_bias``, ``response_format`` other than text, ``reasoning_effort`` (K2 has
  no effort levels), audio/prediction/web search, the deprecated ``functions`` — unless sent with their default
  (off/empty) values, which are accepted;
- a thinking switch the model does not have (thinking on K2-Instruct, off on K2-Thinking/K2.7-Code, unknown
  ``chat_template_kwargs``), or two switches that disagree.

Thinking switches: ``chat_template_kwargs`` ``{"thinking": bool, "preserve_thinking": bool}`` (``enable_thinking``
is read as ``thinking``, as vLLM does) and Moonshot's ``thinking: {"type": "enabled" | "disabled"}``. Assistant
messages in the history may carry ``reasoning_content`` (or vLLM's newer ``reasoning``), which the template
replays where the family keeps it.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, AsyncIterator

from k2trt import sampling as rules
from k2trt.gateway.backend import dumps
from k2trt.gateway.errors import ApiError, bad_request
from k2trt.gateway.events import (Event, Finish, Job, Reasoning, Text, ToolArgs, ToolChoice, ToolStart, check_model,
                                  collect, tool_name)
from k2trt.gateway.usage import openai_usage

_ROLES = ("system", "developer", "user", "assistant", "tool")


def _number(body: dict[str, Any], key: str, lo: float, hi: float) -> float | None:
    v = body.get(key)
    if v is None:
        return None
    try:
        return rules.number(v, key, lo, hi)
    except rules.SamplingValueError as e:
        raise bad_request(str(e), key) from None


def _integer(body: dict[str, Any], key: str, lo: int, hi: int = rules.INT32_MAX) -> int | None:
    v = body.get(key)
    if v is None:
        return None
    try:
        return rules.integer(v, key, lo, hi)
    except rules.SamplingValueError as e:
        raise bad_request(str(e), key) from None


def sampling_fields(body: dict[str, Any]) -> dict[str, Any]:
    """The request's sampling values, each checked (finite, in range, representable) — ``None`` where absent; a
    vanishing temperature is 0 (greedy). ``parse_request`` and the passthrough route both use it.

    Raises:
        ApiError: 400 naming the field.
    """
    t = _number(body, "temperature", 0.0, 2.0)
    top_k = _integer(body, "top_k", -1)
    return {"temperature": None if t is None else rules.temperature(t), "top_p": _number(body, "top_p", 0.0, 1.0),
            "top_k": top_k if top_k and top_k > 0 else None,
            "presence_penalty": _number(body, "presence_penalty", -2.0, 2.0),
            "frequency_penalty": _number(body, "frequency_penalty", -2.0, 2.0),
            "seed": _integer(body, "seed", *rules.API_SEEDS),
            "max_tokens": _integer(body, "max_completion_tokens", 1) or _integer(body, "max_tokens", 1)}


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
        tool_name(fn["name"], f"{key}[{i}].function.name", key)
        if not isinstance(fn.get("description", ""), (str, type(None))):
            raise bad_request(f"{key}[{i}].function.description must be a string", key)
        if not isinstance(fn.get("parameters", {}), (dict, type(None))):
            raise bad_request(f"{key}[{i}].function.parameters must be a JSON schema object", key)
    return tools


def _tool_calls(i: int, calls: Any) -> None:
    if calls is None:
        return
    if not isinstance(calls, list):
        raise bad_request(f"messages[{i}].tool_calls must be a list", "messages")
    for k, c in enumerate(calls):
        where = f"messages[{i}].tool_calls[{k}]"
        fn = c.get("function") if isinstance(c, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"] \
                or not isinstance(c.get("id", ""), (str, type(None))) or c.get("type", "function") != "function" \
                or not isinstance(fn.get("arguments", ""), (str, dict)):
            raise bad_request(f'{where} must be {{"id": str, "type": "function", "function": {{"name": str, '
                              '"arguments": str}}}}', "messages")


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
                if not isinstance(part.get("text"), str):
                    raise bad_request(f"messages[{i}] has a text part whose text is not a string", "messages")
        elif content is not None and not isinstance(content, str):
            raise bad_request(f"messages[{i}].content must be a string, a list of text parts or null", "messages")
        if not isinstance(m.get("name", ""), (str, type(None))):
            raise bad_request(f"messages[{i}].name must be a string", "messages")
        if m["role"] == "tool" and (not isinstance(m.get("tool_call_id"), str) or not m["tool_call_id"]):
            raise bad_request(f"messages[{i}] is a tool message without a tool_call_id string", "messages")
        if m["role"] == "assistant":
            _tool_calls(i, m.get("tool_calls"))
        thought = m.pop("reasoning_content", None)
        alias = m.pop("reasoning", None)
        thought = thought if thought is not None else alias
        if thought is not None and not isinstance(thought, str):
            raise bad_request(f"messages[{i}].reasoning_content must be a string or null", "messages")
        if thought and m["role"] == "assistant":
            m["reasoning_content"] = thought
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
        name = tool_name(raw["function"]["name"], "tool_choice.function.name", "tool_choice")
        if name not in {t["function"]["name"] for t in tools or []}:
            raise bad_request(f"tool_choice names {name!r}, which is not in tools", "tool_choice")
        return ToolChoice("named", name)
    raise bad_request('tool_choice must be "auto", "none", "required" or {"type": "function", "function": '
                      '{"name": …}}', "tool_choice")


_PASSIVE = frozenset({"model", "user", "metadata", "store", "service_tier", "prompt_cache_key",
                      "safety_identifier"})
"""Fields that change nothing about the generation: accepted (``model`` is checked by ``check_model``)."""
_UNSUPPORTED = {
    "logprobs": "logprobs are not returned by this gateway",
    "top_logprobs": "logprobs are not returned by this gateway",
    "logit_bias": "logit_bias is not supported",
    "reasoning_effort": "Kimi K2 has no reasoning-effort levels; switch thinking with chat_template_kwargs "
                        '{"thinking": false}',
    "audio": "audio output is not supported", "prediction": "predicted outputs are not supported",
    "web_search_options": "web search is not supported", "verbosity": "verbosity is not supported",
    "functions": "the deprecated functions field is not supported; send tools",
    "function_call": "the deprecated function_call field is not supported; send tool_choice",
}
"""Fields K2 behind this gateway cannot honour: a 400 unless the value is the field's default (off/empty)."""
_HANDLED = frozenset({"messages", "tools", "tool_choice", "parallel_tool_calls", "temperature", "top_p", "top_k",
                      "presence_penalty", "frequency_penalty", "seed", "max_tokens", "max_completion_tokens", "n",
                      "stop", "stream", "stream_options", "response_format", "modalities", "ignore_eos",
                      "chat_template_kwargs", "thinking"})
_TEMPLATE_KWARGS = ("thinking", "enable_thinking", "preserve_thinking")


def _check_fields(body: dict[str, Any]) -> None:
    for key in body:
        if key in _HANDLED or key in _PASSIVE:
            continue
        if key in _UNSUPPORTED:
            if body[key] in (None, False, {}, [], 0):
                continue
            raise bad_request(f"{key}: {_UNSUPPORTED[key]}", key)
        raise bad_request(f"unrecognized request argument {key!r}", key)
    n = body.get("n")
    if n not in (None, 1):
        raise bad_request(f"n={n!r} is not supported: this server returns one choice per request (n=1)", "n")
    fmt = body.get("response_format")
    if fmt is not None and (not isinstance(fmt, dict) or fmt.get("type", "text") != "text"):
        raise bad_request("response_format other than text is not supported by the render gateway (no guided "
                          "decoding); ask for JSON in the prompt, or use --mode passthrough", "response_format")
    mod = body.get("modalities")
    if mod not in (None, ["text"]):
        raise bad_request('modalities must be ["text"]', "modalities")


def _thinking_switches(body: dict[str, Any]) -> tuple[bool | None, bool | None]:
    """``(thinking, preserve_thinking)`` from ``chat_template_kwargs`` and ``thinking``; ``None`` = not set."""
    kw = body.get("chat_template_kwargs") or {}
    if not isinstance(kw, dict):
        raise bad_request("chat_template_kwargs must be an object", "chat_template_kwargs")
    for key, val in kw.items():
        if key not in _TEMPLATE_KWARGS:
            raise bad_request(f"chat_template_kwargs.{key} is not a switch of Kimi K2's templates (they read "
                              f"{', '.join(_TEMPLATE_KWARGS)})", "chat_template_kwargs")
        if not isinstance(val, bool):
            raise bad_request(f"chat_template_kwargs.{key} must be true or false", "chat_template_kwargs")
    said = [v for v in (kw.get("thinking"), kw.get("enable_thinking")) if v is not None]
    t = body.get("thinking")
    if t is not None:
        if not isinstance(t, dict) or t.get("type") not in ("enabled", "disabled") or set(t) - {"type"}:
            raise bad_request('thinking must be {"type": "enabled"} or {"type": "disabled"}', "thinking")
        said.append(t["type"] == "enabled")
    if len(set(said)) > 1:
        raise bad_request("the thinking switches disagree (chat_template_kwargs and thinking)", "thinking")
    return (said[0] if said else None), kw.get("preserve_thinking")


def parse_request(body: dict[str, Any], default_temperature: float | None = None, *,
                  models: frozenset[str] | None = None) -> tuple[Job, bool]:
    """Validate a /v1/chat/completions body (rules in the module docstring). Returns the job and
    ``include_usage``.

    Args:
        body: the request body.
        default_temperature: temperature for a request without one; ``None`` leaves it to the backend (the
            model family's recommendation).
        models: the model ids served (``None``: any).

    Raises:
        ApiError: 400 naming the bad field; 404 ``model_not_found``.
    """
    check_model(body, models)
    _check_fields(body)
    messages = _messages(body.get("messages"))
    tools = check_tools(body.get("tools"))
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise bad_request("stream must be true or false", "stream")
    opts = body.get("stream_options") or {}
    if not isinstance(opts, dict):
        raise bad_request("stream_options must be an object", "stream_options")
    sampled = sampling_fields(body)
    ptc = body.get("parallel_tool_calls", True)
    if not isinstance(ptc, bool):
        raise bad_request("parallel_tool_calls must be true or false", "parallel_tool_calls")
    ignore_eos = body.get("ignore_eos", False)
    if not isinstance(ignore_eos, bool):
        raise bad_request("ignore_eos must be true or false", "ignore_eos")
    thinking, preserve = _thinking_switches(body)
    if sampled["temperature"] is None:
        sampled["temperature"] = default_temperature
    job = Job(messages=messages, tools=tools, tool_choice=_tool_choice(body.get("tool_choice"), tools), **sampled,
              stop=_stop_list(body.get("stop"), "stop"), stream=stream, parallel_tool_calls=ptc,
              ignore_eos=ignore_eos, thinking=thinking, preserve_thinking=preserve)
    return job, bool(stream and opts.get("include_usage"))


def response(events: list[Event], model: str, *, thinks: bool = False) -> dict[str, Any]:
    """The non-streaming ``chat.completion`` object (``thinks``: the model has a reasoning channel, so the message
    carries ``reasoning_content`` even when it is ``null``)."""
    c = collect(events)
    msg: dict[str, Any] = {"role": "assistant", "content": c.content if c.content or not c.calls else None}
    if thinks or c.reasoning:
        msg["reasoning_content"] = c.reasoning or None
    if c.calls:
        msg["tool_calls"] = [{"id": i, "type": "function", "function": {"name": n, "arguments": a}}
                             for i, n, a in c.calls]
    return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": model, "choices": [{"index": 0, "message": msg, "logprobs": None,
                                         "finish_reason": c.finish.reason}],
            "usage": openai_usage(c.finish)}


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
            if isinstance(ev, Reasoning):
                yield chunk({"reasoning_content": ev.text})
            elif isinstance(ev, Text):
                yield chunk({"content": ev.text})
            elif isinstance(ev, ToolStart):
                yield chunk({"tool_calls": [{"index": ev.index, "id": ev.id, "type": "function",
                                             "function": {"name": ev.name, "arguments": ""}}]})
            elif isinstance(ev, ToolArgs):
                yield chunk({"tool_calls": [{"index": ev.index, "function": {"arguments": ev.fragment}}]})
            elif isinstance(ev, Finish):
                yield chunk({}, ev.reason)
                if include_usage:
                    yield "data: " + dumps({**base, "choices": [], "usage": openai_usage(ev)}) + "\n\n"
    except ApiError as e:
        yield e.sse("openai")
    yield "data: [DONE]\n\n"
