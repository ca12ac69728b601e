"""Structured logs: one JSON object per line, for any k2trt process (the gateway, the launcher).

A record becomes ``{"ts", "level", "logger", "msg", <static fields>, <the record's extra fields>, "exc"?}``:

- ``ts`` is UTC ISO-8601 with milliseconds; ``msg`` is the formatted message;
- *static* fields are fixed per process and given to the formatter (the launcher's job id and rank, for instance);
- *extra* fields are whatever the call site passed with ``log.info("…", extra={...})`` (the gateway's request id,
  API, status and latency); values that JSON cannot hold are written with ``str``;
- ``exc`` is the formatted traceback when the record carries one.

What goes into a record is the call site's decision: this module adds nothing from the environment and never reads
request bodies, so a line holds prompt text or a key only if a call site put it there. Standard library only, so
any module can import it.

The choice between the two formats is ``LogFormat``, defaulting to ``DEFAULT_LOG_FORMAT`` — stated here once for the
gateway (``GatewayConfig.log_format``), recipes (``serve.log_format``) and launch specs (``LaunchSpec.log_format``).
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone
from types import TracebackType
from typing import IO, Any, Literal, Mapping

__all__ = ["DEFAULT_LOG_FORMAT", "LOG_FORMATS", "JsonFormatter", "LogFormat", "json_handler", "use_json_logs"]

LogFormat = Literal["text", "json"]
"""``text``: each program's usual lines; ``json``: one JSON object per line (this module)."""
LOG_FORMATS: tuple[str, ...] = ("text", "json")
DEFAULT_LOG_FORMAT: LogFormat = "text"

# Attributes every LogRecord has; anything else on a record came from ``extra=`` (uvicorn adds an ANSI-coloured
# copy of its message as color_message: not data).
_STANDARD = (frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__)
             | {"message", "asctime", "taskName", "color_message"})


class JsonFormatter(logging.Formatter):
    """Formats a record as one line of JSON (module docstring).

    Args:
        static: fields put on every line (e.g. ``{"job_id": "…", "rank": 0}``); a record's own extra field of the
            same name wins.

    Example:
        >>> h = logging.StreamHandler(); h.setFormatter(JsonFormatter({"rank": 0}))  # doctest: +SKIP
    """

    def __init__(self, static: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.static = dict(static or {})

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds")
        out: dict[str, Any] = {"ts": ts.replace("+00:00", "Z"), "level": record.levelname, "logger": record.name,
                               "msg": record.getMessage(), **self.static}
        for key, val in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = val
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc"] = record.exc_text
        return json.dumps(out, ensure_ascii=False, default=str, separators=(",", ":"))


def json_handler(stream: IO[str] | None = None, static: Mapping[str, Any] | None = None) -> logging.Handler:
    """A stream handler (stderr by default) writing ``JsonFormatter`` lines."""
    h = logging.StreamHandler(stream if stream is not None else sys.stderr)
    h.setFormatter(JsonFormatter(static))
    return h


def use_json_logs(level: int | str = logging.INFO, *, stream: IO[str] | None = None,
                  static: Mapping[str, Any] | None = None) -> logging.Handler:
    """Make this process log JSON lines: one ``json_handler`` on the root logger (replacing its handlers), the
    loggers that install their own handlers (uvicorn's) routed to it, Python's warnings logged (``py.warnings``),
    and an uncaught exception logged as one record with its traceback in ``exc`` instead of printed as text.

    Call it once, from the process's entry point (a library module must not configure logging).

    Args:
        level: the root logger's level.
        stream: where lines go [default: stderr].
        static: fields on every line (see ``JsonFormatter``).

    Returns:
        The installed handler.

    Example:
        >>> use_json_logs("INFO", static={"component": "gateway"})  # doctest: +SKIP
    """
    handler = json_handler(stream, static)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        lg = logging.getLogger(name)
        for old in list(lg.handlers):
            lg.removeHandler(old)
        lg.propagate = True
        lg.disabled = False  # a dictConfig elsewhere (disable_existing_loggers) must not silence them
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught
    return handler


def _log_uncaught(et: type[BaseException], e: BaseException, tb: TracebackType | None) -> None:
    if issubclass(et, KeyboardInterrupt):
        sys.__excepthook__(et, e, tb)
        return
    logging.getLogger("k2trt").critical("uncaught %s, exiting", et.__name__, exc_info=(et, e, tb))
