"""The supervisor's JSON lines (``k2trt.launch.joblog``): a rank's own JSON kept, anything else wrapped with the job
id, rank and stream; the supervising process's own lines and its gateway's, each with their component; the job's
format reaching the ranks (``K2TRT_LOG_FORMAT``), the sbatch script and the detached supervisor. (Under real
mpirun: tests/e2e/test_launch_jsonlogs.py.)"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import sys
from pathlib import Path

from k2trt.launch.joblog import OUTPUT_LOGGER, OutputLines, use_job_logs
from k2trt.launch.mpi import LOG_FORMAT_VAR, MpiFlavor, launch_environ, mpirun_argv
from k2trt.launch.runner import child_argv, child_parser
from k2trt.launch.slurm import sbatch_script
from k2trt.launch.spec import LaunchSpec


def test_text_lines_stay_as_they_are() -> None:
    assert OutputLines("text", "j1", "server")("loading 3 shards", rank=0, stream="stderr") == "loading 3 shards"


def test_plain_lines_are_wrapped_with_job_rank_and_stream() -> None:
    lines = OutputLines("json", "j1", "server")
    obj = json.loads(lines("[TRT-LLM] [I] Loading weights: 50%", rank=3, stream="stderr"))
    assert (obj["msg"], obj["job_id"], obj["rank"], obj["stream"], obj["job"], obj["logger"], obj["level"]) == (
        "[TRT-LLM] [I] Loading weights: 50%", "j1", 3, "stderr", "server", OUTPUT_LOGGER, "INFO")
    launcher = json.loads(lines("prterun noticed that process rank 1 exited"))  # mpirun's own, untagged
    assert launcher["job_id"] == "j1" and "rank" not in launcher and "stream" not in launcher
    for odd in ("{not json", "[1, 2]", '"a string"', ""):  # JSON but not an object, or not JSON: wrapped
        assert json.loads(lines(odd, rank=0))["msg"] == odd


def test_a_ranks_own_json_is_kept_and_only_completed() -> None:
    lines = OutputLines("json", "j1", "server")
    own = '{"ts":"t","level":"INFO","msg":"loaded","job_id":"j1","rank":1,"component":"engine"}'
    assert lines(own, rank=1, stream="stderr") == own  # not re-wrapped, not re-serialised
    partial = json.loads(lines('{"msg":"from a library","n":2}', rank=1))
    assert partial == {"msg": "from a library", "n": 2, "job_id": "j1", "rank": 1}
    assert json.loads(lines('{"msg":"x","rank":7}', rank=1))["rank"] == 7  # its own rank field wins


def test_the_supervising_process_logs_its_lines_and_its_gateways_apart() -> None:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    names = ("k2trt.gateway", "uvicorn", "uvicorn.error", "uvicorn.access", "httpx")
    kept = {n: (list(logging.getLogger(n).handlers), logging.getLogger(n).propagate, logging.getLogger(n).level)
            for n in names}
    hook, buf = sys.excepthook, io.StringIO()
    try:
        use_job_logs("text", "j1", stream=buf)  # text: nothing changes
        assert root.handlers == saved[0]
        use_job_logs("json", "j1", stream=buf)
        logging.getLogger("k2trt.launch").info("ready: %s", "http://x")
        logging.getLogger("k2trt.gateway.requests").info("r1 openai 200", extra={"status": 200})
        logging.getLogger("uvicorn.error").warning("bound")
        logging.getLogger("httpx").info("a line per engine call")
    finally:
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        for n, (handlers, propagate, level) in kept.items():
            lg = logging.getLogger(n)
            lg.handlers[:], lg.propagate = handlers, propagate
            lg.setLevel(level)
        sys.excepthook = hook
        logging.captureWarnings(False)
    objs = [json.loads(x) for x in buf.getvalue().splitlines()]
    assert [(o["component"], o["msg"]) for o in objs] == [("launcher", "ready: http://x"),
                                                          ("gateway", "r1 openai 200"), ("gateway", "bound")]
    assert all(o["job_id"] == "j1" for o in objs) and objs[1]["status"] == 200



def test_the_log_format_reaches_ranks_the_watchdog_and_the_detached_supervisor() -> None:
    """A JSON job exports K2TRT_LOG_FORMAT to every rank (mpirun -x, the sbatch script); a text job exports none
    and hides a value the caller's environment holds."""
    spec = LaunchSpec(argv=("python", "srv.py"), world_size=2, oversubscribe=True, log_format="json")
    argv = mpirun_argv(spec, MpiFlavor("openmpi", (5, 0)), euid=1000, environ={})
    assert LOG_FORMAT_VAR in [argv[i + 1] for i, a in enumerate(argv) if a == "-x"]
    assert launch_environ({LOG_FORMAT_VAR: "text"}, spec, "j")[LOG_FORMAT_VAR] == "json"
    text = dataclasses.replace(spec, log_format="text")
    assert LOG_FORMAT_VAR not in launch_environ({LOG_FORMAT_VAR: "json"}, text, "j")
    assert LOG_FORMAT_VAR not in mpirun_argv(text, MpiFlavor("openmpi", (5, 0)), euid=1000, environ={})
    assert f"export {LOG_FORMAT_VAR}=json" in sbatch_script(dataclasses.replace(spec, world_size=2), Path("/b"))
    a = child_parser().parse_args(child_argv(Path("/b/launch.json"), "mpirun", "j1", log_format="json")[3:])
    assert a.log_format == "json"
    assert child_parser().parse_args(child_argv(Path("/b/launch.json"), "mpirun", "j1")[3:]).log_format is None
