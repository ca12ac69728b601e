"""``k2trt build``: recipe + checkpoint → bundle (config.yml, launch.json, hostfile, launch.sh, manifest, PLAN.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from k2trt.cli_options import dry_run_option, echo_json, hosts_option, json_option, recipe_option, sets_option


@click.command()
@recipe_option()
@click.option("--checkpoint", required=True, type=click.Path(path_type=Path), help="Checkpoint directory.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Bundle directory to write.")
@sets_option
@hosts_option(help="One host per node in rank order, rank 0's first [default: the recipe's cluster.hosts].")
@click.option("--force", is_flag=True, help="Replace an existing bundle at --out.")
@dry_run_option
@json_option
def build(recipe_name: str, checkpoint: Path, out: Path, sets: tuple[str, ...], hosts: Any, force: bool,
          dry_run: bool, as_json: bool) -> None:
    """Inspect the checkpoint, plan the recipe (refusing when it does not fit) and write a self-describing bundle."""
    from k2trt.bundle.build import build_bundle
    from k2trt.bundle.recipe import load_recipe

    res = build_bundle(load_recipe(recipe_name, sets), checkpoint, out, hosts=hosts, dry_run=dry_run, force=force)
    if as_json:
        echo_json(res.to_dict())
        return
    verb = "would write" if dry_run else "wrote"
    click.echo(f"{verb} bundle {res.out} ({', '.join(sorted(res.files))})")
    for role, p in res.plans:
        lp = p.layouts[0]
        assert lp.memory is not None
        click.echo(f"  {role}: {lp.layout}, {lp.memory.weights_max / 2**30:.2f} GiB weights/GPU, "
                   f"{lp.memory.max_sequences} × {p.request.context:,}-token sequences, {len(lp.warnings)} warning(s)")
    for n in res.notes:
        click.echo(f"  note: {n}")
    if dry_run:
        click.echo(res.files.get("config.yml") or res.files.get("ctx.yml", ""))
