"""The Starlette application, its routes, and the ways to run it (foreground, or a background thread for the
``k2trt serve`` launcher and tests).

Cross-cutting behaviour, for every API route:

- **Auth**: with API keys configured, ``Authorization: Bearer KEY`` or ``x-api-key: KEY`` (compared in constant
  time); ``/health`` stays open for load balancers.
- **Bodies** (``gateway.body``): size (413), arrival time (408), strict JSON with bounded nesting and valid Unicode
  (400) — parsed off the event loop when large.
- **Connections** (``gateway.limits``): a deadline for each request head, a head size limit, a connection cap.
- **Models**: a ``model`` other than the served name or an alias is a 404 ``model_not_found``.
- **Errors** in the calling API's shape (``errors.ApiError``); a failure before the first streamed byte (engine
  down, for instance) is a real HTTP status, a failure after it an error event in the stream.
- **Client disconnect** cancels the engine request: streaming responses are cancelled by Starlette when the client
  goes away, non-streaming ones are raced against ``http.disconnect`` (``k2trt.asgi``); either way the httpx request
  to the engine is closed, which aborts it there (the reference engine stops generating between decode steps).
- **/health** waits at most ``health_timeout_s`` for the engine, so a hung engine is a prompt 503.
- **Privacy**: prompts and outputs are logged only with ``log_prompts``.
- **Metrics**: every model request is tracked (``metrics.RequestTracker``: in flight, status, latency, tokens from
  the response's ``Finish``, tool-call outcomes, engine errors); ``GET /metrics`` serves them without auth, like
  ``/health``. Each request gets an ``x-request-id`` (the client's, when it sent a plain one).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import threading
import time
from contextlib import asynccontextmanager, suppress
from typing import Any, AsyncIterator, Awaitable, Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from k2trt.asgi import ClientGone, until_disconnect
from k2trt.chat import families as fam
from k2trt.chat.tools_ts import ships_encoder
from k2trt.errors import ConfigError, K2trtError
from k2trt.gateway import anthropic_api, openai_api
from k2trt.gateway.backend import ChatBackend, RenderBackend, sampling
from k2trt.gateway.body import read_json
from k2trt.gateway.config import GatewayConfig
from k2trt.gateway.engine import EngineClient
from k2trt.gateway.errors import Api, ApiError
from k2trt.gateway.events import Event, Job, check_model
from k2trt.gateway.limits import server_config
from k2trt.gateway.metrics import GatewayMetrics, RequestTracker, request_id
from k2trt.spec import ModelSpec

__all__ = ["BackgroundGateway", "ClientGone", "create_app", "run_gateway", "until_disconnect"]
log = logging.getLogger("k2trt.gateway")
_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class _State:
    def __init__(self, config: GatewayConfig, tokenizer: Any, family: fam.Family) -> None:
        self.config = config
        self.tokenizer = tokenizer
        self.family = family
        self.tools_ts = _tools_ts(config, family)
        self.engine: EngineClient | None = None
        self.render: RenderBackend | None = None
        self.chat: ChatBackend | None = None
        self.keys = [k.encode() for k in config.api_keys]
        self.started = time.time()
        self.metrics = GatewayMetrics(config.model_name)

    def backend(self) -> RenderBackend | ChatBackend:
        b = self.render if self.config.mode == "render" else self.chat
        assert b is not None, "lifespan not started"
        return b


def _route(api: Api, *, model: bool = False
           ) -> Callable[[Callable[..., Awaitable[Response]]], Callable[[Request], Awaitable[Response]]]:
    """Wrap a handler: authenticate, and turn every failure into ``api``'s error shape; ``model``: a model
    request, tracked for the metrics (``request.state.track``)."""

    def deco(fn: Callable[..., Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        async def handler(request: Request) -> Response:
            st: _State = request.app.state.k2
            rid = request_id(request)
            track = request.state.track = st.metrics.start(api, rid) if model else None
            try:
                _authenticate(st, request)
                resp = await fn(request, st)
            except ApiError as e:
                if e.status >= 500:
                    log.warning("%s %s -> %d: %s", request.method, request.url.path, e.status, e)
                if track is not None:
                    track.fail(e)
                resp = e.response(api)
            except ClientGone:
                log.info("%s %s: client disconnected; engine request cancelled", request.method, request.url.path)
                resp = Response(status_code=499)
            except Exception:  # a bug: answer in the API's shape, keep the traceback in the log
                log.exception("%s %s failed", request.method, request.url.path)
                resp = ApiError(500, "internal gateway error (see the gateway log)", "internal").response(api)
            resp.headers["x-request-id"] = rid
            return track.end(resp) if track is not None else resp
        return handler
    return deco


def _track(request: Request) -> RequestTracker:
    """The tracker ``_route(model=True)`` opened for this request."""
    track: RequestTracker = request.state.track
    return track


def _authenticate(st: _State, request: Request) -> None:
    if not st.keys:
        return
    auth = request.headers.get("authorization", "")
    given = auth[7:].strip() if auth[:7].lower() == "bearer " else request.headers.get("x-api-key", "")
    if not any(hmac.compare_digest(given.encode(), k) for k in st.keys):
        raise ApiError(401, "missing or invalid API key: send 'Authorization: Bearer KEY' or 'x-api-key: KEY'",
                       "authentication")


async def _read_json(request: Request, st: _State) -> dict[str, Any]:
    return await read_json(request, max_bytes=st.config.max_body_bytes, timeout_s=st.config.body_timeout_s)


async def _stream(request: Request, events: AsyncIterator[Event],
                  render: Callable[[AsyncIterator[Event]], AsyncIterator[str]]) -> Response:
    """Wait for the engine's first answer (so that an engine failure is an HTTP status), then stream."""
    try:
        first = await until_disconnect(request, events.__anext__())
    except StopAsyncIteration:
        first = None

    async def chained() -> AsyncIterator[Event]:
        if first is not None:
            yield first
            async for ev in events:
                yield ev

    return StreamingResponse(render(chained()), media_type="text/event-stream", headers=_SSE_HEADERS)


