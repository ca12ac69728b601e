"""`k2trt serve` launching the reference engine on the tiny K2 under real mpirun (tp2): becomes ready on
/health_generate, a completion request succeeds, `k2trt stop` leaves no process behind."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import httpx
import pytest
from launch_helpers import ROOT, make_bundle, procs_with, run_k2trt, token

pytestmark = pytest.mark.e2e
PORT, MASTER_PORT = 18250, 18251


@pytest.mark.timeout(300)
def test_reference_engine_serves_a_completion_and_stops_clean(tiny_ckpt: Path, tmp_path: Path) -> None:
    name = token()  # the served model name doubles as the process-table search token
    argv = (sys.executable, "-m", "k2trt.reference.serve", str(tiny_ckpt), "--tp", "2", "--host", "127.0.0.1",
            "--port", str(PORT), "--served-model-name", name)
    b = make_bundle(tmp_path / "b", argv=argv, world_size=2, http_port=PORT, model_dir=str(tiny_ckpt),
                    env={"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(MASTER_PORT), "PYTHONPATH": str(ROOT)},
                    ready_timeout_s=240)
    r = run_k2trt("serve", str(b), "--detach", "--json", timeout=280)
    try:
        assert r.returncode == 0, r.stderr[-2000:] + r.stdout[-2000:]
        res = json.loads(r.stdout)
        assert res["status"] == "ready" and res["preflight"]["ok"] is True
        body = {"model": name, "prompt": "Hello", "max_tokens": 4, "temperature": 0}
        resp = httpx.post(f"{res['url']}/v1/completions", json=body, timeout=120)
        assert resp.status_code == 200, resp.text
        out = resp.json()
        assert out["model"] == name and out["usage"]["completion_tokens"] >= 1 and out["choices"][0]["text"] != ""
        assert (b / "logs" / "server.rank1.log").exists()
    finally:
        stop = run_k2trt("stop", str(b), "--json")
    assert stop.returncode == 0, stop.stderr
    assert procs_with(name) == []
