"""Backends: turn a ``Job`` into output events.

``RenderBackend`` (mode ``render``, the default) does what an engine without a K2 tool parser cannot:

1. normalise history tool-call IDs to ``functions.{name}:{k}`` (kimi_formats.md §4.5) and remember the originals;
2. render K2's prompt straight to token ids (``k2trt.chat.template.render_ids``: message text never becomes a
   control token) and send them to the engine's ``/v1/completions`` with stop tokens ``<|im_end|>`` and ``[EOS]``
   and ``skip_special_tokens: false`` so the tool-call markers survive detokenisation (with
   ``spaces_between_special_tokens: false``: TensorRT-LLM's default of true, through the HF decode path, would put
   spaces around every marker);
3. parse the engine's text with the incremental ``ToolCallStream`` and apply the request's tool policy.

``tool_choice`` enforcement (render mode):

- ``none``: the tools are not declared in the prompt, and any call the model still writes is discarded.
- ``required``: the assistant turn is prefilled with ``<|tool_calls_section_begin|>``, so the model can only
  continue inside a tool-call section; the response is then checked, and a response without a call to a declared
  tool is an error (HTTP 502 ``model_output``; in a stream, an error event) rather than a silent text answer.
- named: the turn is prefilled up to ``<|tool_call_begin|>functions.{name}:{k}<|tool_call_argument_begin|>``
  (``k`` continuing the conversation's counter), so the first call *is* that tool and the model writes only its
  arguments; calls to other tools are discarded and the same response check applies.
- ``parallel_tool_calls: false`` (Anthropic ``disable_parallel_tool_use``): calls after the first are discarded.

Argument *content* is not grammar-constrained (the engine's guided decoding is engine-specific): malformed JSON is
passed through as the model wrote it.

``ChatBackend`` (mode ``passthrough``) serves the Anthropic API on an engine that parses K2 tool calls itself:
the translated request goes to the engine's ``/v1/chat/completions`` and its OpenAI deltas become events.
"""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass
from typing import Any, AsyncIterator

from k2trt.chat import toolcalls as tc
from k2trt.chat import vocab
from k2trt.chat.template import ChatFormatError, normalize_tool_call_ids, render_ids
from k2trt.gateway.config import GatewayConfig
from k2trt.gateway.engine import EngineClient
from k2trt.gateway.errors import ApiError, bad_request
from k2trt.gateway.events import Event, Finish, Job, Started, Text, ToolArgs, ToolStart

log = logging.getLogger("k2trt.gateway")

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
                return None
            idx = self._kept[ev.index] = self.n_calls
            self.n_calls += 1
            return ToolStart(idx, self.id_back.get(ev.id, ev.id), ev.name)
        if isinstance(ev, tc.ToolCallArgs) and ev.index in self._kept:
            return ToolArgs(self._kept[ev.index], ev.fragment) if ev.fragment else None
        return None

    def finish_reason(self, engine_reason: str) -> str:
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


def _stop_sequence(job: Job, stop_reason: Any) -> str | None:
    return stop_reason if isinstance(stop_reason, str) and stop_reason in job.stop else None


@dataclass
class Prepared:
    ids: list[int]
    prefix: str
    """Text the prompt was prefilled with (already part of ``ids``); fed to the parser before the output."""
    id_back: dict[str, str]
    body: dict[str, Any]


