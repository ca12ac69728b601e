"""``k2trt bench`` end to end: the real aiperf against the reference K2 server on 127.0.0.1.

Nothing here is a double: the tiny K2 checkpoint served by ``python -m k2trt.reference.serve`` (one rank), aiperf
0.13 as a subprocess with its own services, its synthetic prompts made with the tokenizer.json that k2trt derives
from the checkpoint's tiktoken file, real HTTP/SSE, matplotlib, and the ``k2trt`` CLI as a subprocess. The
process-group tests at the end use a small Python process tree in place of aiperf, to check the kill path
without waiting on a real benchmark.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from launch_helpers import stop_group

pytestmark = pytest.mark.e2e

PORT = 18410
MODEL = "tiny-k2"
ISL, OSL = 16, 8


@pytest.fixture(scope="module")
def server(tiny_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The reference server (tp 1); ``k2trt bench`` itself waits for ``/v1/models`` to list the model."""
    log = tmp_path_factory.mktemp("ref") / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "k2trt.reference.serve", str(tiny_ckpt), "--tp", "1",
                                 "--host", "127.0.0.1", "--port", str(PORT), "--served-model-name", MODEL],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield f"http://127.0.0.1:{PORT}"
    finally:
        stop_group(proc)
        if proc.returncode not in (0, -signal.SIGTERM):
            print(log.read_text()[-3000:])


