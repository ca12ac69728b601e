"""``results.json``: every point's metrics, the spec and the provenance of a sweep; and the baseline gate.

Metric names are flat (``ttft_ms_p50``, ``output_tok_s_per_gpu``) so the gate, the report and the plots share one
table, ``METRICS``, with units and the direction that counts as better. Normalisation:

- ``output_tok_s_per_gpu`` = ``output_tok_s / spec.gpus`` (the whole deployment's output rate per GPU).
- ``tok_s_per_user`` = ``1000 / itl_ms_avg`` when streaming (the decode speed one user sees, time to first token
  excluded); without streaming there is no inter-token latency and it is ``output_tok_s / concurrency``.

The gate (``compare``) matches points by (isl, osl, concurrency) and measures every metric as a *slowdown
factor*: ``baseline / current`` for throughputs, ``current / baseline`` for latencies. A 2× slower server is a
factor of 2 on both, so one tolerance reads the same for both kinds: ``--tolerance 50`` fails anything more than
1.5× worse and passes ordinary noise below that.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import socket
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from k2trt.bench.spec import BenchSpec, Point
from k2trt.errors import ConfigError
from k2trt.fsio import atomic_write

SCHEMA = "k2trt.bench.results/1"
"""``schema`` of results.json; ``BenchResult.load`` refuses any other."""

Better = Literal["higher", "lower"]


@dataclass(frozen=True)
class Metric:
    """One per-point figure: where it comes from, its unit and which direction is better."""

    unit: str
    better: Better
    label: str


_PCT = ("avg", "p50", "p90", "p99")
METRICS: dict[str, Metric] = {
    "output_tok_s": Metric("tok/s", "higher", "output tokens/s"),
    "output_tok_s_per_gpu": Metric("tok/s/GPU", "higher", "output tokens/s per GPU"),
    "tok_s_per_user": Metric("tok/s/user", "higher", "tokens/s per user"),
    "requests_s": Metric("req/s", "higher", "requests/s"),
    **{f"ttft_ms_{s}": Metric("ms", "lower", f"time to first token {s}") for s in _PCT},
    **{f"itl_ms_{s}": Metric("ms", "lower", f"inter-token latency {s}") for s in _PCT},
    **{f"latency_ms_{s}": Metric("ms", "lower", f"request latency {s}") for s in _PCT},
    "input_tokens": Metric("tokens", "higher", "input tokens per request (avg)"),
    "output_tokens": Metric("tokens", "higher", "output tokens per request (avg)"),
}
"""Every metric of a point. ITL is aiperf's inter-token latency, (latency − TTFT) / (output tokens − 1) per
request, i.e. what some tools call TPOT."""

DEFAULT_TOLERANCE_PCT = 50.0
"""Gate tolerance: fail beyond 1.5× worse. Loose enough for a shared CI machine; a 2× slowdown always fails."""

GATE_METRICS: tuple[str, ...] = ("output_tok_s", "requests_s", "ttft_ms_p50", "itl_ms_p50", "latency_ms_p50")
"""Metrics the gate checks by default: both throughputs and the median latencies (tails are too noisy for a
shared CI machine)."""

# aiperf export key → our prefix; percentiles come along.
_FROM_AIPERF = {"time_to_first_token": "ttft_ms", "inter_token_latency": "itl_ms", "request_latency": "latency_ms"}


def metrics_from_export(export: dict[str, Any], *, gpus: int, concurrency: int) -> dict[str, float | None]:
    """Our flat metrics from one aiperf aggregate export (``profile_export_aiperf.json``).

    Args:
        export: the parsed export.
        gpus: GPUs behind the endpoint, for the per-GPU figure.
        concurrency: the point's concurrency, for the per-user figure when there is no ITL.

    Returns:
        ``{metric name: value or None}`` for every key of ``METRICS``.
    """
    def stat(key: str, s: str) -> float | None:
        v = export.get(key)
        x = v.get(s) if isinstance(v, dict) else None
        return float(x) if isinstance(x, (int, float)) and math.isfinite(x) else None

    out: dict[str, float | None] = {k: None for k in METRICS}
    out["output_tok_s"] = stat("output_token_throughput", "avg")
    out["requests_s"] = stat("request_throughput", "avg")
    out["input_tokens"] = stat("input_sequence_length", "avg")
    out["output_tokens"] = stat("output_sequence_length", "avg")
    for key, prefix in _FROM_AIPERF.items():
        for s in _PCT:
            out[f"{prefix}_{s}"] = stat(key, s)
    tok = out["output_tok_s"]
    out["output_tok_s_per_gpu"] = None if tok is None else tok / gpus
    itl = out["itl_ms_avg"]
    if itl is not None and itl > 0:
        out["tok_s_per_user"] = 1000.0 / itl
    elif tok is not None:
        out["tok_s_per_user"] = tok / concurrency
    return out


def export_counts(export: dict[str, Any]) -> tuple[int, int]:
    """(completed requests, failed requests) of one aiperf export."""
    def avg(key: str) -> float:
        v = export.get(key)
        x = v.get("avg") if isinstance(v, dict) else None
        return float(x) if isinstance(x, (int, float)) else 0.0

    completed = int(avg("request_count"))
    errors = 0
    for e in export.get("error_summary") or []:
        errors += int(e.get("count", 1)) if isinstance(e, dict) else 1
    return completed, errors


@dataclass
class PointResult:
    """The outcome of one point: its metrics, or why it failed."""

    isl: int
    osl: int
    concurrency: int
    requests: int
    warmup: int
    ok: bool
    metrics: dict[str, float | None] = field(default_factory=dict)
    completed: int = 0
    errors: int = 0
    error: str | None = None
    elapsed_s: float = 0.0
    artifact_dir: str = ""
    argv: list[str] = field(default_factory=list)
    server: dict[str, Any] = field(default_factory=dict)
    """Server-side figures scraped during the point (``k2trt.bench.server.summarize``); empty when none."""

    @classmethod
    def for_point(cls, p: Point, **kw: Any) -> "PointResult":
        """A result for ``p`` (its isl/osl/concurrency/requests/warmup copied)."""
        return cls(isl=p.isl, osl=p.osl, concurrency=p.concurrency, requests=p.requests, warmup=p.warmup, **kw)

    @property
    def key(self) -> tuple[int, int, int]:
        """``(isl, osl, concurrency)``."""
        return (self.isl, self.osl, self.concurrency)

    @property
    def label(self) -> str:
        """``isl 1024 / osl 1024 @ concurrency 8``."""
        return f"isl {self.isl} / osl {self.osl} @ concurrency {self.concurrency}"

    def to_dict(self) -> dict[str, Any]:
        return {"isl": self.isl, "osl": self.osl, "concurrency": self.concurrency, "requests": self.requests,
                "warmup": self.warmup, "ok": self.ok, "completed": self.completed, "errors": self.errors,
                "error": self.error, "elapsed_s": round(self.elapsed_s, 3), "artifact_dir": self.artifact_dir,
                "argv": list(self.argv), "metrics": dict(self.metrics), "server": dict(self.server)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PointResult":
        try:
            metrics = {str(k): (None if v is None else float(v)) for k, v in dict(d.get("metrics") or {}).items()}
            return cls(isl=int(d["isl"]), osl=int(d["osl"]), concurrency=int(d["concurrency"]),
                       requests=int(d.get("requests", 0)), warmup=int(d.get("warmup", 0)), ok=bool(d["ok"]),
                       metrics=metrics, completed=int(d.get("completed", 0)), errors=int(d.get("errors", 0)),
                       error=d.get("error"), elapsed_s=float(d.get("elapsed_s", 0.0)),
                       artifact_dir=str(d.get("artifact_dir", "")), argv=[str(a) for a in d.get("argv") or []],
                       server=dict(d.get("server") or {}))
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"a point in results.json is malformed ({type(e).__name__}: {e})") from None


@dataclass
class BenchResult:
    """A whole sweep: spec, points, provenance and (after a comparison) the gate's verdict."""

    spec: BenchSpec
    points: list[PointResult]
    provenance: dict[str, Any] = field(default_factory=dict)
    gate: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        """Every point ran and the gate (if any) found no regression."""
        return all(p.ok for p in self.points) and not (self.gate and self.gate.get("regressions"))

    def by_pair(self) -> dict[tuple[int, int], list[PointResult]]:
        """Points grouped by (isl, osl), concurrency ascending, in spec order."""
        groups: dict[tuple[int, int], list[PointResult]] = {}
        for p in self.points:
            groups.setdefault((p.isl, p.osl), []).append(p)
        return {k: sorted(v, key=lambda p: p.concurrency) for k, v in groups.items()}

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "ok": self.ok, "spec": self.spec.to_dict(),
                "points": [p.to_dict() for p in self.points], "provenance": self.provenance, "gate": self.gate}

    def write(self, path: str | Path) -> Path:
        """Write results.json atomically (``k2trt.fsio``)."""
        return atomic_write(path, json.dumps(self.to_dict(), indent=2, default=str) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "BenchResult":
        """Read a results.json; ``ConfigError`` naming the file when it is missing or not one."""
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path} does not exist", "pass a results.json written by k2trt bench") from None
        except (OSError, ValueError) as e:
            raise ConfigError(f"{path} is not a readable JSON file ({e})") from None
        if not isinstance(d, dict) or d.get("schema") != SCHEMA:
            raise ConfigError(f"{path} is not a k2trt bench results file (schema {SCHEMA!r} expected)",
                              "pass a results.json written by k2trt bench")
        spec = BenchSpec.from_dict(d.get("spec") or {}, where=f"{path}: spec")
        points = [PointResult.from_dict(p) for p in d.get("points") or []]
        return cls(spec=spec, points=points, provenance=dict(d.get("provenance") or {}), gate=d.get("gate"))


