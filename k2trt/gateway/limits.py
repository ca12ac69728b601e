"""Connection limits for the gateway's HTTP server: what a slow or greedy client can hold, and for how long.

uvicorn bounds the rest but not the request head: a client that opens a connection and sends its headers a byte
at a time (slowloris) holds that connection forever, and a head of any size that arrives whole is accepted.
``HeadGuardProtocol`` — uvicorn's h11 protocol plus a timer and a byte count — closes a connection whose request
head (request line and headers) is not complete within ``header_timeout_s`` of connecting or of the previous
response ending, and answers a head larger than ``max_header_bytes`` with 431 before parsing it. The 431's body
carries both APIs' error keys (``{"type": "error", "error": {"type", "message", "code", "param"}}``), since which
API was called is not known yet.

The connection cap is counted as uvicorn's ``limit_concurrency`` counts it (the server's open connections and
requests in flight), but answered by the gateway: uvicorn's own answer is a plain-text 503 that neither SDK can
read as an API error. ``HeadGuardProtocol`` takes the cap over from uvicorn (which then checks nothing) and puts a
check in front of the app: a request beyond it gets a 503 ``overloaded`` in the shape of the API its path names
(``/v1/messages…``: Anthropic's, anything else: OpenAI's) with ``connection: close``, and never reaches the app.

``server_config`` builds the ``uvicorn.Config`` with every limit from ``GatewayConfig``:

=====================  ==================================================================================
``header_timeout_s``   head not complete in time → connection closed (this module)
``max_header_bytes``   head larger → 431, connection closed (this module)
``body_timeout_s``     body not complete in time → 408 (``gateway.body``)
``max_body_bytes``     body larger → 413 (``gateway.body``)
``max_connections``    more open connections or requests in flight → 503 in the API's shape (this module)
=====================  ==================================================================================
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from k2trt.gateway.config import GatewayConfig
from k2trt.gateway.errors import ApiError

log = logging.getLogger("k2trt.gateway")


class HeadGuardProtocol(H11Protocol):
    """uvicorn's h11 protocol that closes a connection whose request head does not arrive in time, and refuses a
    head larger than the limit.

    The deadline (``head_timeout_s``; ``server_config`` makes a subclass with the configured values) runs while the
    connection waits for a request head — from ``connection_made``, and again once a response is complete and bytes
    of a next request start arriving — and stops as soon as h11 has the whole head. The head's bytes are counted up
    to its blank line while they arrive (``max_head_bytes``).
    """

    head_timeout_s: float = GatewayConfig.header_timeout_s
    max_head_bytes: int = GatewayConfig.max_header_bytes

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_seen = 0  # bytes of the current request head so far
        self._head_tail = b""  # its last 3 bytes: a blank line may straddle two reads
        if self.limit_concurrency is not None:  # the cap is checked by _capped, which answers in the API's shape
            self.app = self._capped(self.app, self.limit_concurrency)
            self.limit_concurrency = None

    def _capped(self, app: Any, cap: int) -> Any:
        """``app`` behind the connection cap. It runs as the request's task, so this connection and this task are
        already counted: over the cap means more than ``cap`` of either."""

        async def capped(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] == "http" and (len(self.connections) > cap or len(self.tasks) > cap):
                log.warning("refused a request: %d connections open, %d requests in flight (limit %d)",
                            len(self.connections), len(self.tasks), cap)
                api = "anthropic" if scope["path"].startswith("/v1/messages") else "openai"
                err = ApiError(503, f"the gateway is at its limit of {cap} open connections; retry later",
                               "overloaded")
                response = err.response(api)
                response.headers["connection"] = "close"
                await response(scope, receive, send)
                return
            await app(scope, receive, send)

        return capped

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self.conn.their_state is h11.IDLE:
            if self._head_timer is None:
                self._arm()  # a keep-alive connection starts its next request head
            if self._head_too_large(data):
                return
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self._disarm()  # the head is complete (or the connection is done)
            self._head_seen, self._head_tail = 0, b""

    def _head_too_large(self, data: bytes) -> bool:
        end = (self._head_tail + data).find(b"\r\n\r\n")
        size = self._head_seen + (len(data) if end < 0 else end + 4 - len(self._head_tail))
        self._head_seen, self._head_tail = self._head_seen + len(data), (self._head_tail + data)[-3:]
        if size <= self.max_head_bytes:
            return False
        msg = f"the request head exceeds the gateway's limit of {self.max_head_bytes} bytes; send fewer or " \
              "shorter headers"
        body = json.dumps({"type": "error", "error": {"type": "invalid_request_error", "message": msg,
                                                      "code": "header_too_large", "param": None}}).encode()
        self.transport.write(b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
                             b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
        self._disarm()
        self.transport.close()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._head_timer = self.loop.call_later(self.head_timeout_s, self._head_timed_out)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            log.info("closing a connection from %s: no complete request head within %gs", self.client,
                     self.head_timeout_s)
            self.transport.close()


def server_config(app: Any, config: GatewayConfig, **kwargs: Any) -> Any:
    """The ``uvicorn.Config`` serving ``app`` with ``config``'s connection limits (module docstring).

    Args:
        app: the ASGI application.
        config: the gateway's settings (host, port and limits).
        kwargs: further ``uvicorn.Config`` arguments (log level, lifespan, graceful-shutdown timeout).

    Returns:
        A ``uvicorn.Config``.

    Example:
        >>> uvicorn.Server(server_config(create_app(cfg), cfg, log_level="info")).run()  # doctest: +SKIP
    """
    import uvicorn

    protocol = type("HeadGuardProtocol", (HeadGuardProtocol,), {"head_timeout_s": config.header_timeout_s,
                                                                "max_head_bytes": config.max_header_bytes})
    return uvicorn.Config(app, host=config.host, port=config.port, http=protocol,
                          h11_max_incomplete_event_size=config.max_header_bytes + 1024,
                          limit_concurrency=config.max_connections, **kwargs)
