"""``k2trt k8s render``: Kubernetes manifests (LeaderWorkerSet) of an existing bundle."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from k2trt.cli_options import dry_run_option, echo_json, json_option, sets_option


@click.group()
def k8s() -> None:
    """Kubernetes manifests of a bundle (k2trt build --target k8s writes them with the bundle)."""


@k8s.command("render")
@click.argument("bundle", type=click.Path(exists=True, file_okay=False, path_type=Path))
@sets_option
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Directory to write manifests.yaml into [default: BUNDLE/k8s].")
@dry_run_option
@json_option
def render(bundle: Path, sets: tuple[str, ...], out: Path | None, dry_run: bool, as_json: bool) -> None:
    """Check BUNDLE for Kubernetes and write its manifests; --set changes k8s.* settings only."""
    from k2trt.k8s.render import render_bundle

    res = render_bundle(bundle, sets=sets, out=out, dry_run=dry_run)
    if as_json:
        echo_json(res.to_dict())
        res.raise_if_failed()
        return
    show_k8s(res, dry_run)


def show_k8s(res: Any, dry_run: bool) -> None:
    """Print the Kubernetes preflight findings, then the manifests (dry run) or where they went; a preflight error
    ends the command as a one-line error."""
    for f in res.findings:
        click.echo(f"  k8s {f.severity}: {f.message}", err=f.severity == "error")
    res.raise_if_failed()
    if dry_run:
        click.echo(f"would write {res.path} ({len(res.objects)} objects)")
        click.echo(res.text)
    else:
        click.echo(f"wrote {res.path}: " + ", ".join(f"{o['kind']}/{o['metadata']['name']}" for o in res.objects))
