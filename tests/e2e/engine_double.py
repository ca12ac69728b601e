"""A stand-in for the TensorRT-LLM engine's HTTP server, used where the real engine cannot help.

It stands in only for the model's *output*: the tiny random K2 that runs here can never produce a tool call or a
thought, so this server replays recorded K2 completions (text with ``<|tool_calls_section_begin|>`` … markers, and
for the thinking models ``<think>`` … ``</think>`` reasoning, written in the format K2-Thinking and K2.5+ emit —
k2_family.md §2) instead of generating. Everything else in the tests that use it is real: it is a real Starlette app
on a real uvicorn socket
on 127.0.0.1, the gateway talks to it over real HTTP with httpx, and the clients are the real openai and anthropic
SDKs. It follows the engine's contract (reference/trtllm.md §1.3; TensorRT-LLM's ``CompletionRequest``): the
request fields TensorRT-LLM's pydantic model accepts and nothing else (it forbids extras), ``prompt`` as token ids,
SSE ``data:`` chunks with text deltas and ``[DONE]``, ``usage`` with ``stream_options.include_usage``.

To exercise the gateway's incremental parsing and SSE reading, each reply is streamed as text deltas of 1–5
characters (so markers, JSON and multi-byte characters' neighbours are cut at every kind of place) and the SSE
byte stream itself is re-chunked at fixed byte strides that fall inside ``data:`` lines and inside multi-byte
UTF-8 characters. Every request is recorded (body, chunks sent, whether it completed or was cancelled by a client
disconnect), so tests can check the exact prompt token ids the gateway sent and that a disconnect reached here.

With ``prometheus=True`` it also stands in for ``trtllm-serve``'s metric surface (TensorRT-LLM cannot run here):
JSON iteration stats at ``/metrics`` and Prometheus at ``/prometheus/metrics`` with TensorRT-LLM's names and
labels (``tensorrt_llm/metrics/collector.py``; mounted by trtllm-serve with ``return_perf_metrics: true``),
counted from the requests it answered.

Run standalone (for bench/bench_gateway.py): ``python tests/e2e/engine_double.py --port 18150 --reply "Hello"``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

# Fields of TensorRT-LLM's CompletionRequest (tensorrt_llm/serve/openai_protocol.py); it rejects any other.
COMPLETION_FIELDS = frozenset({
    "model", "prompt", "best_of", "echo", "frequency_penalty", "logit_bias", "logprobs", "max_tokens", "n",
    "presence_penalty", "seed", "stop", "stream", "stream_options", "suffix", "temperature", "top_p", "user",
    "lora_request", "prompt_ignore_length", "use_beam_search", "top_k", "top_p_min", "min_p", "repetition_penalty",
    "length_penalty", "early_stopping", "stop_token_ids", "include_stop_str_in_output", "ignore_eos", "min_tokens",
    "skip_special_tokens", "spaces_between_special_tokens", "truncate_prompt_tokens", "return_context_logits",
    "detokenize", "thinking_token_budget", "add_special_tokens", "response_format", "disaggregated_params",
    "priority", "conversation_params"})
_PATTERN = (3, 1, 5, 2, 4, 1, 2)  # delta sizes in characters, cycled
BYTE_STRIDE = 7  # SSE bytes per HTTP write


@dataclass
class Reply:
    """One recorded completion.

    Args:
        text: what the model wrote after ``<|im_middle|>`` (tool-call markers included).
        finish_reason: ``stop`` or ``length``.
        stop_reason: the stop string or token id that ended it, as TensorRT-LLM reports.
        message: for /v1/chat/completions (an engine that parses tool calls itself): the OpenAI message
        (``reasoning_content`` included, streamed as reasoning deltas before the content).
    """

    text: str = "Hello!"
    finish_reason: str = "stop"
    stop_reason: Any = None
    message: dict[str, Any] | None = None
    status: int = 200
    """An HTTP error status to answer with instead (503: the engine is not ready)."""


@dataclass
class Record:
    path: str
    body: dict[str, Any]
    chunks_sent: int = 0
    completed: bool = False
    cancelled: bool = False


def deltas(text: str) -> list[str]:
    """``text`` cut into 1–5 character deltas in a fixed awkward pattern."""
    out, i, k = [], 0, 0
    while i < len(text):
        n = _PATTERN[k % len(_PATTERN)]
        out.append(text[i:i + n])
        i, k = i + n, k + 1
    return out


@dataclass
class EngineDouble:
    """The double's state and its Starlette app (``app``); ``start``/``stop`` run it on a background thread."""

    port: int
    host: str = "127.0.0.1"
    replies: list[Reply] = field(default_factory=list)
    default: Reply = field(default_factory=Reply)
    delay_s: float = 0.0
    """Pause before each delta (and per delta of a non-streamed reply), to make a request last."""
    health_status: int = 200
    records: list[Record] = field(default_factory=list)
    tokenizer: Any = None
    """A ``K2Tokenizer``: ``usage.completion_tokens`` is then the reply's exact token count (markers as control
    tokens), as an engine reports it; without one it is the number of deltas."""
    responder: Callable[[dict[str, Any]], Reply] | None = None
    """Chooses the reply from the request body (for concurrent clients, whose order is not fixed); the queued
    replies are used first."""
    prometheus: bool = False
    """Serve trtllm-serve's metrics (module docstring)."""

    def __post_init__(self) -> None:
        routes = [Route("/v1/completions", self._completions, methods=["POST"]),
                  Route("/v1/chat/completions", self._chat, methods=["POST"]),
                  Route("/health", self._health, methods=["GET"]),
                  Route("/v1/models", self._models, methods=["GET"])]
        if self.prometheus:
            self.trt = _TrtMetrics()
            routes += [Route("/metrics", self._iteration_stats, methods=["GET"]),
                       Route("/prometheus/metrics", self._prometheus, methods=["GET"])]
        self.app = Starlette(routes=routes)
        self._server: Any = None
        self._thread: threading.Thread | None = None

    # --- control ------------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def script(self, *replies: Reply) -> None:
        """Queue replies for the next requests (then ``default``); clears the request log."""
        self.replies = list(replies)
        self.records.clear()

    def _next(self, body: dict[str, Any]) -> Reply:
        if self.replies:
            return self.replies.pop(0)
        return self.responder(body) if self.responder is not None else self.default

    def start(self) -> "EngineDouble":
        import uvicorn

        self._server = uvicorn.Server(uvicorn.Config(self.app, host=self.host, port=self.port, log_level="warning"))
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError(f"engine double did not start on {self.url}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
            assert self._thread is not None
            self._thread.join(timeout=10)

    def wait_cancelled(self, timeout_s: float = 10.0) -> Record:
        """The most recent request, once it has been cancelled (raises if it is not within ``timeout_s``)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.records and self.records[-1].cancelled:
                return self.records[-1]
            time.sleep(0.02)
        raise AssertionError(f"the engine request was not cancelled: {self.records[-1:]}")

    # --- endpoints ----------------------------------------------------------------------------------------
    async def _iteration_stats(self, request: Request) -> Response:
        return JSONResponse([])  # trtllm-serve's /metrics: a JSON list of iteration stats, not Prometheus

    async def _prometheus(self, request: Request) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(self.trt.registry), media_type=CONTENT_TYPE_LATEST)

    def _finished(self, t0: float, first: float | None, prompt: int, out: int, reason: str) -> None:
        if self.prometheus:
            self.trt.finished(time.perf_counter() - t0, None if first is None else first - t0, prompt, out, reason)

    async def _health(self, request: Request) -> Response:
        return Response(status_code=self.health_status)

    async def _models(self, request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [{"id": "tiny-k2", "object": "model"}]})

    @staticmethod
    def _error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"object": "error", "message": message, "type": "BadRequestError", "code": status},
                            status_code=status)

    async def _completions(self, request: Request) -> Response:
        t0 = time.perf_counter()
        body = await request.json()
        extra = set(body) - COMPLETION_FIELDS
        if extra:
            return self._error(400, f"Extra inputs are not permitted: {sorted(extra)}")
        prompt = body.get("prompt")
        if not (isinstance(prompt, list) and prompt and all(isinstance(i, int) for i in prompt)):
            return self._error(400, "this double expects prompt as a list of token ids")
        if body.get("stream_options") and not body.get("stream"):
            return self._error(400, "Stream options can only be defined when stream is true.")
        rec = Record("/v1/completions", body)
        self.records.append(rec)
        reply = self._next(body)
        if reply.status != 200:
            return self._error(reply.status, f"the double answers {reply.status}")
        pieces = deltas(reply.text)
        n_out = len(self.tokenizer.encode_with_specials(reply.text)) if self.tokenizer is not None else len(pieces)
        usage = {"prompt_tokens": len(prompt), "completion_tokens": n_out, "total_tokens": len(prompt) + n_out}
        if not body.get("stream"):
            for _ in pieces:  # "generate", noticing a client that went away
                if self.delay_s:
                    await asyncio.sleep(self.delay_s)
                    if await request.is_disconnected():
                        rec.cancelled = True
                        return Response(status_code=499)
            rec.completed = True
            self._finished(t0, None, len(prompt), n_out, reply.finish_reason)
            return JSONResponse({"id": "cmpl-double", "object": "text_completion", "created": int(time.time()),
                                 "model": body.get("model"), "usage": usage,
                                 "choices": [{"index": 0, "text": reply.text, "finish_reason": reply.finish_reason,
                                              "stop_reason": reply.stop_reason}]})
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return StreamingResponse(self._sse(rec, body, pieces, reply, usage if include_usage else None, t0, usage),
                                 media_type="text/event-stream")

    async def _sse(self, rec: Record, body: dict[str, Any], pieces: list[str], reply: Reply,
                   usage: dict[str, int] | None, t0: float = 0.0,
                   counted: dict[str, int] | None = None) -> AsyncIterator[bytes]:
        def event(choices: list[dict[str, Any]], u: dict[str, int] | None = None) -> bytes:
            obj = {"id": "cmpl-double", "object": "text_completion", "created": 0, "model": body.get("model"),
                   "choices": choices, "usage": u}
            return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n".encode()

        first: float | None = None
        try:
            pending = b""
            for n, piece in enumerate(pieces):
                if self.delay_s:
                    await asyncio.sleep(self.delay_s)
                first = first or time.perf_counter()
                last = n == len(pieces) - 1
                pending += event([{"index": 0, "text": piece,
                                   "finish_reason": reply.finish_reason if last else None,
                                   "stop_reason": reply.stop_reason if last else None}])
                while len(pending) >= BYTE_STRIDE:
                    yield pending[:BYTE_STRIDE]
                    pending = pending[BYTE_STRIDE:]
                rec.chunks_sent += 1
            if usage is not None:
                pending += event([], usage)
            pending += b"data: [DONE]\n\n"
            if counted is not None:  # finished: counted before the last bytes go out, as an engine does
                self._finished(t0, first, counted["prompt_tokens"], counted["completion_tokens"], reply.finish_reason)
            while pending:
                yield pending[:BYTE_STRIDE]
                pending = pending[BYTE_STRIDE:]
            rec.completed = True
        finally:
            if not rec.completed:
                rec.cancelled = True

    async def _chat(self, request: Request) -> Response:
        """An engine that parses K2 tool calls itself (TensorRT-LLM ≥1.2 ``--tool_parser kimi_k2``)."""
        t0 = time.perf_counter()
        body = await request.json()
        rec = Record("/v1/chat/completions", body)
        self.records.append(rec)
        reply = self._next(body)
        msg = reply.message or {"role": "assistant", "content": reply.text}
        finish = "tool_calls" if msg.get("tool_calls") else reply.finish_reason
        usage = {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}
        if not body.get("stream"):
            rec.completed = True
            self._finished(t0, None, 7, 5, finish)
            return JSONResponse({"id": "chatcmpl-double", "object": "chat.completion", "created": 0,
                                 "model": body.get("model"), "usage": usage,
                                 "choices": [{"index": 0, "message": msg, "finish_reason": finish}]})

        async def gen() -> AsyncIterator[bytes]:
            def ev(delta: dict[str, Any], fin: str | None = None, u: Any = None) -> bytes:
                ch = [{"index": 0, "delta": delta, "finish_reason": fin}] if delta or fin else []
                obj = {"id": "c", "object": "chat.completion.chunk", "choices": ch, "usage": u}
                return f"data: {json.dumps(obj)}\n\n".encode()
            yield ev({"role": "assistant", "content": ""})
            first = time.perf_counter()
            for piece in deltas(msg.get("reasoning_content") or ""):
                yield ev({"reasoning_content": piece})
            for piece in deltas(msg.get("content") or ""):
                yield ev({"content": piece})
            for i, call in enumerate(msg.get("tool_calls") or []):
                yield ev({"tool_calls": [{"index": i, "id": call["id"], "type": "function",
                                          "function": {"name": call["function"]["name"], "arguments": ""}}]})
                for piece in deltas(call["function"]["arguments"]):
                    yield ev({"tool_calls": [{"index": i, "function": {"arguments": piece}}]})
            yield ev({}, finish)
            if (body.get("stream_options") or {}).get("include_usage"):
                yield ev({}, None, usage)
            self._finished(t0, first, 7, 5, finish)
            yield b"data: [DONE]\n\n"
            rec.completed = True

        return StreamingResponse(gen(), media_type="text/event-stream")


class _TrtMetrics:
    """trtllm-serve's per-request Prometheus metrics as ``MetricsCollector`` keeps them: its names, the
    ``model_name``/``engine_type`` labels it sets, ``finished_reason`` on the success counter, and every series
    created at the first request that touches it; plus one iteration-stats gauge."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = r = CollectorRegistry()
        self.lab = {"model_name": "undefined", "engine_type": "undefined"}
        names = list(self.lab)
        self.success = Counter("trtllm_request_success", "finished requests", [*names, "finished_reason"], registry=r)
        self.e2e = Histogram("trtllm_e2e_request_latency_seconds", "e2e", names, registry=r)
        self.ttft = Histogram("trtllm_time_to_first_token_seconds", "ttft", names, registry=r)
        self.prompt = Counter("trtllm_prompt_tokens", "prompt tokens", names, registry=r)
        self.gen = Counter("trtllm_generation_tokens", "generated tokens", names, registry=r)
        self.kv = Gauge("trtllm_kv_cache_utilization", "kv cache", names, registry=r)
        self.n = 0

    def finished(self, e2e: float, ttft: float | None, prompt: int, out: int, reason: str) -> None:
        lab = self.lab
        self.success.labels(**lab, finished_reason=reason).inc()
        self.e2e.labels(**lab).observe(e2e)
        if ttft is not None:
            self.ttft.labels(**lab).observe(ttft)
        self.prompt.labels(**lab).inc(prompt)
        self.gen.labels(**lab).inc(out)
        self.n += 1
        self.kv.labels(**lab).set(min(1.0, 0.01 * self.n))  # any utilisation that moves with the traffic


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--reply", default="Hello! " * 32, help="text every request gets")
    ap.add_argument("--delay-ms", type=float, default=0.0)
    a = ap.parse_args()
    import uvicorn

    d = EngineDouble(port=a.port, default=Reply(a.reply), delay_s=a.delay_ms / 1000)
    d.records = _Discard()  # type: ignore[assignment]  # a long benchmark must not grow memory
    uvicorn.run(d.app, host="127.0.0.1", port=a.port, log_level="warning", access_log=False)


class _Discard(list):  # type: ignore[type-arg]
    def append(self, item: Any) -> None:
        pass


if __name__ == "__main__":
    main()
