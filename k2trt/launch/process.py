"""Supervision of a served job: start, tee rank-prefixed logs, wait for readiness, watch, tear down.

``Supervisor`` is a context manager holding every process it starts (no module state). A job is one or more
``JobCommand``s in stages (aggregated: one mpirun; disaggregated: the ctx and gen servers, then the router).

Rules it enforces:
- each command starts in its own session (``start_new_session``), so a terminal's Ctrl-C reaches only k2trt, and
  the whole job can be found again by session id (see ``procs``);
- readiness = HTTP 200 from the first of ``ready_paths`` that exists on host 1 (404 moves to the next path; 503,
  any other status or a refused connection is "not ready yet");
- one exits, all go: when any command, or any local rank, exits, every command is torn down (SIGTERM to every
  process of the job, SIGKILL after the grace period) and the outcome names the failing rank with its last lines;
- SIGINT/SIGTERM to k2trt request a clean stop; handlers are restored in ``finally``;
- the job dies with its supervisor even when that is SIGKILLed: a watchdog process (``watchdog``) holds a pipe
  only the supervisor writes to, and ends the job when the pipe closes without a clean ``done``;
- with ``log_format="json"`` every line it writes is a JSON object with the job id (``joblog``): the commands'
  lines (a rank's own JSON kept, anything else wrapped), and its own messages through ``logging``.
"""

from __future__ import annotations

import collections
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO, Any, Callable, Literal

from k2trt.errors import LaunchError
from k2trt.jsonlog import DEFAULT_LOG_FORMAT, LogFormat
from k2trt.launch import procs
from k2trt.launch.joblog import OutputLines
from k2trt.launch.mpi import JOB_ID_VAR
from k2trt.launch.watchdog import watchdog_argv

_TAG = re.compile(r"^\[(\d+),(\d+)\]<(stdout|stderr)>:\s?(.*)$")
# Open MPI's own report of which rank ended the job (4.x says "mpirun noticed", 5.x "prterun noticed").
_NOTICED = re.compile(r"process rank (\d+) with PID|Process name:\s*\[\[\d+,\d+\],(\d+)\]")
TAIL_LINES = 30
log = logging.getLogger("k2trt.launch")


@dataclass(frozen=True)
class JobCommand:
    """One process tree the supervisor starts and watches."""

    name: str
    """Name used in logs and messages (``server``, ``ctx0``, ``router``)."""
    argv: tuple[str, ...]
    """Full command (mpirun … rank-argv, or a plain command)."""
    env: dict[str, str]
    """Complete environment of the command."""
    probe_url: str | None = None
    """Base URL to probe readiness on (``http://host:port``); None means "ready once started"."""
    tagged: bool = True
    """Output carries Open MPI ``--tag-output`` prefixes to split per rank."""


@dataclass
class Outcome:
    """How a supervised run ended."""

    status: Literal["stopped", "failed", "timeout"]
    """stopped: a requested stop; failed: something exited; timeout: not ready in time."""
    message: str
    """One line for the user."""
    job: str | None = None
    """Name of the command that failed, if any."""
    rank: int | None = None
    """Failing rank, when known."""
    tail: list[str] = field(default_factory=list)
    """Last log lines of the failing rank (or of the launcher)."""
    leftover: list[int] = field(default_factory=list)
    """Pids still alive after teardown (should be empty)."""

    @property
    def exit_code(self) -> int:
        """0 for a requested stop, 1 otherwise."""
        return 0 if self.status == "stopped" else 1


def probe_ready(base_url: str, paths: tuple[str, ...], timeout_s: float = 10.0,
                missing: set[str] | None = None) -> tuple[bool, str]:
    """Probe ``base_url`` + each path in turn. Returns (ready, note).

    200 → ready; 404 → the path does not exist here, try the next (and remember it in ``missing``); any other
    status or a connection error → not ready. Example: ``probe_ready("http://127.0.0.1:8000", ("/health",))``.
    """
    missing = set() if missing is None else missing
    note = "no readiness path answered"
    for path in paths:
        if path in missing:
            continue
        try:
            with urllib.request.urlopen(base_url + path, timeout=timeout_s) as r:  # noqa: S310 (http only)
                if r.status == 200:
                    return True, f"{path} 200"
                note = f"{path} {r.status}"
        except urllib.error.HTTPError as e:
            if e.code == 404:
                missing.add(path)
                note = f"{path} 404"
                continue
            return False, f"{path} {e.code}"
        except (OSError, ValueError) as e:  # refused, reset, timeout: the server is still loading
            return False, f"{path} {type(e).__name__}"
        return False, note
    return False, note


