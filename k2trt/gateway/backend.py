"""Backends: turn a ``Job`` into output events.

``RenderBackend`` (mode ``render``, the default) does what an engine without a K2 tool or reasoning parser cannot:

1. normalise history tool-call IDs to ``functions.{name}:{k}`` (kimi_formats.md §4.5) and remember the originals;
2. render the model family's prompt straight to token ids (``k2trt.chat.thinking.render_ids``: message text —
   reasoning passed back included — never becomes a control token), with the request's thinking switches, and send
   them to the engine's ``/v1/completions`` with stop tokens ``<|im_end|>`` and ``[EOS]`` and
   ``skip_special_tokens: false`` so the tool-call and think markers survive detokenisation (with
   ``spaces_between_special_tokens: false``: TensorRT-LLM's default of true, through the HF decode path, would put
   spaces around every marker);
3. parse the engine's text with the incremental reasoning and tool-call parsers (``output.OutputChain``) and apply
   the request's tool policy; count the usage (``usage.count``).

Sampling: a request's own ``temperature``/``top_p`` win, then the gateway's ``--default-temperature``/
``--default-top-p``, then the family's recommendation for the mode (``families.Family.sampling``: thinking 1.0 /
0.95, instant 0.6 / 0.95, K2-Instruct 0.6).

``tool_choice`` enforcement (render mode):

- ``none``: the tools are not declared in the prompt, and any call the model still writes is discarded.
- ``required``: the assistant turn is prefilled with ``<|tool_calls_section_begin|>``, so the model can only
  continue inside a tool-call section; the response is then checked, and a response without a call to a declared
  tool is an error (HTTP 502 ``model_output``; in a stream, an error event) rather than a silent text answer.
- named: the turn is prefilled up to ``<|tool_call_begin|>functions.{name}:{k}<|tool_call_argument_begin|>``
  (``k`` continuing the conversation's counter), so the first call *is* that tool and the model writes only its
  arguments; calls to other tools are discarded and the same response check applies. Only the markers are control
  tokens: the name is encoded as text (and was checked against the APIs' tool-name pattern besides).
- While the model thinks (K2-Thinking, K2.5+ with thinking on) nothing is prefilled — a prefill would end the
  reasoning before it starts; the response check alone enforces ``required``/named.
- ``parallel_tool_calls: false`` (Anthropic ``disable_parallel_tool_use``): calls after the first are discarded.

Argument *content* is not grammar-constrained (the engine's guided decoding is engine-specific): malformed JSON is
passed through as the model wrote it.

Limits: rendering and tokenising run in a worker thread (a huge prompt must not stall the event loop), and a prompt
that cannot fit the model's context (``context``: the served model's ``max_position_embeddings`` unless configured)
with ``max_tokens`` is a 400 ``context_length_exceeded`` before anything is sent to the engine. A prompt so large
that even its message text alone — at most ``tokenizer.max_token_bytes`` UTF-8 bytes per token — must exceed the
context is refused before it is tokenised at all.

``ChatBackend`` (mode ``passthrough``) serves the Anthropic API on an engine that parses K2 tool calls and
reasoning itself: the translated request (thinking switches as ``chat_template_kwargs``) goes to the engine's
``/v1/chat/completions`` and its OpenAI deltas (``reasoning_content`` included) become events.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from dataclasses import dataclass
from typing import Any, AsyncIterator

from k2trt.chat import families as fam
from k2trt.chat import reasoning as rs
from k2trt.chat import thinking as th
from k2trt.chat import toolcalls as tc
from k2trt.chat import vocab
from k2trt.chat.template import ChatFormatError, ids_from_segments, normalize_tool_call_ids
from k2trt.chat.tools_ts import declare_tools_ts
from k2trt.gateway import usage
from k2trt.gateway.config import GatewayConfig
from k2trt.gateway.engine import EngineClient
from k2trt.gateway.errors import ApiError, bad_request
from k2trt.gateway.events import Event, Finish, Job, Reasoning, Started
from k2trt.gateway.output import EndTrim, OutputChain, Shaper

__all__ = ["ChatBackend", "EndTrim", "Prepared", "RenderBackend", "Shaper", "sampling", "dumps"]

log = logging.getLogger("k2trt.gateway")


def _stop_sequence(job: Job, stop_reason: Any) -> str | None:
    return stop_reason if isinstance(stop_reason, str) and stop_reason in job.stop else None


def resolve_thinking(family: fam.Family, job: Job) -> tuple[bool, bool]:
    """The request's effective ``(thinking, preserve_thinking)``; a switch the family lacks is a 400."""
    try:
        return family.resolve(job.thinking, job.preserve_thinking)
    except ChatFormatError as e:
        raise bad_request(str(e), "thinking") from None


