"""The gateway's Prometheus metrics (``GET /metrics``) and its per-request log line.

Each app instance owns a ``GatewayMetrics`` with its own ``CollectorRegistry`` (several gateways can run in one
process). Names follow Prometheus conventions (base units, ``_total`` counters) and line up with what peers'
frontends export — Dynamo's frontend (``dynamo_frontend_requests_total``, ``…_inflight_requests``,
``…_time_to_first_token_seconds``, ``…_inter_token_latency_seconds``, ``…_request_duration_seconds``,
``…_input/output_sequence_tokens``) and the engines' token counters (vLLM ``vllm:prompt_tokens_total``,
TensorRT-LLM ``trtllm_prompt_tokens_total``); the TTFT buckets are vLLM's and TensorRT-LLM's, so the gateway's and
the engine's histograms can be read side by side.

======================================================= ========= ==========================
metric                                                  type      labels
======================================================= ========= ==========================
``k2trt_gateway_requests_total``                        counter   model, api, status
``k2trt_gateway_inflight_requests``                     gauge     model, api
``k2trt_gateway_time_to_first_token_seconds``           histogram model, api
``k2trt_gateway_inter_token_latency_seconds``           histogram model, api
``k2trt_gateway_request_duration_seconds``              histogram model, api
``k2trt_gateway_input_sequence_tokens``                 histogram model, api
``k2trt_gateway_output_sequence_tokens``                histogram model, api
``k2trt_gateway_prompt_tokens_total``                   counter   model, api
``k2trt_gateway_completion_tokens_total``               counter   model, api
``k2trt_gateway_reasoning_tokens_total``                counter   model, api
``k2trt_gateway_cached_tokens_total``                   counter   model, api
``k2trt_gateway_tool_calls_total``                      counter   model, api, outcome
``k2trt_gateway_engine_errors_total``                   counter   model, api, kind
======================================================= ========= ==========================

What is counted, and when:

- **Requests** are the model requests (``/v1/chat/completions`` → ``api="openai"``, ``/v1/messages`` →
  ``api="anthropic"``), whatever their outcome; ``status`` is the HTTP status, or for a stream that failed after
  it began, the status of the error event it ended with; ``499`` is a client that went away. Token counting,
  ``/v1/models``, ``/health`` and ``/metrics`` are not model requests.
- **Latency and tokens** are observed once per *completed* response (status 200, usage known): duration from the
  handler's start to the end of the response; time to first token from the handler's start to the first output
  (reasoning, text or a tool call) — streaming responses only, a non-streamed one has no first token to see;
  inter-token latency is ``(end − first token) / (completion_tokens − 1)`` per streamed response with at least two
  tokens (aiperf's and TensorRT-LLM's per-request definition). The token numbers are the response's ``Finish``
  (``usage.count``, the one place usage is computed) — never recomputed here.
- **Tool calls** (``outcome``): ``parsed`` (valid JSON arguments), ``invalid_arguments`` (passed through as the
  model wrote them), ``truncated`` (the output ended inside the arguments), ``discarded`` (ruled out by
  ``tool_choice`` / ``parallel_tool_calls``), ``dropped`` (a call to a tool the request did not declare, with
  ``--unknown-tools drop``, or a call without a name), ``missing`` (``tool_choice`` required or named and no
  call: the 502). Counted where the gateway parses or shapes calls (render mode; the Anthropic API in passthrough
  mode); an OpenAI passthrough response is the engine's own.
- **Engine errors** (``kind``: ``engine_unavailable``, ``timeout``, ``engine_error`` — ``ApiError`` kinds): one per
  request that failed because of the engine.

Cardinality is bounded: ``model`` is the configured served model name (never the client's ``model`` field),
``api``/``outcome``/``kind`` are fixed sets and ``status`` the gateway's own small set of codes; every series of
the fixed sets (and ``status="200"``) exists at 0 from the start. No label or log field carries prompt or output
text.

``/metrics`` is not behind the API key, like ``/health``: it carries counts and the model name only, and
scrapers (Prometheus, aiperf's server-metrics collector) do not send the gateway's key. vLLM's API server does the
same (its key guards ``/v1`` paths only). Keep the port off untrusted networks if request counts are sensitive.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any, get_args

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from k2trt.gateway import usage
from k2trt.gateway.errors import Api, ApiError
from k2trt.gateway.events import Event, Finish, Reasoning, Text, ToolArgs, ToolStart

log = logging.getLogger("k2trt.gateway.requests")

PREFIX = "k2trt_gateway"
"""Every metric's name starts with this."""
REQUESTS = f"{PREFIX}_requests_total"
INFLIGHT = f"{PREFIX}_inflight_requests"
TTFT = f"{PREFIX}_time_to_first_token_seconds"
ITL = f"{PREFIX}_inter_token_latency_seconds"
DURATION = f"{PREFIX}_request_duration_seconds"
INPUT_TOKENS = f"{PREFIX}_input_sequence_tokens"
OUTPUT_TOKENS = f"{PREFIX}_output_sequence_tokens"
PROMPT = f"{PREFIX}_prompt_tokens_total"
COMPLETION = f"{PREFIX}_completion_tokens_total"
REASONING = f"{PREFIX}_reasoning_tokens_total"
CACHED = f"{PREFIX}_cached_tokens_total"
TOOL_CALLS = f"{PREFIX}_tool_calls_total"
ENGINE_ERRORS = f"{PREFIX}_engine_errors_total"

