"""`k2trt serve` launching the reference engine on the tiny K2 under real mpirun (tp2): becomes ready on
/health_generate, a completion request succeeds, `k2trt stop` leaves no process behind."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from launch_helpers import served_reference

pytestmark = pytest.mark.e2e
PORT, MASTER_PORT = 18250, 18251


@pytest.mark.timeout(300)
def test_reference_engine_serves_a_completion_and_stops_clean(tiny_ckpt: Path, tmp_path: Path) -> None:
    with served_reference(tiny_ckpt, tmp_path / "b", PORT, MASTER_PORT) as (res, b, name):
        assert res["status"] == "ready" and res["preflight"]["ok"] is True
        body = {"model": name, "prompt": "Hello", "max_tokens": 4, "temperature": 0}
        resp = httpx.post(f"{res['url']}/v1/completions", json=body, timeout=120)
        assert resp.status_code == 200, resp.text
        out = resp.json()
        assert out["model"] == name and out["usage"]["completion_tokens"] >= 1 and out["choices"][0]["text"] != ""
        assert (b / "logs" / "server.rank1.log").exists()
