"""``k2trt build``: recipe + checkpoint → bundle (config.yml, launch.json, hostfile, launch.sh, manifest, PLAN.md),
with ``--target k8s`` also the bundle's Kubernetes manifests (k8s/manifests.yaml)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from k2trt.cli_options import dry_run_option, echo_json, hosts_option, json_option, recipe_option, sets_option

TARGETS = ("bundle", "k8s")


@click.command()
@recipe_option()
@click.option("--checkpoint", required=True, type=click.Path(path_type=Path), help="Checkpoint directory.")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Bundle directory to write.")
@click.option("--target", type=click.Choice(TARGETS), default=TARGETS[0], show_default=True,
              help="bundle: for k2trt serve (mpirun/Slurm); k8s: the bundle plus its Kubernetes manifests "
                   "(LeaderWorkerSet), with the recipe's k8s: section; --dry-run runs the Kubernetes preflight.")
@sets_option
@hosts_option(help="One host per node in rank order, rank 0's first [default: the recipe's cluster.hosts].")
@click.option("--force", is_flag=True, help="Replace an existing bundle at --out.")
@dry_run_option
@json_option
def build(recipe_name: str, checkpoint: Path, out: Path, target: str, sets: tuple[str, ...], hosts: Any,
          force: bool, dry_run: bool, as_json: bool) -> None:
    """Inspect the checkpoint, plan the recipe (refusing when it does not fit) and write a self-describing bundle."""
    from k2trt.bundle.build import build_bundle
    from k2trt.bundle.recipe import load_recipe

    r = load_recipe(recipe_name, sets)
    if target == "k8s":
        from k2trt.commands.k8s import show_k8s
        from k2trt.k8s.render import build_k8s

        res, k = build_k8s(r, checkpoint, out, hosts=hosts, dry_run=dry_run, force=force)
    else:
        res, k = build_bundle(r, checkpoint, out, hosts=hosts, dry_run=dry_run, force=force), None
    if as_json:
        echo_json({**res.to_dict(), **({"k8s": k.to_dict()} if k else {})})
        if k:
            k.raise_if_failed()
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
    if k is not None:
        show_k8s(k, dry_run)
    elif dry_run:
        click.echo(res.files.get("config.yml") or res.files.get("ctx.yml", ""))
