"""The gateway's settings: one frozen dataclass, the single source of every default (the CLI reads them here).

``GatewayLimits`` is the part of them a deployment fixes in its bundle (request limits, timeouts, accepted model ids):
the same fields with the same defaults, carried by a recipe's ``serve.gateway_limits`` and the bundle's
``launch.json`` to the gateway ``k2trt serve`` starts.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

from k2trt.chat.families import FAMILY_NAMES
from k2trt.errors import ConfigError
from k2trt.jsonlog import DEFAULT_LOG_FORMAT, LOG_FORMATS, LogFormat

__all__ = ["API_KEYS_ENV", "CLI_FLAGS", "LOG_FORMATS", "MODES", "TOOL_DECLARATIONS", "GatewayConfig", "GatewayLimits",
           "LogFormat", "read_api_keys"]

Mode = Literal["render", "passthrough"]
UnknownTools = Literal["drop", "keep"]
ToolDeclaration = Literal["auto", "typescript", "json"]
TOOL_DECLARATIONS: tuple[str, ...] = ("auto", "typescript", "json")
MODES: tuple[str, ...] = ("render", "passthrough")
API_KEYS_ENV = "K2TRT_GATEWAY_API_KEYS"
"""The environment variable the gateway reads accepted API keys from (whitespace-separated)."""
CLI_FLAGS: dict[str, str] = {
    "engine_url": "--engine-url", "model_dir": "--model-dir", "host": "--host", "port": "--port", "mode": "--mode",
    "require_api_key": "--require-api-key", "served_model_name": "--served-model-name",
    "model_aliases": "--model-alias", "max_body_bytes": "--max-body", "max_context_tokens": "--max-context",
    "header_timeout_s": "--header-timeout", "body_timeout_s": "--body-timeout",
    "max_header_bytes": "--max-header-size", "max_connections": "--max-connections",
    "health_timeout_s": "--health-timeout", "connect_timeout_s": "--connect-timeout",
    "read_timeout_s": "--read-timeout", "chat_family": "--chat-family", "default_temperature": "--default-temperature",
    "default_top_p": "--default-top-p", "unknown_tools": "--unknown-tools",
    "tool_declaration": "--tool-declaration", "log_prompts": "--log-prompts",
    "log_format": "--log-format"}
"""``GatewayConfig`` field → the ``k2trt gateway`` option that sets it: the command declares its options with these
names and ``GatewayConfig.argv`` writes them (one spelling). ``api_keys`` has none on purpose: keys never travel in
argv, which every user of the machine can read in /proc."""
_ALWAYS_SAID = ("engine_url", "host", "port", "mode")
"""Fields ``GatewayConfig.argv`` writes even at their default: where the gateway listens and what it fronts."""


def read_api_keys(env_var: str | None = None, key_file: str | Path | None = None,
                  environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """Accepted API keys from an environment variable and/or a secret file — never from argv, which every user of
    the machine can read in /proc.

    Args:
        env_var: name of a variable holding whitespace-separated keys (unset or empty: none from it).
        key_file: a file of whitespace-separated keys; lines starting with ``#`` are comments.
        environ: the environment to read (default: this process's).
    Returns:
        The keys, in order, without duplicates.
    Raises:
        ConfigError: ``key_file`` is named but cannot be read.
    Example:
        >>> read_api_keys("KEYS", environ={"KEYS": "k1 k2"})
        ('k1', 'k2')
    """
    environ = os.environ if environ is None else environ
    keys = (environ.get(env_var) or "").split() if env_var else []
    if key_file is not None:
        try:
            text = Path(key_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"cannot read the API key file {key_file}: {getattr(e, 'strerror', None) or e}",
                              "give a readable file of keys, one per line") from None
        keys += [k for line in text.splitlines() if not line.lstrip().startswith("#") for k in line.split()]
    return tuple(dict.fromkeys(keys))


@dataclass(frozen=True)
class GatewayConfig:
    """How the OpenAI + Anthropic front talks to one engine.

    Example:
        >>> GatewayConfig(engine_url="http://127.0.0.1:8000", model_dir="/models/Kimi-K2-Instruct").validate()
    """

    engine_url: str
    """Base URL of the engine's OpenAI-compatible server (``trtllm-serve`` or the reference engine)."""
    model_dir: str | Path | None = None
    """K2 model directory (``tiktoken.model``, ``tokenizer_config.json``); required in ``render`` mode."""
    host: str = "127.0.0.1"
    """Interface the gateway listens on."""
    port: int = 8080
    """Port the gateway listens on."""
    mode: Mode = "render"
    """``render``: the gateway renders K2's prompt and parses tool calls, calling the engine's /v1/completions.
    ``passthrough``: /v1/chat/completions is forwarded as is (TensorRT-LLM ≥1.2 with its kimi_k2 tool parser)."""
    api_keys: tuple[str, ...] = ()
    """Accepted keys (``Authorization: Bearer KEY`` or ``x-api-key: KEY``); empty means no authentication."""
    require_api_key: bool = False
    """Refuse to start without at least one key (a gateway that serves beyond loopback; a bundle's
    ``serve.gateway_auth``), so an empty key source never leaves it open."""
    served_model_name: str | None = None
    """Model id shown by /v1/models and echoed in responses [default: the model directory's name, else kimi-k2]."""
    model_aliases: tuple[str, ...] = ()
    """Other model ids accepted as the served model (a client that insists on its own name); any other ``model`` is
    a 404 ``model_not_found``. ``*`` accepts every id."""
    engine_model: str | None = None
    """``model`` field sent to the engine [default: the served model name]."""
    max_body_bytes: int = 32 * 2**20
    """Largest request body accepted; larger ones get 413."""
    max_context_tokens: int | None = None
    """Tokens the model holds (prompt + max_tokens); a longer request is a 400 before it reaches the engine [default:
    ``max_position_embeddings`` from --model-dir's config.json; unchecked without one]."""
    header_timeout_s: float = 15.0
    """Seconds a client has to send a request's head (line and headers), from connecting or from the end of the
    previous response; a slower (slowloris) connection is closed."""
    body_timeout_s: float = 60.0
    """Seconds a client has to send the whole body after the head; a slower one (or a Content-Length larger than
    the body) gets 408."""
    max_header_bytes: int = 32 * 1024
    """Largest request head (request line + headers); a larger one is refused with 400 and the connection closed."""
    max_connections: int = 1024
    """Open client connections (and requests in flight) beyond which new requests get 503."""
    health_timeout_s: float = 5.0
    """Seconds /health waits for the engine's /health before answering 503 (a hung engine must not hang it)."""
    connect_timeout_s: float = 5.0
    """Seconds to open a connection to the engine before answering 503."""
    read_timeout_s: float = 600.0
    """Seconds to wait for the engine's next byte before answering 504. A non-streaming request receives nothing
    until its generation ends, so this also bounds one whole non-streaming generation."""
    chat_family: str | None = None
    """K2 chat family (``k2-instruct``, ``k2-thinking``, ``k2.5``, ``k2.6``, ``k2.7-code``): its template, thinking
    switches and sampling defaults [default: detected from --model-dir's chat template, else k2-instruct]."""
    default_temperature: float | None = None
    """Temperature for requests without one [default: the family's recommendation for the thinking mode — 0.6 for
    K2-Instruct and instant mode (kimi_formats.md §7), 1.0 when thinking]."""
    default_top_p: float | None = None
    """top_p for requests without one [default: the family's recommendation, 0.95 for K2.5+; none for K2]."""
    anthropic_temperature_scale: float = 0.6
    """An Anthropic request's own ``temperature`` is multiplied by this (Moonshot's mapping: Claude's default 1.0
    becomes 0.6); without one, the defaults above apply."""
    unknown_tools: UnknownTools = "drop"
    """Calls to tools the request did not declare: ``drop`` them (as TensorRT-LLM's parser does) or ``keep``."""
    tool_declaration: ToolDeclaration = "auto"
    """How a K2.5+ prompt declares the tools (render mode): ``typescript`` as Moonshot's K2.5 tokenizer does
    (``k2trt.chat.tools_ts``; the JSON where a schema has no TypeScript rule), ``json`` as the template's fallback,
    ``auto``: TypeScript when --model-dir ships that tokenizer's encoder (``tool_declaration_ts.py``). Earlier
    families always declare JSON."""
    log_prompts: bool = False
    """Log rendered prompts and outputs (off by default: prompts may hold private data)."""
    log_format: LogFormat = DEFAULT_LOG_FORMAT
    """``json``: the gateway process logs one JSON object per line (``k2trt.jsonlog``), with one line per model
    request (request id, API, model, status, latency, token counts — never prompt text or keys); ``text``: uvicorn's
    usual lines."""
    extra: dict[str, str] = field(default_factory=dict)
    """Free-form labels shown by /health (for example the engine kind the launcher started)."""

    @property
    def model_name(self) -> str:
        """The model id clients see."""
        if self.served_model_name:
            return self.served_model_name
        if self.model_dir:
            return Path(self.model_dir).name or "kimi-k2"
        return "kimi-k2"

    @property
    def served_models(self) -> frozenset[str] | None:
        """The model ids a request may name (``None``: any, with the ``*`` alias)."""
        if "*" in self.model_aliases:
            return None
        return frozenset({self.model_name, *self.model_aliases})

    def validate(self) -> "GatewayConfig":
        """Check the settings; raise ``ConfigError`` naming the bad one and the fix. Returns ``self``."""
        u = urlparse(self.engine_url)
        if u.scheme not in ("http", "https") or not u.netloc:
            raise ConfigError(f"--engine-url {self.engine_url!r} is not an http(s) URL",
                              "pass the engine's base URL, e.g. http://127.0.0.1:8000")
        if self.mode not in MODES:
            raise ConfigError(f"--mode {self.mode!r} is not one of {', '.join(MODES)}")
        if self.mode == "render":
            if not self.model_dir:
                raise ConfigError("render mode needs --model-dir (the K2 tokenizer renders the prompt)",
                                  "pass the model directory, or --mode passthrough for an engine that parses "
                                  "K2 tool calls itself")
            if not (Path(self.model_dir) / "tiktoken.model").is_file():
                raise ConfigError(f"{self.model_dir} has no tiktoken.model",
                                  "pass the K2 model directory (the one holding tiktoken.model)")
        if not 0 < self.port < 65536:
            raise ConfigError(f"--port {self.port} is out of range 1..65535")
        if self.max_body_bytes < 1024:
            raise ConfigError(f"max body size {self.max_body_bytes} B is too small", "use at least 1KiB")
        timeouts = {"--connect-timeout": self.connect_timeout_s, "--read-timeout": self.read_timeout_s,
                    "--health-timeout": self.health_timeout_s, "--header-timeout": self.header_timeout_s,
                    "--body-timeout": self.body_timeout_s}
        for flag, v in timeouts.items():
            if not v > 0:
                raise ConfigError(f"{flag} {v} must be positive seconds")
        if self.max_header_bytes < 1024:
            raise ConfigError(f"max header size {self.max_header_bytes} B is too small", "use at least 1KiB")
        if self.max_connections < 1:
            raise ConfigError(f"--max-connections {self.max_connections} must be at least 1")
        if self.max_context_tokens is not None and self.max_context_tokens < 2:
            raise ConfigError(f"--max-context {self.max_context_tokens} must be at least 2 tokens")
        if any(not a for a in self.model_aliases):
            raise ConfigError("an empty --model-alias names no model", "remove it or give a model id")
        if self.log_format not in LOG_FORMATS:
            raise ConfigError(f"--log-format {self.log_format!r} is not one of {', '.join(LOG_FORMATS)}")
        if self.unknown_tools not in ("drop", "keep"):
            raise ConfigError(f"unknown_tools {self.unknown_tools!r} must be drop or keep")
        if self.tool_declaration not in TOOL_DECLARATIONS:
            raise ConfigError(f"--tool-declaration {self.tool_declaration!r} is not one of "
                              f"{', '.join(TOOL_DECLARATIONS)}")
        if self.chat_family is not None and self.chat_family not in FAMILY_NAMES:
            raise ConfigError(f"--chat-family {self.chat_family!r} is not one of {', '.join(FAMILY_NAMES)}")
        for name, v, hi in (("--default-temperature", self.default_temperature, 2.0),
                            ("--default-top-p", self.default_top_p, 1.0)):
            if v is not None and not 0 <= v <= hi:
                raise ConfigError(f"{name} {v} is outside [0, {hi:g}]")
        if any(not k for k in self.api_keys):
            raise ConfigError("an empty --api-key would accept every request", "remove it or give a value")
        if self.require_api_key and not self.api_keys:
            raise ConfigError("--require-api-key is set but no API key was given",
                              f"put keys in ${API_KEYS_ENV} or a file named by --api-key-file")
        return self

    def argv(self, program: tuple[str, ...] = ("k2trt", "gateway")) -> list[str]:
        """The ``k2trt gateway`` command line that starts a gateway with these settings: the listening address, the
        engine and the mode always, every other setting that differs from its default, never the API keys (they
        reach the command through ``API_KEYS_ENV`` or ``--api-key-file``).

        Args:
            program: the command's first words.
        Returns:
            The argv (``program`` first).
        Raises:
            ConfigError: a non-default setting has no option (``engine_model``, ``anthropic_temperature_scale``,
                ``extra``), so the command could not start this gateway.
        Example:
            >>> GatewayConfig("http://e:8000", mode="passthrough", max_connections=64).argv()[-4:]
            ['--mode', 'passthrough', '--max-connections', '64']
        """
        out = list(program)
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            if f.name == "api_keys" or (f.name not in _ALWAYS_SAID and value == default):
                continue
            flag = CLI_FLAGS.get(f.name)
            if flag is None:
                raise ConfigError(f"gateway setting {f.name}={value!r} has no k2trt gateway option",
                                  "leave it at its default for a gateway started by command line")
            if isinstance(value, bool):
                out.append(flag)  # a switch (every one defaults to off): said only when on
            elif isinstance(value, tuple):
                out += [a for v in value for a in (flag, str(v))]
            else:  # repr keeps every digit of a float; paths and numbers as text
                out += [flag, repr(value) if isinstance(value, float) else str(value)]
        return out


@dataclass(frozen=True)
class GatewayLimits:
    """The gateway settings a deployment fixes in its bundle: what a request may be, how long a client and the engine
    may take, which model ids a request may name. Each field is the ``GatewayConfig`` field of the same name, with
    its default (a unit test holds them equal); ``GatewayConfig(..., **limits.settings())`` applies them.

    Example:
        >>> GatewayLimits(max_context_tokens=4096, max_connections=256).validate().settings()["max_connections"]
        256
    """

    max_context_tokens: int | None = GatewayConfig.max_context_tokens
    """Tokens a request may hold (prompt + max_tokens); longer is a 400 ``context_length_exceeded`` before the
    engine (None: the model's ``max_position_embeddings``; a bundle fills in its recipe's ``context``)."""
    max_body_bytes: int = GatewayConfig.max_body_bytes
    """Largest request body (413 beyond it)."""
    max_header_bytes: int = GatewayConfig.max_header_bytes
    """Largest request head, request line + headers (431 beyond it)."""
    header_timeout_s: float = GatewayConfig.header_timeout_s
    """Seconds a client has to send a request head before its connection is closed."""
    body_timeout_s: float = GatewayConfig.body_timeout_s
    """Seconds a client has to send the whole body after the head (408 beyond it)."""
    max_connections: int = GatewayConfig.max_connections
    """Open connections (and requests in flight) beyond which new requests get 503."""
    health_timeout_s: float = GatewayConfig.health_timeout_s
    """Seconds /health waits for the engine's /health before answering 503."""
    connect_timeout_s: float = GatewayConfig.connect_timeout_s
    """Seconds to open a connection to the engine before answering 503."""
    read_timeout_s: float = GatewayConfig.read_timeout_s
    """Seconds to wait for the engine's next byte before answering 504."""
    model_aliases: tuple[str, ...] = GatewayConfig.model_aliases
    """Other model ids accepted as the served one (``*``: any); other ids are a 404 ``model_not_found``."""

    def settings(self) -> dict[str, object]:
        """The fields as ``GatewayConfig`` keyword arguments."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def validate(self) -> "GatewayLimits":
        """Check the values by ``GatewayConfig.validate``'s rules (one set of rules); ConfigError names the bad
        one. Returns ``self``."""
        probe = GatewayConfig(engine_url="http://127.0.0.1", mode="passthrough")
        dataclasses.replace(probe, **self.settings()).validate()
        return self
