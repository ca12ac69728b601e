"""Finding and ending a job's processes on this machine by reading /proc.

A job is found three ways, because no single one is enough: its session (mpirun is started with
``start_new_session``, so its session id is its pid; Open MPI 5 puts each rank in its own process group but keeps
the session), its process group (for launchers that keep one group), and the ``K2TRT_JOB_ID`` marker in the
environment (which also catches ranks that an ssh daemon started, when the "remote" host is this machine).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from k2trt.launch.mpi import JOB_ID_VAR

_PROC = Path("/proc")


@dataclass(frozen=True)
class ProcInfo:
    """One process as /proc shows it."""

    pid: int
    """Process id."""
    ppid: int
    """Parent process id."""
    pgid: int
    """Process group id."""
    sid: int
    """Session id."""
    cmd: str
    """Command line, space-joined (the comm name in brackets when the command line is empty)."""


def read_proc(pid: int) -> ProcInfo | None:
    """ProcInfo of ``pid``, or None when it is gone or a zombie."""
    try:
        stat = (_PROC / str(pid) / "stat").read_text()
        raw = (_PROC / str(pid) / "cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    comm_end = stat.rfind(")")
    fields = stat[comm_end + 2:].split()
    if fields[0] in ("Z", "X"):  # exited, waiting for its parent to reap it: no longer a running process
        return None
    cmd = raw.replace(b"\0", b" ").decode(errors="replace").strip() or f"[{stat[stat.find('(') + 1:comm_end]}]"
    return ProcInfo(pid, int(fields[1]), int(fields[2]), int(fields[3]), cmd)


def _has_marker(pid: int, job_id: str) -> bool:
    try:
        env = (_PROC / str(pid) / "environ").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    return f"{JOB_ID_VAR}={job_id}".encode() in env.split(b"\0")


def scan(*, sids: Iterable[int] = (), pgids: Iterable[int] = (), job_id: str | None = None) -> list[ProcInfo]:
    """Live processes in any of ``sids`` or ``pgids``, or carrying ``K2TRT_JOB_ID=job_id``; never this process."""
    sids, pgids, me = set(sids), set(pgids), os.getpid()
    out = []
    for entry in _PROC.iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        info = read_proc(int(entry.name))
        if info is None:
            continue
        if info.sid in sids or info.pgid in pgids or (job_id and _has_marker(info.pid, job_id)):
            out.append(info)
    return out


def rank_of(pid: int) -> int | None:
    """The MPI world rank a process runs as (from its environment), or None."""
    try:
        env = (_PROC / str(pid) / "environ").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    for item in env.split(b"\0"):
        for key in (b"OMPI_COMM_WORLD_RANK=", b"PMIX_RANK="):
            if item.startswith(key) and item[len(key):].isdigit():
                return int(item[len(key):])
    return None


def signal_all(procs: Iterable[ProcInfo], sig: int) -> None:
    """Send ``sig`` to each process, ignoring ones already gone."""
    for p in procs:
        try:
            os.kill(p.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def kill_job(*, sids: Iterable[int] = (), pgids: Iterable[int] = (), job_id: str | None = None,
             grace_s: float = 10.0) -> list[ProcInfo]:
    """SIGTERM every process of the job, SIGKILL what is left after ``grace_s``; return survivors (normally [])."""
    sids, pgids = list(sids), list(pgids)
    procs = scan(sids=sids, pgids=pgids, job_id=job_id)
    signal_all(procs, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while procs and time.monotonic() < deadline:
        time.sleep(0.1)
        procs = scan(sids=sids, pgids=pgids, job_id=job_id)
    for _ in range(20):
        if not procs:
            break
        signal_all(procs, signal.SIGKILL)
        time.sleep(0.1)
        procs = scan(sids=sids, pgids=pgids, job_id=job_id)
    return procs


def pid_alive(pid: int) -> bool:
    """True when ``pid`` exists and is not a zombie."""
    return read_proc(pid) is not None


def start_time(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks since boot (``/proc/PID/stat`` field 22), or None when it is gone.

    A pid and its start time name one process for the life of the machine's boot: pids are recycled, the pair
    is not. Example: ``start_time(os.getpid())`` → ``123456``.
    """
    try:
        stat = (_PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = stat[stat.rfind(")") + 2:].split()
    return int(fields[19]) if fields[0] not in ("Z", "X") else None


def is_process(pid: int, started: int | None) -> bool:
    """True when ``pid`` is alive and is the process that started at ``started`` (not a later one given the same
    pid). ``started=None`` (not recorded) never proves it."""
    return started is not None and start_time(pid) == started


def owned_sessions(starts: dict[int, int]) -> list[int]:
    """The session ids among ``starts`` (session leader pid → its start time) still safe to scan for a job.

    A leader that is still alive must be the recorded process. A dead leader's session id is safe too: Linux does
    not hand out a pid again while any process still has it as its session or group id, so the members found
    under it are the job's own (a recycled pid shows up as a live leader with another start time, and is skipped).
    """
    return [sid for sid, started in starts.items() if not pid_alive(sid) or start_time(sid) == started]
