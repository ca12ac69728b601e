"""ASGI helpers shared by the gateway and the reference engine's HTTP server.

``until_disconnect`` races a request's work against the client going away, so that an abandoned request stops
costing anything: the gateway closes its engine connection, and the engine stops generating (it checks between
decode steps). Streaming responses need no help: Starlette cancels the body iterator on ``http.disconnect``.
"""

from __future__ import annotations

import asyncio
from contextlib import suppress
from typing import Any, Awaitable, TypeVar

T = TypeVar("T")


class ClientGone(Exception):
    """The client disconnected before the answer was ready."""


async def until_disconnect(request: Any, work: Awaitable[T]) -> T:
    """Await ``work``, cancelling it if the client disconnects first.

    Args:
        request: a Starlette ``Request`` whose body has been read already (this consumes its ``receive``).
        work: the awaitable producing the answer.

    Returns:
        ``work``'s result.

    Raises:
        ClientGone: the client disconnected first (``work`` has been cancelled).

    Example:
        >>> text = await until_disconnect(request, engine.complete(job))  # doctest: +SKIP
    """
    task = asyncio.ensure_future(work)

    async def watch() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(watch())
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        watcher.cancel()
        raise
    if task in done:
        watcher.cancel()
        return task.result()
    task.cancel()
    with suppress(asyncio.CancelledError, Exception):
        await task
    raise ClientGone()
