"""Plots and REPORT.md from synthetic results (pure data → real matplotlib PNGs and markdown)."""

from __future__ import annotations

import re
import struct
from pathlib import Path

from k2trt.bench.plots import PLOT_FILES, pareto_front, write_plots
from k2trt.bench.report import render_report, write_report
from k2trt.bench.results import METRICS, BenchResult, PointResult, Regression, gate_record
from k2trt.bench.spec import BenchSpec

SPEC = BenchSpec.from_dict({"endpoint": "chat", "isl_osl": [[1024, 1024], [8192, 1024]],
                            "concurrency": [1, 2, 4, 8, 16, 32, 64, 128, 256], "gpus": 16, "model": "kimi-k2"})


def sweep(spec: BenchSpec = SPEC, streaming: bool = True) -> BenchResult:
    """Numbers shaped like a real sweep: per-user speed falls and per-GPU throughput rises with concurrency."""
    pts = []
    for p in spec.points():
        itl = 12.0 * (1 + p.concurrency / 64) * (1 + p.isl / 32768)
        ttft = 60.0 * p.isl / 1024 * (1 + p.concurrency / 16)
        lat = ttft + itl * (p.osl - 1)
        tok = p.concurrency * p.osl / (lat / 1000)
        m = {k: None for k in METRICS}
        for s, f in (("avg", 1.0), ("p50", 1.0), ("p90", 1.3), ("p99", 1.8)):
            m[f"latency_ms_{s}"] = lat * f
            if streaming:
                m[f"ttft_ms_{s}"], m[f"itl_ms_{s}"] = ttft * f, itl * f
        m.update(output_tok_s=tok, requests_s=tok / p.osl, output_tok_s_per_gpu=tok / spec.gpus,
                 tok_s_per_user=1000 / itl if streaming else tok / p.concurrency)
        pts.append(PointResult.for_point(p, ok=True, metrics=m, completed=p.requests,
                                         artifact_dir=f"points/{p.name}", argv=["aiperf", "profile", "--isl",
                                                                                str(p.isl)]))
    return BenchResult(spec=spec, points=pts, provenance={
        "model": "kimi-k2", "endpoint": "http://node0:8000", "aiperf": "0.13.0", "k2trt": "0.1.0",
        "started": "2025-01-01T00:00:00+00:00",
        "tokenizer": {"dir": "/o/tokenizer", "tokenizer_json_sha256": "ab" * 32},
        "bundle_manifest": {"path": "/b/manifest.json", "sha256": "cd" * 32, "content": {"recipe": "h200x16"}},
        "command": ["k2trt", "bench", "--recipe", "h200x16"]})


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    return struct.unpack(">II", data[16:24])


def test_pareto_front() -> None:
    pts = [(100.0, 10.0, 1), (80.0, 40.0, 4), (60.0, 35.0, 8), (30.0, 90.0, 64), (5.0, 80.0, 256)]
    assert [c for _, _, c in pareto_front(pts)] == [64, 4, 1]  # 8 and 256 are beaten on both axes
    assert pareto_front([]) == []


def test_plots_are_written(tmp_path: Path) -> None:
    paths = write_plots(sweep(), tmp_path)
    assert set(paths) == set(PLOT_FILES)
    for name, path in paths.items():
        w, h = _png_size(path)
        assert w >= 800 and h >= 400 and path.stat().st_size > 20_000, (name, w, h)
    assert not list(tmp_path.glob(".*partial*"))


def test_plots_without_successful_points(tmp_path: Path) -> None:
    r = sweep(BenchSpec.from_dict({"isl_osl": [[16, 8]], "concurrency": [1, 2]}), streaming=False)
    for p in r.points:
        p.ok = False
    for path in write_plots(r, tmp_path).values():
        _png_size(path)


