"""``k2trt config`` (check, render, show, recipes) and ``k2trt doctor``."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from k2trt.cli_options import dry_run_option, echo_json, json_option, recipe_option, sets_option, trtllm_option

_TRTLLM_HELP = ("TensorRT-LLM release with a packaged profile (k2trt config profiles lists them), or 'installed' "
                "for the tensorrt_llm installed here")

DRIFT_SHOWN = 40
"""Schema drift lines printed by doctor / check --trtllm installed (--json has all)."""


@click.group()
def config() -> None:
    """Lint, render and inspect TensorRT-LLM configs and k2trt recipes."""


@config.command("check")
@click.argument("file", type=click.Path(path_type=Path))
@trtllm_option(help=_TRTLLM_HELP)
@json_option
def check(file: Path, trtllm: str | None, as_json: bool) -> None:
    """Lint an extra-llm-api YAML (or a `trtllm-serve disaggregated` router config) the way TensorRT-LLM would
    reject it. Exit 1 on errors."""
    from k2trt.errors import ConfigError
    from k2trt.trtllm.disagg_lint import lint_config_text

    try:
        text = file.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{file} does not exist") from None
    if (trtllm or "").lower() == "installed":
        _check_installed(file, as_json)
        return
    res = lint_config_text(text, trtllm, str(file))
    if as_json:
        echo_json({"file": str(file), **res.to_dict()})
    else:
        for i in res.issues:
            click.echo(f"{file}: {i}")
        n_err, n_warn = len(res.errors), len(res.issues) - len(res.errors)
        click.echo(f"{file}: {'clean' if not res.issues else f'{n_err} error(s), {n_warn} warning(s)'} "
                   f"(TensorRT-LLM {res.version}, profile {res.profile})")
    sys.exit(0 if res.ok else 1)


def _check_installed(file: Path, as_json: bool) -> None:
    """``config check --trtllm installed``: the installed release's own schema and TorchLlmArgs judge the file."""
    from k2trt.errors import ConfigError
    from k2trt.fsio import read_mapping
    from k2trt.trtllm.doctor import doctor as run

    rep = run(read_mapping(file, what="config", fmt="yaml"))
    if not rep.installed:
        raise ConfigError(f"--trtllm installed: {rep.message}", "run this where tensorrt_llm imports, or name a "
                          "release with --trtllm")
    if as_json:
        echo_json({"file": str(file), **rep.to_dict()})
    else:
        _echo_report(rep, prefix=f"{file}: ")
    sys.exit(0 if rep.ok else 1)


def _echo_report(rep: Any, prefix: str = "  ") -> None:
    click.echo(rep.message)
    for n in rep.notes:
        click.echo(f"{prefix}note: {n}")
    for d in rep.drift[:DRIFT_SHOWN]:
        click.echo(f"{prefix}drift: {d}")
    if len(rep.drift) > DRIFT_SHOWN:
        click.echo(f"{prefix}drift: … and {len(rep.drift) - DRIFT_SHOWN} more (--json lists every one)")
    if rep.lint is not None:
        for i in rep.lint.issues:
            click.echo(f"{prefix}{i}")
        click.echo(f"{prefix}k2trt lint ({rep.lint.profile}): {'clean' if rep.lint.ok else 'errors'}")
    if rep.native_ok is not None:
        click.echo(f"{prefix}TorchLlmArgs: {'accepted' if rep.native_ok else 'rejected: ' + str(rep.native_error)}")


@config.command("profiles")
@json_option
def profiles(as_json: bool) -> None:
    """List the packaged TensorRT-LLM schema profiles with their provenance and counts."""
    from k2trt.trtllm import PINNED_RELEASE
    from k2trt.trtllm.profiles import available, profile_for

    rows = [profile_for(n) for n in available()]
    if as_json:
        echo_json({"pinned": PINNED_RELEASE, "profiles": [{"name": p.name, "counts": p.counts,
                                                           "provenance": p.provenance} for p in rows]})
        return
    for p in rows:
        src = "; ".join(f"{s.get('repo')}:{s.get('path')}@{str(s.get('commit'))[:12]}"
                        for s in p.provenance.get("sources", []))
        c = p.counts
        click.echo(f"{p.name:12} {c.get('models')} models, {c.get('fields')} fields, {c.get('enum_values')} enum "
                   f"values, {c.get('serve_options')} serve options"
                   + (f", {c['disagg_keys']} disaggregated-config keys" if c.get("disagg_keys") else "")
                   + (" (pinned)" if p.name == PINNED_RELEASE else ""))
        click.echo(f"{'':12} from {src}")