def _k2trt(*args: str, timeout: float = 240, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "k2trt.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def _our_processes(marker: str) -> list[str]:
    """Command lines of live processes mentioning ``marker`` (our output dir): aiperf must leave none."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmd:
            found.append(cmd)
    return found


def test_flags_exist_in_installed_aiperf() -> None:
    """Every aiperf flag k2trt writes is one the installed aiperf's ``profile --help`` documents."""
    from k2trt.bench.aiperf import aiperf_argv, aiperf_command
    from k2trt.bench.spec import BenchSpec

    spec = BenchSpec.from_dict({"isl_osl": [[16, 8]], "concurrency": [2]})
    argv = aiperf_argv(spec, spec.points()[0], url="http://x", model="m", tokenizer_dir="/t", artifact_dir="/a",
                       command=aiperf_command())
    r = subprocess.run([*aiperf_command(), "profile", "--help"], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    documented = set(re.findall(r"(--[a-z0-9-]+)", re.sub(r"\x1b\[[0-9;]*m", "", r.stdout)))
    used = {a for a in argv if a.startswith("--")}
    assert used and used <= documented, used - documented


def test_sweep_report_and_gate(server: str, tiny_ckpt: Path, tmp_path: Path) -> None:
    """A two-point sweep (concurrency 1 and 2) through the CLI → results.json, PNGs, REPORT.md; then the gate
    passes against itself and catches a doubled latency / halved throughput in a copied baseline."""
    spec_file = tmp_path / "bench.yaml"
    spec_file.write_text(yaml.safe_dump({"bench": {
        "endpoint": "completions", "streaming": True, "isl_osl": [[ISL, OSL]], "concurrency": [1, 2],
        "request_multiplier": 3, "gpus": 2, "model": MODEL, "ready_timeout_s": 120, "point_timeout_s": 150}}))
    out = tmp_path / "bench-out"
    # A baseline the run is judged against inside the sweep: at concurrency 1 it was far slower (ITL 10 s,
    # 0.01 tok/s: the run passes there); at concurrency 2 its ITL was 0.01 ms, which a model that runs a forward
    # pass per token cannot match: the run must fail there, naming the metric and the point.
    prior = {"schema": "k2trt.bench.results/1", "spec": {"isl_osl": [[ISL, OSL]], "concurrency": [1, 2]},
             "points": [{"isl": ISL, "osl": OSL, "concurrency": c, "ok": True,
                         "metrics": {"itl_ms_p50": itl, "output_tok_s": 0.01}} for c, itl in ((1, 1e4), (2, 0.01))]}
    (tmp_path / "prior.json").write_text(json.dumps(prior))
    # HF_HUB_OFFLINE=1 in our environment would make aiperf read the tokenizer path as a hub id: k2trt must drop
    # it for aiperf (and point the hub at a closed port instead, so nothing can be downloaded).
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"recipe": "tiny-cpu", "k2trt": "test"}))
    t0 = time.monotonic()
    r = _k2trt("bench", "--spec", str(spec_file), "--endpoint", server + "/v1", "--model-dir", str(tiny_ckpt),
               "--out", str(out), "--baseline", str(tmp_path / "prior.json"), "--tolerance", "50",
               "--manifest", str(manifest), env=env)
    wall = time.monotonic() - t0
    assert r.returncode == 1, (r.stdout + r.stderr)[-4000:]
    assert "2/2 points ok" in r.stdout
    assert "FAILED, 1 regression(s)" in r.stdout, r.stdout
    assert "regression: isl 16 / osl 8 @ concurrency 2: itl_ms_p50 regressed" in r.stdout
    assert not _our_processes(str(out)), "aiperf left processes behind"
    assert not (out / ".aiperf-scratch").exists()

    res = json.loads((out / "results.json").read_text())
    pts = res["points"]
    assert [p["concurrency"] for p in pts] == [1, 2] and all(p["ok"] for p in pts), pts
    elapsed = [p["elapsed_s"] for p in pts]
    print(f"\nbench e2e: {wall:.1f} s wall for 2 points; aiperf runs took {elapsed} s")
    for p in pts:
        m = p["metrics"]
        # ignore_eos gives every request exactly OSL tokens, however early the random model would stop
        assert p["completed"] == p["requests"] == 3 * p["concurrency"] and p["errors"] == 0
        assert m["output_tokens"] == OSL  # usage counted by the server
        assert m["input_tokens"] == ISL  # aiperf's 16-token prompts are 16 tokens for K2's own tokenizer
        assert m["output_tok_s"] > 0 and m["requests_s"] > 0
        assert m["output_tok_s_per_gpu"] == pytest.approx(m["output_tok_s"] / 2)
        assert m["tok_s_per_user"] == pytest.approx(1000 / m["itl_ms_avg"])
        assert 0 < m["itl_ms_p50"] < 5000 and 0 < m["ttft_ms_p50"] < 20000
        assert m["ttft_ms_p50"] <= m["ttft_ms_p90"] <= m["ttft_ms_p99"]
        assert m["latency_ms_p50"] > m["ttft_ms_p50"]
        assert (out / p["artifact_dir"] / "profile_export_aiperf.json").is_file()
        assert (out / p["artifact_dir"] / "profile_export.jsonl").is_file()
    # what aiperf sent (its inputs.json): fixed OSL with ignore_eos, streaming with usage
    for p in pts:
        sent = [pl for s in json.loads((out / p["artifact_dir"] / "inputs.json").read_text())["data"]
                for pl in s["payloads"]]
        assert len(sent) >= p["requests"]
        assert all(b["max_tokens"] == OSL and b["ignore_eos"] is True and b["stream"]
                   and b["stream_options"] == {"include_usage": True} and b["model"] == MODEL for b in sent), sent[0]
    prov = res["provenance"]
    assert prov["aiperf"] and prov["model"] == MODEL and prov["tokenizer"]["tokenizer_json_sha256"]
    assert prov["bundle_manifest"]["content"] == {"recipe": "tiny-cpu", "k2trt": "test"}
    for name in ("throughput.png", "latency.png", "pareto.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, name
    report = (out / "REPORT.md").read_text()
    assert "### ISL 16 / OSL 8" in report and "![pareto](pareto.png)" in report and "**FAIL**" in report
    assert res["gate"]["passed"] is False and [g["concurrency"] for g in res["gate"]["regressions"]] == [2]
    rows = [ln for ln in report.splitlines() if re.match(r"\| [12] \| ", ln)]
    assert len(rows) == 2, report

    # the gate: against itself it passes ...
    g = _k2trt("bench", "--results", str(out / "results.json"), "--baseline", str(out / "results.json"),
               "--tolerance", "50", timeout=60)
    assert g.returncode == 0 and "passed" in g.stdout, g.stdout + g.stderr
    # ... and a baseline that was twice as fast (half the latency, double the throughput) fails it, naming
    # the metric, the point and both values
    fast = json.loads((out / "results.json").read_text())
    for p in fast["points"]:
        for k, v in p["metrics"].items():
            if v is not None:
                p["metrics"][k] = v / 2 if "_ms_" in k else v * 2
    base = tmp_path / "baseline.json"
    base.write_text(json.dumps(fast))
    g = _k2trt("bench", "--results", str(out / "results.json"), "--baseline", str(base), "--tolerance", "50",
               timeout=60)
    assert g.returncode == 1, g.stdout + g.stderr
    itl1 = pts[0]["metrics"]["itl_ms_p50"]
    assert "isl 16 / osl 8 @ concurrency 1: itl_ms_p50 regressed 100%" in g.stdout
    assert f"baseline {itl1 / 2:.4g} ms, current {itl1:.4g} ms" in g.stdout
    assert "output_tok_s regressed 100%" in g.stdout
    assert g.stdout.count("regression:") == 10  # 5 gate metrics × 2 points

    # refusing to overwrite a finished run keeps it intact
    again = _k2trt("bench", "--spec", str(spec_file), "--endpoint", server, "--model-dir", str(tiny_ckpt),
                   "--out", str(out), timeout=60)
    assert again.returncode == 2 and "already exists" in again.stderr
    assert json.loads((out / "results.json").read_text()) == res
    shutil.rmtree(out / "points")  # keep tmp small


def test_waits_for_the_model_and_says_what_it_saw(server: str, tiny_ckpt: Path, tmp_path: Path) -> None:
    from k2trt.bench.sweep import wait_for_model

    assert wait_for_model(server + "/", None, 120) == MODEL  # up (no model named: the first listed one)
    spec_file = tmp_path / "bench.yaml"
    spec_file.write_text("bench: {isl_osl: [[16, 8]], concurrency: [1], model: other-model, ready_timeout_s: 2}\n")
    r = _k2trt("bench", "--spec", str(spec_file), "--endpoint", server, "--model-dir", str(tiny_ckpt),
               "--out", str(tmp_path / "o"), timeout=60)
    assert r.returncode == 2 and "/v1/models did not list model 'other-model' within 2 s (it lists ['tiny-k2'])" \
        in r.stderr, r.stderr
    r = _k2trt("bench", "--spec", str(spec_file), "--endpoint", f"http://127.0.0.1:{PORT + 1}", "--model-dir",
               str(tiny_ckpt), "--out", str(tmp_path / "o"), timeout=60)
    assert r.returncode == 2 and "ConnectError" in r.stderr and "start the server first" in r.stderr, r.stderr
    assert not (tmp_path / "o" / "results.json").exists()


def test_run_point_kills_the_whole_process_group_on_timeout(tmp_path: Path) -> None:
    """aiperf starts a tree of processes; a point that overruns is stopped with all of them."""
    from k2trt.bench.aiperf import run_point

    marker = f"k2trt-bench-orphan-{os.getpid()}"
    child = f"import time; time.sleep(60)  # {marker}"
    parent = (f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {child!r}]); "
              "print('started', flush=True); time.sleep(60)")
    t0 = time.monotonic()
    run = run_point([sys.executable, "-c", parent], tmp_path / "p", timeout_s=3, env=dict(os.environ))
    assert run.timed_out and run.returncode is None and time.monotonic() - t0 < 30
    assert "started" in run.log.read_text()
    deadline = time.monotonic() + 10
    while _our_processes(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _our_processes(marker)


def test_sigterm_during_a_point_stops_aiperf_too(tmp_path: Path) -> None:
    """aiperf runs in its own session; SIGTERM to the bench process must still take aiperf's group down."""
    marker = f"k2trt-bench-sigterm-{os.getpid()}"
    script = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from k2trt.bench.aiperf import run_point\n"
        f"child = 'import time; time.sleep(60)  # ' + {marker[:12]!r} + {marker[12:]!r}\n"  # only the child matches
        "run_point([sys.executable, '-c', child], Path(sys.argv[1]), timeout_s=60, env=dict(os.environ))\n")
    proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "p")])
    deadline = time.monotonic() + 30
    while not _our_processes(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _our_processes(marker), "the stand-in aiperf did not start"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    deadline = time.monotonic() + 10
    while _our_processes(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _our_processes(marker)