def test_report_tables_gate_and_provenance(tmp_path: Path) -> None:
    r = sweep()
    r.points[4].ok, r.points[4].error = False, "aiperf exited 1: connection refused"
    r.gate = gate_record("/ci/baseline.json", 50, [Regression("itl_ms_p50", (8192, 1024, 64), 10.0, 25.0, 150.0)])
    plots = {name: tmp_path / f for name, f in PLOT_FILES.items()}  # the report only links them
    path = write_report(r, tmp_path, plots)
    text = path.read_text()
    assert text == render_report(r, plots)
    assert text.startswith("# Benchmark: kimi-k2\n\n**FAIL** — 17/18 points completed; chat endpoint, streaming; "
                           "16 GPU(s)")
    assert "### ISL 1024 / OSL 1024" in text and "### ISL 8192 / OSL 1024" in text
    # 9 data rows per table, one of them the failed point with its error listed under the table
    rows = [ln for ln in text.splitlines() if re.match(r"\| \d+ \| \d+ \|", ln)]
    assert len(rows) == 18
    assert "| 16 | 128 | failed |" in text
    assert "- concurrency 16 failed: aiperf exited 1: connection refused (artifacts: `points/isl1024_osl1024_c16`)" \
        in text
    p = r.points[9]  # 8K/1K at concurrency 1
    row = next(ln for ln in rows if ln.startswith("| 1 | 8 |") and f"{p.metrics['output_tok_s']:.4g}" in ln)
    assert f"| {p.metrics['ttft_ms_p50']:.4g} |" in row and f"| {p.metrics['output_tok_s_per_gpu']:.4g} |" in row
    assert "## Regression gate" in text and "tolerance 50% (a metric fails when it is more than 1.5× worse)" in text
    assert "**isl 8192 / osl 1024 @ concurrency 64: itl_ms_p50 regressed 150% (baseline 10 ms, current 25 ms)**" \
        in text
    for name in PLOT_FILES:
        assert f"![{name}]({PLOT_FILES[name]})" in text
    assert "| bundle manifest | `/b/manifest.json` (sha256 `cdcdcdcdcdcdcdcd…`) |" in text
    assert "| command | `k2trt bench --recipe h200x16` |" in text
    assert "  isl_osl:\n  - [1024, 1024]\n  - [8192, 1024]\n  concurrency: [1, 2, 4, 8, 16, 32, 64, 128, 256]\n" \
        in text  # the spec, as a recipe would spell it


def test_report_puts_server_figures_beside_the_clients() -> None:
    r = sweep(BenchSpec.from_dict({"isl_osl": [[16, 8]], "concurrency": [1, 2], "gpus": 1}))
    gw = {"requests": 8.0, "ttft_ms_avg": 12.5, "ttft_ms_p50": 11.0, "ttft_ms_p99": None, "itl_ms_avg": 3.25,
          "latency_ms_avg": 40.0, "latency_ms_p99": 61.0, "input_tokens": 400.0, "output_tokens": 64.0,
          "concurrency_max": 1.0}
    eng = {**gw, "ttft_ms_avg": 9.0, "kv_cache_utilization_max": 0.125}
    r.points[0].server = {"endpoints": ["http://gw:8080/metrics", "http://e:8000/prometheus/metrics"],
                          "gateway": gw, "engine": eng}
    r.points[1].server = {"endpoints": ["http://gw:8080/metrics"], "gateway": {**gw, "requests": 16.0}}
    text = render_report(r)
    head = next(ln for ln in text.splitlines() if ln.startswith("| concurrency | source |"))
    cols = [c.strip() for c in head.strip("|").split("|")]
    rows = [[c.strip() for c in ln.strip("|").split("|")] for ln in text.splitlines()
            if re.match(r"\| \d+ \| (gateway|engine) \|", ln)]
    assert [(x[0], x[1]) for x in rows] == [("1", "gateway"), ("1", "engine"), ("2", "gateway")]
    cell = {(x[0], x[1], c): v for x in rows for c, v in zip(cols, x)}
    assert cell[("1", "gateway", "requests")] == "8" and cell[("2", "gateway", "requests")] == "16"
    assert cell[("1", "gateway", "TTFT avg ms")] == "12.5" and cell[("1", "engine", "TTFT avg ms")] == "9"
    assert cell[("1", "gateway", "TTFT p99")] == "–" and cell[("1", "gateway", "KV cache max")] == "–"
    assert cell[("1", "engine", "KV cache max")] == "0.125"
    assert text.index("| 1 | 8 |") < text.index("| 1 | gateway |")  # under the client's table of the same pair
    assert "scraped from `http://e:8000/prometheus/metrics`, `http://gw:8080/metrics` during each point" in text


def test_report_says_why_there_are_no_server_figures() -> None:
    r = sweep(BenchSpec.from_dict({"isl_osl": [[16, 8]], "concurrency": [1]}))
    text = render_report(r)
    assert "| source |" not in text and "No server-side metrics: no Prometheus endpoint answered" in text
    r.points[0].argv.append("--no-server-metrics")
    assert "Server-side metrics were not collected (`--no-server-metrics`)." in render_report(r)
