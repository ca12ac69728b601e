"""``k2trt bench``: an aiperf sweep against a running endpoint → results.json, plots, REPORT.md, and a gate."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from k2trt.bench.results import DEFAULT_TOLERANCE_PCT, GATE_METRICS, METRICS
from k2trt.bench.sweep import DEFAULT_ENDPOINT
from k2trt.cli_options import dry_run_option, echo_json, json_option, recipe_option
from k2trt.trtllm.metrics import PROMETHEUS_PATH

if TYPE_CHECKING:
    from k2trt.bench.results import BenchResult
    from k2trt.bench.spec import BenchSpec
    from k2trt.bundle.recipe import Recipe

_SPEC_HELP = f"""
\b
The sweep is a recipe's bench: section (keys of k2trt.bench.BenchSpec), e.g.:
  bench:
    endpoint: chat              # or completions
    streaming: true
    isl_osl: [[1024, 1024], [8192, 1024]]
    concurrency: [1, 2, 4, 8, 16, 32, 64, 128, 256]
    request_multiplier: 8       # requests per point = 8 x concurrency
    gpus: 16                    # for tokens/s per GPU
\b
Server metrics: during every point aiperf scrapes the endpoint's own /metrics (the gateway's; for trtllm-serve
it falls back to {PROMETHEUS_PATH}) and each --server-metrics URL; the report puts the servers' figures beside
the client's. With --recipe, when the endpoint is one of the recipe's servers, the other's metrics are added by
themselves: the gateway's /metrics (serve.gateway_port) against the engine, TensorRT-LLM's {PROMETHEUS_PATH}
through the gateway. Otherwise: through the gateway, add the engine's http://ENGINE:8000{PROMETHEUS_PATH};
against the engine, add the gateway's http://GATEWAY:8080/metrics. The reference engine has no Prometheus
endpoint.
\b
Exit status: 0 all points ran and no regression; 1 a point failed or the gate found a regression;
2 bad input.
"""


@click.command(epilog=_SPEC_HELP)
@recipe_option(required=False, help="Recipe name or YAML path; its bench: section is the sweep.")
@click.option("--spec", "spec_file", type=click.Path(path_type=Path), help="YAML file with a bench: section.")
@click.option("--endpoint", default=None,
              help=f"Server root URL (aiperf appends /v1/...) [default: the recipe's serve host:port, else "
                   f"{DEFAULT_ENDPOINT}].")
@click.option("--model-dir", type=click.Path(path_type=Path), help="Checkpoint dir: its tokenizer counts tokens.")
@click.option("--tokenizer-dir", type=click.Path(path_type=Path), help="Or a ready Hugging Face tokenizer dir.")
@click.option("--model", default=None, help="Served model name [default: bench.model, else the first listed].")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), help="Output directory.")
@click.option("--baseline", type=click.Path(path_type=Path), help="A stored results.json to gate against.")
@click.option("--tolerance", type=click.FloatRange(min=0), default=DEFAULT_TOLERANCE_PCT, show_default=True,
              help="Allowed slowdown in percent before the gate fails (50: fails beyond 1.5x worse).")
@click.option("--gate-metric", "gate_metrics", multiple=True, type=click.Choice(list(METRICS)),
              default=GATE_METRICS, show_default=True, help="Metric the gate checks (repeat for several).")
@click.option("--results", "results_file", type=click.Path(path_type=Path),
              help="Gate this existing results.json against --baseline instead of running.")
@click.option("--manifest", type=click.Path(path_type=Path), help="Bundle manifest to record in the provenance.")
@click.option("--server-metrics", "server_metrics", multiple=True, metavar="URL",
              help=f"A further Prometheus endpoint to scrape during each point (repeatable), e.g. trtllm-serve's "
                   f"http://HOST:8000{PROMETHEUS_PATH} when --endpoint is the gateway.")
@click.option("--no-server-metrics", is_flag=True,
              help="Scrape no server metrics (not the endpoint's, nor the recipe's other server's).")
@click.option("--force", is_flag=True, help="Overwrite an --out that already holds results.json.")
@dry_run_option
@json_option
def bench(recipe_name: str | None, spec_file: Path | None, endpoint: str | None, model_dir: Path | None,
          tokenizer_dir: Path | None, model: str | None, out: Path | None, baseline: Path | None,
          tolerance: float, gate_metrics: tuple[str, ...], results_file: Path | None, manifest: Path | None,
          server_metrics: tuple[str, ...], no_server_metrics: bool, force: bool, dry_run: bool,
          as_json: bool) -> None:
    """Benchmark an OpenAI-compatible endpoint with aiperf over a sweep of ISL/OSL × concurrency."""
    from k2trt.bench.sweep import gate_files, run_bench

    if results_file is not None:
        if baseline is None:
            raise click.UsageError("--results needs --baseline")
        _, gate = gate_files(results_file, baseline, tolerance, tuple(gate_metrics))
        if as_json:
            echo_json(gate)
        else:
            click.echo("\n".join(_gate_lines(gate)))
        sys.exit(0 if gate["passed"] else 1)
    spec, recipe = _load_spec(recipe_name, spec_file)
    endpoint = endpoint or (recipe.endpoint() if recipe is not None else DEFAULT_ENDPOINT)
    if out is None:
        raise click.UsageError("--out is required")
    if no_server_metrics and server_metrics:
        raise click.UsageError("--no-server-metrics contradicts --server-metrics")
    own = recipe.metrics_urls(endpoint) if recipe is not None else ()  # the recipe's other server, if any
    scrape = None if no_server_metrics else tuple(dict.fromkeys((*server_metrics, *own)))
    if dry_run:
        return _dry_run(spec, endpoint, out, model_dir, tokenizer_dir, model, as_json, scrape)
    res = run_bench(spec, endpoint, out, model_dir=model_dir, tokenizer_dir=tokenizer_dir, model=model,
                    baseline=baseline, tolerance=tolerance, gate_metrics=tuple(gate_metrics), manifest=manifest,
                    force=force, progress=not as_json, server_metrics=scrape)
    if as_json:
        echo_json(res.to_dict())
    else:
        _render(res, out)
    sys.exit(0 if res.ok else 1)


def _load_spec(recipe: str | None, spec_file: Path | None) -> "tuple[BenchSpec, Recipe | None]":
    """The sweep, and the recipe it came from (None for --spec)."""
    from k2trt.bench.spec import load_bench_section
    from k2trt.bundle.recipe import load_recipe, spec_from_recipe

    if recipe is not None and spec_file is None:
        r = load_recipe(recipe)
        return spec_from_recipe(r)[0], r
    if spec_file is not None and recipe is None:
        return load_bench_section(spec_file), None
    raise click.UsageError("give exactly one of --recipe and --spec")


def _render(res: "BenchResult", out_dir: Path) -> None:
    n_ok = sum(p.ok for p in res.points)
    click.echo(f"{n_ok}/{len(res.points)} points ok; report {out_dir / 'REPORT.md'}, "
               f"results {out_dir / 'results.json'}")
    for p in res.points:
        if not p.ok:
            click.echo(f"failed: {p.label}: {p.error}")
    if res.gate is not None:
        click.echo("\n".join(_gate_lines(res.gate)))


def _gate_lines(gate: dict[str, Any]) -> list[str]:
    head = f"gate vs {gate['baseline']} (tolerance {gate['tolerance_pct']:g}%): "
    if gate["passed"]:
        return [head + "passed"]
    return [head + f"FAILED, {len(gate['regressions'])} regression(s)"] + [
        f"  regression: {r['message']}" for r in gate["regressions"]]


def _dry_run(spec: "BenchSpec", endpoint: str, out_dir: Path, model_dir: Path | None, tokenizer_dir: Path | None,
             model: str | None, as_json: bool, server_metrics: tuple[str, ...] | None) -> None:
    from k2trt.bench.sweep import AUTO_MODEL, TOKENIZER_DIR, plan_points

    tok = tokenizer_dir if tokenizer_dir is not None else out_dir / TOKENIZER_DIR
    planned = plan_points(spec, endpoint, out_dir, tokenizer_dir=tok, model=model or spec.model or AUTO_MODEL,
                          server_metrics=server_metrics)
    if as_json:
        echo_json({"spec": spec.to_dict(), "tokenizer_dir": str(tok), "model_dir": model_dir and str(model_dir),
                   "points": [{"name": pp.point.name, "argv": pp.argv} for pp in planned]})
        return
    if tokenizer_dir is None:
        click.echo(f"# tokenizer: {model_dir or '--model-dir'} → {tok} (tokenizer.json for aiperf)")
    for pp in planned:
        click.echo(shlex.join(pp.argv))
