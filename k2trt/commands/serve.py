"""``k2trt serve`` / ``status`` / ``stop``: launch a bundle with mpirun or Slurm and supervise it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, get_args

import click

from k2trt.cli_options import dry_run_option, echo_json, hosts_option, json_option
from k2trt.errors import LaunchError
from k2trt.jsonlog import LOG_FORMATS
from k2trt.launch.spec import EngineKind, LauncherKind

_PATH = click.Path(exists=True, path_type=Path)


@click.command()
@click.argument("bundle", type=_PATH, required=False)
@click.option("--spec", "spec_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A launch.json to use instead of BUNDLE/launch.json.")
@click.option("--engine", type=click.Choice(get_args(EngineKind)), default=None,
              help="Engine to launch [default: the bundle's].")
@click.option("--launcher", type=click.Choice(get_args(LauncherKind)), default=None,
              help="mpirun (ssh to the hosts) or slurm (sbatch script) [default: the bundle's].")
@hosts_option(help="Hosts in rank order with their slots, e.g. node1:8,node2:8 [default: the bundle's].")
@click.option("--hostfile", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Open MPI hostfile ('node1 slots=8' lines) instead of the bundle's hosts.")
@click.option("--detach", is_flag=True, help="Return once ready; a background supervisor keeps watching.")
@click.option("--skip-preflight", is_flag=True, help="Launch even if preflight finds problems.")
@click.option("--gateway/--no-gateway", default=True, show_default=True,
              help="Start the bundle's k2trt gateway (OpenAI + Anthropic, Kimi tool calls) in front of the engine.")
@click.option("--submit", "do_submit", is_flag=True, help="With --launcher slurm: run sbatch on the script.")
@click.option("--log-format", type=click.Choice(LOG_FORMATS), default=None,
              help="json: every log the job writes (supervisor, ranks, gateway, watchdog) is JSON lines with the job "
                   "id, and a rank's lines its rank [default: the bundle's serve.log_format].")
@dry_run_option
@json_option
def serve(bundle: Path | None, spec_file: Path | None, engine: str | None, launcher: str | None, hosts: Any,
          hostfile: Path | None, detach: bool, skip_preflight: bool, gateway: bool, do_submit: bool,
          log_format: str | None, dry_run: bool, as_json: bool) -> None:
    """Preflight, launch and supervise BUNDLE's server until Ctrl-C (or --detach)."""
    from k2trt.launch.runner import serve as run_serve

    target = spec_file or bundle
    if target is None:
        raise click.UsageError("give a BUNDLE directory or --spec launch.json")
    echo = None if as_json else (lambda line: click.echo(line, err=True))
    res = run_serve(target, engine=engine, launcher=launcher, detach=detach,  # type: ignore[arg-type]
                    dry_run=dry_run, skip_preflight=skip_preflight, do_submit=do_submit, hosts=hosts,
                    hostfile=hostfile, gateway=gateway, echo=echo, log_format=log_format,  # type: ignore[arg-type]
                    progress=not as_json, after_ready=None if as_json else
                    (lambda url: click.echo(f"ready: {url} (Ctrl-C stops the job)", err=True)))
    if as_json:
        echo_json({k: v for k, v in res.items() if k != "text"})
    elif res["status"] == "dry-run":
        click.echo(res["text"])
    elif res["status"] in ("ready", "written", "submitted", "stopped"):
        gw = f"; gateway {res['gateway_url']}/v1" if res.get("gateway_url") else ""
        click.echo({"ready": f"ready: {res['url']}{gw} (detached; `k2trt stop` ends it)",
                    "written": f"wrote {res.get('script')} (submit with --submit, or sbatch it)",
                    "submitted": f"submitted Slurm job {res.get('slurm_job')}: {res.get('script')}",
                    "stopped": res.get("message", "stopped")}[res["status"]])
    # anything but a clean result fails the command: a detached start that did not reach "ready" included
    if res["status"] not in ("ready", "written", "submitted", "stopped", "dry-run") or res.get("exit_code", 0):
        for line in res.get("tail", []):
            click.echo(f"  | {line}", err=True)
        raise LaunchError(res.get("message") or f"the job ended as {res['status']}", f"logs in {res.get('log_dir')}")


@click.command()
@click.argument("bundle", type=_PATH)
@click.option("--engine", type=click.Choice(get_args(EngineKind)), default=None, help="Which launch file.")
@json_option
def status(bundle: Path, engine: str | None, as_json: bool) -> None:
    """Show whether BUNDLE's server runs and answers (BUNDLE may also be its serve.state.json).

    \b
    Exit status:
      0  running and answering
      1  failed: it failed, timed out, or its supervisor died
      3  stopped on request (Ctrl-C, k2trt stop)
      4  running, not answering (yet)
      2  no state file, or a corrupt one
    """
    from k2trt.launch.runner import state_path_for
    from k2trt.launch.state import status as job_status

    st = job_status(state_path_for(bundle, engine))
    if as_json:
        echo_json(st)
    else:
        click.echo(f"{st['status']}: {st.get('url')} ready={st['ready']} supervisor={st.get('supervisor_pid')} "
                   f"alive={st['supervisor_alive']} processes={st['processes']} logs={st.get('log_dir')}")
    sys.exit(st["exit_code"])


@click.command()
@click.argument("bundle", type=_PATH)
@click.option("--engine", type=click.Choice(get_args(EngineKind)), default=None, help="Which launch file.")
@click.option("--timeout", type=float, default=60.0, show_default=True, help="Seconds to wait for a clean stop.")
@json_option
def stop(bundle: Path, engine: str | None, timeout: float, as_json: bool) -> None:
    """Stop BUNDLE's server and verify that none of its processes remain."""
    from k2trt.launch.runner import state_path_for
    from k2trt.launch.state import stop as job_stop

    res = job_stop(state_path_for(bundle, engine), timeout_s=timeout)
    if as_json:
        echo_json(res)
    else:
        click.echo(f"stopped (supervisor {res['supervisor']}; no process of the job remains)")
