"""``k2trt verify``: prove the reference model, a parallel layout, or a conversion by comparing logits.

Thin command (STYLE P5): torch is imported only when a check runs (``k2trt.reference.verify``).
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

import click

from k2trt.cli_options import LayoutType, dry_run_option, echo_json, json_option

_LIMITS = [("--max-abs", "max_abs"), ("--max-mean-abs", "max_mean_abs"), ("--max-rel", "max_rel"),
           ("--min-cosine", "min_cosine"), ("--min-top1", "min_top1"), ("--max-kl", "max_kl")]


def _limit_options(f: Any) -> Any:
    for flag, field in reversed(_LIMITS):
        f = click.option(flag, field, type=float, default=None,
                         help=f"Threshold {field} (default depends on the mode).")(f)
    return f


@click.command()
@click.argument("checkpoint", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("other", required=False, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--against", type=click.Choice(["transformers"]), help="Compare with transformers' DeepseekV3.")
@click.option("--layout", type=LayoutType(),
              help="Compare the sharded reference (e.g. tp4,ep2[,adp]) under mpirun with unsharded.")
@click.option("--np", "np_", type=click.IntRange(min=1), default=None, help="mpirun ranks [default: the layout's tp].")
@click.option("--master-port", type=click.IntRange(min=0, max=65535), default=0,
              help="Rendezvous port of the sharded run [default: a free one].")
@click.option("--prompts", type=click.IntRange(min=1), default=4, show_default=True, help="Random prompts.")
@click.option("--length", type=click.IntRange(min=1), default=16, show_default=True, help="Tokens per prompt.")
@click.option("--seed", default=0, show_default=True, help="Seed of the random prompts.")
@click.option("--attn-impl", type=click.Choice(["naive", "absorb"]), default="absorb", show_default=True)
@_limit_options
@json_option
@dry_run_option
def verify(checkpoint: Path, other: Path | None, against: str | None, layout: Any, np_: int | None,
           master_port: int, prompts: int, length: int, seed: int, attn_impl: str, as_json: bool, dry_run: bool,
           **limits: float | None) -> None:
    """Compare logits: CHECKPOINT vs transformers (--against), vs its sharded run (--layout), or vs OTHER.

    Exit 0 when every threshold holds, 1 when one does not.
    """
    modes = [m for m, on in (("transformers", against), ("layout", layout), ("checkpoints", other)) if on]
    if len(modes) != 1:
        raise click.UsageError("give exactly one of: a second checkpoint, --against transformers, --layout")
    mode = modes[0]
    if dry_run:
        _dry_run(mode, checkpoint, other, layout, np_, master_port, seed, attn_impl)
        return
    from k2trt.reference import verify as v

    base = v.Thresholds.for_pair(checkpoint, other) if other else v.Thresholds.default(mode)  # type: ignore[arg-type]
    t = base.merged(**limits)
    progress = sys.stderr.isatty() and not as_json
    if mode == "transformers":
        rep = v.against_transformers(checkpoint, prompts=prompts, length=length, seed=seed, attn_impl=attn_impl,
                                     thresholds=t, progress=progress)  # type: ignore[arg-type]
    elif mode == "layout":
        rep = v.against_layout(checkpoint, layout, np=np_, master_port=master_port, seed=seed,
                               attn_impl=attn_impl, thresholds=t)  # type: ignore[arg-type]
    else:
        rep = v.between(checkpoint, other, prompts=prompts, length=length, seed=seed,  # type: ignore[arg-type]
                        attn_impl=attn_impl, thresholds=t, progress=progress)  # type: ignore[arg-type]
    if as_json:
        echo_json(rep.to_json())
    else:
        _render(rep)
    sys.exit(0 if rep.passed else 1)


def _dry_run(mode: str, ckpt: Path, other: Path | None, layout: Any, np_: int | None, port: int, seed: int,
             attn_impl: str) -> None:
    if mode == "layout":
        from k2trt.reference.verify import layout_argv

        argv, _ = layout_argv(ckpt, layout, "OUT_DIR", np=np_, master_port=port, seed=seed,
                              attn_impl=attn_impl)  # type: ignore[arg-type]
        click.echo(shlex.join(argv))
    else:
        target = "transformers DeepseekV3ForCausalLM" if mode == "transformers" else str(other)
        click.echo(f"would compare the reference logits of {ckpt} with {target}")


def _render(rep: Any) -> None:
    m = rep.metrics
    click.echo(f"{rep.subject} vs {rep.reference}: {int(m['positions'])} positions")
    click.echo(f"  max |Δ| {m['max_abs']:.3g}   mean |Δ| {m['mean_abs']:.3g}   rel {m['rel']:.3g}   "
               f"cosine {m['cosine']:.6f}   top-1 {m['top1']:.3f}   KL {m['kl']:.3g}")
    for f in rep.failures:
        click.echo(f"  FAIL {f}")
    click.echo("PASS" if rep.passed else "FAIL")
