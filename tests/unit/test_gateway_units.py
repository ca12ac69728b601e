"""Gateway pieces without sockets: request translation, the end-marker trim, tool policy, the Anthropic event
stream, settings and the CLI's dry run."""

from __future__ import annotations

import asyncio
import json
from typing import Any, AsyncIterator

import pytest
from click.testing import CliRunner

from k2trt.chat import toolcalls as tc
from k2trt.errors import ConfigError
from k2trt.gateway import anthropic_api, openai_api
from k2trt.gateway.backend import EndTrim, Shaper
from k2trt.gateway.config import GatewayConfig
from k2trt.gateway.errors import ApiError
from k2trt.gateway.events import Event, Finish, Job, Started, Text, ToolArgs, ToolChoice, ToolStart

TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]


# --- OpenAI request -------------------------------------------------------------------------------------------
def test_openai_request_defaults_and_fields() -> None:
    job, usage = openai_api.parse_request({"messages": [{"role": "developer", "content": "sys"},
                                                        {"role": "user", "content": "hi"}], "n": None,
                                           "response_format": {"type": "text"}}, 0.6)
    assert job.temperature == 0.6 and job.tool_choice == ToolChoice("auto") and not job.stream and not usage
    assert job.messages[0]["role"] == "system"  # developer is the newer name of system
    job, usage = openai_api.parse_request({"messages": [{"role": "user", "content": "hi"}], "tools": TOOLS,
                                           "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
                                           "stream": True, "stream_options": {"include_usage": True},
                                           "max_completion_tokens": 9, "stop": "##", "temperature": 0}, 0.6)
    assert job.tool_choice == ToolChoice("named", "get_weather") and usage
    assert (job.max_tokens, job.stop, job.temperature) == (9, ["##"], 0.0)


@pytest.mark.parametrize("body, param", [
    ({"messages": [{"role": "user", "content": "x"}], "n": 2}, "n"),
    ({"messages": "hi"}, "messages"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "messages"),
    ({"messages": [{"role": "tool", "content": "x"}]}, "messages"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages"),
    ({"messages": [{"role": "user", "content": "x"}], "top_p": 2}, "top_p"),
    ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, "max_tokens"),
    ({"messages": [{"role": "user", "content": "x"}], "stop": [1]}, "stop"),
    ({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "code"}]}, "tools"),
    ({"messages": [{"role": "user", "content": "x"}], "tool_choice": "required"}, "tool_choice"),
    ({"messages": [{"role": "user", "content": "x"}], "tool_choice": "sometimes", "tools": TOOLS}, "tool_choice"),
    ({"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_object"}},
     "response_format"),
    ({"messages": [{"role": "user", "content": "x"}], "logprobs": True}, "logprobs"),
])
def test_openai_request_rejections_name_the_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(ApiError) as ei:
        openai_api.parse_request(body, 0.6)
    assert ei.value.status == 400 and ei.value.param == param
    assert ei.value.openai_body()["error"]["type"] == "invalid_request_error"  # type: ignore[index]


# --- Anthropic request ----------------------------------------------------------------------------------------
def test_anthropic_translation_follows_kimi_mapping() -> None:
    body = {"max_tokens": 50, "temperature": 0.5, "stop_sequences": ["END"],
            "system": [{"type": "text", "text": "x-anthropic-billing-header: abc"}, {"type": "text", "text": "A"},
                       {"type": "text", "text": "B"}],
            "tools": [{"name": "get_weather", "description": "d", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
            "messages": [
                {"role": "user", "content": "weather?"},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "hmm"}, {"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"city": "北京"}}]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_01", "content": [
                        {"type": "text", "text": "Sunny"}, {"type": "text", "text": "22C"}]},
                    {"type": "text", "text": "thanks"}]}]}
    job = anthropic_api.parse_request(body, 0.6)
    assert job.temperature == pytest.approx(0.3) and job.stop == ["END"] and job.max_tokens == 50
    assert job.tool_choice == ToolChoice("required") and job.parallel_tool_calls is False
    assert job.tools == [{"type": "function", "function": {"name": "get_weather", "description": "d",
                                                           "parameters": {"type": "object"}}}]
    assert job.messages == [
        {"role": "system", "content": "AB"},
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": "Checking.", "reasoning_content": "hmm", "tool_calls": [
            {"id": "toolu_01", "type": "function",
             "function": {"name": "get_weather", "arguments": json.dumps({"city": "北京"}, ensure_ascii=False)}}]},
        {"role": "tool", "tool_call_id": "toolu_01", "content": "Sunny\n22C", "name": "get_weather"},
        {"role": "user", "content": "thanks"}]


