"""Reading a request body into a JSON object, with every limit a hostile client could push against.

- **Size**: a ``Content-Length`` above the limit is refused before reading; a chunked body is counted as it arrives
  (413 either way).
- **Time**: the whole body must arrive within ``body_timeout_s`` of the request head — a ``Content-Length`` larger
  than what is sent, or a body trickled a byte at a time, gets a 408 instead of holding a connection forever.
- **Strict JSON**: ``NaN``/``Infinity`` literals are refused (not JSON, and they would reach a sampler); nesting is
  bounded (``MAX_DEPTH``), so a deeply nested body is a 400, not a recursion failure deep inside a handler.
- **Valid Unicode**: a lone surrogate escape (``"\\ud800"``) anywhere — a stop sequence, a tool name, a message —
  is a 400 here, before it can fail to encode on the way to the engine.
- **Off the event loop**: parsing and checking a large body runs in a worker thread, so one 30 MiB request does not
  stall every other connection.

Every failure is an ``ApiError`` (a 4xx in the calling API's shape).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from starlette.requests import ClientDisconnect

from k2trt.asgi import ClientGone
from k2trt.gateway.errors import ApiError, bad_request

MAX_DEPTH = 128
"""Deepest nesting of objects and arrays accepted (a tool's JSON schema nests a few dozen levels at most)."""
_THREAD_ABOVE = 256 * 1024  # bodies larger than this are parsed in a worker thread


async def read_json(request: Any, *, max_bytes: int, timeout_s: float) -> dict[str, Any]:
    """The request's body as a JSON object, within the limits in the module docstring.

    Args:
        request: the Starlette request.
        max_bytes: largest body accepted.
        timeout_s: seconds for the whole body to arrive.

    Returns:
        The parsed object.

    Raises:
        ApiError: 413 too large, 408 too slow, 400 not a strict, bounded, valid-Unicode JSON object.

    Example:
        >>> body = await read_json(request, max_bytes=32 * 2**20, timeout_s=60)  # doctest: +SKIP
    """
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise ApiError(413, f"request body of {int(declared)} bytes exceeds the gateway's limit of {max_bytes} bytes",
                       "too_large")
    chunks: list[bytes] = []

    async def receive() -> None:
        n = 0
        async for c in request.stream():
            n += len(c)
            if n > max_bytes:
                raise ApiError(413, f"request body exceeds the gateway's limit of {max_bytes} bytes", "too_large")
            chunks.append(c)

    try:
        await asyncio.wait_for(receive(), timeout_s)
    except ClientDisconnect:
        raise ClientGone() from None
    except asyncio.TimeoutError:
        got = sum(len(c) for c in chunks)
        raise ApiError(408, f"the request body did not arrive within {timeout_s:g}s ({got} of "
                       f"{declared or 'an unknown number of'} bytes came); send the whole body at once",
                       "request_timeout") from None
    raw = b"".join(chunks)
    if len(raw) > _THREAD_ABOVE:
        return await asyncio.to_thread(parse, raw)
    return parse(raw)


def parse(raw: bytes) -> dict[str, Any]:
    """``raw`` as a strict JSON object with bounded nesting and valid Unicode (``ApiError`` 400 otherwise).

    Example:
        >>> parse(b'{"a": [1, "x"]}')
        {'a': [1, 'x']}
    """
    try:
        body = json.loads(raw, parse_constant=_no_constant)
    except RecursionError:
        raise bad_request(f"request body nests deeper than {MAX_DEPTH} levels") from None
    except ValueError as e:  # includes UnicodeDecodeError and integers beyond Python's digit limit
        raise bad_request(f"request body is not valid JSON ({_first_line(e)})") from None
    if not isinstance(body, dict):
        raise bad_request("request body must be a JSON object")
    _check_tree(body)
    return body


def _check_tree(body: Any) -> None:
    stack: list[tuple[Any, int]] = [(body, 1)]
    while stack:  # iterative: the depth check must not itself recurse
        value, depth = stack.pop()
        if isinstance(value, str):
            _check_text(value)
        elif isinstance(value, (dict, list)):
            if depth > MAX_DEPTH:
                raise bad_request(f"request body nests deeper than {MAX_DEPTH} levels")
            if isinstance(value, dict):
                for k, v in value.items():
                    _check_text(k)
                    stack.append((v, depth + 1))
            else:
                stack.extend((v, depth + 1) for v in value)


def _check_text(s: str) -> None:
    if s.isascii():
        return
    try:
        s.encode("utf-8")
    except UnicodeEncodeError as e:
        bad = s[e.start]
        raise bad_request(f"request body holds a lone surrogate (\\u{ord(bad):04x}), which is not valid Unicode; "
                          "send UTF-8 text") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _first_line(e: Exception) -> str:
    return str(e).splitlines()[0][:200] if str(e) else type(e).__name__