@_route("openai", model=True)
async def chat_completions(request: Request, st: _State) -> Response:
    body = await _read_json(request, st)
    cfg = st.config
    if cfg.mode == "passthrough":
        return await _passthrough(request, st, body)
    job, include_usage = openai_api.parse_request(body, models=cfg.served_models)
    backend = st.backend()
    if job.stream:
        return await _stream(request, _track(request).stream(backend.stream(job)),
                             lambda evs: openai_api.stream(evs, cfg.model_name, include_usage))
    events = _track(request).collected(await until_disconnect(request, backend.complete(job)))
    return JSONResponse(openai_api.response(events, cfg.model_name, thinks=st.family.thinks))


async def _passthrough(request: Request, st: _State, body: dict[str, Any]) -> Response:
    """Forward /v1/chat/completions to an engine that renders and parses K2 itself: the model and the sampling
    values are checked (a vanishing temperature sent as 0) and the sampling defaults filled in, so both modes sample
    alike; the rest is the engine's to validate."""
    assert st.engine is not None
    check_model(body, st.config.served_models)
    checked = openai_api.sampling_fields(body)  # the engine gets only finite, representable values
    if checked["temperature"] is not None:
        body["temperature"] = checked["temperature"]
    kw = body.get("chat_template_kwargs")
    said = kw.get("thinking", kw.get("enable_thinking")) if isinstance(kw, dict) else None
    thinking = said if isinstance(said, bool) else st.family.thinks
    for key, val in sampling(st.config, st.family, Job(messages=[]), thinking).items():
        body.setdefault(key, val)
    if not body.get("stream"):
        obj = await until_disconnect(request, st.engine.post_json("/v1/chat/completions", body))
        return JSONResponse(_track(request).engine_json(obj))
    cm = st.engine.stream("/v1/chat/completions", body)
    resp = await until_disconnect(request, cm.__aenter__())

    async def relay() -> AsyncIterator[bytes]:
        try:
            async for chunk in _track(request).relay(resp.aiter_raw()):
                yield chunk
        finally:
            with suppress(Exception):
                await cm.__aexit__(None, None, None)

    return StreamingResponse(relay(), media_type="text/event-stream", headers=_SSE_HEADERS)


