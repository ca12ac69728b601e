"""``k2trt gateway``: the OpenAI + Anthropic front in front of an already running engine."""

from __future__ import annotations

from pathlib import Path

import click

from k2trt.chat.families import FAMILY_NAMES
from k2trt.cli_options import ByteSizeType, dry_run_option, echo_json
from k2trt.gateway.config import API_KEYS_ENV, MODES, GatewayConfig, read_api_keys

_D = GatewayConfig(engine_url="http://127.0.0.1:8000")  # defaults come from the dataclass (one place)


@click.command()
@click.option("--engine-url", required=True, help="Base URL of the engine's OpenAI server, e.g. http://host:8000.")
@click.option("--model-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="K2 model directory (tokenizer); required in render mode.")
@click.option("--host", default=_D.host, show_default=True, help="Interface to listen on.")
@click.option("--port", type=int, default=_D.port, show_default=True, help="Port to listen on.")
@click.option("--mode", type=click.Choice(MODES), default=_D.mode, show_default=True,
              help="render: the gateway renders K2 prompts and parses tool calls (engine /v1/completions); "
                   "passthrough: forward to an engine that parses K2 tool calls itself (TensorRT-LLM >= 1.2).")
@click.option("--api-key", "api_keys", multiple=True, envvar=API_KEYS_ENV,
              help=f"Accepted API key (repeatable, or whitespace-separated in ${API_KEYS_ENV}, which keeps "
                   "keys out of `ps`); none = no auth.")
@click.option("--api-key-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="File of accepted API keys (whitespace-separated, '#' comments), e.g. a mounted secret; "
                   "adds to --api-key.")
@click.option("--served-model-name", default=None, help="Model id clients see [default: the model dir name].")
@click.option("--max-body", "max_body", type=ByteSizeType(), default=f"{_D.max_body_bytes // 2**20}MiB",
              show_default=True, help="Largest request body.")
@click.option("--connect-timeout", type=float, default=_D.connect_timeout_s, show_default=True,
              help="Seconds to reach the engine before 503.")
@click.option("--read-timeout", type=float, default=_D.read_timeout_s, show_default=True,
              help="Seconds to wait for the engine's next byte before 504.")
@click.option("--unknown-tools", type=click.Choice(["drop", "keep"]), default=_D.unknown_tools, show_default=True,
              help="Calls to tools the request did not declare.")
@click.option("--chat-family", type=click.Choice(FAMILY_NAMES), default=None,
              help="K2 chat family (template, thinking switches, sampling defaults) [default: detected from "
                   "--model-dir's chat template, else k2-instruct].")
@click.option("--default-temperature", type=float, default=_D.default_temperature,
              help="Temperature for requests without one [default: the family's recommendation for the mode].")
@click.option("--default-top-p", type=float, default=_D.default_top_p,
              help="top_p for requests without one [default: the family's recommendation].")
@click.option("--log-prompts", is_flag=True, help="Log prompts and outputs (off: they may be private).")
@click.option("--log-level", default="info", show_default=True, help="uvicorn log level.")
@dry_run_option
def gateway(engine_url: str, model_dir: Path | None, host: str, port: int, mode: str, api_keys: tuple[str, ...],
            api_key_file: Path | None,
            served_model_name: str | None, max_body: int, connect_timeout: float, read_timeout: float,
            unknown_tools: str, chat_family: str | None, default_temperature: float | None,
            default_top_p: float | None, log_prompts: bool, log_level: str, dry_run: bool) -> None:
    """Serve /v1/chat/completions (OpenAI) and /v1/messages (Anthropic) in front of a K2 engine."""
    cfg = GatewayConfig(engine_url=engine_url, model_dir=str(model_dir) if model_dir else None, host=host, port=port,
                        mode=mode, served_model_name=served_model_name,  # type: ignore[arg-type]
                        api_keys=api_keys + read_api_keys(key_file=api_key_file),
                        max_body_bytes=max_body, connect_timeout_s=connect_timeout, read_timeout_s=read_timeout,
                        unknown_tools=unknown_tools, chat_family=chat_family,  # type: ignore[arg-type]
                        default_temperature=default_temperature, default_top_p=default_top_p,
                        log_prompts=log_prompts).validate()
    if dry_run:
        shown = {k: v for k, v in cfg.__dict__.items() if k not in ("api_keys", "extra")}
        echo_json({**shown, "api_keys": len(cfg.api_keys), "model_name": cfg.model_name,
                   "url": f"http://{host}:{port}"})
        return
    from k2trt.gateway.app import run_gateway

    click.echo(f"k2trt gateway ({mode}) on http://{host}:{port} -> {engine_url}", err=True)
    run_gateway(cfg, log_level=log_level)
