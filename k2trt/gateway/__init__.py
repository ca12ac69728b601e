"""OpenAI + Anthropic HTTP front for a K2 engine (Starlette + uvicorn, httpx to the engine).

Owns: request validation, K2 prompt rendering to token ids and tool-call parsing (``render`` mode, for engines
without a K2 tool parser), forwarding (``passthrough`` mode), the two APIs' wire formats and error shapes, auth,
body and connection limits (``body``, ``limits``), engine timeouts and cancellation. Uses ``k2trt.chat`` for the tokenizer, template and parser.
Must not import torch (it runs beside the engine and on login nodes).

Public API: ``GatewayConfig``, ``create_app(config)``, ``run_gateway(config)``, ``BackgroundGateway(config)``.
"""

from __future__ import annotations

from typing import Any

from k2trt.gateway.config import GatewayConfig

__all__ = ["GatewayConfig", "create_app", "run_gateway", "BackgroundGateway"]


def __getattr__(name: str) -> Any:
    # starlette/uvicorn are imported only when the app is actually built
    if name in ("create_app", "run_gateway", "BackgroundGateway"):
        from k2trt.gateway import app

        return getattr(app, name)
    raise AttributeError(name)