class _Running:
    """A started JobCommand: its Popen, log files and per-rank tails."""

    def __init__(self, cmd: JobCommand, popen: subprocess.Popen[bytes], log_dir: Path,
                 echo: Callable[[str], None] | None, lines: OutputLines) -> None:
        self.cmd, self.popen, self.log_dir, self.echo, self.lines = cmd, popen, log_dir, echo, lines
        self.tails: dict[int | None, collections.deque[str]] = collections.defaultdict(
            lambda: collections.deque(maxlen=TAIL_LINES))
        self.files: dict[int | None, IO[str]] = {}
        self.noticed_rank: int | None = None
        self.ranks: dict[int, int] = {}  # rank -> pid of its top process on this machine
        self.started = 0  # start time of the launcher (procs.start_time), recorded to recognise it later
        self.next_watch = 0.0
        self.ready = cmd.probe_url is None
        self.missing: set[str] = set()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._pump, args=(s,), daemon=True)
                        for s in (popen.stdout, popen.stderr) if s is not None]
        for t in self.threads:
            t.start()

    def _file(self, rank: int | None) -> IO[str]:
        if rank not in self.files:
            suffix = "launcher" if rank is None else f"rank{rank}"
            self.files[rank] = open(self.log_dir / f"{self.cmd.name}.{suffix}.log", "a", buffering=1)
        return self.files[rank]

    def _pump(self, stream: IO[bytes]) -> None:
        for raw in iter(stream.readline, b""):
            line = raw.decode(errors="replace").rstrip("\n")
            m = _TAG.match(line) if self.cmd.tagged else None
            rank, stream_name, text = (int(m.group(2)), m.group(3), m.group(4)) if m else (None, None, line)
            if rank is None and (n := _NOTICED.search(text)):
                found = n.group(1) or n.group(2)
                if found is not None and self.noticed_rank is None:
                    self.noticed_rank = int(found)
            out = self.lines(text, rank, stream_name)
            with self.lock:
                self.tails[rank].append(text)
                self._file(rank).write(out + "\n")
            if self.echo is not None:
                self.echo(out if self.lines.json else f"[{self.cmd.name}{'' if rank is None else f':{rank}'}] {text}")
        stream.close()

    def watch_ranks(self) -> list[int]:
        """Record local rank processes; return the ranks whose process has exited (launcher still running)."""
        now = time.monotonic()
        if now < self.next_watch:  # reading every environ in /proc is not free on a busy login node
            return []
        self.next_watch = now + 1.0
        for p in procs.scan(sids=[self.popen.pid]):
            rank = procs.rank_of(p.pid)
            if rank is not None and rank not in self.ranks:
                parent_rank = procs.rank_of(p.ppid)
                if parent_rank != rank:  # the rank's top process, not a child it spawned
                    self.ranks[rank] = p.pid
        return [rank for rank, pid in sorted(self.ranks.items()) if not procs.pid_alive(pid)]

    def close(self) -> None:
        for t in self.threads:
            t.join(timeout=5)
        with self.lock:
            for f in self.files.values():
                f.close()


