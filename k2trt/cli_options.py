"""Click options and parameter types shared by the subcommands: each declared once (STYLE P3), defaults read
from where they live (STYLE P2), domain values parsed by their own ``ParamType`` into the library's types.

An option two commands share means the same thing in both: ``--hosts`` is ``HOST[:N],...`` in ``build`` and
``serve`` (a host without ``:N`` gets the deployment's GPUs per node), ``--trtllm`` is the TensorRT-LLM version
everywhere, ``--recipe``/``--set`` name and override a recipe the same way.
"""

from __future__ import annotations

import json as _json
import re
from typing import Any, Callable

import click

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


def parse_bytes(text: str) -> int:
    """``"80GiB"`` → 85899345920; ``"1.5GB"`` → 1500000000; a bare number is bytes."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(text)
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


class ByteSizeType(click.ParamType):
    name = "size"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            return parse_bytes(str(value))
        except ValueError:
            self.fail(f"{value!r} is not a size like 80GiB or 512MB", param, ctx)


class LayoutType(click.ParamType):
    """``tp16ep8``, ``tp16ep16adp``, ``tp8pp2``, ``tp4,ep2,adp`` → a :class:`k2trt.layout.Layout`."""

    name = "layout"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        from k2trt.errors import PlanError
        from k2trt.layout import Layout

        if isinstance(value, Layout):
            return value
        try:
            return Layout.parse(str(value))
        except PlanError as e:
            self.fail(str(e), param, ctx)


class HostsType(click.ParamType):
    """``node1:8,node2:8`` or ``node1,node2`` → a :class:`k2trt.launch.hosts.HostList` (rank 0's host first)."""

    name = "hosts"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        from k2trt.launch.hosts import HostList, parse_host_list

        # parse_host_list's LaunchError (one line naming the entry and the syntax) reaches the user as every other
        # launch error does, exit status 2
        return value if isinstance(value, HostList) else parse_host_list(str(value))


class WeightFormatType(click.ParamType):
    """``fp8`` (or ``fp8-block``/``fp8_block``), ``bf16``, ``nvfp4``, ``w4a8`` → a plan ``WeightFormat``."""

    name = "format"

    def get_metavar(self, param: click.Parameter, *args: Any, **kwargs: Any) -> str:  # click 8.2 added ctx
        return "[fp8|bf16|nvfp4|w4a8]"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        from k2trt.errors import ConfigError
        from k2trt.plan.memory import parse_weight_format

        try:
            return parse_weight_format(str(value))
        except ConfigError as e:
            self.fail(str(e), param, ctx)


def recipe_option(*, required: bool = True, help: str = "Packaged recipe name (k2trt config recipes) or a path."
                  ) -> Decorator:
    return click.option("--recipe", "recipe_name", required=required, metavar="RECIPE", help=help)


def sets_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
                        help="Override a recipe field, e.g. --set serve.port=9000 (repeatable).")(f)


def hosts_option(*, help: str) -> Decorator:
    return click.option("-H", "--hosts", type=HostsType(), default=None, metavar="HOST[:N],...",
                        help=help + " A host without :N gets the deployment's GPUs per node.")


def trtllm_option(*, help: str = "TensorRT-LLM version or profile (1.0, 1.2, main)") -> Decorator:
    return click.option("--trtllm", "trtllm", default=None, metavar="VERSION",
                        help=help + " [default: the pinned release].")


def json_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")(f)


def dry_run_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("-n", "--dry-run", is_flag=True, help="Show what would be done; change nothing.")(f)


def echo_json(obj: Any) -> None:
    click.echo(_json.dumps(obj, indent=2, sort_keys=False, default=str))
