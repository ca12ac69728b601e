"""``k2trt bench`` end to end: the real aiperf against the reference K2 server on 127.0.0.1, directly and through
the gateway, with the servers' Prometheus metrics scraped beside the client's numbers.

The sweeps use no double: the tiny K2 checkpoint served by ``python -m k2trt.reference.serve`` (one rank), the
gateway in front of it, aiperf 0.13 as a subprocess with its own services, its synthetic prompts made with the
tokenizer.json that k2trt derives from the checkpoint's tiktoken file, real HTTP/SSE, matplotlib, and the
``k2trt`` CLI as a subprocess. The one exception is the engine's Prometheus endpoint: TensorRT-LLM cannot run
here, so the engine double (tests/e2e/engine_double.py) stands in for trtllm-serve's metric surface in
``test_engine_prometheus_metrics_beside_the_gateways``. The process-group tests at the end use a small Python
process tree in place of aiperf, to check the kill path without waiting on a real benchmark.
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

import httpx
import pytest
import yaml

from launch_helpers import stop_group

pytestmark = pytest.mark.e2e

PORT = 18410
GW_PORT, TRT_PORT, TRT_GW_PORT = 18570, 18571, 18572
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
    # the reference engine has no Prometheus endpoint: nothing scraped, and the report says why
    assert all("gateway" not in p["server"] and "engine" not in p["server"] for p in pts)
    assert "No server-side metrics: no Prometheus endpoint answered" in report
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


def _sweep(tmp_path: Path, endpoint: str, model_dir: Path, *extra: str, concurrency: int = 2) -> tuple[
        dict, str, Path]:
    """One chat point (ISL/OSL 16/8, 2 × concurrency requests) through the CLI; (its point, REPORT.md, out).
    No warm-up: aiperf's phase-boundary scrape is best-effort (not awaited before the measured phase starts), so
    warm-up requests that finish next to the boundary could be counted in the point; without them the servers'
    counts over the point must equal the measured requests exactly."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    spec_file = tmp_path / "bench.yaml"
    spec_file.write_text(yaml.safe_dump({"bench": {
        "endpoint": "chat", "streaming": True, "isl_osl": [[ISL, OSL]], "concurrency": [concurrency],
        "request_multiplier": 2, "warmup": 0, "model": MODEL, "ready_timeout_s": 120, "point_timeout_s": 200}}))
    out = tmp_path / "out"
    r = _k2trt("bench", "--spec", str(spec_file), "--endpoint", endpoint, "--model-dir", str(model_dir),
               "--out", str(out), *extra)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    [point] = json.loads((out / "results.json").read_text())["points"]
    assert (out / point["artifact_dir"] / "server_metrics_export.json").is_file()
    return point, (out / "REPORT.md").read_text(), out


def test_bench_through_the_gateway_scrapes_its_metrics(server: str, tiny_ckpt: Path, tmp_path: Path) -> None:
    """The reference engine has no Prometheus endpoint, so through the gateway the gateway's /metrics is what is
    scraped: over the measured phase it counts exactly the requests aiperf measured and their OSL tokens each."""
    from k2trt.gateway import BackgroundGateway, GatewayConfig

    cfg = GatewayConfig(engine_url=server, model_dir=str(tiny_ckpt), port=GW_PORT, served_model_name=MODEL)
    with BackgroundGateway(cfg) as gw:
        p, report, _ = _sweep(tmp_path, gw.url, tiny_ckpt)
    g, m = p["server"]["gateway"], p["metrics"]
    assert p["ok"] and p["server"]["endpoints"] == [gw.url + "/metrics"] and "engine" not in p["server"]
    assert g["requests"] == p["completed"] == p["requests"] == 4
    assert g["output_tokens"] == 4 * OSL and g["input_tokens"] > 4 * ISL  # the chat template adds to ISL
    assert g["input_tokens"] == 4 * m["input_tokens"]  # aiperf's ISL is the usage the gateway sent back
    # Each request's first output is seen by the gateway before aiperf receives it, after aiperf sent the request:
    # the server's TTFT window lies inside the client's. Latency cannot be compared so: aiperf's ends at the last
    # content chunk, the gateway's at the engine's finish, which may come a step later.
    assert 0 < g["ttft_ms_avg"] < m["ttft_ms_avg"]
    assert g["ttft_ms_avg"] < g["latency_ms_avg"] and g["itl_ms_avg"] > 0
    assert g["ttft_ms_p50"] > 0 and g["ttft_ms_p99"] >= g["ttft_ms_p50"] and g["latency_ms_p99"] > 0
    assert 1 <= g["concurrency_max"] <= 2
    row = next(ln for ln in report.splitlines() if ln.startswith("| 2 | gateway |"))
    assert row.startswith("| 2 | gateway | 4 |") and f"`{gw.url}/metrics`" in report