@pytest.mark.parametrize("patch, needle", [
    ({"max_tokens": None}, "max_tokens"),
    ({"temperature": 1.5}, "temperature"),
    ({"tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "server tool"),
    ({"tools": [{"name": "f"}]}, "input_schema"),
    ({"tool_choice": {"type": "tool", "name": "nope"}}, "needs tools"),
    ({"tool_choice": {"type": "tool", "name": "nope"}, "tools": [{"name": "f", "input_schema": {}}]}, "not in tools"),
    ({"messages": [{"role": "user", "content": [{"type": "image", "source": {}}]}]}, "image"),
])
def test_anthropic_rejections(patch: dict[str, Any], needle: str) -> None:
    body = {"max_tokens": 5, "messages": [{"role": "user", "content": "x"}], **patch}
    with pytest.raises(ApiError) as ei:
        anthropic_api.parse_request(body, 0.6)
    assert needle in str(ei.value)
    assert ei.value.anthropic_body()["error"]["type"] == "invalid_request_error"  # type: ignore[index]


# --- output shaping -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("pieces, want", [
    (["Done.", "<|im_end|>"], "Done."),
    (["Done.<|im_", "end|>"], "Done."),
    (["a[EO", "S]"], "a"),
    (["x<|im_end|>", " more"], "x<|im_end|> more"),  # only a marker that ends the output is a stop token
    (["tail <|im_"], "tail <|im_"),
    (["[EOS"], "[EOS"),
])
def test_end_trim(pieces: list[str], want: str) -> None:
    t = EndTrim()
    assert "".join(t.feed(p) for p in pieces) + t.finish() == want


def _shape(job: Job, text: str, id_back: dict[str, str] | None = None) -> tuple[list[Event], Shaper]:
    s, p = Shaper(job, id_back or {}), tc.ToolCallStream(job.tools)
    out = [s.on(e) for e in p.feed(text) + p.finish("stop")]
    return [e for e in out if e is not None], s


CALLS = ("<|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0<|tool_call_argument_begin|>{}"
         "<|tool_call_end|><|tool_call_begin|>functions.get_time:1<|tool_call_argument_begin|>{\"a\": 1}"
         "<|tool_call_end|><|tool_calls_section_end|>")
TWO = TOOLS + [{"type": "function", "function": {"name": "get_time"}}]


def test_shaper_policies() -> None:
    evs, s = _shape(Job(messages=[], tools=TWO), "Hi" + CALLS, {"functions.get_weather:0": "call_7"})
    assert evs == [Text("Hi"), ToolStart(0, "call_7", "get_weather"), ToolArgs(0, "{}"),
                   ToolStart(1, "functions.get_time:1", "get_time"), ToolArgs(1, '{"a": 1}')]
    assert s.finish_reason("stop") == "tool_calls" and s.finish_reason("length") == "length"
    evs, s = _shape(Job(messages=[], tools=TWO, tool_choice=ToolChoice("named", "get_time")), CALLS)
    assert evs == [ToolStart(0, "functions.get_time:1", "get_time"), ToolArgs(0, '{"a": 1}')]  # re-indexed
    evs, s = _shape(Job(messages=[], tools=TWO, parallel_tool_calls=False), CALLS)
    assert [e.name for e in evs if isinstance(e, ToolStart)] == ["get_weather"]
    evs, s = _shape(Job(messages=[], tools=TWO, tool_choice=ToolChoice("none")), "ok" + CALLS)
    assert evs == [Text("ok")] and s.finish_reason("stop") == "stop"
    _, s = _shape(Job(messages=[], tools=TWO, tool_choice=ToolChoice("required")), "just text")
    with pytest.raises(ApiError) as ei:
        s.check()
    assert ei.value.status == 502 and ei.value.kind == "model_output"


# --- Anthropic stream and message -----------------------------------------------------------------------------
async def _aiter(evs: list[Event]) -> AsyncIterator[Event]:
    for e in evs:
        yield e


