"""The job's logs as JSON lines (``LaunchSpec.log_format: json``): every line of every log a job writes is one JSON
object carrying the job id (``job_id``), and a rank's lines its rank (``rank``).

Who writes what, so that this holds (the formatter is ``k2trt.jsonlog``'s, for every process):

- **Ranks** log JSON themselves: the launcher exports ``K2TRT_LOG_FORMAT`` and ``K2TRT_JOB_ID`` to every rank
  (``launch.mpi``), and a rank that can (the reference server) puts its job id and rank on every line. mpirun's
  ``--tag-output`` prefix (``[job,rank]<stream>:``) stays outside the JSON; the supervisor strips it, as in text mode,
  to file the line per rank — and does not re-wrap it: a line that already is a JSON object is written as it is
  (``job_id``/``rank`` added only if missing).
- **Anything else a rank or the launcher prints** (TensorRT-LLM's own log lines, a C++ library's warnings, mpirun's
  messages) is wrapped by the supervisor: ``{"ts", "level": "INFO", "logger": "k2trt.launch.output", "msg": <the
  line>, "job_id", "job": <command name>, "rank"?, "stream"?}`` (``OutputLines``).
- **The supervising process** (``k2trt serve`` in the foreground, the detached supervisor) logs through the root
  logger with ``component: launcher``, and the gateway it runs through its own handler with ``component: gateway``
  (``use_job_logs``); the watchdog with ``component: watchdog``.

What a line may hold is its writer's decision (``k2trt.jsonlog``): no component logs request bodies, so prompt text
is in no line (the gateway's ``--log-prompts`` is not a bundle setting).
"""

from __future__ import annotations

import json
import logging
import sys
from typing import IO, Any

from k2trt.jsonlog import JsonFormatter, LogFormat, json_handler, use_json_logs

OUTPUT_LOGGER = "k2trt.launch.output"
"""The logger name of a wrapped output line."""
_GATEWAY_LOGGERS = ("k2trt.gateway", "uvicorn", "uvicorn.error", "uvicorn.access")


class OutputLines:
    """How the supervisor writes the lines a command prints into its log files (and onto the console).

    Args:
        log_format: ``text`` keeps each line as it is; ``json`` makes each one a JSON object (module docstring).
        job_id: the job's id, on every JSON line.
        job: the command's name (``server``, ``ctx0``, ``router``).

    Example:
        >>> json.loads(OutputLines("json", "ab12", "server")("loading", rank=1, stream="stderr"))["rank"]
        1
    """

    def __init__(self, log_format: LogFormat, job_id: str | None, job: str) -> None:
        self.json = log_format == "json"
        self.job_id = job_id
        self._fmt = JsonFormatter({k: v for k, v in (("job_id", job_id), ("job", job)) if v is not None})

    def __call__(self, text: str, rank: int | None = None, stream: str | None = None) -> str:
        """The line to write for ``text``, printed by ``rank`` (None: the launcher itself) on ``stream``."""
        if not self.json:
            return text
        obj = _json_object(text)
        if obj is not None:  # the rank logged JSON itself: keep its line, add only what it lacks
            missing = {k: v for k, v in (("job_id", self.job_id), ("rank", rank)) if v is not None and k not in obj}
            return text if not missing else json.dumps({**obj, **missing}, ensure_ascii=False, default=str,
                                                       separators=(",", ":"))
        record = logging.LogRecord(OUTPUT_LOGGER, logging.INFO, "", 0, text, None, None)
        if rank is not None:
            record.rank = rank
        if stream is not None:
            record.stream = stream
        return self._fmt.format(record)


def _json_object(text: str) -> dict[str, Any] | None:
    if not text.startswith("{"):
        return None
    try:
        obj = json.loads(text)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def use_job_logs(log_format: LogFormat, job_id: str, stream: IO[str] | None = None) -> None:
    """Make the supervising process log in the job's format: for ``json``, JSON lines on ``stream`` (stderr) with the
    job id, ``component: launcher`` on its own lines and ``component: gateway`` on the gateway's; for ``text``, no
    change. Called once by the process's entry (``k2trt serve``, the detached supervisor).

    Args:
        log_format: the job's log format.
        job_id: the job's id.
        stream: where lines go [default: stderr].
    """
    if log_format != "json":
        return
    stream = stream if stream is not None else sys.stderr
    use_json_logs(logging.INFO, stream=stream, static={"job_id": job_id, "component": "launcher"})
    gateway = json_handler(stream, static={"job_id": job_id, "component": "gateway"})
    for name in _GATEWAY_LOGGERS:
        lg = logging.getLogger(name)
        lg.handlers[:] = [gateway]
        lg.propagate = False
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per engine call; the request line suffices
