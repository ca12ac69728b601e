"""Helpers shared by the launcher's end-to-end tests: bundles with a launch.json, the k2trt CLI as a subprocess,
and process-table scans by a per-test token."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import k2trt
from k2trt.launch.spec import LaunchSpec

HERE = Path(__file__).resolve().parent
ROOT = Path(k2trt.__file__).resolve().parent.parent
MPIRUN = str(Path(sys.executable).parent / "mpirun")
RANK_SERVER = str(HERE / "launch_rank_server.py")
ROUTER = str(HERE / "launch_router.py")


def token() -> str:
    """A unique string put on every test command line, so the process table can be searched for the job."""
    return f"k2l-{uuid.uuid4().hex[:10]}"


def rank_server_argv(port: int, tok: str, *extra: str, host: str = "127.0.0.1") -> tuple[str, ...]:
    return (sys.executable, RANK_SERVER, "--host", host, "--port", str(port), "--token", tok, *extra)


def make_bundle(path: Path, **fields: Any) -> Path:
    """Write ``path/launch.json`` for a local oversubscribed job with short timeouts; returns ``path``."""
    base: dict[str, Any] = {"mpirun": MPIRUN, "oversubscribe": True, "ready_timeout_s": 120.0, "stop_grace_s": 5.0,
                            "engine": "reference"}
    base.update(fields)
    LaunchSpec(**base).validate().dump(path / "launch.json")
    return path


def k2trt_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "k2trt.cli", *args]


def run_k2trt(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(k2trt_cmd(*args), capture_output=True, text=True, timeout=timeout, env=env)


def procs_with(tok: str) -> list[tuple[int, str]]:
    """(pid, cmdline) of live processes whose command line contains ``tok`` (zombies excluded)."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (d / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if tok in cmd and state not in ("Z", "X") and int(d.name) != os.getpid():
            out.append((int(d.name), cmd.strip()))
    return out


def wait_for(cond: Callable[[], Any], timeout: float, what: str, step: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(step)


def get_json(url: str, timeout: float = 5) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def read_state(bundle: Path) -> dict[str, Any]:
    p = bundle / "logs" / "serve.state.json"
    return json.loads(p.read_text()) if p.is_file() else {}


def stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM the process group a test started (``start_new_session=True``), SIGKILL it after 20 s."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


@contextlib.contextmanager
def served_reference(ckpt: Path, work: Path, port: int, master_port: int) -> Iterator[tuple[dict[str, Any], Path, str]]:
    """``k2trt serve --detach`` a bundle running the reference engine on ``ckpt`` (tp2 under mpirun, this checkout);
    yields (serve's JSON result, the bundle, the served model name), then stops the job and checks that no process
    of it is left."""
    name = token()  # the served model name doubles as the process-table search token
    argv = (sys.executable, "-m", "k2trt.reference.serve", str(ckpt), "--tp", "2", "--host", "127.0.0.1",
            "--port", str(port), "--served-model-name", name)
    b = make_bundle(work, argv=argv, world_size=2, http_port=port, model_dir=str(ckpt),
                    env={"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(master_port), "PYTHONPATH": str(ROOT)},
                    ready_timeout_s=240)
    r = run_k2trt("serve", str(b), "--detach", "--json", timeout=280)
    try:
        assert r.returncode == 0, r.stderr[-2000:] + r.stdout[-2000:]
        yield json.loads(r.stdout), b, name
    finally:
        stop = run_k2trt("stop", str(b), "--json")
    assert stop.returncode == 0, stop.stderr
    assert procs_with(name) == []