def sampling(config: GatewayConfig, family: fam.Family, job: Job, thinking: bool) -> dict[str, float]:
    """``temperature`` (and ``top_p`` when one applies): the request's, else the gateway's default, else the
    family's recommendation for the mode."""
    rec = family.sampling(thinking)
    t = job.temperature if job.temperature is not None else config.default_temperature
    p = job.top_p if job.top_p is not None else config.default_top_p
    out = {"temperature": rec.temperature if t is None else t}
    top_p = rec.top_p if p is None else p
    if top_p is not None:
        out["top_p"] = top_p
    return out


def _extra_sampling(job: Job, body: dict[str, Any]) -> None:
    for key in ("top_k", "presence_penalty", "frequency_penalty", "seed"):
        val = getattr(job, key)
        if val is not None and (key != "top_k" or val):
            body[key] = val


@dataclass
class Prepared:
    ids: list[int]
    prefix: str
    """Text the prompt was prefilled with (already part of ``ids``); fed to the parsers before the output."""
    id_back: dict[str, str]
    body: dict[str, Any]
    thinking: bool = False
    opened: bool = False
    """The prompt ends inside ``<think>``: the output starts inside reasoning."""


class RenderBackend:
    """Mode ``render``: K2 prompt rendering, reasoning and tool-call parsing in the gateway (module docstring)."""

    def __init__(self, config: GatewayConfig, engine: EngineClient, tokenizer: Any,
                 family: fam.Family | None = None, *, context: int | None = None, tools_ts: bool = False) -> None:
        self.config = config
        self.engine = engine
        self.tok = tokenizer
        self.family = family or fam.FAMILIES["k2-instruct"]
        self.engine_model = config.engine_model or config.model_name
        self.context = context
        """Tokens the model holds (prompt + output); ``None``: not checked here (the engine checks)."""
        self.tools_ts = tools_ts
        """Declare tools in K2.5's TypeScript (``GatewayConfig.tool_declaration``), else JSON."""

    def normalize(self, job: Job) -> tuple[list[dict[str, Any]], dict[str, str]]:
        try:
            return normalize_tool_call_ids(job.messages)
        except ChatFormatError as e:
            raise bad_request(str(e), "messages") from None

    def prompt(self, job: Job) -> Prepared:
        """Token ids of the prompt (with any tool-choice prefill), the prefill text, the ID map back, and the
        thinking mode (``body`` left empty)."""
        on, keep = resolve_thinking(self.family, job)
        self._check_text_size(job)
        messages, id_back = self.normalize(job)
        tools = job.tools if job.tools and job.tool_choice.mode != "none" else None
        ts = declare_tools_ts(tools) if tools and self.tools_ts else None
        try:
            ids = th.render_ids(self.tok, messages, tools, family=self.family, thinking=on, preserve_thinking=keep,
                                tools_ts=ts)
        except ChatFormatError as e:
            raise bad_request(str(e), "messages") from None
        prefill: list[tuple[str, bool]] = []  # (text, is a control marker)
        if not (self.family.thinks and on):  # a prefill would end the reasoning before it starts
            if job.tool_choice.mode == "required":
                prefill = [(vocab.SECTION_BEGIN, True)]
            elif job.tool_choice.mode == "named":
                k = sum(len(m.get("tool_calls") or []) for m in messages if m.get("role") == "assistant")
                prefill = [(vocab.SECTION_BEGIN, True), (vocab.CALL_BEGIN, True),
                           (f"functions.{job.tool_choice.name}:{k}", False), (vocab.ARG_BEGIN, True)]
        if prefill:  # the client's tool name is text, never a control token
            ids = ids + ids_from_segments(self.tok, prefill)
        self._check_context(len(ids), job.max_tokens)
        opened = th.prompt_opens_reasoning(self.family, on)
        return Prepared(ids, "".join(text for text, _ in prefill), id_back, {}, on, opened)

    def _check_context(self, n_prompt: int, max_tokens: int | None) -> None:
        if self.context is None or n_prompt + (max_tokens or 1) <= self.context:
            return
        asked = f"{n_prompt} in the prompt" + (f" + {max_tokens} max_tokens" if max_tokens else "")
        raise ApiError(400, f"this model's context is {self.context} tokens, but the request needs {asked}; "
                       "shorten the messages or lower max_tokens", "context_length_exceeded", "messages")

    def _check_text_size(self, job: Job) -> None:
        """Refuse, without tokenising, a prompt whose message text alone needs more tokens than the context."""
        per_token = getattr(self.tok, "max_token_bytes", None)
        if self.context is None or not per_token:
            return
        n_bytes = sum(len(t.encode("utf-8", "replace")) for m in job.messages for t in _texts(m))
        if n_bytes > per_token * self.context:
            raise ApiError(400, f"this model's context is {self.context} tokens, but the messages hold {n_bytes} "
                           f"bytes of text (≥ {-(-n_bytes // per_token)} tokens); shorten them",
                           "context_length_exceeded", "messages")

    def prepare(self, job: Job) -> Prepared:
        p = self.prompt(job)
        body: dict[str, Any] = {"model": self.engine_model, "prompt": p.ids, "stream": job.stream,
                                **sampling(self.config, self.family, job, p.thinking),
                                # with ignore_eos the turn markers must not stop a fixed-length benchmark either
                                "stop_token_ids": [] if job.ignore_eos else list(self.tok.stop_ids),
                                "skip_special_tokens": False, "spaces_between_special_tokens": False}
        _extra_sampling(job, body)
        if job.ignore_eos:  # TensorRT-LLM's completion request accepts it; so does the reference engine
            body["ignore_eos"] = True
        if job.max_tokens is not None:
            body["max_tokens"] = job.max_tokens
        if job.stop:
            body["stop"] = list(job.stop)
        if job.stream:
            body["stream_options"] = {"include_usage": True}
        if self.config.log_prompts:
            log.info("prompt (%d tokens): %r", len(p.ids), self.tok.decode(p.ids))
        else:
            log.debug("prompt: %d tokens", len(p.ids))
        p.body = body
        return p

    def _chain(self, job: Job, p: Prepared) -> OutputChain:
        reasoning = rs.ReasoningStream(thinking=p.thinking, opened=p.opened) if self.family.thinks else None
        return OutputChain(job, p.id_back, unknown_tools=self.config.unknown_tools, reasoning=reasoning)

    def _finish(self, job: Job, p: Prepared, chain: OutputChain, reason: str, stop_reason: Any,
                engine_usage: dict[str, Any] | None) -> Finish:
        if self.config.log_prompts:
            log.info("output: %r", chain.text)
        chain.shaper.check()
        done = chain.reasoning_done
        counts = usage.count(engine_usage, prompt_tokens=len(p.ids), completion_text=chain.text,
                             reasoning_text=done.reasoning if done else "",
                             reasoning_markers=done.markers if done else 0, tokenizer=self.tok)
        return Finish(chain.shaper.finish_reason(reason), stop_sequence=_stop_sequence(job, stop_reason),
                      tool_calls=chain.tool_outcomes(), **counts)

    async def complete(self, job: Job) -> list[Event]:
        """Non-streaming: one engine call, the whole text parsed at once."""
        p = await asyncio.to_thread(self.prepare, job)
        obj = await self.engine.post_json("/v1/completions", p.body)
        try:
            choice = obj["choices"][0]
            raw = str(choice.get("text") or "")
        except (KeyError, IndexError, TypeError):
            raise ApiError(502, "the engine's completion has no choices[0].text", "engine_error") from None
        reason = str(choice.get("finish_reason") or "stop")
        chain = self._chain(job, p)
        events = chain.prefill(p.prefix) + chain.feed(raw) + chain.finish(reason)
        events.append(self._finish(job, p, chain, reason, choice.get("stop_reason"), obj.get("usage")))
        return events

    async def stream(self, job: Job) -> AsyncIterator[Event]:
        """Streaming: engine text deltas through the incremental parsers; ends with ``Finish``."""
        p = await asyncio.to_thread(self.prepare, job)
        chain = self._chain(job, p)
        reason, stop_reason, engine_usage = "stop", None, None
        started = False
        async for chunk in self.engine.sse_json("/v1/completions", p.body):
            if not started:  # the engine answered: from here on, failures are reported inside the stream
                started = True
                yield Started(len(p.ids))
                for ev in chain.prefill(p.prefix):
                    yield ev
            if chunk.get("usage"):
                engine_usage = chunk["usage"]
            for choice in chunk.get("choices") or []:
                for ev in chain.feed(str(choice.get("text") or "")):
                    yield ev
                if choice.get("finish_reason"):
                    reason, stop_reason = str(choice["finish_reason"]), choice.get("stop_reason")
        if not started:  # an empty stream: still account for the prefill
            yield Started(len(p.ids))
            for ev in chain.prefill(p.prefix):
                yield ev
        for ev in chain.finish(reason):
            yield ev
        yield self._finish(job, p, chain, reason, stop_reason, engine_usage)