@_route("anthropic", model=True)
async def messages(request: Request, st: _State) -> Response:
    body = await _read_json(request, st)
    cfg = st.config
    job = anthropic_api.parse_request(body, cfg.anthropic_temperature_scale, models=cfg.served_models)
    backend = st.render if cfg.mode == "render" else st.chat
    assert backend is not None
    if job.stream:
        return await _stream(request, _track(request).stream(backend.stream(job)),
                             lambda evs: anthropic_api.stream(evs, cfg.model_name))
    events = _track(request).collected(await until_disconnect(request, backend.complete(job)))
    return JSONResponse(anthropic_api.response(events, cfg.model_name))


@_route("anthropic")
async def count_tokens(request: Request, st: _State) -> Response:
    body = await _read_json(request, st)
    if st.render is None:
        raise ApiError(404, "token counting needs the K2 tokenizer: start the gateway with --model-dir",
                       "not_found")
    body.setdefault("max_tokens", 1)
    job = anthropic_api.parse_request(body, 1.0, models=st.config.served_models)
    return JSONResponse({"input_tokens": len((await asyncio.to_thread(st.render.prompt, job)).ids)})


@_route("openai")
async def models(request: Request, st: _State) -> Response:
    return JSONResponse({"object": "list", "data": [{"id": st.config.model_name, "object": "model",
                                                     "created": int(st.started), "owned_by": "k2trt"}]})


async def health(request: Request) -> Response:
    """200 when the engine's /health answers 200, else 503 with the reason (no auth: for load balancers)."""
    st: _State = request.app.state.k2
    assert st.engine is not None
    info = {"mode": st.config.mode, "model": st.config.model_name, "chat_family": st.family.name,
            "tool_declaration": "typescript" if st.tools_ts else "json", "engine_url": st.engine.base_url}
    try:
        r = await st.engine.get("/health", timeout_s=st.config.health_timeout_s)
    except ApiError as e:
        return JSONResponse({"status": "unavailable", "engine": str(e), **info}, status_code=503)
    if r.status_code != 200:
        return JSONResponse({"status": "unavailable", "engine": f"engine /health answered {r.status_code}",
                             **info}, status_code=503)
    return JSONResponse({"status": "ok", "engine": "ok", **info, **st.config.extra})


async def metrics(request: Request) -> Response:
    """The Prometheus exposition of this gateway's metrics (no auth, like /health: counts only)."""
    st: _State = request.app.state.k2
    return st.metrics.exposition(request.headers.get("accept"))


async def not_found(request: Request, exc: Exception) -> Response:
    api: Api = "anthropic" if request.url.path.startswith("/v1/messages") else "openai"
    status = getattr(exc, "status_code", 404)
    if status == 405:
        return ApiError(405, f"{request.method} is not allowed on {request.url.path}").response(api)
    return ApiError(404, f"no route {request.method} {request.url.path}; this gateway serves /v1/chat/completions, "
                    "/v1/messages, /v1/models, /health and /metrics", "not_found").response(api)


def _family(config: GatewayConfig) -> fam.Family:
    """The chat family: ``--chat-family``, else detected from the model directory, else K2-Instruct."""
    if config.chat_family:
        return fam.family(config.chat_family)
    if config.model_dir:
        try:
            return fam.from_model_dir(config.model_dir)
        except K2trtError as e:
            raise ConfigError(f"cannot tell the chat family of {config.model_dir}: {e}",
                              "pass --chat-family") from None
    return fam.FAMILIES["k2-instruct"]


def _tools_ts(config: GatewayConfig, family: fam.Family) -> bool:
    """Whether prompts declare tools in TypeScript (``GatewayConfig.tool_declaration``)."""
    if config.tool_declaration == "typescript" and not family.tools_ts:
        raise ConfigError(f"--tool-declaration typescript: {family.name} prompts declare tools as JSON",
                          "drop the option, or serve a K2.5+ family (--chat-family)")
    if config.tool_declaration == "auto":
        return family.tools_ts and bool(config.model_dir and ships_encoder(config.model_dir))
    return config.tool_declaration == "typescript"


def _model_context(config: GatewayConfig) -> int | None:
    """The served model's context (config.json's ``max_position_embeddings``), or None without a readable one."""
    if not config.model_dir:
        return None
    try:
        return ModelSpec.from_config(config.model_dir).max_position_embeddings
    except (K2trtError, OSError, ValueError) as e:
        log.warning("prompt lengths are not checked against the context (%s); pass --max-context", e)
        return None