class Supervisor:
    """Start and supervise a staged set of commands; a context manager that always tears down on exit.

    Args:
        stages: commands per stage; a stage starts once every command of the previous one is ready.
        log_dir: where ``NAME.rankN.log`` / ``NAME.launcher.log`` go (created).
        ready_timeout_s: seconds for all stages to become ready.
        grace_s: SIGTERM→SIGKILL grace on teardown.
        job_id: the ``K2TRT_JOB_ID`` marker the commands export (finds their processes).
        echo: print function for rank-prefixed log lines (None: files only).
        progress: show a progress bar while waiting for readiness.
        on_state: called with ("ready" | "stopped" | "failed" | "timeout", info) as the job changes state.
        ready_paths: readiness URL paths in preference order.
        log_format: ``json``: log files (and echoed lines) are JSON objects with the job id, the supervisor's own
            messages go to ``logging`` (the process's entry installs the handler), no progress bar.

    Example::

        with Supervisor([[cmd]], Path("logs"), job_id=jid) as sup:
            outcome = sup.run()
    """

    def __init__(self, stages: list[list[JobCommand]], log_dir: Path, *, ready_timeout_s: float = 3600.0,
                 grace_s: float = 20.0, job_id: str | None = None, echo: Callable[[str], None] | None = None,
                 progress: bool = True, on_state: Callable[[str, dict[str, Any]], None] | None = None,
                 ready_paths: tuple[str, ...] = ("/health_generate", "/health"), poll_s: float = 0.25,
                 probe_every_s: float = 1.0, log_format: LogFormat = DEFAULT_LOG_FORMAT) -> None:
        self.stages, self.log_dir, self.job_id = stages, Path(log_dir), job_id
        self.log_format = log_format
        self.ready_timeout_s, self.grace_s, self.echo, self.progress = ready_timeout_s, grace_s, echo, progress
        self.on_state, self.ready_paths, self.poll_s, self.probe_every_s = on_state, ready_paths, poll_s, probe_every_s
        self.running: list[_Running] = []
        self._watchdog: subprocess.Popen[bytes] | None = None
        self._watch_pipe: IO[str] | None = None
        self._stop_reason: str | None = None
        self._failed: Outcome | None = None
        self._saved: dict[int, Any] = {}
        self._bar: Any = None
        self._last_line = 0.0

    # ---- context manager -----------------------------------------------------------------------------------
    def __enter__(self) -> Supervisor:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._start_watchdog()
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._saved[sig] = signal.signal(sig, self._on_signal)
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        try:
            self.teardown()
        finally:
            self._stop_watchdog()
            for sig, handler in self._saved.items():
                signal.signal(sig, handler)
            self._saved.clear()

    # ---- the watchdog: the job ends with this process, however it ends ------------------------------------------
    def _start_watchdog(self) -> None:
        read_fd, write_fd = os.pipe()  # both non-inheritable: only the watchdog gets the read end, explicitly
        env = {k: v for k, v in os.environ.items() if k != JOB_ID_VAR}  # it is not a process of the job
        try:
            with open(self.log_dir / "watchdog.log", "ab") as out:
                self._watchdog = subprocess.Popen(watchdog_argv(read_fd, self.grace_s, self.log_format, self.job_id),
                                                  pass_fds=(read_fd,), env=env, stdin=subprocess.DEVNULL,
                                                  stdout=out, stderr=out, start_new_session=True)
        except OSError as e:
            os.close(write_fd)
            raise LaunchError(f"could not start the job's watchdog: {e}", "check the Python environment") from None
        finally:
            os.close(read_fd)
        self._watch_pipe = os.fdopen(write_fd, "w", buffering=1, encoding="utf-8")
        self._tell_watchdog(f"job {self.job_id or ''}")

    def _tell_watchdog(self, line: str) -> None:
        if self._watch_pipe is None:
            return
        try:
            self._watch_pipe.write(line + "\n")
        except OSError:  # the watchdog is gone; teardown still works without it
            pass

    def _stop_watchdog(self) -> None:
        """Tell the watchdog the job was torn down cleanly and wait for it to exit."""
        if self._watch_pipe is not None:
            self._tell_watchdog("done")
            try:
                self._watch_pipe.close()
            except OSError:
                pass
            self._watch_pipe = None
        if self._watchdog is not None:
            try:
                self._watchdog.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._watchdog.kill()
                self._watchdog.wait(timeout=5)
            self._watchdog = None

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._stop_reason = f"received {signal.Signals(signum).name}"

    def request_stop(self, reason: str) -> None:
        """Ask ``run`` to stop cleanly (thread-safe)."""
        self._stop_reason = reason

    def fail(self, message: str, job: str | None = None) -> None:
        """Make ``run`` end the job as failed with ``message`` (e.g. from ``on_state``, when something the job
        needs beside its commands could not start); thread-safe."""
        self._failed = Outcome("failed", message, job=job)

    # ---- running -------------------------------------------------------------------------------------------
    def _start(self, cmd: JobCommand) -> _Running:
        popen = subprocess.Popen(list(cmd.argv), env=cmd.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, start_new_session=True)
        started = procs.start_time(popen.pid) or 0
        self._tell_watchdog(f"sid {popen.pid} {started}")
        run = _Running(cmd, popen, self.log_dir, self._write, OutputLines(self.log_format, self.job_id, cmd.name))
        run.started = started
        self.running.append(run)
        self._notify("started", {"pids": self.pids(), "pid_starts": {str(r.popen.pid): r.started
                                                                      for r in self.running}})
        return run

    def _write(self, line: str) -> None:
        if self.echo is None:
            return
        if self._bar is not None:
            self._bar.write(line, file=sys.stderr)
        else:
            self.echo(line)

    def pids(self) -> list[int]:
        """Pids (= session ids) of the started commands."""
        return [r.popen.pid for r in self.running]

    def run(self, after_ready: Callable[[], None] | None = None) -> Outcome:
        """Start every stage, wait for readiness, then supervise until a stop request or a failure.

        ``after_ready`` is called once when everything is ready (e.g. to print the URL).
        """
        start = time.monotonic()
        self._open_bar()
        try:
            for stage in self.stages:
                stage_runs = [self._start(c) for c in stage]
                outcome = self._wait_ready(stage_runs, start)
                if outcome is not None:
                    return self._finish(outcome)
        finally:
            self._close_bar()
        self._notify("ready", {"elapsed_s": round(time.monotonic() - start, 1)})
        if after_ready is not None and self._failed is None:
            after_ready()
        while True:
            outcome = self._check()
            if outcome is not None:
                return self._finish(outcome)
            time.sleep(self.poll_s)

    def _wait_ready(self, runs: list[_Running], start: float) -> Outcome | None:
        next_probe = 0.0
        while True:
            outcome = self._check()
            if outcome is not None:
                return outcome
            now = time.monotonic()
            if now >= next_probe:
                next_probe = now + self.probe_every_s
                for r in runs:
                    if not r.ready and r.cmd.probe_url is not None:
                        r.ready, note = probe_ready(r.cmd.probe_url, self.ready_paths, missing=r.missing)
                        self._bar_status(r.cmd.name, note, now - start)
                if all(r.ready for r in runs):
                    return None
            if now - start > self.ready_timeout_s:
                waiting = [r.cmd.name for r in runs if not r.ready]
                return Outcome("timeout", f"{', '.join(waiting)} not ready after {self.ready_timeout_s:.0f}s "
                               f"(raise ready_timeout_s, or read the logs in {self.log_dir})", job=waiting[0])
            time.sleep(self.poll_s)

    def _check(self) -> Outcome | None:
        if self._failed is not None:
            return self._failed
        if self._stop_reason is not None:
            return Outcome("stopped", f"stopped ({self._stop_reason})")
        for r in self.running:
            code = r.popen.poll()
            if code is not None:
                how = f"signal {-code}" if code < 0 else f"status {code}"
                return self._failure(r, f"{'mpirun' if r.cmd.tagged else r.cmd.name} exited with {how}", [])
            if r.cmd.tagged:
                dead = r.watch_ranks()
                if dead:
                    return self._failure(r, "a rank process exited", dead)
        return None

    def _failure(self, r: _Running, cause: str, dead: list[int]) -> Outcome:
        # mpirun names the rank that ended the job; give it a moment to say so (several local ranks may already
        # be gone by the time we look, because mpirun kills the rest itself).
        deadline = time.monotonic() + 3.0
        while r.noticed_rank is None and r.popen.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.2)
        rank = r.noticed_rank if r.noticed_rank is not None else (dead[0] if dead else None)
        with r.lock:
            tail = list(r.tails.get(rank, [])) or list(r.tails.get(None, []))
        where = f"rank {rank} of {r.cmd.name}" if rank is not None else r.cmd.name
        return Outcome("failed", f"{where} failed ({cause}); whole job torn down", job=r.cmd.name, rank=rank,
                       tail=tail)

    def _finish(self, outcome: Outcome) -> Outcome:
        outcome.leftover = [p.pid for p in self.teardown()]
        self._notify(outcome.status, {"message": outcome.message, "rank": outcome.rank, "job": outcome.job})
        return outcome

    def teardown(self) -> list[procs.ProcInfo]:
        """End every process of the job (idempotent). Returns survivors (normally none)."""
        if not self.running:
            return []
        sids = self.pids()
        for r in self.running:  # mpirun forwards SIGTERM to remote ranks; do it before killing local ones
            if r.popen.poll() is None:
                try:
                    r.popen.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass
        left = procs.kill_job(sids=sids, pgids=sids, job_id=self.job_id, grace_s=self.grace_s)
        for r in self.running:
            try:
                r.popen.wait(timeout=5)
            except subprocess.TimeoutExpired:
                r.popen.kill()
                r.popen.wait(timeout=5)
            r.close()
        self.running.clear()
        return left

    # ---- progress & notifications --------------------------------------------------------------------------
    def _notify(self, state: str, info: dict[str, Any]) -> None:
        if self.on_state is not None:
            self.on_state(state, info)

    def _open_bar(self) -> None:
        self._last_line = 0.0
        if self.progress and sys.stderr.isatty() and self.log_format == "text":
            from tqdm import tqdm

            self._bar = tqdm(total=int(self.ready_timeout_s), unit="s", desc="waiting for readiness",
                             file=sys.stderr, mininterval=1.0, dynamic_ncols=True,
                             bar_format="{desc} {bar} {n:.0f}/{total:.0f}s")

    def _bar_status(self, name: str, note: str, elapsed: float) -> None:
        if self._bar is not None:
            self._bar.set_description_str(f"{name}: {note}", refresh=False)
            self._bar.n = min(int(elapsed), self._bar.total)
            self._bar.refresh()
        elif self.progress and elapsed - self._last_line >= 30:  # not a terminal
            self._last_line = elapsed
            if self.log_format == "json":
                log.info("waiting for %s: %s (%.0f/%.0fs)", name, note, elapsed, self.ready_timeout_s,
                         extra={"job": name})
            elif self.echo is not None:
                self.echo(f"[k2trt] waiting for {name}: {note} ({elapsed:.0f}/{self.ready_timeout_s:.0f}s)")

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
