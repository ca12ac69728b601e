"""``REPORT.md``: per ISL/OSL pair a table of the client's numbers and, beside it, the servers' own (scraped from
their Prometheus endpoints during each point), the plots, the gate's verdict and the provenance."""

from __future__ import annotations

import shlex
from pathlib import Path

import yaml

from k2trt.bench.plots import PLOT_FILES
from k2trt.bench.results import BenchResult, PointResult
from k2trt.bench.server import SOURCES
from k2trt.fsio import atomic_write

_COLUMNS: tuple[tuple[str, str, str], ...] = (
    # header, metric, format
    ("req/s", "requests_s", "{:.3g}"),
    ("output tok/s", "output_tok_s", "{:.4g}"),
    ("tok/s/GPU", "output_tok_s_per_gpu", "{:.4g}"),
    ("tok/s/user", "tok_s_per_user", "{:.4g}"),
    ("TTFT p50 ms", "ttft_ms_p50", "{:.4g}"),
    ("TTFT p90", "ttft_ms_p90", "{:.4g}"),
    ("TTFT p99", "ttft_ms_p99", "{:.4g}"),
    ("ITL p50 ms", "itl_ms_p50", "{:.4g}"),
    ("ITL p90", "itl_ms_p90", "{:.4g}"),
    ("ITL p99", "itl_ms_p99", "{:.4g}"),
    ("latency p50 ms", "latency_ms_p50", "{:.4g}"),
    ("latency p99", "latency_ms_p99", "{:.4g}"),
)


def _cell(p: PointResult, metric: str, fmt: str) -> str:
    v = p.metrics.get(metric)
    return "–" if v is None else fmt.format(v)