class ChatBackend:
    """Mode ``passthrough`` for the Anthropic API: the engine renders and parses; we translate."""

    def __init__(self, config: GatewayConfig, engine: EngineClient, family: fam.Family | None = None) -> None:
        self.config = config
        self.engine = engine
        self.family = family or fam.FAMILIES["k2-instruct"]
        self.engine_model = config.engine_model or config.model_name

    def body(self, job: Job) -> tuple[dict[str, Any], dict[str, str]]:
        on, _ = resolve_thinking(self.family, job)
        try:
            messages, id_back = normalize_tool_call_ids(job.messages)
        except ChatFormatError as e:
            raise bad_request(str(e), "messages") from None
        body: dict[str, Any] = {"model": self.engine_model, "messages": messages, "stream": job.stream,
                                **sampling(self.config, self.family, job, on)}
        kwargs = {k: v for k, v in (("thinking", job.thinking), ("preserve_thinking", job.preserve_thinking))
                  if v is not None}
        if kwargs:  # the engine's template reads the switches (vLLM, SGLang and TensorRT-LLM all pass these on)
            body["chat_template_kwargs"] = kwargs
        if job.tools and job.tool_choice.mode != "none":
            body["tools"] = job.tools
            mode = job.tool_choice
            body["tool_choice"] = ({"type": "function", "function": {"name": mode.name}} if mode.mode == "named"
                                   else mode.mode)
        if job.ignore_eos:
            body["ignore_eos"] = True
        _extra_sampling(job, body)
        if job.max_tokens is not None:
            body["max_tokens"] = job.max_tokens
        if job.stop:
            body["stop"] = list(job.stop)
        if job.stream:
            body["stream_options"] = {"include_usage": True}
        return body, id_back

    @staticmethod
    def _reasoning(d: dict[str, Any]) -> str:
        # vLLM and TensorRT-LLM name it reasoning_content; newer vLLM also reasoning
        return str(d.get("reasoning_content") or d.get("reasoning") or "")

    async def complete(self, job: Job) -> list[Event]:
        body, id_back = self.body(job)
        obj = await self.engine.post_json("/v1/chat/completions", body)
        try:
            choice = obj["choices"][0]
            msg = choice["message"]
        except (KeyError, IndexError, TypeError):
            raise ApiError(502, "the engine's chat completion has no choices[0].message", "engine_error") from None
        shaper = Shaper(job, id_back)
        thought = self._reasoning(msg)
        events: list[Event] = [Reasoning(thought)] if thought else []
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
        counts = usage.count(obj.get("usage"), prompt_tokens=None, completion_text="")
        stop = _stop_sequence(job, choice.get("stop_reason"))
        events.append(Finish(shaper.finish_reason(reason), stop_sequence=stop, tool_calls=shaper.outcomes(),
                             **counts))
        return events

    async def stream(self, job: Job) -> AsyncIterator[Event]:
        body, id_back = self.body(job)
        shaper = Shaper(job, id_back)
        reason, stop_reason, engine_usage = "stop", None, None
        started = False
        async for chunk in self.engine.sse_json("/v1/chat/completions", body):
            if not started:
                started = True
                yield Started(None)
            if chunk.get("usage"):
                engine_usage = chunk["usage"]
            for choice in chunk.get("choices") or []:
                delta = choice.get("delta") or {}
                thought = self._reasoning(delta)
                if thought:
                    yield Reasoning(thought)
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
        counts = usage.count(engine_usage, prompt_tokens=None, completion_text="")
        yield Finish(shaper.finish_reason(reason), stop_sequence=_stop_sequence(job, stop_reason),
                     tool_calls=shaper.outcomes(), **counts)


def _texts(message: dict[str, Any]) -> list[str]:
    """Text every template renders for ``message`` (its content; reasoning may be dropped): a lower bound."""
    content = message.get("content")
    parts = [p.get("text") for p in content if isinstance(p, dict)] if isinstance(content, list) else [content]
    return [t for t in parts if isinstance(t, str)]


def dumps(obj: Any) -> str:
    """Compact JSON for the wire (non-ASCII kept as is)."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