class RenderBackend:
    """Mode ``render``: K2 prompt rendering and tool-call parsing in the gateway (module docstring)."""

    def __init__(self, config: GatewayConfig, engine: EngineClient, tokenizer: Any) -> None:
        self.config = config
        self.engine = engine
        self.tok = tokenizer
        self.engine_model = config.engine_model or config.model_name

    def normalize(self, job: Job) -> tuple[list[dict[str, Any]], dict[str, str]]:
        try:
            return normalize_tool_call_ids(job.messages)
        except ChatFormatError as e:
            raise bad_request(str(e), "messages") from None

    def prompt_ids(self, job: Job) -> tuple[list[int], str, dict[str, str]]:
        """Token ids of the K2 prompt (with any tool-choice prefill), the prefill text, and the ID map back."""
        messages, id_back = self.normalize(job)
        tools = job.tools if job.tools and job.tool_choice.mode != "none" else None
        try:
            ids = render_ids(self.tok, messages, tools, add_generation_prompt=True)
        except ChatFormatError as e:
            raise bad_request(str(e), "messages") from None
        prefix = ""
        if job.tool_choice.mode == "required":
            prefix = vocab.SECTION_BEGIN
        elif job.tool_choice.mode == "named":
            k = sum(len(m.get("tool_calls") or []) for m in messages if m.get("role") == "assistant")
            prefix = (f"{vocab.SECTION_BEGIN}{vocab.CALL_BEGIN}functions.{job.tool_choice.name}:{k}"
                      f"{vocab.ARG_BEGIN}")
        if prefix:
            ids = ids + self.tok.encode_with_specials(prefix)
        return ids, prefix, id_back

    def prepare(self, job: Job) -> Prepared:
        ids, prefix, id_back = self.prompt_ids(job)
        body: dict[str, Any] = {"model": self.engine_model, "prompt": ids, "stream": job.stream,
                                "temperature": job.temperature,
                                # with ignore_eos the turn markers must not stop a fixed-length benchmark either
                                "stop_token_ids": [] if job.ignore_eos else list(self.tok.stop_ids),
                                "skip_special_tokens": False, "spaces_between_special_tokens": False}
        if job.top_p is not None:
            body["top_p"] = job.top_p
        if job.top_k:
            body["top_k"] = job.top_k
        if job.ignore_eos:  # TensorRT-LLM's completion request accepts it; so does the reference engine
            body["ignore_eos"] = True
        if job.max_tokens is not None:
            body["max_tokens"] = job.max_tokens
        if job.stop:
            body["stop"] = list(job.stop)
        if job.stream:
            body["stream_options"] = {"include_usage": True}
        if self.config.log_prompts:
            log.info("prompt (%d tokens): %r", len(ids), self.tok.decode(ids))
        else:
            log.debug("prompt: %d tokens", len(ids))
        return Prepared(ids, prefix, id_back, body)

    def _parser(self, job: Job) -> tc.ToolCallStream:
        tools = job.tools if job.tool_choice.mode != "none" else None
        return tc.ToolCallStream(tools, self.config.unknown_tools)

    def _usage(self, obj: dict[str, Any], prompt_tokens: int, text: str) -> tuple[int, int]:
        u = obj.get("usage") or {}
        completion = u.get("completion_tokens")
        if completion is None:  # an engine without usage: count what came back
            completion = len(self.tok.encode(text))
        return int(u.get("prompt_tokens") or prompt_tokens), int(completion)

    async def complete(self, job: Job) -> list[Event]:
        """Non-streaming: one engine call, the whole text parsed at once."""
        p = self.prepare(job)
        obj = await self.engine.post_json("/v1/completions", p.body)
        try:
            choice = obj["choices"][0]
            raw = str(choice.get("text") or "")
        except (KeyError, IndexError, TypeError):
            raise ApiError(502, "the engine's completion has no choices[0].text", "engine_error") from None
        trim = EndTrim()
        text = trim.feed(raw) + trim.finish()
        if self.config.log_prompts:
            log.info("output: %r", text)
        shaper, parser = Shaper(job, p.id_back), self._parser(job)
        events: list[Event] = []
        for ev in parser.feed(p.prefix + text) + parser.finish(str(choice.get("finish_reason") or "stop")):
            out = shaper.on(ev)
            if out is not None:
                events.append(out)
        shaper.check()
        prompt_tokens, completion_tokens = self._usage(obj, len(p.ids), text)
        events.append(Finish(shaper.finish_reason(str(choice.get("finish_reason") or "stop")), prompt_tokens,
                             completion_tokens, _stop_sequence(job, choice.get("stop_reason"))))
        return events

    async def stream(self, job: Job) -> AsyncIterator[Event]:
        """Streaming: engine text deltas through the incremental parser; ends with ``Finish``."""
        p = self.prepare(job)
        shaper, parser, trim = Shaper(job, p.id_back), self._parser(job), EndTrim()
        reason, stop_reason, usage_obj = "stop", None, {}
        seen: list[str] = []
        started = False
        async for chunk in self.engine.sse_json("/v1/completions", p.body):
            if not started:  # the engine answered: from here on, failures are reported inside the stream
                started = True
                yield Started(len(p.ids))
                for ev in parser.feed(p.prefix) if p.prefix else ():
                    out = shaper.on(ev)
                    if out is not None:
                        yield out
            if chunk.get("usage"):
                usage_obj = chunk
            for choice in chunk.get("choices") or []:
                delta = trim.feed(str(choice.get("text") or ""))
                if delta:
                    seen.append(delta)
                    for ev in parser.feed(delta):
                        out = shaper.on(ev)
                        if out is not None:
                            yield out
                if choice.get("finish_reason"):
                    reason, stop_reason = str(choice["finish_reason"]), choice.get("stop_reason")
        if not started:  # an empty stream: still account for the prefill
            yield Started(len(p.ids))
            for ev in parser.feed(p.prefix) if p.prefix else ():
                out = shaper.on(ev)
                if out is not None:
                    yield out
        tail = trim.finish()
        seen.append(tail)
        for ev in parser.feed(tail) + parser.finish(reason):
            out = shaper.on(ev)
            if out is not None:
                yield out
        if self.config.log_prompts:
            log.info("output: %r", "".join(seen))
        shaper.check()
        prompt_tokens, completion_tokens = self._usage(usage_obj, len(p.ids), "".join(seen))
        yield Finish(shaper.finish_reason(reason), prompt_tokens, completion_tokens,
                     _stop_sequence(job, stop_reason))


