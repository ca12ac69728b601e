"""``k2trt chat``: the chat front's tools (``check``: our renderer vs a model's own chat template)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from k2trt.chat.families import FAMILY_NAMES
from k2trt.cli_options import echo_json, json_option


@click.group()
def chat() -> None:
    """K2 chat template and tokenizer tools."""


@chat.command()
@click.argument("model", type=click.Path(path_type=Path))
@json_option
@click.option("--diff-context", "--context", "diff_context", default=40, show_default=True,
              help="Characters shown around each differing region (--context, the old spelling, still works).")
@click.option("--limit", default=8, show_default=True, help="Differing regions shown per conversation (--json has "
              "all).")
@click.option("--family", type=click.Choice(FAMILY_NAMES), default=None,
              help="Render as this K2 family [default: detected from the template].")
def check(model: Path, as_json: bool, diff_context: int, limit: int, family: str | None) -> None:
    """Render built-in conversations with k2trt's renderer and with MODEL's chat template (a model directory or a
    .jinja file), under each template switch of its family (K2-Instruct, K2-Thinking, K2.5, K2.6, K2.7-Code), and
    report every byte difference. Exit 0 when identical, 1 otherwise."""
    from k2trt.chat.check import check_template, load_template

    text, where = load_template(model)
    rep = check_template(text, template_name=where, family=family)
    if as_json:
        echo_json(rep.to_dict())
    else:
        click.echo(f"{where} (family {rep.family}):")
        for r in rep.results:
            if r.equal:
                click.echo(f"  ok       {r.name} ({r.ours_bytes} bytes)")
            elif r.error:
                click.echo(f"  ERROR    {r.name}: the template failed: {r.error}")
            else:
                click.echo(f"  DIFFERS  {r.name}: {len(r.differences)} region(s), ours {r.ours_bytes} bytes, "
                           f"theirs {r.theirs_bytes} bytes")
                for d in r.differences[:limit]:
                    click.echo(f"    {d.kind} at ours {d.ours_start}..{d.ours_end}, theirs "
                               f"{d.theirs_start}..{d.theirs_end}: ours {_clip(d.ours, diff_context)} "
                               f"theirs {_clip(d.theirs, diff_context)}")
                if len(r.differences) > limit:
                    click.echo(f"    … {len(r.differences) - limit} more (--limit, --json)")
        bad = sum(not r.equal for r in rep.results)
        click.echo("identical on every conversation" if rep.ok else f"{bad} of {len(rep.results)} conversations "
                   "differ")
    sys.exit(0 if rep.ok else 1)


def _clip(s: str, n: int) -> str:
    return repr(s if len(s) <= n else s[:n] + "…")
