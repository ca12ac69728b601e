"""The serve state file, and ``status`` / ``stop`` that work from any other process.

``k2trt serve`` (foreground or ``--detach``) keeps ``LOGDIR/serve.state.json`` up to date: who supervises the
job (pid), the session ids of its launchers, the job marker, the URL, the bundle and log directory, and the
current status. ``stop`` ends the supervisor, then kills whatever of the job is left on this machine, and
verifies by scanning /proc that nothing of the job remains.
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
ACTIVE = ("starting", "ready")


def read_state(path: Path) -> dict[str, Any]:
    """Load a state file; a missing one is a LaunchError saying nothing runs from this bundle, a corrupt one a
    LaunchError naming what is wrong with it."""
    if not path.is_file():
        raise LaunchError(f"no serve state at {path}", "nothing was started from this bundle (k2trt serve BUNDLE)")
    return read_mapping(path, what="state file", fmt="json", error=LaunchError)


class StateFile:
    """Writes the state file atomically as the job changes state (one instance per serve run)."""

    def __init__(self, path: Path, **fields: Any) -> None:
        self.path = path
        self.data: dict[str, Any] = {"version": 1, "status": "starting", "started_at": time.time(), **fields}
        self.write()

    def update(self, **fields: Any) -> None:
        """Merge ``fields`` and rewrite the file."""
        self.data.update(fields)
        self.write()

    def on_state(self, state: str, info: dict[str, Any]) -> None:
        """Supervisor callback: record launcher pids, readiness and the end."""
        if state == "started":
            self.update(pids=info["pids"], pgids=info["pids"])  # each launcher leads its own session and group
        else:
            self.update(status=state, **{k: v for k, v in info.items() if v is not None})

    def write(self) -> None:
        atomic_write_json(self.path, self.data)


def check_not_running(path: Path) -> None:
    """Refuse to start a second job from the same bundle while the first one's supervisor lives."""
    if not path.is_file():
        return
    try:
        data = read_state(path)
    except LaunchError:
        return
    pid = data.get("supervisor_pid")
    if data.get("status") in ACTIVE and isinstance(pid, int) and procs.pid_alive(pid):
        raise LaunchError(f"a job from this bundle is already running (supervisor pid {pid}, {data.get('url')})",
                          "stop it first with `k2trt stop BUNDLE`")


def job_processes(data: dict[str, Any]) -> list[procs.ProcInfo]:
    """Live processes of the job described by a state dict (by session, group and job marker)."""
    pids = [int(p) for p in data.get("pids", [])]
    return procs.scan(sids=pids, pgids=pids, job_id=data.get("job_id"))


def status(path: Path, probe: bool = True) -> dict[str, Any]:
    """Current status of the job: the state file, whether its supervisor lives, its processes here, readiness.

    Returns a dict with ``status`` (as recorded; ``dead`` when recorded as active but the supervisor is gone),
    ``supervisor_alive``, ``processes`` (count on this machine), ``ready`` (probed now) and the recorded fields.
    """
    data = read_state(path)
    pid = data.get("supervisor_pid")
    alive = isinstance(pid, int) and procs.pid_alive(pid)
    out = dict(data)
    out["supervisor_alive"] = alive
    out["processes"] = len(job_processes(data))
    if data.get("status") in ACTIVE and not alive:
        out["status"] = "dead"
    out["ready"] = False
    if probe and alive and data.get("url"):
        out["ready"], out["probe"] = probe_ready(data["url"], tuple(data.get("ready_paths", ["/health"])),
                                                 timeout_s=5.0)
    return out


def stop(path: Path, timeout_s: float = 60.0) -> dict[str, Any]:
    """Stop the job recorded in ``path`` and verify that none of its processes remain on this machine.

    SIGTERM to the supervisor (it tears the job down), wait up to ``timeout_s``, then SIGTERM/SIGKILL whatever of
    the job is left. Raises LaunchError if processes survive. Returns {"stopped", "supervisor", "leftover"}.
    """
    data = read_state(path)
    pid = data.get("supervisor_pid")
    signalled = False
    if isinstance(pid, int) and procs.pid_alive(pid):
        try:
            procs.signal_all([procs.ProcInfo(pid, 0, 0, 0, "")], signal.SIGTERM)
            signalled = True
        except OSError:
            pass
        deadline = time.monotonic() + timeout_s
        while procs.pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
    pids = [int(p) for p in data.get("pids", [])]
    left = procs.kill_job(sids=pids, pgids=pids, job_id=data.get("job_id"), grace_s=5.0)
    if isinstance(pid, int) and procs.pid_alive(pid):
        procs.signal_all([procs.ProcInfo(pid, 0, 0, 0, "")], signal.SIGKILL)
    if left:
        raise LaunchError(f"{len(left)} processes of the job survived SIGKILL: {[p.pid for p in left]}",
                          "they may be stuck in the kernel (D state); check `ps -o stat` and the node")
    fresh = read_state(path)
    if fresh.get("status") in ACTIVE:
        fresh["status"] = "stopped"
        fresh["message"] = "stopped by k2trt stop"
        atomic_write_json(path, fresh)
    return {"stopped": True, "supervisor": pid, "supervisor_signalled": signalled, "leftover": []}
