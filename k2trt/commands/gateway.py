"""``k2trt gateway``: the OpenAI + Anthropic front in front of an already running engine."""

from __future__ import annotations

from pathlib import Path

import click

from k2trt.chat.families import FAMILY_NAMES
from k2trt.cli_options import ByteSizeType, dry_run_option, echo_json
from k2trt.gateway.config import (API_KEYS_ENV, CLI_FLAGS, LOG_FORMATS, MODES, TOOL_DECLARATIONS, GatewayConfig,
                                  read_api_keys)

_D = GatewayConfig(engine_url="http://127.0.0.1:8000")  # defaults come from the dataclass (one place)
F = CLI_FLAGS  # option names come from the config's table, which GatewayConfig.argv writes too


@click.command()
@click.option(F["engine_url"], required=True, help="Base URL of the engine's OpenAI server, e.g. http://host:8000.")
@click.option(F["model_dir"], type=click.Path(file_okay=False, path_type=Path), default=None,
              help="K2 model directory (tokenizer); required in render mode.")
@click.option(F["host"], default=_D.host, show_default=True, help="Interface to listen on.")
@click.option(F["port"], type=int, default=_D.port, show_default=True, help="Port to listen on.")
@click.option(F["mode"], type=click.Choice(MODES), default=_D.mode, show_default=True,
              help="render: the gateway renders K2 prompts and parses tool calls (engine /v1/completions); "
                   "passthrough: forward to an engine that parses K2 tool calls itself (TensorRT-LLM >= 1.2).")
@click.option("--api-key", "api_keys", multiple=True, envvar=API_KEYS_ENV,
              help=f"Accepted API key (repeatable, or whitespace-separated in ${API_KEYS_ENV}, which keeps "
                   "keys out of `ps`); none = no auth.")
@click.option("--api-key-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="File of accepted API keys (whitespace-separated, '#' comments), e.g. a mounted secret; "
                   "adds to --api-key.")
@click.option(F["require_api_key"], "require_api_key", is_flag=True,
              help="Refuse to start without an API key (a gateway serving beyond this machine), so an empty key "
                   "source never leaves it open.")
@click.option(F["served_model_name"], default=None, help="Model id clients see [default: the model dir name].")
@click.option(F["model_aliases"], "model_aliases", multiple=True,
              help="Another model id accepted as the served one (repeatable; '*' accepts any). Other ids get 404.")
@click.option(F["max_body_bytes"], "max_body", type=ByteSizeType(), default=f"{_D.max_body_bytes // 2**20}MiB",
              show_default=True, help="Largest request body.")
@click.option(F["max_context_tokens"], "max_context", type=int, default=_D.max_context_tokens,
              help="Context in tokens (prompt + max_tokens); longer requests get 400 [default: the model's "
                   "max_position_embeddings].")
@click.option(F["max_header_bytes"], "max_header", type=ByteSizeType(),
              default=f"{_D.max_header_bytes // 1024}KiB", show_default=True,
              help="Largest request head (request line + headers).")
@click.option(F["max_connections"], "max_connections", type=int, default=_D.max_connections, show_default=True,
              help="Open connections beyond which requests get 503.")
@click.option(F["header_timeout_s"], "header_timeout", type=float, default=_D.header_timeout_s, show_default=True,
              help="Seconds for a client to send a request head before the connection is closed.")
@click.option(F["body_timeout_s"], "body_timeout", type=float, default=_D.body_timeout_s, show_default=True,
              help="Seconds for a client to send the whole body before 408.")
@click.option(F["health_timeout_s"], "health_timeout", type=float, default=_D.health_timeout_s, show_default=True,
              help="Seconds /health waits for the engine before 503.")
@click.option(F["connect_timeout_s"], "connect_timeout", type=float, default=_D.connect_timeout_s,
              show_default=True,
              help="Seconds to reach the engine before 503.")
@click.option(F["read_timeout_s"], "read_timeout", type=float, default=_D.read_timeout_s, show_default=True,
              help="Seconds to wait for the engine's next byte before 504.")
