"""Server-side figures of a point: what aiperf scraped from the servers' Prometheus endpoints while it ran.

aiperf 0.13 scrapes ``<endpoint>/metrics`` during every run (about three times a second) and any further URL given
with ``--server-metrics``; for ``trtllm-serve``, whose ``/metrics`` is JSON, it falls back to
``/prometheus/metrics`` by itself (``aiperf/server_metrics/data_collector.py``). It writes
``server_metrics_export.json``: per metric name (as a Prometheus text parser reports it — counters without
``_total``) its type and one series per endpoint and label set, with stats over the profiling phase only (warm-up
excluded): a counter's ``total`` increase, a histogram's ``count``/``sum`` increase and percentile estimates from
its bucket deltas, a gauge's ``avg``/``max``.

How exact the increases are: each is the last scrape in the phase minus the last scrape before it. aiperf asks
for a scrape at the phase boundary but does not wait for it, so warm-up requests that finish within a scrape
(about 0.3 s) of the boundary can land in the point; and a series that first appears inside a point (TensorRT-LLM
creates its series at the first request it serves) loses that point's first increments. Neither touches a served
engine measured with ``warmup: 0`` (its readiness probe, ``/health_generate``, already generated), nor the
gateway, whose series all exist from its start.

``summarize`` reduces that to a few figures per *source* — ``gateway`` (k2trt's ``/metrics``) and ``engine``
(``trtllm-serve``'s ``/prometheus/metrics``) — so the report can put them beside the client's numbers. A source
appears only when its metrics were scraped; a metric a TensorRT-LLM release lacks is ``None``. Series of one
metric (several label sets or endpoints) are summed; a percentile is kept only when a single series observed
anything during the point (estimates do not combine). The reference engine has no Prometheus endpoint: benchmarked directly it gives no
server figures; benchmarked through the gateway, the gateway's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from k2trt.gateway import metrics as gm
from k2trt.trtllm import metrics as tm

Stat = Literal["total", "count", "avg", "p50", "p99", "max"]


@dataclass(frozen=True)
class Figure:
    """One server-side figure: which metric, which statistic, and the factor to our unit."""

    metric: str
    """The metric's name as exported (a counter's with ``_total``)."""
    stat: Stat
    scale: float = 1.0
    label: str = ""


def _figures(ttft: str, itl: str, latency: str, prompt: str, completion: str, concurrency: str) -> dict[str, Figure]:
    return {
        "requests": Figure(latency, "count", label="requests"),
        "ttft_ms_avg": Figure(ttft, "avg", 1e3, "TTFT avg ms"),
        "ttft_ms_p50": Figure(ttft, "p50", 1e3, "TTFT p50"),
        "ttft_ms_p99": Figure(ttft, "p99", 1e3, "TTFT p99"),
        "itl_ms_avg": Figure(itl, "avg", 1e3, "ITL avg ms"),
        "latency_ms_avg": Figure(latency, "avg", 1e3, "latency avg ms"),
        "latency_ms_p99": Figure(latency, "p99", 1e3, "latency p99"),
        "input_tokens": Figure(prompt, "total", label="input tok"),
        "output_tokens": Figure(completion, "total", label="output tok"),
        "concurrency_max": Figure(concurrency, "max", label="in flight max"),
    }


SOURCES: dict[str, dict[str, Figure]] = {
    "gateway": _figures(gm.TTFT, gm.ITL, gm.DURATION, gm.PROMPT, gm.COMPLETION, gm.INFLIGHT),
    "engine": {**_figures(tm.TIME_TO_FIRST_TOKEN, tm.TIME_PER_OUTPUT_TOKEN, tm.E2E_REQUEST_LATENCY,
                          tm.PROMPT_TOKENS, tm.GENERATION_TOKENS, tm.NUM_REQUESTS_RUNNING),
               "kv_cache_utilization_max": Figure(tm.KV_CACHE_UTILIZATION, "max", label="KV cache max")},
}
"""Per source, figure name → where it comes from. ``requests`` is the completed requests (the end-to-end latency
histogram's count) on both; inter-token latency is per request on both (TensorRT-LLM's time per output token)."""


def _family(metric: str) -> str:
    return metric[:-6] if metric.endswith("_total") else metric


def _finite(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) else None


def _value(entry: Any, stat: Stat) -> float | None:
    series = [s.get("stats") or {} for s in (entry or {}).get("series") or [] if isinstance(s, dict)]
    if not series:
        return None
    if stat == "total":
        vals = [_finite(s.get("total")) for s in series]
        return sum(v for v in vals if v is not None) if any(v is not None for v in vals) else None
    if stat == "count":
        return sum(_finite(s.get("count")) or 0.0 for s in series)
    if stat == "max":
        vals = [v for v in (_finite(s.get("max")) for s in series) if v is not None]
        return max(vals) if vals else None
    if stat == "avg":
        count = sum(_finite(s.get("count")) or 0.0 for s in series)
        total = sum(_finite(s.get("sum")) or 0.0 for s in series)
        return total / count if count > 0 else None
    seen = [s for s in series if (_finite(s.get("count")) or 0) > 0]  # series observed during the point
    return _finite(seen[0].get(f"{stat}_estimate")) if len(seen) == 1 else None


def summarize(export: dict[str, Any]) -> dict[str, Any]:
    """The server figures of one point from aiperf's ``server_metrics_export.json`` (module docstring).

    Args:
        export: the parsed export.

    Returns:
        ``{"endpoints": [scraped URLs], "gateway": {figure: value}, "engine": {...}}``, a source only when at least
        one of its metrics was scraped.

    Example:
        >>> summarize({"summary": {"endpoints_successful": ["http://gw/metrics"]}, "metrics": {
        ...     "k2trt_gateway_requests": {"type": "counter", "series": [{"stats": {"total": 8.0}}]}}}
        ...     )["gateway"]["requests"]
        8.0
    """
    metrics = export.get("metrics") if isinstance(export.get("metrics"), dict) else {}
    summary = export.get("summary") if isinstance(export.get("summary"), dict) else {}
    out: dict[str, Any] = {"endpoints": [str(u) for u in summary.get("endpoints_successful") or []]}
    for source, figures in SOURCES.items():
        if not any(_family(f.metric) in metrics for f in figures.values()):
            continue
        vals: dict[str, float | None] = {}
        for name, f in figures.items():
            v = _value(metrics.get(_family(f.metric)), f.stat)
            vals[name] = None if v is None else v * f.scale
        out[source] = vals
    return out
