"""The launcher's edges under real mpirun on this machine: every port the job binds is checked before launch and a
detached start that fails says so with a non-zero exit; ``status`` exit codes tell running, stopped and failed
apart; ranks die with their supervisor even when it is SIGKILLed; ``stop`` never signals a process the state file
does not prove is the job's; the gateway reads its API keys from an environment variable or a file (never argv)
and refuses to listen beyond loopback without one.

The MPI program is tests/e2e/launch_rank_server.py; the gateway runs in passthrough mode in front of it (its
``/v1/models`` answers), so no model is needed."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from launch_helpers import ROOT, get_json, k2trt_cmd, make_bundle, procs_with, rank_server_argv, read_state, \
    run_k2trt, token, wait_for

from k2trt.launch.spec import GatewayOptions

pytestmark = pytest.mark.e2e


def _serve_env(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(k2trt_cmd(*args), capture_output=True, text=True, timeout=180,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **env})


def _status(url: str, key: str | None = None) -> int:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


def test_a_taken_gateway_port_is_refused_before_launch_and_reported_after(tmp_path: Path) -> None:
    tok, port, gw = token(), 18260, 18261
    b = make_bundle(tmp_path / "b", argv=rank_server_argv(port, tok), world_size=2, http_port=port,
                    gateway=GatewayOptions(gw, mode="passthrough"))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", gw))
        busy.listen()
        r = run_k2trt("serve", str(b), "--detach")
        assert r.returncode == 2, r.stdout + r.stderr
        assert f"gateway port {gw} is in use" in r.stderr and "preflight found 1 problem" in r.stderr
        assert not (b / "logs" / "serve.state.json").exists()  # nothing was started
        # past preflight (a port taken while the engine loads): the detached start fails loudly, nothing is left
        r = run_k2trt("serve", str(b), "--detach", "--skip-preflight", "--json")
        assert r.returncode == 2, r.stdout + r.stderr
        res = json.loads(r.stdout)
        assert res["status"] == "failed" and f"gateway could not start on http://127.0.0.1:{gw}" in res["message"]
        assert f"gateway could not start on http://127.0.0.1:{gw}" in r.stderr
    assert procs_with(tok) == [] and read_state(b)["status"] == "failed"


def test_status_exit_codes_tell_running_stopped_and_failed_apart(tmp_path: Path) -> None:
    tok, port = token(), 18262
    b = make_bundle(tmp_path / "b", argv=rank_server_argv(port, tok), world_size=2, http_port=port)
    assert run_k2trt("serve", str(b), "--detach").returncode == 0
    r = run_k2trt("status", str(b))
    assert r.returncode == 0 and r.stdout.startswith("ready: "), r.stdout + r.stderr
    assert run_k2trt("stop", str(b)).returncode == 0
    r = run_k2trt("status", str(b), "--json")
    assert r.returncode == 3 and json.loads(r.stdout)["status"] == "stopped"
    assert run_k2trt("serve", str(b), "--detach").returncode == 0
    victim = next(x["pid"] for x in get_json(f"http://127.0.0.1:{port}/ranks") if x["rank"] == 1)
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: read_state(b).get("status") == "failed" and not procs_with(tok), 20, "the failed job's end")
    r = run_k2trt("status", str(b))
    assert r.returncode == 1 and r.stdout.startswith("failed: "), r.stdout + r.stderr


def test_ranks_die_with_their_sigkilled_supervisor(tmp_path: Path) -> None:
    tok, port = token(), 18263
    b = make_bundle(tmp_path / "b", argv=rank_server_argv(port, tok), world_size=3, http_port=port)
    r = run_k2trt("serve", str(b), "--detach", "--json")
    assert r.returncode == 0, r.stderr
    sup = json.loads(r.stdout)["supervisor_pid"]
    assert len(procs_with(tok)) >= 3
    try:
        t0 = time.monotonic()
        os.kill(sup, signal.SIGKILL)
        wait_for(lambda: not procs_with(tok), 10, "every rank to follow its supervisor", step=0.05)
        print(f"ranks gone {time.monotonic() - t0:.2f} s after SIGKILL of the supervisor")
        r = run_k2trt("status", str(b), "--json")
        st = json.loads(r.stdout)
        assert r.returncode == 1 and st["status"] == "dead" and st["processes"] == 0
    finally:
        run_k2trt("stop", str(b))  # a job left without its supervisor is still the state file's to end


def test_a_detached_start_whose_supervisor_dies_before_ready_fails(tmp_path: Path) -> None:
    """The supervisor is SIGKILLed while `serve --detach` waits for readiness: it records no end, so the waiting
    command must not take the silence for success."""
    tok, port = token(), 18268
    b = make_bundle(tmp_path / "b", argv=rank_server_argv(port, tok, "--warmup", "1000"), world_size=2,
                    http_port=port)
    proc = subprocess.Popen(k2trt_cmd("serve", str(b), "--detach"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        wait_for(lambda: len(procs_with(tok)) >= 2, 60, "the ranks to start")
        os.kill(read_state(b)["supervisor_pid"], signal.SIGKILL)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        run_k2trt("stop", str(b))
    assert proc.returncode == 2, out + err
    assert "the detached supervisor exited with status -9 before the job was ready" in err
    wait_for(lambda: not procs_with(tok), 10, "the ranks to follow their supervisor")


def test_stop_never_signals_a_process_the_state_file_does_not_prove_is_the_job(tmp_path: Path) -> None:
    """A recycled pid: the state file names a live process that is not the job's (another start time)."""
    tok = token()
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", tok], start_new_session=True)
    try:
        state = tmp_path / "logs" / "serve.state.json"
        state.parent.mkdir()
        state.write_text(json.dumps({
            "version": 2, "status": "ready", "supervisor_pid": stranger.pid, "supervisor_start": 1,
            "pids": [stranger.pid], "pgids": [stranger.pid], "pid_starts": {str(stranger.pid): 1},
            "job_id": "0123456789abcdef", "url": "http://127.0.0.1:9", "log_dir": str(tmp_path / "logs")}))
        r = run_k2trt("status", str(state), "--json")
        assert r.returncode == 1 and json.loads(r.stdout)["status"] == "dead"
        r = run_k2trt("stop", str(state))
        assert r.returncode == 0, r.stderr
        time.sleep(0.5)
        assert stranger.poll() is None and procs_with(tok), "stop signalled a process that is not the job's"
    finally:
        stranger.kill()
        stranger.wait()


