"""Gateway pieces for the thinking models, without sockets: the output chain (reasoning → tool calls → policy),
usage accounting, sampling defaults, the thinking switches of both APIs and their 400s, and the wire shapes of
reasoning (OpenAI deltas, Anthropic thinking blocks)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import pytest

from k2trt.chat import families as fam
from k2trt.chat import reasoning as rs
from k2trt.chat import vocab
from k2trt.chat.tokenizer import K2Tokenizer
from k2trt.gateway import anthropic_api, openai_api, usage
from k2trt.gateway.backend import RenderBackend, sampling
from k2trt.gateway.config import GatewayConfig
from k2trt.gateway.errors import ApiError
from k2trt.gateway.events import Event, Finish, Job, Reasoning, Started, Text, ToolArgs, ToolChoice, ToolStart
from k2trt.gateway.output import OutputChain

TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
CALL = ("<|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0<|tool_call_argument_begin|>"
        '{"city": "Oslo"}<|tool_call_end|><|tool_calls_section_end|>')
TEXT = "Think about Oslo.</think>Checking." + CALL + "<|im_end|>"


def _chain(job: Job, pieces: list[str], opened: bool = True, prefix: str = "") -> tuple[list[Event], OutputChain]:
    c = OutputChain(job, {}, reasoning=rs.ReasoningStream(opened=opened))
    out = c.prefill(prefix)
    for p in pieces:
        out += c.feed(p)
    return out + c.finish("stop"), c


def _merge(events: list[Event]) -> list[Event]:
    out: list[Event] = []
    for e in events:
        if out and type(e) is type(out[-1]) and isinstance(e, (Text, Reasoning)):
            out[-1] = type(e)(out[-1].text + e.text)
        elif out and isinstance(e, ToolArgs) and isinstance(out[-1], ToolArgs) and e.index == out[-1].index:
            out[-1] = ToolArgs(e.index, out[-1].fragment + e.fragment)
        else:
            out.append(e)
    return out


def test_output_chain_streamed_equals_whole() -> None:
    job = Job(messages=[], tools=TOOLS)
    whole, c = _chain(job, [TEXT])
    assert whole == [Reasoning("Think about Oslo."), Text("Checking."), ToolStart(0, "functions.get_weather:0",
                                                                                 "get_weather"),
                     ToolArgs(0, '{"city": "Oslo"}')]
    assert c.text == TEXT.removesuffix("<|im_end|>") and c.shaper.finish_reason("stop") == "tool_calls"
    assert c.reasoning_done == rs.ReasoningDone("Think about Oslo.", "Checking." + CALL, 1, False)
    for step in (1, 2, 3, 7):
        pieces = [TEXT[i:i + step] for i in range(0, len(TEXT), step)]
        assert _merge(_chain(job, pieces)[0]) == whole, step


def test_output_chain_prefill_is_parsed_not_counted() -> None:
    job = Job(messages=[], tools=TOOLS, tool_choice=ToolChoice("required"))
    evs, c = _chain(job, ["<|tool_call_begin|>functions.get_weather:0<|tool_call_argument_begin|>{}"
                          "<|tool_call_end|><|tool_calls_section_end|>"], opened=False,
                    prefix="<|tool_calls_section_begin|>")
    assert [type(e) for e in evs] == [ToolStart, ToolArgs] and "section_begin" not in c.text
    c.shaper.check()


@pytest.fixture(scope="module")
def tok(family_dir: Callable[[str], Path]) -> K2Tokenizer:
    return K2Tokenizer.from_dir(family_dir("k2.6"))


def test_usage_count(tok: K2Tokenizer) -> None:
    text = "abc def"
    u = usage.count(None, prompt_tokens=10, completion_text=text, reasoning_text="abc", reasoning_markers=1,
                    tokenizer=tok)
    assert u == {"prompt_tokens": 10, "completion_tokens": len(tok.encode(text)),
                 "reasoning_tokens": len(tok.encode("abc")) + 1, "cached_tokens": 0}
    # the engine's own counts win; reasoning never exceeds the completion
    u = usage.count({"prompt_tokens": 12, "completion_tokens": 2, "prompt_tokens_details": {"cached_tokens": 8}},
                    prompt_tokens=10, completion_text=text, reasoning_text="a long thought here", tokenizer=tok)
    assert u == {"prompt_tokens": 12, "completion_tokens": 2, "reasoning_tokens": 2, "cached_tokens": 8}
    u = usage.count({"completion_tokens": 9, "completion_tokens_details": {"reasoning_tokens": 5}},
                    prompt_tokens=None, completion_text="")
    assert (u["prompt_tokens"], u["reasoning_tokens"]) == (0, 5)
    f = Finish("stop", **u)
    assert usage.openai_usage(f)["completion_tokens_details"] == {"reasoning_tokens": 5}
    assert usage.anthropic_usage(f) == {"input_tokens": 0, "output_tokens": 9, "cache_read_input_tokens": 0}


def test_sampling_precedence() -> None:
    k26 = fam.family("k2.6")
    cfg = GatewayConfig(engine_url="http://x", mode="passthrough")
    assert sampling(cfg, k26, Job(messages=[]), True) == {"temperature": 1.0, "top_p": 0.95}
    assert sampling(cfg, k26, Job(messages=[]), False) == {"temperature": 0.6, "top_p": 0.95}
    assert sampling(cfg, fam.family("k2-instruct"), Job(messages=[]), False) == {"temperature": 0.6}
    cfg = GatewayConfig(engine_url="http://x", mode="passthrough", default_temperature=0.3, default_top_p=0.5)
    assert sampling(cfg, k26, Job(messages=[]), True) == {"temperature": 0.3, "top_p": 0.5}
    assert sampling(cfg, k26, Job(messages=[], temperature=0.0, top_p=1.0), True) == {"temperature": 0.0,
                                                                                      "top_p": 1.0}


def test_render_backend_prompt_per_mode(tok: K2Tokenizer) -> None:
    cfg = GatewayConfig(engine_url="http://x", mode="passthrough")
    b = RenderBackend(cfg, None, tok, fam.family("k2.6"))  # type: ignore[arg-type]
    job = Job(messages=[{"role": "user", "content": "hi"}], tools=TOOLS, tool_choice=ToolChoice("required"))
    p = b.prompt(job)
    assert p.thinking and p.opened and p.prefix == "" and p.ids[-1] == tok.token_id("<think>")
    job.thinking = False
    p = b.prompt(job)
    assert not p.opened and p.prefix == vocab.SECTION_BEGIN
    assert tok.decode(p.ids).endswith("<think></think>" + vocab.SECTION_BEGIN)
    job.preserve_thinking, job.thinking = None, None
    b = RenderBackend(cfg, None, tok, fam.family("k2-thinking"))  # type: ignore[arg-type]
    job.thinking = False
    with pytest.raises(ApiError, match="always thinks") as ei:
        b.prompt(job)
    assert ei.value.status == 400 and ei.value.param == "thinking"


@pytest.mark.parametrize("extra, want", [
    ({}, (None, None)),
    ({"chat_template_kwargs": {"thinking": False}}, (False, None)),
    ({"chat_template_kwargs": {"enable_thinking": True, "preserve_thinking": True}}, (True, True)),
    ({"thinking": {"type": "disabled"}}, (False, None)),
    ({"thinking": {"type": "enabled"}, "chat_template_kwargs": {"thinking": True}}, (True, None)),
])
def test_openai_thinking_switches(extra: dict[str, Any], want: tuple) -> None:
    job, _ = openai_api.parse_request({"messages": [{"role": "user", "content": "x"}], **extra})
    assert (job.thinking, job.preserve_thinking) == want
    assert job.temperature is None  # left to the family's default


def test_openai_history_reasoning_fields() -> None:
    msgs = [{"role": "user", "content": "q", "reasoning_content": "not mine"},
            {"role": "assistant", "content": "a", "reasoning_content": "r1"},
            {"role": "assistant", "content": "b", "reasoning": "r2"},
            {"role": "assistant", "content": "c", "reasoning_content": None}]
    job, _ = openai_api.parse_request({"messages": msgs})
    assert [m.get("reasoning_content") for m in job.messages] == [None, "r1", "r2", None]
    assert all("reasoning" not in m for m in job.messages)
    with pytest.raises(ApiError, match="reasoning_content must be a string"):
        openai_api.parse_request({"messages": [{"role": "assistant", "content": "a", "reasoning_content": 5}]})


def test_openai_reasoning_wire_shapes() -> None:
    evs: list[Event] = [Reasoning("r"), Text("a"), Finish("stop", 3, 4, reasoning_tokens=2)]
    msg = openai_api.response(evs, "m")["choices"][0]["message"]
    assert msg["reasoning_content"] == "r" and msg["content"] == "a"
    assert openai_api.response([Text("a"), Finish("stop", 1, 1)], "m", thinks=True)["choices"][0]["message"][
        "reasoning_content"] is None
    assert "reasoning_content" not in openai_api.response([Text("a"), Finish("stop", 1, 1)], "m")["choices"][0][
        "message"]

    async def go() -> list[str]:
        async def gen() -> AsyncIterator[Event]:
            for e in evs:
                yield e
        return [x async for x in openai_api.stream(gen(), "m", True)]
    frames = [json.loads(f[6:]) for f in asyncio.run(go()) if f.startswith("data: {")]
    assert frames[1]["choices"][0]["delta"] == {"reasoning_content": "r"}
    assert frames[-1]["choices"] == [] and frames[-1]["usage"]["completion_tokens_details"]["reasoning_tokens"] == 2


def test_anthropic_thinking_request_and_blocks() -> None:
    base = {"max_tokens": 2048, "messages": [{"role": "user", "content": "x"}]}
    assert anthropic_api.parse_request(base, 0.6).thinking is None
    assert anthropic_api.parse_request({**base, "thinking": {"type": "disabled"}}, 0.6).thinking is False
    job = anthropic_api.parse_request({**base, "thinking": {"type": "enabled", "budget_tokens": 1024}}, 0.6)
    assert job.thinking is True and job.temperature is None
    m = anthropic_api.response([Reasoning("why"), Text("so"), Finish("stop", 1, 2)], "m")
    assert m["content"] == [{"type": "thinking", "thinking": "why", "signature": anthropic_api.signature("why")},
                            {"type": "text", "text": "so"}]
    m = anthropic_api.response([Reasoning("cut"), Finish("length", 1, 2)], "m")
    assert [b["type"] for b in m["content"]] == ["thinking"] and m["stop_reason"] == "max_tokens"


def test_anthropic_stream_closes_thinking_with_a_signature() -> None:
    evs: list[Event] = [Started(5), Reasoning("a"), Reasoning("b"), Text("c"), Reasoning("d"), Finish("stop", 5, 4)]

    async def go() -> list[str]:
        async def gen() -> AsyncIterator[Event]:
            for e in evs:
                yield e
        return [x async for x in anthropic_api.stream(gen(), "m")]
    frames = [(f.split("\n")[0][7:], json.loads(f.split("\n")[1][6:])) for f in asyncio.run(go())]
    seq = [(n, d.get("delta", d.get("content_block", {})).get("type")) for n, d in frames]
    assert seq[2:] == [("content_block_start", "thinking"), ("content_block_delta", "thinking_delta"),
                       ("content_block_delta", "thinking_delta"), ("content_block_delta", "signature_delta"),
                       ("content_block_stop", None), ("content_block_start", "text"),
                       ("content_block_delta", "text_delta"), ("content_block_stop", None),
                       ("content_block_start", "thinking"), ("content_block_delta", "thinking_delta"),
                       ("content_block_delta", "signature_delta"), ("content_block_stop", None),
                       ("message_delta", None), ("message_stop", None)]
    sig = [d["delta"]["signature"] for n, d in frames if d.get("delta", {}).get("type") == "signature_delta"]
    assert sig == [anthropic_api.signature("ab"), anthropic_api.signature("d")]


def test_gateway_config_family_and_defaults(tmp_path: Path) -> None:
    from k2trt.errors import ConfigError

    with pytest.raises(ConfigError, match="--chat-family"):
        GatewayConfig(engine_url="http://x", mode="passthrough", chat_family="k3").validate()
    with pytest.raises(ConfigError, match="--default-top-p"):
        GatewayConfig(engine_url="http://x", mode="passthrough", default_top_p=1.5).validate()
