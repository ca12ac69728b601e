"""The serve state file, and ``status`` / ``stop`` that work from any other process.

``k2trt serve`` (foreground or ``--detach``) keeps ``LOGDIR/serve.state.json`` up to date: who supervises the
job (pid and start time), the session ids of its launchers (with their start times), the job marker, the URL, the
bundle and log directory, and the current status. ``stop`` ends the supervisor, then kills whatever of the job is
left on this machine, and verifies by scanning /proc that nothing of the job remains.

Ownership: a pid in the state file is acted on only while it is provably the same process — its start time
(``procs.start_time``) matches the recorded one. A pid the kernel has since given to another process is left
alone; so is every process without the job's marker outside the job's own sessions. State files written before
start times were recorded (version 1) prove a supervisor by its command line instead.

``status`` exit codes (``STATUS_EXIT``): 0 running and answering, 1 failed (it failed, timed out, or its
supervisor died), 3 stopped on request, 4 running but not answering yet; 2 stays k2trt's usage-error code (no
state file, a corrupt one).
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

from k2trt.errors import LaunchError
from k2trt.fsio import atomic_write_json, read_mapping
from k2trt.launch import procs
from k2trt.launch.process import probe_ready

STATE_FILE = "serve.state.json"
STATE_VERSION = 2
ACTIVE = ("starting", "ready")
STATUS_EXIT = {"ready": 0, "failed": 1, "timeout": 1, "dead": 1, "stopped": 3, "starting": 4}
"""``k2trt status`` exit code per status (``ready`` counts only while the job answers; otherwise 4)."""


CORRUPT_FIX = "delete it once no job from this bundle runs"
"""The fix a corrupt state file's error names: without it neither ``status`` nor ``stop`` can tell the job's
processes apart from others, so only the user can say the job is gone."""


def read_state(path: Path) -> dict[str, Any]:
    """Load a state file; a missing one is a LaunchError saying nothing runs from this bundle, a corrupt one a
    LaunchError naming what is wrong with it and the fix (``CORRUPT_FIX``)."""
    if not path.is_file():
        raise LaunchError(f"no serve state at {path}", "nothing was started from this bundle (k2trt serve BUNDLE)")
    return read_mapping(path, what="state file", fmt="json", error=LaunchError, hint=CORRUPT_FIX)


class StateFile:
    """Writes the state file atomically as the job changes state (one instance per serve run)."""

    def __init__(self, path: Path, **fields: Any) -> None:
        self.path = path
        self.data: dict[str, Any] = {"version": STATE_VERSION, "status": "starting", "started_at": time.time(),
                                     **fields}
        pid = self.data.get("supervisor_pid")
        if isinstance(pid, int) and "supervisor_start" not in self.data:
            self.data["supervisor_start"] = procs.start_time(pid)
        self.write()

    def update(self, **fields: Any) -> None:
        """Merge ``fields`` and rewrite the file."""
        self.data.update(fields)
        self.write()

    def on_state(self, state: str, info: dict[str, Any]) -> None:
        """Supervisor callback: record launcher pids, readiness and the end."""
        if state == "started":  # each launcher leads its own session and group
            self.update(pids=info["pids"], pgids=info["pids"], pid_starts=info.get("pid_starts", {}))
        else:
            self.update(status=state, **{k: v for k, v in info.items() if v is not None})

    def write(self) -> None:
        atomic_write_json(self.path, self.data)


def supervisor_of(data: dict[str, Any]) -> int | None:
    """The recorded supervisor's pid while that very process lives, else None (gone, or the pid was recycled)."""
    pid = data.get("supervisor_pid")
    if not isinstance(pid, int) or isinstance(pid, bool):
        return None
    if "supervisor_start" in data:
        return pid if procs.is_process(pid, data["supervisor_start"]) else None
    info = procs.read_proc(pid)  # a version 1 file: no start time; the command line must be k2trt's
    return pid if info is not None and "k2trt" in info.cmd else None


def _sessions(data: dict[str, Any]) -> list[int]:
    """The launchers' session ids that still belong to the job (see ``procs.owned_sessions``)."""
    starts = data.get("pid_starts")
    pids = [int(p) for p in data.get("pids", [])]
    if isinstance(starts, dict):
        return procs.owned_sessions({int(p): int(starts.get(str(p)) or 0) for p in pids})
    return pids if supervisor_of(data) is not None else []  # version 1: trust them only beside a live supervisor


