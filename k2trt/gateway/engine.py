"""The engine side: one pooled async HTTP client for ``trtllm-serve`` (or the reference engine), with every
transport failure translated into an ``ApiError`` the client can act on.

Mapping (reference/trtllm.md §1.3: the engine refuses connections until its model is loaded):
connection refused → 503, timeout → 504, an engine 5xx or a broken stream → 502, an engine 4xx → 400 carrying
the engine's message (a prompt longer than the context, for instance). A cancelled caller closes the engine
connection, which is how a client disconnect reaches the engine.
"""

from __future__ import annotations

import json
import logging
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

import httpx

from k2trt.gateway.errors import ApiError

log = logging.getLogger("k2trt.gateway")


def _engine_message(resp_text: str) -> str:
    """The human part of an engine error body (TensorRT-LLM ``{"message"}``, FastAPI ``{"detail"}``, OpenAI)."""
    try:
        obj = json.loads(resp_text)
    except ValueError:
        return resp_text.strip()[:500] or "(empty body)"
    if isinstance(obj, dict):
        err = obj.get("error")
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        for key in ("message", "detail", "error"):
            if obj.get(key):
                return str(obj[key])
    return resp_text.strip()[:500]


class EngineClient:
    """Async client for the engine's OpenAI-compatible server.

    Args:
        base_url: e.g. ``http://127.0.0.1:8000``.
        connect_timeout_s: seconds to connect before 503.
        read_timeout_s: seconds between bytes before 504.
    """

    def __init__(self, base_url: str, *, connect_timeout_s: float = 5.0, read_timeout_s: float = 600.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.read_timeout_s = read_timeout_s
        timeout = httpx.Timeout(read_timeout_s, connect=connect_timeout_s, pool=read_timeout_s)
        limits = httpx.Limits(max_connections=1024, max_keepalive_connections=256)
        self._client = httpx.AsyncClient(base_url=self.base_url, timeout=timeout, limits=limits)

    async def aclose(self) -> None:
        await self._client.aclose()

    def _transport_error(self, e: Exception, path: str) -> ApiError:
        if isinstance(e, (httpx.ConnectError, httpx.ConnectTimeout)):
            return ApiError(503, f"the engine at {self.base_url} is not reachable ({type(e).__name__}); it may "
                            "still be loading the model — retry, or check it with `k2trt status`",
                            "engine_unavailable")
        if isinstance(e, httpx.TimeoutException):
            return ApiError(504, f"the engine did not answer {path} within {self.read_timeout_s:g}s; raise "
                            "--read-timeout or lower max_tokens", "timeout")
        return ApiError(502, f"the engine connection failed during {path}: {type(e).__name__}: {e}",
                        "engine_error")

    def _status_error(self, status: int, text: str, path: str) -> ApiError:
        msg = _engine_message(text)
        if status == 404:
            return ApiError(502, f"the engine has no {path} (404); is --engine-url the engine's base URL?",
                            "engine_error")
        if status == 503:
            return ApiError(503, f"the engine is unavailable: {msg}", "engine_unavailable")
        if 400 <= status < 500:
            return ApiError(400, f"the engine rejected the request: {msg}", "invalid_request")
        return ApiError(502, f"the engine failed ({status}): {msg}", "engine_error")

    async def get(self, path: str, *, timeout_s: float | None = None) -> httpx.Response:
        """GET ``path``; the raw response (any status). Transport failures raise ``ApiError``; ``timeout_s``
        bounds the whole call (a probe must not wait as long as a generation may)."""
        try:
            if timeout_s is None:
                return await self._client.get(path)
            return await self._client.get(path, timeout=httpx.Timeout(timeout_s))
        except httpx.HTTPError as e:
            if timeout_s is not None and isinstance(e, httpx.TimeoutException) \
                    and not isinstance(e, httpx.ConnectTimeout):
                raise ApiError(504, f"the engine did not answer {path} within {timeout_s:g}s (hung or "
                               "overloaded)", "timeout") from None
            raise self._transport_error(e, path) from None

    async def post_json(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST ``body`` and return the JSON answer; any failure raises ``ApiError``."""
        try:
            resp = await self._client.post(path, json=body)
        except httpx.HTTPError as e:
            raise self._transport_error(e, path) from None
        if resp.status_code != 200:
            raise self._status_error(resp.status_code, resp.text, path)
        try:
            obj = resp.json()
        except ValueError:
            raise ApiError(502, f"the engine answered {path} with non-JSON", "engine_error") from None
        if not isinstance(obj, dict):
            raise ApiError(502, f"the engine answered {path} with {type(obj).__name__}, not an object",
                           "engine_error")
        return obj

    @asynccontextmanager
    async def stream(self, path: str, body: dict[str, Any]) -> AsyncIterator[httpx.Response]:
        """POST ``body`` with a streamed answer; yields the open 200 response. Leaving the block (including by
        cancellation) closes the connection, which aborts the request on the engine."""
        try:
            async with self._client.stream("POST", path, json=body) as resp:
                if resp.status_code != 200:
                    text = (await resp.aread()).decode("utf-8", "replace")
                    raise self._status_error(resp.status_code, text, path)
                yield resp
        except httpx.HTTPError as e:
            raise self._transport_error(e, path) from None

    async def sse_json(self, path: str, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """POST ``body`` (``stream: true``) and yield each ``data:`` JSON object until ``[DONE]``."""
        async with self.stream(path, body) as resp:
            try:
                async for line in resp.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    payload = line[5:].strip()
                    if payload == "[DONE]":
                        return
                    try:
                        obj = json.loads(payload)
                    except ValueError:
                        raise ApiError(502, f"the engine sent a malformed stream event: {payload[:200]!r}",
                                       "engine_error") from None
                    if isinstance(obj, dict) and (obj.get("object") == "error" or "error" in obj):
                        raise ApiError(502, f"the engine failed mid-stream: {_engine_message(payload)}",
                                       "engine_error")
                    yield obj
            except httpx.HTTPError as e:
                raise self._transport_error(e, path) from None