def test_engine_prometheus_metrics_beside_the_gateways(tiny_ckpt: Path, tmp_path: Path) -> None:
    """trtllm-serve's metrics (the engine double standing in for it, with TensorRT-LLM's names): through the
    gateway with ``--server-metrics ENGINE/prometheus/metrics`` both sources are reported and agree; aimed at
    the engine itself, aiperf finds /prometheus/metrics behind the JSON /metrics by itself."""
    from engine_double import EngineDouble, Reply

    from k2trt.chat.tokenizer import K2Tokenizer
    from k2trt.gateway import BackgroundGateway, GatewayConfig

    tok = K2Tokenizer.from_dir(tiny_ckpt)
    reply = "Hello! " * 8
    n_out = len(tok.encode_with_specials(reply))
    # paced like a model (~0.6 s a request): aiperf's phase-boundary scrapes then bracket every request
    d = EngineDouble(port=TRT_PORT, tokenizer=tok, default=Reply(reply), prometheus=True, delay_s=0.03).start()
    try:
        cfg = GatewayConfig(engine_url=d.url, model_dir=str(tiny_ckpt), port=TRT_GW_PORT, served_model_name=MODEL)
        with BackgroundGateway(cfg, tokenizer=tok) as gw:
            # one generation first, as `k2trt serve`'s readiness probe (/health_generate) makes: TensorRT-LLM
            # creates its series at the first request, and one first seen inside a point loses its first counts
            httpx.post(gw.url + "/v1/chat/completions", json={"model": MODEL, "messages": [
                {"role": "user", "content": "hi"}]}, timeout=30).raise_for_status()
            p, report, _ = _sweep(tmp_path / "gw", gw.url, tiny_ckpt, "--server-metrics",
                                  d.url + "/prometheus/metrics")
        direct, direct_report, _ = _sweep(tmp_path / "engine", d.url, tiny_ckpt, concurrency=1)
    finally:
        d.stop()
    g, e = p["server"]["gateway"], p["server"]["engine"]
    assert sorted(p["server"]["endpoints"]) == sorted([gw.url + "/metrics", d.url + "/prometheus/metrics"])
    assert g["requests"] == e["requests"] == 4 and g["output_tokens"] == e["output_tokens"] == 4 * n_out
    assert 0 < e["latency_ms_avg"] < g["latency_ms_avg"]  # the engine's time lies inside the gateway's
    assert 0 < e["kv_cache_utilization_max"] <= 1 and g.get("kv_cache_utilization_max") is None
    assert "| 2 | gateway | 4 |" in report and "| 2 | engine | 4 |" in report
    assert g["latency_ms_p99"] is not None and e["latency_ms_p99"] is not None  # one API's series: percentiles
    de = direct["server"]["engine"]
    assert "gateway" not in direct["server"] and de["requests"] == 2 and de["output_tokens"] == 2 * 5  # chat usage
    assert "| 1 | engine | 2 |" in direct_report


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