def create_app(config: GatewayConfig, *, tokenizer: Any = None) -> Starlette:
    """Build the gateway application.

    Args:
        config: the settings (validated here).
        tokenizer: a loaded ``K2Tokenizer`` to reuse [default: loaded from ``config.model_dir``].

    Returns:
        A Starlette app; its lifespan opens and closes the engine client.

    Raises:
        ConfigError: bad settings or an unreadable model directory.

    Example:
        >>> app = create_app(GatewayConfig("http://127.0.0.1:8000", model_dir="/models/tiny-k2"))  # doctest: +SKIP
    """
    config.validate()
    if tokenizer is None and config.model_dir:
        from k2trt.chat.tokenizer import K2Tokenizer

        try:
            tokenizer = K2Tokenizer.from_dir(config.model_dir)
        except Exception as e:  # CheckpointError or a tiktoken failure: one line for the CLI
            raise ConfigError(f"cannot load the K2 tokenizer from {config.model_dir}: {e}") from None
    st = _State(config, tokenizer, _family(config))
    context = config.max_context_tokens or _model_context(config)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        st.engine = EngineClient(config.engine_url, connect_timeout_s=config.connect_timeout_s,
                                 read_timeout_s=config.read_timeout_s)
        if tokenizer is not None:
            st.render = RenderBackend(config, st.engine, tokenizer, st.family, context=context, tools_ts=st.tools_ts)
        st.chat = ChatBackend(config, st.engine, st.family)
        log.info("gateway (%s mode) in front of %s, model %s (%s), context %s tokens, tools declared as %s",
                 config.mode, config.engine_url, config.model_name, st.family.name, context or "unchecked",
                 "TypeScript" if st.tools_ts else "JSON")
        try:
            yield
        finally:
            await st.engine.aclose()

    routes = [Route("/v1/chat/completions", chat_completions, methods=["POST"]),
              Route("/v1/messages", messages, methods=["POST"]),
              Route("/v1/messages/count_tokens", count_tokens, methods=["POST"]),
              Route("/v1/models", models, methods=["GET"]),
              Route("/health", health, methods=["GET"]),
              Route("/metrics", metrics, methods=["GET"])]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={404: not_found, 405: not_found})
    app.state.k2 = st
    return app


def run_gateway(config: GatewayConfig, *, log_level: str = "info") -> None:
    """Serve in the foreground until interrupted (what ``k2trt gateway`` runs); with ``log_format="json"`` this
    process logs JSON lines (``k2trt.jsonlog``) and the per-request line replaces uvicorn's access log."""
    import uvicorn

    kw: dict[str, Any] = {}
    if config.log_format == "json":  # before the app is built: what building it logs is JSON too
        from k2trt.jsonlog import use_json_logs

        use_json_logs(log_level.upper(), static={"component": "gateway"})
        logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per engine call; the request line suffices
        kw = {"log_config": None, "access_log": False}
    app = create_app(config)
    uvicorn.Server(server_config(app, config, log_level=log_level, timeout_graceful_shutdown=5, **kw)).run()


class BackgroundGateway:
    """The gateway on a uvicorn server in a daemon thread — for the ``k2trt serve`` launcher and tests.

    Example:
        >>> with BackgroundGateway(cfg) as gw:   # doctest: +SKIP
        ...     httpx.get(gw.url + "/health")
    """

    def __init__(self, config: GatewayConfig, *, log_level: str = "warning", tokenizer: Any = None) -> None:
        import uvicorn

        self.config = config
        self.app = create_app(config, tokenizer=tokenizer)
        # JSON logs: the process that runs this thread owns the handlers (k2trt.jsonlog.use_json_logs)
        kw: dict[str, Any] = {"log_config": None, "access_log": False} if config.log_format == "json" else {}
        self._server = uvicorn.Server(server_config(self.app, config, log_level=log_level, lifespan="on",
                                                    timeout_graceful_shutdown=3, **kw))
        self._thread = threading.Thread(target=self._server.run, name="k2trt-gateway", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.config.port}"

    def start(self, timeout_s: float = 30.0) -> "BackgroundGateway":
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise ConfigError(f"the gateway did not start on {self.url}",
                                  "is the port free? pick another --port")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)

    def __enter__(self) -> "BackgroundGateway":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
