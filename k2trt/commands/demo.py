"""``k2trt demo``: the README's first command — the whole pipeline on the tiny K2."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from k2trt.cli_options import echo_json, json_option


@click.command()
@click.option("--workdir", type=click.Path(file_okay=False, path_type=Path), default=Path("k2trt-demo"),
              show_default=True, help="Where the checkpoint, bundle, logs and benchmark go (replaced each run).")
@click.option("--bench/--no-bench", default=True, show_default=True, help="Run the recipe's aiperf sweep.")
@click.option("--baseline", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Gate the benchmark against this results.json.")
@click.option("--tolerance", type=click.FloatRange(min=0), default=None,
              help="Allowed slowdown in percent for --baseline [default: the bench gate's].")
@click.option("--hold", "hold_s", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Keep the service up this many seconds at the end, to try it by hand (Ctrl-C stops).")
@json_option
def demo(workdir: Path, bench: bool, baseline: Path | None, tolerance: float | None, hold_s: float,
         as_json: bool) -> None:
    """Take the trained tiny K2, inspect, convert, plan, build, serve (reference engine under mpirun + gateway),
    run a chat request and an agent loop with the openai SDK, benchmark with aiperf, and stop — in a few minutes on
    a laptop CPU."""
    from k2trt.demo import run_demo

    echo = (lambda line: click.echo(line, err=True)) if as_json else click.echo
    res = run_demo(workdir, bench=bench, baseline=baseline, tolerance=tolerance, hold_s=hold_s, echo=echo)
    if as_json:
        echo_json(res.to_dict())
        return
    click.echo("\nk2trt demo finished: every step ran for real on the trained tiny K2 (16 M parameters: expect "
               "garbled words).")
    for k, v in res.paths.items():
        click.echo(f"  {k:>10}: {v}")
    click.echo(f"  {'total':>10}: {sum(s['seconds'] for s in res.steps):.0f} s")
    sys.stdout.flush()