APIS: tuple[str, ...] = get_args(Api)
TOOL_OUTCOMES = ("parsed", "invalid_arguments", "truncated", "discarded", "dropped", "missing")
ENGINE_ERROR_KINDS = ("engine_unavailable", "timeout", "engine_error")

# vLLM's and TensorRT-LLM's TTFT buckets (vllm/v1/metrics/loggers.py, tensorrt_llm/metrics/collector.py).
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
                40.0, 80.0, 160.0, 640.0, 2560.0)
# TensorRT-LLM's time-per-output-token buckets with a finer sub-10 ms start (fast decode, CPU test engines).
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0,
               2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0)
# TensorRT-LLM's e2e-latency buckets with a sub-0.3 s start.
DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0,
                    50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)
# 1-2-5 steps up to K2.5's 256K context (vLLM's build_1_2_5_buckets shape).
TOKEN_BUCKETS = tuple(float(m * 10 ** e) for e in range(6) for m in (1, 2, 5) if m * 10 ** e <= 200_000) + (262144.0,)

_OUTPUT = (Text, Reasoning, ToolStart, ToolArgs)


class GatewayMetrics:
    """The metrics of one gateway app (module docstring), in their own registry.

    Args:
        model: the served model name (the ``model`` label of every series).

    Example:
        >>> m = GatewayMetrics("kimi-k2")
        >>> t = m.start("openai")
        >>> _ = t.end(Response(status_code=400))
        >>> m.registry.get_sample_value(REQUESTS, {"model": "kimi-k2", "api": "openai", "status": "400"})
        1.0
    """

    def __init__(self, model: str) -> None:
        self.model = model
        self.registry = CollectorRegistry()
        r, base = self.registry, ("model", "api")

        def counter(name: str, doc: str, labels: tuple[str, ...] = base) -> Counter:
            return Counter(name.removesuffix("_total"), doc, labels, registry=r)  # the client appends _total

        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(name, doc, base, buckets=buckets, registry=r)

        self.requests = counter(REQUESTS, "Model requests by API and final HTTP status.", (*base, "status"))
        self.inflight = Gauge(INFLIGHT, "Model requests being handled (handler start to the end of the response).",
                              base, registry=r)
        self.ttft = histogram(TTFT, "Time to first token of streamed responses, from the handler's start (s).",
                              TTFT_BUCKETS)
        self.itl = histogram(ITL, "Inter-token latency per streamed response: (end - first token) / (tokens - 1).",
                             ITL_BUCKETS)
        self.duration = histogram(DURATION, "End-to-end duration of completed responses (s).", DURATION_BUCKETS)
        self.isl = histogram(INPUT_TOKENS, "Prompt tokens per completed response.", TOKEN_BUCKETS)
        self.osl = histogram(OUTPUT_TOKENS, "Completion tokens per completed response.", TOKEN_BUCKETS)
        self.prompt = counter(PROMPT, "Prompt tokens of completed responses (usage.prompt_tokens).")
        self.completion = counter(COMPLETION, "Completion tokens of completed responses, reasoning included.")
        self.reasoning = counter(REASONING, "Completion tokens spent on reasoning.")
        self.cached = counter(CACHED, "Prompt tokens the engine served from its prefix cache.")
        self.tool_calls = counter(TOOL_CALLS, "Tool calls by parse outcome.", (*base, "outcome"))
        self.engine_errors = counter(ENGINE_ERRORS, "Requests failed by the engine, by kind.", (*base, "kind"))
        # Every known series exists from the start at 0, so that a scraper's first sample is a true baseline (a
        # series that appears mid-window loses its first increments in a delta, and rate() sees no step).
        for api in APIS:
            lab = {"model": model, "api": api}
            for metric in (self.inflight, self.ttft, self.itl, self.duration, self.isl, self.osl, self.prompt,
                           self.completion, self.reasoning, self.cached):
                metric.labels(**lab)
            self.requests.labels(**lab, status="200")
            for outcome in TOOL_OUTCOMES:
                self.tool_calls.labels(**lab, outcome=outcome)
            for kind in ENGINE_ERROR_KINDS:
                self.engine_errors.labels(**lab, kind=kind)

    def start(self, api: Api, request_id: str | None = None) -> "RequestTracker":
        """Begin tracking one model request (counted in flight until ``RequestTracker.end``'s response ends)."""
        return RequestTracker(self, api, request_id or uuid.uuid4().hex)

    def exposition(self, accept: str | None) -> Response:
        """The ``/metrics`` response (Prometheus text, or OpenMetrics when the scraper asks for it)."""
        encoder, content_type = choose_encoder(accept or "")
        return Response(encoder(self.registry), media_type=content_type)


