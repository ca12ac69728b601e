"""`k2trt serve` under real mpirun on this machine: readiness, detach/status/stop, one rank killed → whole job down,
SIGINT → clean stop, readiness timeout, disaggregated servers + router. Every check on "no process remains" scans
the process table for the test's unique token, not just return codes.

The MPI program is tests/e2e/launch_rank_server.py (a plain test program: rank 0 serves /health and
/health_generate, the other ranks sleep after one mpi4py gather)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from launch_helpers import (MPIRUN, ROOT, ROUTER, get_json, k2trt_cmd, make_bundle, procs_with, rank_server_argv,
                            read_state, run_k2trt, token, wait_for)

from k2trt.launch.mpi import detect_mpi, launch_environ, mpirun_argv
from k2trt.launch.process import JobCommand, Supervisor, probe_ready
from k2trt.launch.spec import DisaggSpec, LaunchSpec, RoleSpec

pytestmark = pytest.mark.e2e


def _refused(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=2)
    except urllib.error.HTTPError:
        return False
    except OSError:
        return True
    return False


def test_detach_ready_status_stop_leaves_nothing(tmp_path: Path) -> None:
    tok, port = token(), 18210
    b = make_bundle(tmp_path / "b", argv=rank_server_argv(port, tok, "--warmup", "2"), world_size=2, http_port=port)
    t0 = time.monotonic()
    r = run_k2trt("serve", str(b), "--detach", "--json")
    assert r.returncode == 0, r.stderr + r.stdout
    res = json.loads(r.stdout)
    assert res["status"] == "ready" and res["url"] == f"http://127.0.0.1:{port}"
    assert time.monotonic() - t0 >= 2.0  # /health_generate answered 503 while warming up: not ready
    ranks = get_json(f"{res['url']}/ranks")
    assert sorted(x["rank"] for x in ranks) == [0, 1] and sorted(x["local_rank"] for x in ranks) == [0, 1]
    assert len(procs_with(tok)) >= 2
    st = json.loads(run_k2trt("status", str(b), "--json").stdout)
    assert st["status"] == "ready" and st["ready"] is True and st["supervisor_alive"] and st["processes"] >= 3
    assert (b / "logs" / "server.rank0.log").read_text().count(f"serving http://127.0.0.1:{port}") == 1
    r = run_k2trt("stop", str(b), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["leftover"] == []
    assert procs_with(tok) == [] and _refused(f"{res['url']}/health")
    assert read_state(b)["status"] == "stopped"
    st = json.loads(run_k2trt("status", str(b), "--json").stdout)
    assert st["supervisor_alive"] is False and st["processes"] == 0


def test_sigkill_one_rank_takes_the_whole_job_down(tmp_path: Path) -> None:
    tok, port = token(), 18211
    b = make_bundle(tmp_path / "b", argv=rank_server_argv(port, tok), world_size=3, http_port=port)
    err = open(tmp_path / "serve.err", "w+")
    proc = subprocess.Popen(k2trt_cmd("serve", str(b)), stdout=subprocess.PIPE, stderr=err, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, start_new_session=True)
    try:
        wait_for(lambda: read_state(b).get("status") == "ready" or proc.poll() is not None, 120, "ready")
        assert proc.poll() is None, Path(err.name).read_text()
        victim = next(x["pid"] for x in get_json(f"http://127.0.0.1:{port}/ranks") if x["rank"] == 1)
        t0 = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: not procs_with(tok), 10, "every process of the job to exit", step=0.1)
        assert proc.wait(timeout=10 - (time.monotonic() - t0) + 5) != 0
        down_s = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert down_s <= 10.0 + 5.0 and procs_with(tok) == []
    text = Path(err.name).read_text()
    assert "rank 1 of server failed" in text and "| rank 1 up on" in text  # the failing rank's last lines
    state = read_state(b)
    assert state["status"] == "failed" and state["rank"] == 1 and state["leftover"] == []
    assert "rank 2 up on" in (b / "logs" / "server.rank2.log").read_text()


def test_sigint_to_serve_is_a_clean_stop_and_health_fallback(tmp_path: Path) -> None:
    """With /health_generate answering 404 the probe falls back to /health."""
    tok, port = token(), 18212
    b = make_bundle(tmp_path / "b", argv=rank_server_argv(port, tok, "--no-generate"), world_size=2, http_port=port)
    proc = subprocess.Popen(k2trt_cmd("serve", str(b)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, start_new_session=True)
    try:
        wait_for(lambda: read_state(b).get("status") == "ready" or proc.poll() is not None, 120, "ready")
        assert proc.poll() is None
        proc.send_signal(signal.SIGINT)
        out, errtext = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, errtext
    assert "stopped (received SIGINT)" in out and "ready: http://127.0.0.1:18212" in errtext
    assert procs_with(tok) == [] and read_state(b)["status"] == "stopped"


def test_supervisor_timeout_tears_down_and_restores_signal_handlers(tmp_path: Path) -> None:
    tok, port = token(), 18213
    spec = LaunchSpec(argv=rank_server_argv(port, tok, "--warmup", "1000"), world_size=2, mpirun=MPIRUN,
                      oversubscribe=True, http_port=port)
    argv = mpirun_argv(spec, detect_mpi(MPIRUN), euid=os.geteuid(), environ=os.environ)
    cmd = JobCommand("server", tuple(argv), launch_environ(os.environ, spec, tok), f"http://127.0.0.1:{port}")
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with Supervisor([[cmd]], tmp_path / "logs", ready_timeout_s=6, grace_s=3, job_id=tok, progress=False) as sup:
        assert signal.getsignal(signal.SIGINT) != before[0]
        outcome = sup.run()
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    assert outcome.status == "timeout" and outcome.exit_code == 1 and "not ready after 6s" in outcome.message
    assert outcome.leftover == [] and procs_with(tok) == []


def test_probe_ready_statuses() -> None:
    """200 ready; 503 not ready; 404 falls through to the next path; nothing listening: not ready."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    codes = {"/health_generate": 503, "/health": 200}

    class H(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(codes.get(self.path, 404))
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *a: object) -> None:
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 18214), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        base, paths = "http://127.0.0.1:18214", ("/health_generate", "/health")
        assert probe_ready(base, paths) == (False, "/health_generate 503")
        codes["/health_generate"] = 404
        missing: set[str] = set()
        assert probe_ready(base, paths, missing=missing) == (True, "/health 200") and missing == {"/health_generate"}
        codes["/health"] = 500
        assert probe_ready(base, paths, missing=missing) == (False, "/health 500")
    finally:
        srv.shutdown()
        srv.server_close()
    assert probe_ready("http://127.0.0.1:18214", ("/health",))[0] is False


