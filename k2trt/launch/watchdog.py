"""The job's watchdog: ends the job when its supervisor dies, however it dies (SIGKILL and OOM kills included).

A supervisor that is killed outright runs no teardown, and mpirun keeps its ranks running (on every node)
unsupervised. So ``Supervisor`` starts this small process first, in its own session, and holds the write end of a
pipe whose read end only the watchdog has (the supervisor's copy is not inherited by anything it starts). Over the
pipe it tells the watchdog the job id and each launcher it starts (``sid PID START``); on a clean teardown it
writes ``done``. When the pipe reaches end-of-file without ``done``, the supervisor is gone: the kernel closed its
end. The watchdog then does what teardown would: SIGTERM to the launchers (mpirun forwards it to the remote
ranks), then SIGTERM/SIGKILL to every process of the job on this machine — found by the job marker and by the
launchers' sessions, only those ``procs.owned_sessions`` proves are still the job's.

A pipe rather than the parent-death signal (``PR_SET_PDEATHSIG``): that one fires when the *thread* that forked
the child exits, needs code between fork and exec, and reaches only the direct child, not the ranks under it.

Run as ``python -m k2trt.launch.watchdog --fd N [--grace S] [--log-format json]`` (``watchdog_argv`` writes it); in
JSON, its one line (when it ends a job) carries the job id it was told.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Iterable

from k2trt.jsonlog import DEFAULT_LOG_FORMAT, LOG_FORMATS, LogFormat, use_json_logs
from k2trt.launch import procs


def watchdog_argv(fd: int, grace_s: float, log_format: LogFormat = DEFAULT_LOG_FORMAT,
                  job_id: str | None = None) -> list[str]:
    """The watchdog's command: it reads the pipe on descriptor ``fd``; SIGTERM→SIGKILL grace ``grace_s`` seconds;
    it logs in ``log_format``, with ``job_id`` on a JSON line.

    Example: ``watchdog_argv(5, 20.0)`` → ``[python, "-m", "k2trt.launch.watchdog", "--fd", "5", "--grace", "20.0"]``.
    """
    argv = [sys.executable, "-m", "k2trt.launch.watchdog", "--fd", str(fd), "--grace", str(grace_s)]
    argv += ["--log-format", log_format] if log_format != DEFAULT_LOG_FORMAT else []
    return argv + (["--job-id", job_id] if job_id and log_format != DEFAULT_LOG_FORMAT else [])


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m k2trt.launch.watchdog")
    ap.add_argument("--fd", type=int, required=True, help="read end of the supervisor's pipe")
    ap.add_argument("--grace", type=float, default=20.0, help="seconds between SIGTERM and SIGKILL")
    ap.add_argument("--log-format", choices=LOG_FORMATS, default=DEFAULT_LOG_FORMAT)
    ap.add_argument("--job-id", default=None, help="the job id on every JSON line")
    return ap


def watch(stream: Iterable[str], grace_s: float) -> tuple[bool, int, str | None]:
    """Read the supervisor's messages until ``done`` or end-of-file; on end-of-file end the job.

    Returns (the supervisor finished cleanly, processes killed, the job id it was told).
    """
    job_id: str | None = None
    starts: dict[int, int] = {}
    for line in stream:
        word, _, rest = line.strip().partition(" ")
        if word == "done":
            return True, 0, job_id
        if word == "job":
            job_id = rest or None
        elif word == "sid":
            pid, _, started = rest.partition(" ")
            starts[int(pid)] = int(started)
    # end-of-file without "done": the supervisor is gone. Launchers first (mpirun forwards SIGTERM to its
    # remote daemons), then everything of the job on this machine.
    sids = procs.owned_sessions(starts)
    found = procs.scan(sids=sids, pgids=sids, job_id=job_id)
    procs.signal_all([p for p in (procs.read_proc(s) for s in sids) if p is not None], signal.SIGTERM)
    procs.kill_job(sids=sids, pgids=sids, job_id=job_id, grace_s=grace_s)
    return False, len(found), job_id


def main(argv: list[str] | None = None) -> int:
    """Entry point of the watchdog process."""
    a = _parser().parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C is the supervisor's to handle
    if a.log_format == "json":  # from the start, so that even a crash is one JSON line
        use_json_logs(static={"job_id": a.job_id, "component": "watchdog"})
    with os.fdopen(a.fd, "r", encoding="utf-8", errors="replace") as stream:
        clean, killed, job_id = watch(stream, a.grace)
    if not clean:
        msg = f"k2trt watchdog: supervisor gone; ended {killed} process(es) of the job"
        if a.log_format == "json":
            logging.getLogger("k2trt.launch.watchdog").warning(msg, extra={"job_id": a.job_id or job_id,
                                                                             "killed": killed})
        else:
            print(msg, file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
