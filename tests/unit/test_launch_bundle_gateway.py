"""The gateway `k2trt serve` starts gets the bundle's settings — recipe ``serve.gateway_limits``, the recipe's context,
``model.served_name`` and ``serve.log_format`` → ``launch.json`` → ``GatewayConfig`` — with every default from
``GatewayConfig`` (one source). Over a real running job: tests/e2e/test_launch_jsonlogs.py."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from k2trt.bundle.build import build_bundle
from k2trt.bundle.recipe import load_recipe
from k2trt.cli import cli
from k2trt.errors import ConfigError
from k2trt.gateway.config import API_KEYS_ENV, GatewayConfig, GatewayLimits
from k2trt.launch.spec import GatewayOptions, LaunchSpec

from gateway_cli import parsed_config


def test_limits_are_gateway_config_fields_with_its_defaults() -> None:
    defaults = GatewayConfig(engine_url="http://e")
    for f in dataclasses.fields(GatewayLimits):
        assert f.name in {g.name for g in dataclasses.fields(GatewayConfig)}, f.name
        assert getattr(GatewayLimits(), f.name) == getattr(defaults, f.name), f.name
    assert GatewayOptions(8080).config("http://e", None) == defaults


def test_the_recipe_settings_reach_launch_json_and_the_gateway_config(tiny_ckpt: Path, tmp_path: Path) -> None:
    sets = ["serve.gateway_limits.max_connections=7", "serve.gateway_limits.body_timeout_s=9",
            "serve.gateway_limits.max_body_bytes=65536", "serve.gateway_limits.model_aliases=[a, b]",
            "model.served_name=tiny", "serve.log_format=json"]
    build_bundle(load_recipe("tiny-cpu", sets), tiny_ckpt, tmp_path / "b")
    raw = json.loads((tmp_path / "b" / "launch.json").read_text())
    assert raw["log_format"] == "json" and raw["gateway"]["limits"]["max_connections"] == 7
    spec = LaunchSpec.load(tmp_path / "b" / "launch.json")
    assert spec.gateway is not None
    cfg = spec.gateway.config("http://127.0.0.1:18000", spec.model_dir, ("k",), spec.log_format).validate()
    assert (cfg.max_connections, cfg.body_timeout_s, cfg.max_body_bytes, cfg.model_aliases) == (7, 9.0, 65536,
                                                                                                ("a", "b"))
    assert cfg.max_context_tokens == 2048  # unset: the recipe's context, as the plan sizes it
    assert (cfg.served_model_name, cfg.log_format, cfg.api_keys, cfg.port) == ("tiny", "json", ("k",), 18001)
    assert cfg.header_timeout_s == GatewayConfig.header_timeout_s  # untouched fields keep GatewayConfig's default
    build_bundle(load_recipe("tiny-cpu", ["serve.gateway_limits.max_context_tokens=512"]), tiny_ckpt,
                 tmp_path / "c")
    c = LaunchSpec.load(tmp_path / "c" / "launch.json")
    assert c.gateway is not None and c.gateway.limits.max_context_tokens == 512 and c.log_format == "text"


@pytest.mark.parametrize("sets, words", [
    (["serve.gateway_limits.max_connections=0"], ["serve.gateway_limits", "--max-connections 0"]),
    (["serve.gateway_limits.max_context_tokens=4096"], ["max_context_tokens 4096 is over", "context 2048"]),
    (["serve.gateway_limits.max_conections=9"], ["unknown key 'max_conections'", "max_connections"]),
    (["serve.log_format=xml"], ["serve.log_format", "'xml' is not one of text, json"]),
])
def test_bad_gateway_settings_are_one_line_recipe_errors(sets: list[str], words: list[str]) -> None:
    with pytest.raises(ConfigError) as e:
        load_recipe("tiny-cpu", sets)
    assert all(w in str(e.value) for w in words) and "\n" not in str(e.value), str(e.value)


def test_launch_json_without_the_new_keys_loads_with_the_defaults(tmp_path: Path) -> None:
    spec = LaunchSpec(argv=("x",), gateway=GatewayOptions(8080, mode="passthrough"))
    data = spec.to_dict()
    del data["log_format"], data["gateway"]["limits"], data["gateway"]["served_model_name"]
    (tmp_path / "launch.json").write_text(json.dumps(data))
    assert LaunchSpec.load(tmp_path / "launch.json") == spec
    data["gateway"]["limits"] = {"max_conections": 3}
    (tmp_path / "launch.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=r"unknown key 'max_conections' \(did you mean 'max_connections'\?\)"):
        LaunchSpec.load(tmp_path / "launch.json")
    bad = dataclasses.replace(spec, gateway=GatewayOptions(8080, mode="passthrough",
                                                           limits=GatewayLimits(header_timeout_s=0)))
    with pytest.raises(ConfigError, match="gateway.limits: --header-timeout 0 must be positive"):
        bad.validate()


# ---- GatewayConfig.argv: the command line that starts a given gateway -----------------------------------------
def test_every_setting_survives_the_command_line(tiny_ckpt: Path) -> None:
    """``GatewayConfig.argv`` parsed back by the real ``k2trt gateway --dry-run`` is the same config, for every field
    that has an option, each set away from its default; the keys never appear in argv."""
    cfg = GatewayConfig(engine_url="http://engine.svc:8001", model_dir=str(tiny_ckpt), host="0.0.0.0", port=9090,
                        mode="passthrough", api_keys=("secret-1",), require_api_key=True, served_model_name="kimi-prod",
                        model_aliases=("kimi", "gpt-4o", "*"), max_body_bytes=65536, max_context_tokens=4096,
                        header_timeout_s=2.5, body_timeout_s=0.125, max_header_bytes=16 * 1024, max_connections=7,
                        health_timeout_s=1.75, connect_timeout_s=3.0, read_timeout_s=1200.0 + 1 / 3,
                        chat_family="k2-thinking", default_temperature=0.3, default_top_p=0.9,
                        unknown_tools="keep", tool_declaration="json", log_prompts=True, log_format="json").validate()
    untouched = {"api_keys", "engine_model", "anthropic_temperature_scale", "extra"}
    defaults = GatewayConfig(engine_url="http://e")
    for f in dataclasses.fields(GatewayConfig):  # the config above exercises every option
        assert f.name in untouched or getattr(cfg, f.name) != getattr(defaults, f.name), f.name
    argv = cfg.argv()
    assert "secret-1" not in argv and argv[:4] == ["k2trt", "gateway", "--engine-url", "http://engine.svc:8001"]
    assert parsed_config(argv, {API_KEYS_ENV: "secret-1"}, ("secret-1",)) == cfg
    plain = GatewayConfig(engine_url="http://e:1", mode="passthrough")
    assert plain.argv() == ["k2trt", "gateway", "--engine-url", "http://e:1", "--host", "127.0.0.1", "--port", "8080",
                            "--mode", "passthrough"]
    assert parsed_config(plain.argv()) == plain
    with pytest.raises(ConfigError, match="engine_model='m' has no k2trt gateway option"):
        dataclasses.replace(plain, engine_model="m").argv()


def test_a_gateway_that_requires_a_key_does_not_start_without_one() -> None:
    argv = GatewayConfig(engine_url="http://e:1", mode="passthrough", require_api_key=True).argv()
    assert "--require-api-key" in argv
    out = CliRunner().invoke(cli, argv[1:] + ["--dry-run"], env={API_KEYS_ENV: " "})
    assert out.exit_code != 0 and "--require-api-key is set but no API key" in str(out.exception or out.output)
    assert parsed_config(argv, {API_KEYS_ENV: "k"}, ("k",)).require_api_key
    # the bundle's key requirement reaches the config k2trt serve starts
    opts = GatewayOptions(8080, "0.0.0.0", mode="passthrough", require_key=True)
    assert opts.config("http://e:1", None, ("k",)).validate().require_api_key
    with pytest.raises(ConfigError, match="no API key"):
        opts.config("http://e:1", None).validate()