@click.option(F["unknown_tools"], "unknown_tools", type=click.Choice(["drop", "keep"]), default=_D.unknown_tools,
              show_default=True,
              help="Calls to tools the request did not declare.")
@click.option(F["chat_family"], "chat_family", type=click.Choice(FAMILY_NAMES), default=None,
              help="K2 chat family (template, thinking switches, sampling defaults) [default: detected from "
                   "--model-dir's chat template, else k2-instruct].")
@click.option(F["tool_declaration"], "tool_declaration", type=click.Choice(TOOL_DECLARATIONS),
              default=_D.tool_declaration, show_default=True,
              help="How K2.5+ prompts declare tools: typescript (as K2.5's tokenizer), json, or auto (typescript "
                   "when --model-dir ships tool_declaration_ts.py).")
@click.option(F["default_temperature"], "default_temperature", type=float, default=_D.default_temperature,
              help="Temperature for requests without one [default: the family's recommendation for the mode].")
@click.option(F["default_top_p"], "default_top_p", type=float, default=_D.default_top_p,
              help="top_p for requests without one [default: the family's recommendation].")
@click.option(F["log_prompts"], "log_prompts", is_flag=True,
              help="Log prompts and outputs (off: they may be private).")
@click.option(F["log_format"], "log_format", type=click.Choice(LOG_FORMATS), default=_D.log_format,
              show_default=True,
              help="json: one JSON object per line, one line per model request (id, API, model, status, latency, "
                   "tokens; never prompts or keys).")
@click.option("--log-level", default="info", show_default=True, help="uvicorn log level.")
@dry_run_option
def gateway(engine_url: str, model_dir: Path | None, host: str, port: int, mode: str, api_keys: tuple[str, ...],
            api_key_file: Path | None, require_api_key: bool,
            served_model_name: str | None, model_aliases: tuple[str, ...], max_body: int, max_context: int | None,
            max_header: int, max_connections: int, header_timeout: float, body_timeout: float,
            health_timeout: float, connect_timeout: float, read_timeout: float,
            unknown_tools: str, chat_family: str | None, tool_declaration: str, default_temperature: float | None,
            default_top_p: float | None, log_prompts: bool, log_format: str, log_level: str, dry_run: bool) -> None:
    """Serve /v1/chat/completions (OpenAI) and /v1/messages (Anthropic) in front of a K2 engine; Prometheus
    metrics on /metrics (no API key needed, like /health)."""
    cfg = GatewayConfig(engine_url=engine_url, model_dir=str(model_dir) if model_dir else None, host=host, port=port,
                        mode=mode, served_model_name=served_model_name,  # type: ignore[arg-type]
                        api_keys=api_keys + read_api_keys(key_file=api_key_file), require_api_key=require_api_key,
                        model_aliases=model_aliases, max_context_tokens=max_context, max_header_bytes=max_header,
                        max_connections=max_connections, header_timeout_s=header_timeout,
                        body_timeout_s=body_timeout, health_timeout_s=health_timeout,
                        max_body_bytes=max_body, connect_timeout_s=connect_timeout, read_timeout_s=read_timeout,
                        unknown_tools=unknown_tools, chat_family=chat_family,  # type: ignore[arg-type]
                        tool_declaration=tool_declaration,  # type: ignore[arg-type]
                        default_temperature=default_temperature, default_top_p=default_top_p,
                        log_prompts=log_prompts, log_format=log_format).validate()  # type: ignore[arg-type]
    if dry_run:
        shown = {k: v for k, v in cfg.__dict__.items() if k not in ("api_keys", "extra")}
        echo_json({**shown, "api_keys": len(cfg.api_keys), "model_name": cfg.model_name,
                   "url": f"http://{host}:{port}"})
        return
    from k2trt.gateway.app import run_gateway

    if log_format == "text":  # JSON logs: every stderr line is JSON; the lifespan logs the same
        click.echo(f"k2trt gateway ({mode}) on http://{host}:{port} -> {engine_url}", err=True)
    run_gateway(cfg, log_level=log_level)