def check_not_running(path: Path) -> None:
    """Refuse to start a second job from the same bundle while the first one's supervisor, or any process of
    it, lives."""
    if not path.is_file():
        return
    try:
        data = read_state(path)
    except LaunchError:
        return
    pid = supervisor_of(data)
    if data.get("status") in ACTIVE and pid is not None:
        raise LaunchError(f"a job from this bundle is already running (supervisor pid {pid}, {data.get('url')})",
                          "stop it first with `k2trt stop BUNDLE`")
    left = job_processes(data)
    if left:
        raise LaunchError(f"{len(left)} processes of an earlier job from this bundle are still running "
                          f"(pids {', '.join(str(p.pid) for p in left[:5])})",
                          "end them with `k2trt stop BUNDLE`")


def job_processes(data: dict[str, Any]) -> list[procs.ProcInfo]:
    """Live processes of the job described by a state dict: those with its marker, and those in the launchers'
    sessions that are provably still the job's."""
    sids = _sessions(data)
    job_id = data.get("job_id")
    if not sids and not job_id:
        return []
    return procs.scan(sids=sids, pgids=sids, job_id=job_id)


def status(path: Path, probe: bool = True) -> dict[str, Any]:
    """Current status of the job: the state file, whether its supervisor lives, its processes here, readiness.

    Returns a dict with ``status`` (as recorded; ``dead`` when recorded as active but the supervisor is gone),
    ``supervisor_alive``, ``processes`` (count on this machine), ``ready`` (probed now), ``exit_code``
    (``STATUS_EXIT``) and the recorded fields.
    """
    data = read_state(path)
    alive = supervisor_of(data) is not None
    out = dict(data)
    out["supervisor_alive"] = alive
    out["processes"] = len(job_processes(data))
    if data.get("status") in ACTIVE and not alive:
        out["status"] = "dead"
    out["ready"] = False
    if probe and alive and data.get("url"):
        out["ready"], out["probe"] = probe_ready(data["url"], tuple(data.get("ready_paths", ["/health"])),
                                                 timeout_s=5.0)
    code = STATUS_EXIT.get(out["status"], 1)
    out["exit_code"] = 4 if code == 0 and not out["ready"] else code
    return out


def stop(path: Path, timeout_s: float = 60.0) -> dict[str, Any]:
    """Stop the job recorded in ``path`` and verify that none of its processes remain on this machine.

    SIGTERM to the supervisor (it tears the job down), wait up to ``timeout_s``, then SIGTERM/SIGKILL whatever of
    the job is left. Only processes the state file proves are the job's are signalled (see the module docstring).
    Raises LaunchError if processes survive. Returns {"stopped", "supervisor", "supervisor_signalled", "leftover"}.
    """
    data = read_state(path)
    pid = supervisor_of(data)
    signalled = False
    if pid is not None:
        procs.signal_all([procs.ProcInfo(pid, 0, 0, 0, "")], signal.SIGTERM)
        signalled = True
        deadline = time.monotonic() + timeout_s
        while supervisor_of(data) is not None and time.monotonic() < deadline:
            time.sleep(0.1)
    sids = _sessions(data)
    left = procs.kill_job(sids=sids, pgids=sids, job_id=data.get("job_id"), grace_s=5.0) \
        if sids or data.get("job_id") else []
    if supervisor_of(data) is not None:
        procs.signal_all([procs.ProcInfo(pid or 0, 0, 0, 0, "")], signal.SIGKILL)
    if left:
        raise LaunchError(f"{len(left)} processes of the job survived SIGKILL: {[p.pid for p in left]}",
                          "they may be stuck in the kernel (D state); check `ps -o stat` and the node")
    fresh = read_state(path)
    if fresh.get("status") in ACTIVE:
        fresh["status"] = "stopped"
        fresh["message"] = "stopped by k2trt stop"
        atomic_write_json(path, fresh)
    return {"stopped": True, "supervisor": data.get("supervisor_pid"), "supervisor_signalled": signalled,
            "leftover": []}
