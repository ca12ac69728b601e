"""The job's watchdog as a real process reading a real pipe: end-of-file without ``done`` ends the sessions it was
told about (only while their leaders are the recorded processes); ``done`` ends nothing. The "job" here is a
plain ``sleep`` in its own session — the watchdog knows nothing of MPI (tests/e2e/test_launch_edges.py kills a real
supervisor of a real mpirun job)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from k2trt.launch import procs
from k2trt.launch.watchdog import watchdog_argv


def _sleeper() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)


def _watchdog(lines: list[str], log_format: str = "text") -> subprocess.Popen[bytes]:
    """Start the watchdog, write ``lines`` to it, and close the write end (as a dying supervisor's kernel does)."""
    r, w = os.pipe()
    dog = subprocess.Popen(watchdog_argv(r, 2.0, log_format, "0123456789abcdef"),  # type: ignore[arg-type]
                           pass_fds=(r,), stderr=subprocess.PIPE, start_new_session=True)
    os.close(r)
    with os.fdopen(w, "w") as pipe:
        pipe.write("".join(line + "\n" for line in lines))
    return dog


def _gone(p: subprocess.Popen[bytes], timeout: float = 10.0) -> bool:
    try:
        p.wait(timeout=timeout)
        return True
    except subprocess.TimeoutExpired:
        return False


def test_end_of_file_ends_the_job_and_done_ends_nothing() -> None:
    job, kept = _sleeper(), _sleeper()
    try:
        dog = _watchdog(["job 0123456789abcdef", f"sid {kept.pid} {procs.start_time(kept.pid)}", "done"])
        assert dog.wait(timeout=10) == 0 and not _gone(kept, 0.5)
        t0 = time.monotonic()
        dog = _watchdog(["job 0123456789abcdef", f"sid {job.pid} {procs.start_time(job.pid)}"])
        assert _gone(job) and dog.wait(timeout=10) == 0
        assert time.monotonic() - t0 < 5.0 and b"ended 1 process(es) of the job" in dog.stderr.read()
    finally:
        for p in (job, kept):
            p.kill()
            p.wait()


def test_a_recycled_session_leader_is_left_alone() -> None:
    stranger = _sleeper()
    try:
        dog = _watchdog([f"sid {stranger.pid} {(procs.start_time(stranger.pid) or 0) - 1}"])  # another start time
        assert dog.wait(timeout=10) == 0 and not _gone(stranger, 0.5)
    finally:
        stranger.kill()
        stranger.wait()


def test_the_json_line_carries_the_job_id() -> None:
    job = _sleeper()
    try:
        dog = _watchdog(["job 0123456789abcdef", f"sid {job.pid} {procs.start_time(job.pid)}"], "json")
        assert _gone(job) and dog.wait(timeout=10) == 0
        (line,) = [json.loads(x) for x in dog.stderr.read().decode().splitlines()]  # type: ignore[union-attr]
        assert (line["job_id"], line["component"], line["killed"], line["level"]) == ("0123456789abcdef", "watchdog",
                                                                                      1, "WARNING")
    finally:
        job.kill()
        job.wait()
