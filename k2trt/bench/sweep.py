"""``run_bench``: wait for the endpoint, run every point through aiperf, write results.json, plots, REPORT.md,
and compare with a baseline.

Layout of ``out_dir`` after a run::

    results.json  REPORT.md  throughput.png  latency.png  pareto.png
    tokenizer/                      the offline HF tokenizer aiperf used (generated from the model's tiktoken)
    points/isl16_osl8_c1/           one aiperf artifact folder per point (aiperf.log, profile_export_aiperf.json,
                                    profile_export_aiperf.csv, profile_export.jsonl, logs/, inputs.json, and
                                    server_metrics_export.json/.csv when a Prometheus endpoint was scraped)

Server metrics: aiperf scrapes the endpoint's own ``/metrics`` during every point (the gateway's; trtllm-serve's
``/prometheus/metrics`` through aiperf's fallback; the reference engine has none) and every ``server_metrics``
URL; each point's ``server`` figures (``k2trt.bench.server``) go into results.json and REPORT.md.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from k2trt.bench import aiperf
from k2trt.bench.results import (DEFAULT_TOLERANCE_PCT, GATE_METRICS, BenchResult, PointResult, compare,
                                 export_counts, gate_record, metrics_from_export, provenance, read_manifest)
from k2trt.bench.spec import BenchSpec, Point
from k2trt.errors import ConfigError, LaunchError

RESULTS_FILE = "results.json"
REPORT_FILE = "REPORT.md"
POINTS_DIR = "points"
TOKENIZER_DIR = "tokenizer"
DEFAULT_ENDPOINT = "http://127.0.0.1:8000"
"""Where ``k2trt bench`` looks for the server when no ``--endpoint`` is given (trtllm-serve's default port)."""
AUTO_MODEL = "<first model listed at /v1/models>"


def normalize_endpoint(url: str) -> str:
    """``127.0.0.1:8000/v1/`` → ``http://127.0.0.1:8000``: aiperf wants the server root and appends ``/v1/...``."""
    u = url.strip().rstrip("/")
    if not u:
        raise ConfigError("--endpoint is empty", "pass the server's URL, e.g. http://127.0.0.1:8000")
    if "://" not in u:
        u = "http://" + u
    if u.endswith("/v1"):
        u = u[: -len("/v1")]
    return u


def wait_for_model(endpoint: str, model: str | None, timeout_s: float, *, interval_s: float = 1.0) -> str:
    """Poll ``GET /v1/models`` until it lists ``model`` (or any model when ``model`` is None).

    Returns:
        The model name to benchmark.

    Raises:
        LaunchError: the endpoint did not list the model within ``timeout_s``; the message says what it saw last.
    """
    import httpx

    endpoint = normalize_endpoint(endpoint)
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while True:
        try:
            r = httpx.get(f"{endpoint}/v1/models", timeout=min(10.0, max(1.0, timeout_s)))
            if r.status_code == 200:
                ids = [str(m.get("id")) for m in (r.json().get("data") or []) if isinstance(m, dict)]
                if model is None and ids:
                    return ids[0]
                if model in ids:
                    return model
                last = f"it lists {ids or 'no models'}"
            else:
                last = f"HTTP {r.status_code}"
        except (httpx.HTTPError, ValueError) as e:
            last = f"{type(e).__name__}: {e}"
        if time.monotonic() >= deadline:
            want = f"model {model!r}" if model else "a model"
            raise LaunchError(f"{endpoint}/v1/models did not list {want} within {timeout_s:g} s ({last})",
                              "start the server first, or check --endpoint and bench.model")
        time.sleep(interval_s)


def _alive(endpoint: str) -> bool:
    import httpx

    try:
        return httpx.get(f"{endpoint}/v1/models", timeout=5.0).status_code == 200
    except httpx.HTTPError:
        return False


@dataclass(frozen=True)
class PlannedPoint:
    """A point with the exact aiperf argv it will run and its artifact folder."""

    point: Point
    argv: list[str]
    artifact_dir: Path


def plan_points(spec: BenchSpec, endpoint: str, out_dir: str | Path, *, tokenizer_dir: str | Path,
                model: str, command: list[str] | None = None,
                server_metrics: tuple[str, ...] | None = ()) -> list[PlannedPoint]:
    """The aiperf argv and artifact folder of every point, in run order (nothing is run or written);
    ``server_metrics`` as ``aiperf.aiperf_argv`` takes it."""
    out = Path(out_dir)
    cmd = command or aiperf.aiperf_command()
    return [PlannedPoint(p, aiperf.aiperf_argv(spec, p, url=normalize_endpoint(endpoint), model=model,
                                               tokenizer_dir=tokenizer_dir, artifact_dir=out / POINTS_DIR / p.name,
                                               command=cmd, server_metrics=server_metrics),
                         out / POINTS_DIR / p.name)
            for p in spec.points()]


def _point_result(pp: PlannedPoint, run: aiperf.PointRun, spec: BenchSpec, out: Path) -> PointResult:
    base: dict[str, Any] = {"elapsed_s": run.elapsed_s, "argv": pp.argv,
                            "artifact_dir": str(pp.artifact_dir.relative_to(out))}
    if run.timed_out:
        return PointResult.for_point(pp.point, ok=False, error=f"aiperf killed after {spec.point_timeout_s:g} s "
                                     "(bench.point_timeout_s)", **base)
    if run.returncode != 0:
        tail = aiperf.log_tail(run.log, 3).replace("\n", " | ")
        return PointResult.for_point(pp.point, ok=False, error=f"aiperf exited {run.returncode}: {tail}", **base)
    try:
        export = aiperf.read_export(pp.artifact_dir)
    except ConfigError as e:
        return PointResult.for_point(pp.point, ok=False, error=str(e), **base)
    completed, errors = export_counts(export)
    metrics = metrics_from_export(export, gpus=spec.gpus, concurrency=pp.point.concurrency)
    scraped = aiperf.read_server_export(pp.artifact_dir)
    if scraped is not None:
        from k2trt.bench.server import summarize  # reads the gateway's metric names: starlette only when needed

        server = summarize(scraped)
    else:
        server = {}
    error = None
    if completed == 0:
        msgs = [str((e.get("error_details") or {}).get("message", ""))[:200] for e in export.get("error_summary") or []
                if isinstance(e, dict)]
        error = f"no request succeeded ({errors} errors{': ' + msgs[0] if msgs else ''})"
    elif metrics["output_tok_s"] is None:
        error = ("aiperf reported no output token counts" +
                 (" (the server sent no usage; set bench.server_token_count: false)" if spec.server_token_count
                  else ""))
    return PointResult.for_point(pp.point, ok=error is None, metrics=metrics, completed=completed, errors=errors,
                                 error=error, server=server, **base)


def run_bench(spec: BenchSpec, endpoint: str, out_dir: str | Path, *, model_dir: str | Path | None = None,
              tokenizer_dir: str | Path | None = None, model: str | None = None,
              baseline: str | Path | None = None, tolerance: float = DEFAULT_TOLERANCE_PCT,
              gate_metrics: tuple[str, ...] = GATE_METRICS, manifest: str | Path | None = None,
              force: bool = False, progress: bool = True, server_metrics: tuple[str, ...] | None = (),
              on_point: Callable[[PointResult], None] | None = None) -> BenchResult:
    """Run a benchmark sweep with aiperf and write results.json, the plots and REPORT.md into ``out_dir``.

    Args:
        spec: the sweep (a recipe's ``bench:`` section, ``BenchSpec.from_dict``).
        endpoint: the OpenAI-compatible server, e.g. ``http://127.0.0.1:8000`` (a trailing ``/v1`` is dropped).
        out_dir: output directory (see the module docstring for its layout).
        model_dir: the checkpoint directory; its tiktoken tokenizer is turned into ``out_dir/tokenizer``.
        tokenizer_dir: instead of ``model_dir``, a ready Hugging Face tokenizer directory.
        model: served model name; overrides ``spec.model``; None and no ``spec.model`` = the first listed one.
        baseline: a stored results.json to gate against (loaded before anything runs).
        tolerance: allowed slowdown in percent for the gate (see ``results.compare``).
        gate_metrics: metrics the gate checks.
        manifest: the bundle manifest to record in the provenance.
        force: overwrite an ``out_dir`` that already holds a results.json.
        progress: show a progress bar over the points on stderr.
        server_metrics: Prometheus endpoints aiperf scrapes during each point besides the endpoint's own
            ``/metrics`` (the engine's ``/prometheus/metrics`` when benchmarking through the gateway, the gateway's
            ``/metrics`` when benchmarking the engine); ``None`` scrapes none. The figures land in each point's
            ``server`` and the report (``k2trt.bench.server``).
        on_point: called with each point's result as soon as it is known.

    Returns:
        The ``BenchResult``; ``result.ok`` is False when a point failed or the gate found a regression
        (``result.gate["regressions"]`` names them). The files are ``out_dir/results.json``, ``REPORT.md``,
        ``throughput.png``, ``latency.png``, ``pareto.png``.

    Example:
        >>> r = run_bench(BenchSpec.from_dict({"isl_osl": [[16, 8]], "concurrency": [1, 2]}),
        ...               "http://127.0.0.1:8000", "out/bench", model_dir="tiny-k2")  # doctest: +SKIP
    """
    from k2trt.bench.plots import write_plots
    from k2trt.bench.report import write_report

    out = Path(out_dir)
    url = normalize_endpoint(endpoint)
    if (model_dir is None) == (tokenizer_dir is None):
        raise ConfigError("give exactly one of --model-dir and --tokenizer-dir",
                          "--model-dir DIR converts the checkpoint's tokenizer for aiperf")
    if (out / RESULTS_FILE).exists() and not force:
        raise ConfigError(f"{out / RESULTS_FILE} already exists", "choose another --out or pass --force")
    base = BenchResult.load(baseline) if baseline is not None else None
    bundle = read_manifest(manifest) if manifest is not None else None
    if base is not None:
        compare(base, base, tolerance, gate_metrics)  # validates tolerance and metric names before the sweep
    command = aiperf.aiperf_command()  # fail before any work when aiperf is missing
    if tokenizer_dir is not None:
        tok = Path(tokenizer_dir)
        if not (tok / "tokenizer.json").is_file():
            raise ConfigError(f"--tokenizer-dir {tok} has no tokenizer.json",
                              "pass a Hugging Face tokenizer directory, or --model-dir to convert the model's")
    out.mkdir(parents=True, exist_ok=True)
    if model_dir is not None:
        tok = aiperf.prepare_tokenizer(model_dir, out / TOKENIZER_DIR)
    served = wait_for_model(url, model or spec.model, spec.ready_timeout_s)
    started = datetime.now(timezone.utc)
    scratch = out / ".aiperf-scratch"
    env = aiperf.aiperf_env(scratch)
    planned = plan_points(spec, url, out, tokenizer_dir=tok, model=served, command=command,
                          server_metrics=server_metrics)
    results: list[PointResult] = []
    try:
        with _Progress(len(planned), enabled=progress) as bar:
            for i, pp in enumerate(planned):
                if results and not results[-1].ok and not _alive(url):
                    for rest in planned[i:]:
                        results.append(PointResult.for_point(rest.point, ok=False, argv=rest.argv,
                                                             error=f"skipped: {url} stopped answering"))
                    break
                bar.start(pp.point)
                shutil.rmtree(pp.artifact_dir, ignore_errors=True)  # a stale export must not pass for this run's
                scratch.mkdir(parents=True, exist_ok=True)
                run = aiperf.run_point(pp.argv, pp.artifact_dir, timeout_s=spec.point_timeout_s, env=env)
                res = _point_result(pp, run, spec, out)
                results.append(res)
                bar.done(res)
                if on_point is not None:
                    on_point(res)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    result = BenchResult(spec=spec, points=results,
                         provenance=provenance(endpoint=url, model=served, tokenizer_dir=tok, manifest=bundle,
                                               started=started, finished=datetime.now(timezone.utc)))
    if base is not None and baseline is not None:
        regs = compare(base, result, tolerance, gate_metrics)
        result.gate = gate_record(baseline, tolerance, regs, gate_metrics)
    result.write(out / RESULTS_FILE)  # first: the numbers survive a plotting failure
    write_report(result, out, write_plots(result, out))
    return result


def gate_files(results: str | Path, baseline: str | Path, tolerance: float = DEFAULT_TOLERANCE_PCT,
               gate_metrics: tuple[str, ...] = GATE_METRICS) -> tuple[BenchResult, dict[str, Any]]:
    """Gate an existing results.json against a baseline without running anything.

    Returns:
        (the current result, the gate record — ``record["passed"]``, ``record["regressions"]``).
    """
    cur, base = BenchResult.load(results), BenchResult.load(baseline)
    regs = compare(base, cur, tolerance, gate_metrics)
    return cur, gate_record(baseline, tolerance, regs, gate_metrics)


class _Progress:
    """A rich progress bar over the points (stderr), with one summary line per finished point."""

    def __init__(self, total: int, *, enabled: bool) -> None:
        self.total, self.enabled = total, enabled
        self._p: Any = None
        self._task: Any = None

    def __enter__(self) -> "_Progress":
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._p = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                               TimeElapsedColumn(), console=Console(stderr=True), transient=False)
            self._p.__enter__()
            self._task = self._p.add_task("bench", total=self.total)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._p is not None:
            self._p.__exit__(*exc)

    def start(self, p: Point) -> None:
        if self._p is not None:
            self._p.update(self._task, description=f"isl {p.isl} / osl {p.osl} @ c={p.concurrency}")

    def done(self, r: PointResult) -> None:
        if self._p is None:
            return
        m = r.metrics
        if r.ok:
            def f(k: str, unit: str) -> str:
                return "–" if m.get(k) is None else f"{m[k]:.4g} {unit}"

            line = (f"[green]ok[/] {r.label}: {f('output_tok_s', 'tok/s')}, TTFT p50 {f('ttft_ms_p50', 'ms')}, "
                    f"ITL p50 {f('itl_ms_p50', 'ms')} ({r.elapsed_s:.1f} s)")
        else:
            line = f"[red]failed[/] {r.label}: {r.error}"
        self._p.console.print(line, highlight=False, markup=True, soft_wrap=True)
        self._p.advance(self._task)
