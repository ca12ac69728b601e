"""``k2trt toolcheck``: tool-call accuracy of any OpenAI-compatible endpoint, K2 Vendor Verifier-compatible."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import click

from k2trt.bench.toolcheck import ToolcheckSpec
from k2trt.cli_options import dry_run_option, echo_json, json_option

_D = ToolcheckSpec(Path("samples.jsonl"), "http://127.0.0.1:8080/v1", "m")  # defaults live in the dataclass


def _body(value: str | None) -> dict[str, object]:
    if not value:
        return {}
    try:
        obj = json.loads(value)
    except ValueError as e:
        raise click.BadParameter(f"not JSON ({e})", param_hint="--extra-body") from None
    if not isinstance(obj, dict):
        raise click.BadParameter("must be a JSON object", param_hint="--extra-body")
    return obj


@click.command()
@click.argument("samples", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--base-url", required=True, help="The endpoint's OpenAI base URL, e.g. http://127.0.0.1:8080/v1.")
@click.option("--model", required=True, help="Model name sent with every request.")
@click.option("--api-key", default=None, help="API key [default: $OPENAI_API_KEY].")
@click.option("--concurrency", type=int, default=_D.concurrency, show_default=True, help="Requests in flight at most.")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), default=_D.output,
              show_default=True, help="Per-request results (the verifier's results.jsonl).")
@click.option("--summary", type=click.Path(dir_okay=False, path_type=Path), default=_D.summary,
              show_default=True, help="The verifier's summary.json (plus schema accuracy and trigger F1).")
@click.option("--timeout", type=float, default=_D.timeout_s, show_default=True, help="Seconds per request.")
@click.option("--retries", type=int, default=_D.retries, show_default=True,
              help="Retries of a 429/503/connection/timeout failure, with capped backoff; -1 retries forever.")
@click.option("--extra-body", default=None, help="JSON object merged into every request body.")
@click.option("--temperature", type=float, default=None, help="Override every request's temperature.")
@click.option("--max-tokens", type=int, default=None, help="Override every request's max_tokens.")
@click.option("--incremental", is_flag=True, help="Keep earlier successful results in --output; rerun the rest.")
@click.option("--reference", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Official results file: adds tool_call_precision/recall/f1 (joined on data_index).")
@click.option("--gate", "gates", multiple=True,
              help="Threshold like tool_call_f1>=0.73 or schema_accuracy>=95%% (repeatable); exit 1 if one fails.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@json_option
@dry_run_option
def toolcheck(samples: Path, base_url: str, model: str, api_key: str | None, concurrency: int, output: Path,
              summary: Path, timeout: float, retries: int, extra_body: str | None, temperature: float | None,
              max_tokens: int | None, incremental: bool, reference: Path | None, gates: tuple[str, ...],
              no_progress: bool, as_json: bool, dry_run: bool) -> None:
    """Send SAMPLES (one OpenAI chat request per line, the K2 Vendor Verifier's format) to an endpoint and measure
    tool-call accuracy: finish-reason counts, schema accuracy, and trigger F1 against --reference.

    Exit status: 0 done (and every gate met); 1 a gate failed; 2 bad input."""
    from k2trt.bench.toolcheck import Gate, read_samples, run_toolcheck

    spec = ToolcheckSpec(samples, base_url, model, api_key or os.environ.get("OPENAI_API_KEY"), concurrency, output,
                         summary, timeout, retries, _body(extra_body), temperature, max_tokens, incremental,
                         reference, tuple(Gate.parse(g) for g in gates)).validate()
    if dry_run:
        reqs = read_samples(spec)
        echo_json({"requests": len(reqs), "streamed": sum(bool(r.prepared.get("stream")) for r in reqs),
                   "with_tools": sum(bool(r.raw.get("tools")) for r in reqs), "output": str(output),
                   "summary": str(summary), "gates": [f"{g.metric}{g.op}{g.value:g}" for g in spec.gates]})
        return
    res = run_toolcheck(spec, progress=not no_progress and not as_json)
    s = res.summary
    if as_json:
        echo_json({**s, "gate_failures": res.gate_failures, "reused": res.reused})
    else:
        def pct(x: float | None) -> str:
            return "n/a" if x is None else f"{100 * x:.2f}%"
        click.echo(f"{s['success_count']} ok, {s['failure_count']} failed; finish: stop {s['finish_stop']}, "
                   f"tool_calls {s['finish_tool_calls']}, others {s['finish_others']} {s['finish_others_detail']}")
        click.echo(f"schema accuracy {pct(s['schema_accuracy'])} ({s['successful_tool_call_count']} valid of "
                   f"{s['finish_tool_calls']})")
        if "tool_call_f1" in s:
            click.echo(f"trigger vs reference: precision {pct(s['tool_call_precision'])}, recall "
                       f"{pct(s['tool_call_recall'])}, F1 {pct(s['tool_call_f1'])}")
        click.echo(f"results {output}, summary {summary}")
        for msg in res.gate_failures:
            click.echo(f"gate failed: {msg}", err=True)
    sys.exit(1 if res.gate_failures else 0)