class RequestTracker:
    """One model request's observations: fed the response's events, closed once by the response's end."""

    def __init__(self, metrics: GatewayMetrics, api: Api, request_id: str) -> None:
        self.m = metrics
        self.api: Api = api
        self.request_id = request_id
        self.labels = {"model": metrics.model, "api": api}
        self.t0 = time.perf_counter()
        self.first: float | None = None
        self.last: float | None = None
        self.streamed = False
        self.finish: Finish | None = None
        self.engine_usage: dict[str, int] | None = None
        self.error: ApiError | None = None
        self._done = False
        metrics.inflight.labels(**self.labels).inc()

    # --- what the response carried -------------------------------------------------------------------------
    def see(self, ev: Event) -> None:
        now = time.perf_counter()
        if isinstance(ev, _OUTPUT) and self.first is None and self.streamed:
            self.first = now
        elif isinstance(ev, Finish):
            self.finish, self.last = ev, now

    async def stream(self, events: AsyncIterator[Event]) -> AsyncIterator[Event]:
        """Pass a streamed response's events through, observing them (and the ``ApiError`` that ends one)."""
        self.streamed = True
        try:
            async for ev in events:
                self.see(ev)
                yield ev
        except ApiError as e:
            self.error = e
            raise

    def collected(self, events: list[Event]) -> list[Event]:
        """Observe a non-streamed response's events; returns them."""
        for ev in events:
            self.see(ev)
        return events

    def engine_json(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Observe an engine's non-streamed chat completion relayed as is (passthrough); returns it."""
        self._usage(obj.get("usage"))
        self.last = time.perf_counter()
        return obj

    async def relay(self, chunks: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
        """Pass an engine's raw SSE bytes through (passthrough streaming), noting the first output delta and the
        usage event; the bytes are not changed."""
        self.streamed = True
        pending = b""
        async for chunk in chunks:
            yield chunk
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                self._sse_line(line)
        self._sse_line(pending)
        self.last = time.perf_counter()

    def _sse_line(self, line: bytes) -> None:
        if not line.startswith(b"data:") or (self.engine_usage is not None and self.first is not None):
            return
        try:
            obj = json.loads(line[5:])
        except ValueError:  # [DONE], or something only the client should judge
            return
        if not isinstance(obj, dict):
            return
        if self.first is None:
            for ch in obj.get("choices") or []:
                d = ch.get("delta") if isinstance(ch, dict) else None
                if isinstance(d, dict) and (d.get("content") or d.get("reasoning_content") or d.get("reasoning")
                                            or d.get("tool_calls")):
                    self.first = time.perf_counter()
                    break
        if obj.get("usage"):
            self._usage(obj["usage"])

    def _usage(self, u: Any) -> None:
        if isinstance(u, dict):
            self.engine_usage = usage.count(u, prompt_tokens=None, completion_text="")

    # --- the end -------------------------------------------------------------------------------------------
    def fail(self, e: ApiError) -> None:
        """The request ended with ``e`` (before or during the response)."""
        self.error = e

    def end(self, response: Response) -> Response:
        """Close the request when ``response`` has been sent: at once for a plain response, when the body ends
        (or the client leaves) for a streamed one. Returns the response to send."""
        if isinstance(response, StreamingResponse):
            return _Closing(response, self)
        self.close(response.status_code)
        return response

    def close(self, status: int) -> None:
        """Record the outcome once: counters, histograms, the request log line; in flight no more."""
        if self._done:
            return
        self._done = True
        m, lab, now = self.m, self.labels, time.perf_counter()
        if self.error is not None:
            status = self.error.status
            if self.error.kind in ENGINE_ERROR_KINDS:
                m.engine_errors.labels(**lab, kind=self.error.kind).inc()
            if self.error.kind == "model_output":
                m.tool_calls.labels(**lab, outcome="missing").inc()
        m.inflight.labels(**lab).dec()
        m.requests.labels(**lab, status=str(status)).inc()
        counts = self._counts()
        if status == 200 and counts is not None:
            end = self.last or now
            m.duration.labels(**lab).observe(end - self.t0)
            p, c = counts["prompt_tokens"], counts["completion_tokens"]
            m.isl.labels(**lab).observe(p)
            m.osl.labels(**lab).observe(c)
            m.prompt.labels(**lab).inc(p)
            m.completion.labels(**lab).inc(c)
            m.reasoning.labels(**lab).inc(counts["reasoning_tokens"])
            m.cached.labels(**lab).inc(counts["cached_tokens"])
            if self.first is not None:
                m.ttft.labels(**lab).observe(self.first - self.t0)
                if c >= 2:
                    m.itl.labels(**lab).observe((end - self.first) / (c - 1))
            for outcome, n in self.finish.tool_calls if self.finish is not None else ():
                m.tool_calls.labels(**lab, outcome=outcome).inc(n)
        self._log(status, now, counts)

    def _counts(self) -> dict[str, int] | None:
        f = self.finish
        if f is not None:
            return {"prompt_tokens": f.prompt_tokens, "completion_tokens": f.completion_tokens,
                    "reasoning_tokens": f.reasoning_tokens, "cached_tokens": f.cached_tokens}
        return self.engine_usage

    def _log(self, status: int, now: float, counts: dict[str, int] | None) -> None:
        latency = now - self.t0
        fields: dict[str, Any] = {"request_id": self.request_id, "api": self.api, "model": self.m.model,
                                  "status": status, "latency_s": round(latency, 6), "stream": self.streamed}
        if self.first is not None:
            fields["ttft_s"] = round(self.first - self.t0, 6)
        if counts is not None:
            fields.update(counts)
        if self.error is not None:
            fields["error_kind"] = self.error.kind
        log.info("%s %s %d %.3fs", self.request_id, self.api, status, latency, extra=fields)


class _Closing(Response):
    """A streamed response that closes its tracker once sent: fully, or cut short by the client (status 499).
    Starlette ends a stream whose client left by cancelling it, and this runs either way."""

    def __init__(self, inner: StreamingResponse, tracker: RequestTracker) -> None:
        self.inner, self.tracker = inner, tracker
        self.status_code, self.background = inner.status_code, None
        self.raw_headers = inner.raw_headers
        self.complete = False
        inner.body_iterator = self._watch(inner.body_iterator)

    async def _watch(self, body: AsyncIterable[Any]) -> AsyncIterator[Any]:
        async for chunk in body:
            yield chunk
        self.complete = True

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self.inner(scope, receive, send)
        finally:
            self.tracker.close(self.status_code if self.complete else 499)


def request_id(request: Request) -> str:
    """The client's ``x-request-id`` when it is a short plain token, else a fresh one."""
    given = request.headers.get("x-request-id", "")
    if 0 < len(given) <= 128 and all((c.isascii() and c.isalnum()) or c in "-_.:" for c in given):
        return given
    return uuid.uuid4().hex