class ChatBackend:
    """Mode ``passthrough`` for the Anthropic API: the engine renders and parses; we translate."""

    def __init__(self, config: GatewayConfig, engine: EngineClient) -> None:
        self.config = config
        self.engine = engine
        self.engine_model = config.engine_model or config.model_name

    def body(self, job: Job) -> tuple[dict[str, Any], dict[str, str]]:
        try:
            messages, id_back = normalize_tool_call_ids(job.messages)
        except ChatFormatError as e:
            raise bad_request(str(e), "messages") from None
        body: dict[str, Any] = {"model": self.engine_model, "messages": messages, "stream": job.stream,
                                "temperature": job.temperature}
        if job.tools and job.tool_choice.mode != "none":
            body["tools"] = job.tools
            mode = job.tool_choice
            body["tool_choice"] = ({"type": "function", "function": {"name": mode.name}} if mode.mode == "named"
                                   else mode.mode)
        if job.ignore_eos:
            body["ignore_eos"] = True
        for key, val in (("top_p", job.top_p), ("top_k", job.top_k), ("max_tokens", job.max_tokens)):
            if val is not None:
                body[key] = val
        if job.stop:
            body["stop"] = list(job.stop)
        if job.stream:
            body["stream_options"] = {"include_usage": True}
        return body, id_back

    @staticmethod
    def _usage(obj: dict[str, Any]) -> tuple[int, int]:
        u = obj.get("usage") or {}
        return int(u.get("prompt_tokens") or 0), int(u.get("completion_tokens") or 0)

    async def complete(self, job: Job) -> list[Event]:
        body, id_back = self.body(job)
        obj = await self.engine.post_json("/v1/chat/completions", body)
        try:
            choice = obj["choices"][0]
            msg = choice["message"]
        except (KeyError, IndexError, TypeError):
            raise ApiError(502, "the engine's chat completion has no choices[0].message", "engine_error") from None
        shaper = Shaper(job, id_back)
        events: list[Event] = []
        raw: list[tc.Event] = [tc.ContentDelta(str(msg.get("content") or ""))]
        for i, call in enumerate(msg.get("tool_calls") or []):
            fn = call.get("function") or {}
            raw += [tc.ToolCallStart(i, str(call.get("id") or f"call_{uuid.uuid4().hex[:24]}"),
                                     str(fn.get("name") or "")), tc.ToolCallArgs(i, str(fn.get("arguments") or ""))]
        for ev in raw:
            out = shaper.on(ev)
            if out is not None:
                events.append(out)
        shaper.check()
        reason = str(choice.get("finish_reason") or "stop")
        events.append(Finish(shaper.finish_reason(reason), *self._usage(obj),
                             _stop_sequence(job, choice.get("stop_reason"))))
        return events

    async def stream(self, job: Job) -> AsyncIterator[Event]:
        body, id_back = self.body(job)
        shaper = Shaper(job, id_back)
        reason, stop_reason, usage = "stop", None, (0, 0)
        started = False
        async for chunk in self.engine.sse_json("/v1/chat/completions", body):
            if not started:
                started = True
                yield Started(None)
            if chunk.get("usage"):
                usage = self._usage(chunk)
            for choice in chunk.get("choices") or []:
                delta = choice.get("delta") or {}
                raw: list[tc.Event] = []
                if delta.get("content"):
                    raw.append(tc.ContentDelta(str(delta["content"])))
                for call in delta.get("tool_calls") or []:
                    i = int(call.get("index") or 0)
                    fn = call.get("function") or {}
                    if call.get("id") or fn.get("name"):
                        raw.append(tc.ToolCallStart(i, str(call.get("id") or f"call_{uuid.uuid4().hex[:24]}"),
                                                    str(fn.get("name") or "")))
                    if fn.get("arguments"):
                        raw.append(tc.ToolCallArgs(i, str(fn["arguments"])))
                for ev in raw:
                    out = shaper.on(ev)
                    if out is not None:
                        yield out
                if choice.get("finish_reason"):
                    reason, stop_reason = str(choice["finish_reason"]), choice.get("stop_reason")
        shaper.check()
        yield Finish(shaper.finish_reason(reason), *usage, _stop_sequence(job, stop_reason))


def dumps(obj: Any) -> str:
    """Compact JSON for the wire (non-ASCII kept as is)."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
