"""Parse a ``k2trt gateway`` command line with the real command: its ``--dry-run`` prints the resolved
``GatewayConfig`` (every field but the keys, which it counts), read back here into a ``GatewayConfig``."""

from __future__ import annotations

import json
from collections.abc import Mapping

from click.testing import CliRunner

from k2trt.cli import cli
from k2trt.gateway.config import GatewayConfig


def parsed_config(argv: list[str], env: Mapping[str, str] | None = None,
                  api_keys: tuple[str, ...] = ()) -> GatewayConfig:
    """The config ``k2trt gateway`` resolves from ``argv`` (``["k2trt", "gateway", ...]``) in environment ``env``;
    ``api_keys`` are the keys it is expected to have read (the dry run shows only their count)."""
    assert argv[:2] == ["k2trt", "gateway"], argv
    out = CliRunner().invoke(cli, argv[1:] + ["--dry-run"], env=dict(env or {}))
    assert out.exit_code == 0, out.output
    shown = json.loads(out.output)
    assert shown.pop("api_keys") == len(api_keys), shown
    del shown["model_name"], shown["url"]
    return GatewayConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in shown.items()}, api_keys=api_keys)