# --- provenance ----------------------------------------------------------------------------------------------

def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_manifest(path: str | Path) -> dict[str, Any]:
    """A bundle manifest for the provenance: its path, digest and content (JSON or YAML mapping)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"bundle manifest {p} does not exist", "pass the manifest file of the bundle under test")
    entry: dict[str, Any] = {"path": str(p.absolute()), "sha256": _sha256(p)}
    text = p.read_text(errors="replace")
    try:
        content: Any = json.loads(text)
    except ValueError:
        import yaml

        try:
            content = yaml.safe_load(text)
        except yaml.YAMLError:
            content = None
    if isinstance(content, dict):
        entry["content"] = content
    return entry


def provenance(*, endpoint: str, model: str, tokenizer_dir: Path | None, manifest: dict[str, Any] | None,
               started: datetime, finished: datetime) -> dict[str, Any]:
    """Where, when and with what a sweep ran: versions, host, times, endpoint, tokenizer digest, bundle
    (``manifest`` as ``read_manifest`` returns it)."""
    from k2trt import __version__
    from k2trt.bench.aiperf import aiperf_version

    tok: dict[str, Any] | None = None
    if tokenizer_dir is not None:
        tok = {"dir": str(tokenizer_dir.absolute())}
        if (tokenizer_dir / "tokenizer.json").is_file():
            tok["tokenizer_json_sha256"] = _sha256(tokenizer_dir / "tokenizer.json")
    return {
        "k2trt": __version__,
        "aiperf": aiperf_version(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "cpus": os.cpu_count(),
        "started": started.astimezone(timezone.utc).isoformat(timespec="seconds"),
        "finished": finished.astimezone(timezone.utc).isoformat(timespec="seconds"),
        "endpoint": endpoint,
        "model": model,
        "tokenizer": tok,
        "bundle_manifest": manifest,
        "command": list(getattr(sys, "orig_argv", sys.argv)),
    }


# --- the gate ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Regression:
    """A metric of a point that got worse than the tolerance allows (or a point/metric that went missing)."""

    metric: str
    point: tuple[int, int, int]
    baseline: float | None
    current: float | None
    worse_pct: float | None

    @property
    def message(self) -> str:
        isl, osl, c = self.point
        where = f"isl {isl} / osl {osl} @ concurrency {c}"
        if self.metric == "point":
            return f"{where}: in the baseline but failed or missing in this run"
        unit = METRICS[self.metric].unit if self.metric in METRICS else ""
        if self.current is None:
            return f"{where}: {self.metric} missing (baseline {self.baseline:.4g} {unit})"
        worse = "inf" if self.worse_pct is None or math.isinf(self.worse_pct) else f"{self.worse_pct:.0f}"
        return (f"{where}: {self.metric} regressed {worse}% "
                f"(baseline {self.baseline:.4g} {unit}, current {self.current:.4g} {unit})")

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "isl": self.point[0], "osl": self.point[1], "concurrency": self.point[2],
                "baseline": self.baseline, "current": self.current, "worse_pct": self.worse_pct,
                "message": self.message}


def slowdown(metric: str, baseline: float, current: float) -> float:
    """How many times worse ``current`` is than ``baseline`` (1.0 = same, 2.0 = twice as slow, < 1 = better)."""
    better = METRICS[metric].better
    num, den = (baseline, current) if better == "higher" else (current, baseline)
    if den <= 0:
        return math.inf if num > 0 else 1.0
    return num / den


def compare(baseline: BenchResult, current: BenchResult, tolerance_pct: float,
            metrics: tuple[str, ...] = GATE_METRICS) -> list[Regression]:
    """Point-by-point comparison of ``current`` against ``baseline``.

    Args:
        baseline: the stored results.
        current: this run's results.
        tolerance_pct: allowed slowdown in percent; a metric fails when its slowdown factor exceeds
            ``1 + tolerance_pct / 100`` (50 → fails beyond 1.5× worse; a 2× slower server always fails).
        metrics: which metrics to check (``GATE_METRICS`` by default); a metric the baseline lacks is skipped.

    Returns:
        The regressions, empty when the gate passes. A baseline point that is missing or failed in ``current``
        is a regression; points only in ``current`` are not compared.

    Example:
        >>> compare(base, base, 50)  # doctest: +SKIP
        []
    """
    if not (tolerance_pct >= 0 and math.isfinite(tolerance_pct)):
        raise ConfigError(f"--tolerance {tolerance_pct} must be a non-negative percentage, e.g. 50")
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ConfigError(f"unknown gate metric(s) {', '.join(unknown)}", f"choose from {', '.join(METRICS)}")
    limit = 1.0 + tolerance_pct / 100.0
    now = {p.key: p for p in current.points}
    out: list[Regression] = []
    for b in baseline.points:
        if not b.ok:
            continue
        c = now.get(b.key)
        if c is None or not c.ok:
            out.append(Regression("point", b.key, None, None, None))
            continue
        for m in metrics:
            bv, cv = b.metrics.get(m), c.metrics.get(m)
            if bv is None:
                continue
            if cv is None:
                out.append(Regression(m, b.key, bv, None, None))
                continue
            f = slowdown(m, bv, cv)
            if f > limit:
                out.append(Regression(m, b.key, bv, cv, (f - 1.0) * 100.0))
    return out


def gate_record(baseline_path: str | Path, tolerance_pct: float, regressions: list[Regression],
                metrics: tuple[str, ...] = GATE_METRICS) -> dict[str, Any]:
    """The ``gate`` section of results.json."""
    return {"baseline": str(Path(baseline_path).absolute()), "tolerance_pct": tolerance_pct,
            "metrics": list(metrics), "passed": not regressions,
            "regressions": [r.to_dict() for r in regressions]}
