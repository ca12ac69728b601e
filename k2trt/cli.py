"""The ``k2trt`` command: a Click group whose subcommands are imported only when run.

Each subcommand lives in ``k2trt/commands/<concern>.py`` and stays thin: options → spec → one library call →
render. ``k2trt --help`` imports none of torch, triton or transformers (tests/unit/test_imports.py checks it).
"""

from __future__ import annotations

import importlib
import sys
import traceback
from typing import Any

import click

from k2trt import __version__
from k2trt.errors import K2trtError

# name -> "module:attribute"; the order here is the order of `k2trt --help`.
COMMANDS: dict[str, str] = {
    "synth": "k2trt.commands.checkpoint:synth",
    "train-tiny": "k2trt.commands.train:train_tiny",
    "inspect": "k2trt.commands.checkpoint:inspect",
    "convert": "k2trt.commands.convert:convert",
    "verify": "k2trt.commands.verify:verify",
    "plan": "k2trt.commands.plan:plan",
    "config": "k2trt.commands.config:config",
    "build": "k2trt.commands.build:build",
    "k8s": "k2trt.commands.k8s:k8s",
    "doctor": "k2trt.commands.config:doctor",
    "serve": "k2trt.commands.serve:serve",
    "status": "k2trt.commands.serve:status",
    "stop": "k2trt.commands.serve:stop",
    "gateway": "k2trt.commands.gateway:gateway",
    "chat": "k2trt.commands.chat:chat",
    "bench": "k2trt.commands.bench:bench",
    "toolcheck": "k2trt.commands.toolcheck:toolcheck",
    "demo": "k2trt.commands.demo:demo",
}


class LazyGroup(click.Group):
    """A group that imports a subcommand's module only when that subcommand is looked up."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [n for n in COMMANDS if self._load(n) is not None]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return self._load(cmd_name)

    @staticmethod
    def _load(name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None:
            return None
        module, _, attr = target.partition(":")
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name == module:  # a command not written yet
                return None
            raise
        cmd = getattr(mod, attr, None)
        return cmd if isinstance(cmd, click.Command) else None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="k2trt")
@click.option("--debug", is_flag=True, help="Show full tracebacks on errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Kimi K2 → TensorRT-LLM: inspect and convert checkpoints, plan, build, serve across nodes, benchmark."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


def main(argv: list[str] | None = None) -> Any:
    """Console entry point: K2trtError becomes one line on stderr and exit status 2 (1 is kept for 'problems
    found' results such as inspect or a failed benchmark gate)."""
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        return cli.main(args=argv, prog_name="k2trt", standalone_mode=False)
    except K2trtError as e:
        if debug:
            traceback.print_exc()
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)


if __name__ == "__main__":
    main()
