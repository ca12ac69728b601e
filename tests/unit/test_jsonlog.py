"""``k2trt.jsonlog``: one JSON object per line, static and per-record fields, tracebacks, odd values."""

from __future__ import annotations

import io
import json
import logging
import re
import subprocess
import sys

from k2trt.jsonlog import JsonFormatter, json_handler, use_json_logs


def test_json_formatter_one_object_per_line() -> None:
    buf = io.StringIO()
    lg = logging.getLogger("k2trt.test.jsonlog")
    lg.propagate = False
    lg.handlers = [json_handler(buf, static={"component": "gateway", "rank": 0})]
    lg.setLevel(logging.INFO)
    lg.info("request %s done", "r1", extra={"request_id": "r1", "status": 200, "obj": object(), "rank": 3})
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        lg.exception("failed")
    lines = buf.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(x) for x in lines)
    assert first["msg"] == "request r1 done" and first["level"] == "INFO" and first["logger"] == "k2trt.test.jsonlog"
    assert first["request_id"] == "r1" and first["status"] == 200 and first["component"] == "gateway"
    assert first["rank"] == 3  # the record's own field wins over a static one
    assert first["obj"].startswith("<object") and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["ts"])
    assert second["level"] == "ERROR" and "ValueError: boom" in second["exc"] and second["rank"] == 0
    assert JsonFormatter().format(logging.LogRecord("x", 20, "", 0, "plain", (), None)).count("\n") == 0


def test_use_json_logs_routes_the_root_and_uvicorn_loggers() -> None:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    uv = logging.getLogger("uvicorn.error")
    uv_saved = (list(uv.handlers), uv.propagate, uv.level, uv.disabled)
    buf = io.StringIO()
    try:
        uv.addHandler(logging.StreamHandler(io.StringIO()))
        uv.propagate, uv.disabled = False, True  # as a dictConfig with disable_existing_loggers leaves it
        uv.setLevel(logging.NOTSET)  # an earlier in-process uvicorn may have raised it; not what this test is about
        use_json_logs("INFO", stream=buf, static={"component": "x"})
        logging.getLogger("k2trt.anything").info("a", extra={"n": 1})
        uv.info("b")
        logging.getLogger("k2trt.anything").debug("not at INFO")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        uv.handlers[:], uv.propagate = uv_saved[:2]
        uv.setLevel(uv_saved[2])
        uv.disabled = uv_saved[3]
    objs = [json.loads(x) for x in buf.getvalue().splitlines()]
    assert [(o["logger"], o["msg"]) for o in objs] == [("k2trt.anything", "a"), ("uvicorn.error", "b")]
    assert objs[0]["n"] == 1 and all(o["component"] == "x" for o in objs)


def test_an_uncaught_exception_and_a_warning_are_json_lines() -> None:
    code = ("import warnings\nfrom k2trt.jsonlog import use_json_logs\nuse_json_logs(static={'rank': 1})\n"
            "warnings.warn('old API')\nraise ValueError('boom')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    objs = [json.loads(x) for x in r.stderr.splitlines()]  # every line is JSON: no bare traceback
    assert r.returncode == 1 and len(objs) == 2 and all(o["rank"] == 1 for o in objs)
    assert objs[0]["logger"] == "py.warnings" and "old API" in objs[0]["msg"]
    assert objs[1]["level"] == "CRITICAL" and "ValueError: boom" in objs[1]["exc"]
