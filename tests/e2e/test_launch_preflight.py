"""Preflight on this machine (the probe runs for real as a subprocess): what passes, and each failure as one line
naming host, cause and fix. This machine has no GPU, which is a problem for the trtllm engine and skipped for the
reference engine. The engine-version probe is a tiny command standing in for the engine's own version query,
because the engine cannot be installed here."""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

import pytest
from launch_helpers import make_bundle, run_k2trt

from k2trt.errors import LaunchError
from k2trt.launch.preflight import manifest_hash, run_preflight
from k2trt.launch.spec import LaunchSpec

pytestmark = pytest.mark.e2e


def _model(tmp_path: Path) -> Path:
    m = tmp_path / "model"
    m.mkdir()
    (m / "config.json").write_text('{"model_type": "kimi_k2"}')
    (m / "model-00001-of-00002.safetensors").write_bytes(b"\0" * 100)
    return m


def _by(report, name):
    return [c for c in report.checks if c.name == name]


def test_reference_engine_passes_and_skips_gpu(tmp_path: Path) -> None:
    m = _model(tmp_path)
    spec = LaunchSpec(argv=("x",), model_dir=str(m), model_manifest_sha256=manifest_hash(str(m)), http_port=18240)
    rep = run_preflight(spec)
    assert rep.problems == [] and rep.to_dict()["ok"] is True
    assert _by(rep, "gpu")[0].status == "skip" and _by(rep, "port")[0].status == "ok"
    assert _by(rep, "model")[0].detail.startswith("manifest " + manifest_hash(str(m))[:12])


def test_trtllm_engine_failures_are_one_line_each(tmp_path: Path) -> None:
    m = _model(tmp_path)
    expected = manifest_hash(str(m))
    (m / "model-00002-of-00002.safetensors").write_bytes(b"\0" * 7)  # the node's copy differs from the bundle's
    probe = (sys.executable, "-c", "print('1.1.0')")
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 18241))
        busy.listen()
        spec = LaunchSpec(engine="trtllm", argv=("x",), http_port=18241, model_dir=str(m),
                          model_manifest_sha256=expected, engine_version="1.2.0", engine_version_probe=probe,
                          eplb=True, shm_min_bytes=1 << 60)
        rep = run_preflight(spec)
    lines = [c.line() for c in rep.problems]
    assert {c.name for c in rep.problems} == {"gpu", "model", "port", "shm", "engine"}
    assert all(ln.startswith("localhost: ") and "(fix: " in ln and "\n" not in ln for ln in lines)
    text = "\n".join(lines)
    assert "no GPU (nvidia-smi not found)" in text and "--engine reference" in text
    assert "HTTP port 18241 is in use" in text and "engine version 1.1.0 != bundle's 1.2.0" in text
    assert "differs from the bundle's" in text and "GiB needed for EPLB" in text
    with pytest.raises(LaunchError, match="preflight found 5 problem"):
        rep.raise_if_failed()


def test_missing_model_and_manifest_changes(tmp_path: Path) -> None:
    m = _model(tmp_path)
    h = manifest_hash(str(m))
    (m / "config.json").write_text('{"model_type": "deepseek_v3"}')  # same size class, different bytes
    assert manifest_hash(str(m)) != h and manifest_hash(str(tmp_path / "nope")) is None
    rep = run_preflight(LaunchSpec(argv=("x",), model_dir=str(tmp_path / "nope"), http_port=18242))
    assert [c.line() for c in rep.problems] == [
        f"localhost: model directory {tmp_path / 'nope'} is missing (fix: put the checkpoint at the same path on "
        "every node (shared filesystem or rsync))"]


def test_serve_refuses_on_preflight_and_skip_preflight_overrides(tmp_path: Path) -> None:
    b = make_bundle(tmp_path / "b", engine="trtllm", argv=(sys.executable, "-c", "import time; time.sleep(60)"),
                    http_port=18243, ready_timeout_s=3, ready_paths=("/health",))
    r = run_k2trt("serve", str(b))
    assert r.returncode == 2 and "preflight found 1 problem(s)" in r.stderr and "no GPU" in r.stderr
    assert not (b / "logs" / "serve.state.json").exists()  # nothing was started
    r = run_k2trt("serve", str(b), "--skip-preflight", "--json")
    res = json.loads(r.stdout)
    assert r.returncode == 2 and res["status"] == "timeout" and res["leftover"] == []
