"""Click options and parameter types shared by the subcommands (declared once, STYLE P3)."""

from __future__ import annotations

import json as _json
import re
from typing import Any, Callable

import click

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


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


def json_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")(f)


def dry_run_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("-n", "--dry-run", is_flag=True, help="Show what would be done; change nothing.")(f)


def echo_json(obj: Any) -> None:
    click.echo(_json.dumps(obj, indent=2, sort_keys=False, default=str))