@config.command("render")
@recipe_option()
@sets_option
@click.option("--role", type=click.Choice(["server", "ctx", "gen"]), default="server", show_default=True,
              help="Which instance's config (ctx/gen for disaggregated recipes).")
@click.option("--out", type=click.Path(path_type=Path), help="Write here (linted, atomic); default: print.")
@dry_run_option
def render(recipe_name: str, sets: tuple[str, ...], role: str, out: Path | None, dry_run: bool) -> None:
    """Render a recipe's extra-llm-api YAML; it is linted before anything is written."""
    from k2trt.bundle.recipe import load_recipe
    from k2trt.errors import ConfigError
    from k2trt.trtllm.lint import lint
    from k2trt.trtllm.render import DEFAULT_TRANSCEIVER, SERVER_ROLES, dump_yaml, llm_options, write_config

    r = load_recipe(recipe_name, sets)
    if (role != "server") != (r.disagg is not None):
        raise ConfigError(f"recipe {r.name} is {'' if r.disagg else 'not '}disaggregated",
                          "use --role ctx/gen for disaggregated recipes, server otherwise")
    lay = r.layout if r.disagg is None else (r.disagg.ctx if role == "ctx" else r.disagg.gen).layout
    doc = llm_options(r.serve.options, adp=lay.adp, kv_dtype=r.kv_dtype, max_seq_len=r.context,
                      role=SERVER_ROLES.get(role), version=r.serve.trtllm,
                      transceiver=r.disagg.transceiver if r.disagg else DEFAULT_TRANSCEIVER)
    header = f"recipe {r.name} ({role}); TensorRT-LLM {r.serve.trtllm or 'pinned'}"
    if out is None or dry_run:
        res = lint(doc, r.serve.trtllm)
        if not res.ok:
            raise ConfigError(f"rendered config fails the lint: {res.errors[0]}")
        click.echo(dump_yaml(doc, header), nl=False)
        if out is not None:
            click.echo(f"# (dry run: would write {out})", err=True)
        return
    write_config(out, doc, r.serve.trtllm, header)
    click.echo(f"wrote {out}")


@config.command("show")
@recipe_option()
@sets_option
def show(recipe_name: str, sets: tuple[str, ...]) -> None:
    """Print a recipe with defaults and --set overrides resolved."""
    from k2trt.bundle.recipe import load_recipe, recipe_to_dict

    echo_json(recipe_to_dict(load_recipe(recipe_name, sets)))


@config.command("recipes")
@json_option
def recipes(as_json: bool) -> None:
    """List the packaged recipes."""
    from k2trt.bundle.recipe import list_recipes, load_recipe, recipe_dir

    rows = [(n, load_recipe(n).description) for n in list_recipes()]
    if as_json:
        echo_json({"dir": str(recipe_dir()), "recipes": [{"name": n, "description": d} for n, d in rows]})
        return
    for n, d in rows:
        click.echo(f"{n:28} {d}")


@click.command()
@click.argument("file", required=False, type=click.Path(path_type=Path))
@click.option("--model", help="Model directory for TensorRT-LLM's own validation.")
@trtllm_option(help=_TRTLLM_HELP)
@json_option
def doctor(file: Path | None, model: str | None, trtllm: str | None, as_json: bool) -> None:
    """Report the installed TensorRT-LLM (its schema's drift from k2trt's profile) and validate a config with the
    installed schema and its TorchLlmArgs (elsewhere: with k2trt's packaged profile)."""
    from k2trt.fsio import read_mapping
    from k2trt.trtllm.doctor import doctor as run

    rep = run(read_mapping(file, what="config", fmt="yaml") if file else None, model, trtllm)
    if as_json:
        echo_json(rep.to_dict())
    else:
        _echo_report(rep)
    sys.exit(0 if rep.ok else 1)
