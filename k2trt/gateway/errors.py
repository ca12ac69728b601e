"""Errors the gateway answers with, and their two wire shapes.

One ``ApiError`` carries an HTTP status and a kind; the OpenAI routes render it as ``{"error": {...}}`` and the
Anthropic routes as ``{"type": "error", "error": {...}}``, so each SDK raises its own typed exception. The OpenAI
``code`` is the kind, so an unknown model is OpenAI's own 404 ``model_not_found`` and an over-long prompt its 400
``context_length_exceeded``; Anthropic answers an unknown model with a 404 ``not_found_error``.
"""

from __future__ import annotations

import json
from typing import Literal

from starlette.responses import Response

from k2trt.errors import GatewayError

Kind = Literal["invalid_request", "authentication", "not_found", "model_not_found", "too_large",
               "context_length_exceeded", "request_timeout", "overloaded", "engine_unavailable", "engine_error",
               "timeout", "model_output", "internal"]
Api = Literal["openai", "anthropic"]

_OPENAI_TYPE = {"invalid_request": "invalid_request_error", "authentication": "authentication_error",
                "not_found": "not_found_error", "model_not_found": "invalid_request_error",
                "too_large": "invalid_request_error", "context_length_exceeded": "invalid_request_error",
                "request_timeout": "invalid_request_error", "overloaded": "server_error",
                "engine_unavailable": "server_error", "engine_error": "server_error", "timeout": "server_error",
                "model_output": "server_error", "internal": "server_error"}
_ANTHROPIC_TYPE = {"invalid_request": "invalid_request_error", "authentication": "authentication_error",
                   "not_found": "not_found_error", "model_not_found": "not_found_error",
                   "too_large": "request_too_large", "context_length_exceeded": "invalid_request_error",
                   "request_timeout": "invalid_request_error", "overloaded": "overloaded_error",
                   "engine_unavailable": "api_error", "engine_error": "api_error", "timeout": "api_error",
                   "model_output": "api_error", "internal": "api_error"}


class ApiError(GatewayError):
    """A request the gateway answers with an error status.

    Args:
        status: HTTP status (400, 401, 404, 408, 413, 502, 503, 504, 500).
        message: one line naming the cause and, where there is one, the fix.
        kind: what went wrong, mapped to each API's error ``type``.
        param: the offending request field, for OpenAI's ``param``.
    """

    def __init__(self, status: int, message: str, kind: Kind = "invalid_request", param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.kind: Kind = kind
        self.param = param

    def openai_body(self) -> dict[str, object]:
        return {"error": {"message": str(self), "type": _OPENAI_TYPE[self.kind], "param": self.param,
                          "code": self.kind}}

    def anthropic_body(self) -> dict[str, object]:
        return {"type": "error", "error": {"type": _ANTHROPIC_TYPE[self.kind], "message": str(self)}}

    def body(self, api: Api) -> dict[str, object]:
        return self.openai_body() if api == "openai" else self.anthropic_body()

    def response(self, api: Api) -> Response:
        # ASCII-escaped, so that no text in a message (a client's value, say) can fail to encode
        return Response(json.dumps(self.body(api)), status_code=self.status, media_type="application/json")

    def sse(self, api: Api) -> str:
        """The error as one server-sent event, for failures after a stream has started."""
        data = json.dumps(self.body(api))
        return f"event: error\ndata: {data}\n\n" if api == "anthropic" else f"data: {data}\n\n"


def bad_request(message: str, param: str | None = None) -> ApiError:
    """A 400 for a malformed request."""
    return ApiError(400, message, "invalid_request", param)