def test_gateway_keys_come_from_an_env_var_or_a_file_never_argv(tmp_path: Path) -> None:
    tok, port, gw = token(), 18264, 18265
    key = f"sk-{token()}"
    b = make_bundle(tmp_path / "b", argv=rank_server_argv(port, tok), world_size=1, http_port=port,
                    gateway=GatewayOptions(gw, mode="passthrough", api_key_env="K2TRT_TEST_KEYS"))
    r = _serve_env("serve", str(b), "--detach", "--json", env={"K2TRT_TEST_KEYS": f"other-key {key}"})
    try:
        assert r.returncode == 0, r.stderr + r.stdout
        sup = json.loads(r.stdout)["supervisor_pid"]
        url = f"http://127.0.0.1:{gw}/v1/models"
        assert _status(url) == 401 and _status(url, "wrong") == 401 and _status(url, key) == 200
        for pid in [sup] + [p for p, _ in procs_with(tok)]:
            assert key not in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    finally:
        assert run_k2trt("stop", str(b)).returncode == 0
    keyfile = tmp_path / "keys"
    keyfile.write_text(f"# accepted keys\n{key}\n")
    keyfile.chmod(0o600)
    b2 = make_bundle(tmp_path / "b2", argv=rank_server_argv(port, tok), world_size=1, http_port=port,
                     gateway=GatewayOptions(gw, mode="passthrough", api_key_file=str(keyfile), require_key=True))
    r = run_k2trt("serve", str(b2), "--detach")
    try:
        assert r.returncode == 0, r.stderr + r.stdout
        assert _status(f"http://127.0.0.1:{gw}/v1/models") == 401
        assert _status(f"http://127.0.0.1:{gw}/v1/models", key) == 200
    finally:
        assert run_k2trt("stop", str(b2)).returncode == 0
    assert procs_with(tok) == []


def test_a_gateway_that_requires_a_key_refuses_to_start_without_one(tmp_path: Path) -> None:
    tok, port, gw = token(), 18266, 18267
    b = make_bundle(tmp_path / "b", argv=rank_server_argv(port, tok), world_size=1, http_port=port,
                    gateway=GatewayOptions(gw, host="0.0.0.0", mode="passthrough", api_key_env="K2TRT_TEST_KEYS",
                                           require_key=True))
    r = _serve_env("serve", str(b), "--detach", env={"K2TRT_TEST_KEYS": ""})
    assert r.returncode == 2 and "preflight found 1 problem" in r.stderr
    assert "gateway listens on 0.0.0.0:18267 and requires an API key, but $K2TRT_TEST_KEYS is empty" in r.stderr
    assert not (b / "logs" / "serve.state.json").exists() and procs_with(tok) == []
    r = _serve_env("serve", str(b), "--detach", "--skip-preflight", env={"K2TRT_TEST_KEYS": ""})
    assert r.returncode == 2 and "requires an API key" in r.stderr
    assert procs_with(tok) == [] and read_state(b)["status"] == "failed"


def test_a_job_left_without_supervisor_and_watchdog_is_refused_then_stopped(tmp_path: Path) -> None:
    """Both the supervisor and its watchdog SIGKILLed: the ranks keep the ports. `serve` refuses to start over
    them with a one-line error naming `k2trt stop`, which ends them (they carry the job's marker)."""
    tok, port = token(), 18269
    b = make_bundle(tmp_path / "b", argv=rank_server_argv(port, tok), world_size=2, http_port=port)
    r = run_k2trt("serve", str(b), "--detach", "--json")
    assert r.returncode == 0, r.stderr
    sup = json.loads(r.stdout)["supervisor_pid"]
    try:
        dog = [d for d in Path("/proc").iterdir() if d.name.isdigit() and b"k2trt.launch.watchdog" in
               (d / "cmdline").read_bytes() and int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == sup]
        assert len(dog) == 1
        os.kill(int(dog[0].name), signal.SIGKILL)
        os.kill(sup, signal.SIGKILL)
        time.sleep(1.0)
        assert len(procs_with(tok)) >= 2  # nobody left to end them
        r = run_k2trt("serve", str(b), "--detach")
        assert r.returncode == 2 and "processes of an earlier job from this bundle are still running" in r.stderr
        assert "`k2trt stop BUNDLE`" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    finally:
        r = run_k2trt("stop", str(b))
    assert r.returncode == 0, r.stderr
    assert procs_with(tok) == []