def _table(points: list[PointResult]) -> list[str]:
    head = ["concurrency", "requests", *(h for h, _, _ in _COLUMNS), "errors"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---:" for _ in head) + "|"]
    for p in points:
        if p.ok:
            cells = [_cell(p, m, f) for _, m, f in _COLUMNS]
        else:
            cells = ["failed"] + [""] * (len(_COLUMNS) - 1)
        lines.append("| " + " | ".join([str(p.concurrency), str(p.requests), *cells, str(p.errors)]) + " |")
    return lines


# every server figure, in table order (the engine has all of the gateway's and more)
_SERVER_COLUMNS: tuple[tuple[str, str], ...] = tuple(
    dict.fromkeys((k, f.label) for figs in SOURCES.values() for k, f in figs.items()))


def _server_table(points: list[PointResult]) -> list[str]:
    rows = [(p, src) for p in points for src in SOURCES if src in p.server]
    if not rows:
        return []
    head = ["concurrency", "source", *(label for _, label in _SERVER_COLUMNS)]
    lines = ["Server side (each server's Prometheus metrics over the point, scraped by aiperf):", "",
             "| " + " | ".join(head) + " |", "|" + "|".join("---:" for _ in head) + "|"]
    for p, src in rows:
        vals = p.server[src]
        cells = ["–" if vals.get(k) is None else f"{vals[k]:.4g}" for k, _ in _SERVER_COLUMNS]
        lines.append("| " + " | ".join([str(p.concurrency), src, *cells]) + " |")
    return lines


def _server_note(result: BenchResult) -> list[str]:
    """Where the server-side figures came from, or why there are none."""
    if any(p.server.get(src) for p in result.points for src in SOURCES):
        urls = sorted({u for p in result.points for u in p.server.get("endpoints") or []})
        return ["Server-side figures: scraped from " + ", ".join(f"`{u}`" for u in urls) + " during each point's "
                "profiling phase (warm-up excluded). Counts are increases between scrapes (about 3 a second): "
                "warm-up requests that end next to the phase boundary can land in a point (`warmup: 0` makes "
                "them exact); percentiles are estimated from histogram buckets; `requests` are completed ones. "
                "The gateway's times start at its request handler, so what the client sees on top is network and "
                "client overhead. `gateway` is k2trt's `/metrics`, `engine` trtllm-serve's Prometheus endpoint.",
                ""]
    if any("--no-server-metrics" in p.argv for p in result.points):
        return ["Server-side metrics were not collected (`--no-server-metrics`).", ""]
    return ["No server-side metrics: no Prometheus endpoint answered (the reference engine has none — benchmark "
            "through the gateway, or pass `--server-metrics URL`).", ""]


def render_report(result: BenchResult, plots: dict[str, Path] | None = None) -> str:
    """The markdown text of REPORT.md (plots are linked by file name, relative to the report)."""
    spec, prov = result.spec, result.provenance
    ok_points = sum(p.ok for p in result.points)
    model = prov.get("model") or spec.model or "model"
    lines = [f"# Benchmark: {model}", ""]
    verdict = "PASS" if result.ok else "FAIL"
    lines += [f"**{verdict}** — {ok_points}/{len(result.points)} points completed; "
              f"{spec.endpoint} endpoint{', streaming' if spec.streaming else ''}; {spec.gpus} GPU(s); "
              f"endpoint `{prov.get('endpoint', '?')}`; started {prov.get('started', '?')}.", ""]
    if result.gate is not None:
        g = result.gate
        lines += ["## Regression gate", "",
                  f"Baseline `{g['baseline']}`, tolerance {g['tolerance_pct']:g}% (a metric fails when it is more "
                  f"than {1 + g['tolerance_pct'] / 100:g}× worse), metrics: {', '.join(g['metrics'])}.", ""]
        if g["regressions"]:
            lines += [f"- **{r['message']}**" for r in g["regressions"]]
        else:
            lines.append("No regression.")
        lines.append("")
    lines += ["## Results", ""]
    for (isl, osl), pts in result.by_pair().items():
        lines += [f"### ISL {isl} / OSL {osl}", "", *_table(pts), ""]
        server = _server_table(pts)
        if server:
            lines += [*server, ""]
        for p in pts:
            if not p.ok:
                lines.append(f"- concurrency {p.concurrency} failed: {p.error or 'unknown error'} "
                             f"(artifacts: `{p.artifact_dir}`)")
        lines.append("")
    lines += ["Per-GPU figures divide the endpoint's output tokens/s by the spec's `gpus`. Tokens/s per user is "
              "1000 / mean inter-token latency when streaming (the decode speed one user sees), otherwise output "
              "tokens/s ÷ concurrency. ITL = (request latency − TTFT) / (output tokens − 1), aiperf's "
              "definition (also called TPOT).", "", *_server_note(result)]
    if plots:
        lines += ["## Plots", ""]
        for name in PLOT_FILES:
            if name in plots:
                lines += [f"![{name}]({plots[name].name})", ""]
    lines += ["## Provenance", "", "| | |", "|---|---|"]
    for key in ("k2trt", "aiperf", "python", "platform", "host", "cpus", "started", "finished", "endpoint",
                "model"):
        lines.append(f"| {key} | `{prov.get(key)}` |")
    tok = prov.get("tokenizer") or {}
    if tok:
        lines.append(f"| tokenizer | `{tok.get('dir')}` (tokenizer.json sha256 "
                     f"`{str(tok.get('tokenizer_json_sha256', '?'))[:16]}…`) |")
    man = prov.get("bundle_manifest")
    lines.append(f"| bundle manifest | `{man['path']}` (sha256 `{man['sha256'][:16]}…`) |" if man
                 else "| bundle manifest | none given |")
    if prov.get("command"):
        lines.append(f"| command | `{shlex.join(prov['command'])}` |")
    spec_yaml = yaml.safe_dump({"bench": spec.to_dict()}, sort_keys=False, default_flow_style=None).rstrip()
    lines += ["", "Bench spec:", "", "```yaml", spec_yaml, "```", ""]
    if result.points and result.points[0].argv:
        lines += ["aiperf command of the first point (every point's is in results.json; its artifacts are in "
                  "the point's folder):", "", "```", shlex.join(result.points[0].argv), "```", ""]
    return "\n".join(lines)


def write_report(result: BenchResult, out_dir: str | Path, plots: dict[str, Path] | None = None) -> Path:
    """Write ``REPORT.md`` into ``out_dir`` atomically and return its path."""
    path = Path(out_dir) / "REPORT.md"
    atomic_write(path, render_report(result, plots))
    return path