def _run_stream(evs: list[Event]) -> list[tuple[str, dict[str, Any]]]:
    async def go() -> list[str]:
        return [x async for x in anthropic_api.stream(_aiter(evs), "m")]
    out = []
    for frame in asyncio.run(go()):
        head, data = frame.strip().split("\n")
        out.append((head.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return out


def test_anthropic_stream_blocks_and_ids() -> None:
    evs: list[Event] = [Started(12), Text("Hi"), Text(" there"), ToolStart(0, "functions.f:3", "f"),
                        ToolArgs(0, '{"a"'), ToolArgs(0, ": 1}"), ToolStart(1, "toolu_keep", "g"), Text("after"),
                        Finish("tool_calls", 12, 9)]
    out = _run_stream(evs)
    names = [n for n, _ in out]
    assert names == ["message_start", "ping", "content_block_start", "content_block_delta", "content_block_delta",
                     "content_block_stop", "content_block_start", "content_block_delta", "content_block_delta",
                     "content_block_stop", "content_block_start", "content_block_stop", "content_block_start",
                     "content_block_delta", "content_block_stop", "message_delta", "message_stop"]
    assert out[0][1]["message"]["usage"] == {"input_tokens": 12, "output_tokens": 0}
    starts = [d["content_block"] for n, d in out if n == "content_block_start"]
    assert starts[1]["type"] == "tool_use" and starts[1]["id"].startswith("toolu_") and "." not in starts[1]["id"]
    assert starts[2]["id"] == "toolu_keep"  # a valid client id stays as it was
    assert [d["index"] for n, d in out if n == "content_block_stop"] == [0, 1, 2, 3]
    assert out[-2][1]["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}
    assert out[-2][1]["usage"]["output_tokens"] == 9


def test_anthropic_stream_error_after_start() -> None:
    async def failing() -> AsyncIterator[Event]:
        yield Started(3)
        yield Text("partial")
        raise ApiError(502, "engine broke", "engine_error")

    async def go() -> list[str]:
        return [x async for x in anthropic_api.stream(failing(), "m")]
    frames = asyncio.run(go())
    assert frames[-1].startswith("event: error\n")
    assert json.loads(frames[-1].split("data: ")[1]) == {"type": "error", "error": {"type": "api_error",
                                                                                     "message": "engine broke"}}


def test_anthropic_message_stop_reasons_and_bad_json() -> None:
    m = anthropic_api.response([Text("x"), Finish("stop", 1, 1, "END")], "m")
    assert (m["stop_reason"], m["stop_sequence"]) == ("stop_sequence", "END")
    assert anthropic_api.response([Finish("length", 1, 1)], "m")["stop_reason"] == "max_tokens"
    m = anthropic_api.response([ToolStart(0, "functions.f:0", "f"), ToolArgs(0, "{broken"),
                                Finish("tool_calls", 1, 1)], "m")
    assert m["content"] == [{"type": "tool_use", "id": m["content"][0]["id"], "name": "f", "input": {}}]
    o = openai_api.response([ToolStart(0, "functions.f:0", "f"), ToolArgs(0, "{broken"),
                             Finish("tool_calls", 1, 1)], "m")
    assert o["choices"][0]["message"]["content"] is None  # OpenAI passes malformed arguments through verbatim
    assert o["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] == "{broken"


# --- settings and CLI -----------------------------------------------------------------------------------------
def test_config_validation(tmp_path: Any) -> None:
    with pytest.raises(ConfigError, match="not an http"):
        GatewayConfig(engine_url="localhost:8000", mode="passthrough").validate()
    with pytest.raises(ConfigError, match="needs --model-dir"):
        GatewayConfig(engine_url="http://127.0.0.1:1").validate()
    with pytest.raises(ConfigError, match="no tiktoken.model"):
        GatewayConfig(engine_url="http://127.0.0.1:1", model_dir=str(tmp_path)).validate()
    with pytest.raises(ConfigError, match="empty --api-key"):
        GatewayConfig(engine_url="http://127.0.0.1:1", mode="passthrough", api_keys=("",)).validate()
    cfg = GatewayConfig(engine_url="http://127.0.0.1:1", mode="passthrough").validate()
    assert cfg.model_name == "kimi-k2"


def test_cli_dry_run_uses_schema_defaults() -> None:
    from k2trt.cli import cli

    r = CliRunner().invoke(cli, ["gateway", "--engine-url", "http://127.0.0.1:8000", "--mode", "passthrough",
                                 "--api-key", "k1", "--dry-run"])
    assert r.exit_code == 0, r.output
    shown = json.loads(r.output)
    d = GatewayConfig(engine_url="x")
    assert shown["port"] == d.port and shown["read_timeout_s"] == d.read_timeout_s
    assert shown["max_body_bytes"] == d.max_body_bytes and shown["api_keys"] == 1  # the key itself is not shown
    r = CliRunner().invoke(cli, ["gateway", "--engine-url", "http://127.0.0.1:8000", "--dry-run"])
    assert r.exit_code != 0 and "needs --model-dir" in str(r.exception or r.output)