def test_disaggregated_servers_and_router_die_together(tmp_path: Path) -> None:
    tok = token()
    ctx_port, gen_port, router_port = 18220, 18221, 18222
    disagg = DisaggSpec(
        ctx=(RoleSpec("ctx0", rank_server_argv(ctx_port, tok), 1, ctx_port),),
        gen=(RoleSpec("gen0", rank_server_argv(gen_port, tok), 2, gen_port),),
        router_argv=(sys.executable, ROUTER, "--port", str(router_port), "--token", tok,
                     "--backend", f"http://127.0.0.1:{ctx_port}", "--backend", f"http://127.0.0.1:{gen_port}"),
        router_port=router_port)
    b = make_bundle(tmp_path / "b", disagg=disagg, ready_paths=("/health",))
    dry = run_k2trt("serve", str(b), "--dry-run", "--launcher", "mpirun")
    assert dry.returncode == 0 and "# stage 1: router" in dry.stdout and dry.stdout.count("--tag-output") == 2
    r = run_k2trt("serve", str(b), "--detach", "--json")
    assert r.returncode == 0, r.stderr + r.stdout
    assert json.loads(r.stdout)["url"] == f"http://127.0.0.1:{router_port}"
    assert urllib.request.urlopen(f"http://127.0.0.1:{router_port}/health", timeout=5).status == 200
    assert len(procs_with(tok)) >= 4  # ctx rank, two gen ranks, router (plus mpiruns)
    victim = next(x["pid"] for x in get_json(f"http://127.0.0.1:{gen_port}/ranks") if x["rank"] == 1)
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: not procs_with(tok), 10, "ctx, gen and router to be gone", step=0.1)
    state = wait_for(lambda: read_state(b) if read_state(b).get("status") == "failed" else None, 10, "failed state")
    assert state["job"] == "gen0" and state["rank"] == 1 and _refused(f"http://127.0.0.1:{router_port}/health")
