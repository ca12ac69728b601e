"""Thinking models behind the gateway: the real openai and anthropic SDKs on 127.0.0.1, streaming and not,
reasoning and tool calls in one response, reasoning passed back in the history, the usage frame, and the 400s.

The engine double (tests/e2e/engine_double.py) stands in only for the model's output: it replays completions in the
thinking models' format (``<think>`` … ``</think>`` then content and tool calls), because the tiny random K2 never
thinks; the gateway, the K2.6 / K2-Thinking tokenizers and templates, the reasoning and tool-call parsers, the HTTP
stack and both SDKs are real. Each test also checks the exact prompt token ids that reached the engine.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Iterator

import anthropic
import openai
import pytest
from engine_double import EngineDouble, Reply

from k2trt.chat.template import normalize_tool_call_ids
from k2trt.chat.thinking import render, render_ids
from k2trt.chat.tokenizer import K2Tokenizer
from k2trt.gateway import BackgroundGateway, GatewayConfig

pytestmark = pytest.mark.e2e

ENGINE_PORT, K26_PORT, K2T_PORT, PASS_PORT = 18160, 18161, 18162, 18163
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "required": ["city"], "properties": {"city": {"type": "string"}}}}}]
A_TOOLS = [{"name": "get_weather", "description": "Weather for a city",
            "input_schema": TOOLS[0]["function"]["parameters"]}]
SB, SE, CB, AB, CE = ("<|tool_calls_section_begin|>", "<|tool_calls_section_end|>", "<|tool_call_begin|>",
                      "<|tool_call_argument_begin|>", "<|tool_call_end|>")
THOUGHT = "The user wants Paris weather; call get_weather.\n"
CALL = f"{SB}{CB}functions.get_weather:0{AB}{{\"city\": \"Paris\"}}{CE}{SE}"
# K2.6 with thinking on: the prompt opened <think>, so the completion starts inside it
K26_CALL = THOUGHT + "</think>Let me check." + CALL
K26_FINAL = "It rained; now summarise.</think>Paris: rain, 14°C."


@pytest.fixture(scope="module")
def dirs(family_dir: Callable[[str], Path]) -> dict[str, Path]:
    return {family: family_dir(family) for family in ("k2.6", "k2-thinking")}


@pytest.fixture(scope="module")
def tok(dirs: dict[str, Path]) -> K2Tokenizer:
    return K2Tokenizer.from_dir(dirs["k2.6"])


@pytest.fixture(scope="module")
def engine(tok: K2Tokenizer) -> Iterator[EngineDouble]:
    d = EngineDouble(port=ENGINE_PORT, tokenizer=tok).start()
    yield d
    d.stop()


def _gateway(engine: EngineDouble, port: int, **kw: Any) -> Iterator[BackgroundGateway]:
    with BackgroundGateway(GatewayConfig(engine_url=engine.url, port=port, model_aliases=("m",), **kw)) as gw:
        yield gw


@pytest.fixture(scope="module")
def k26(engine: EngineDouble, dirs: dict[str, Path]) -> Iterator[BackgroundGateway]:
    yield from _gateway(engine, K26_PORT, model_dir=str(dirs["k2.6"]), served_model_name="kimi-k2.6-tiny")


@pytest.fixture(scope="module")
def k2t(engine: EngineDouble, dirs: dict[str, Path]) -> Iterator[BackgroundGateway]:
    yield from _gateway(engine, K2T_PORT, model_dir=str(dirs["k2-thinking"]))


@pytest.fixture(scope="module")
def passthrough(engine: EngineDouble) -> Iterator[BackgroundGateway]:
    yield from _gateway(engine, PASS_PORT, mode="passthrough", chat_family="k2.6")


def oai(gw: BackgroundGateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0, timeout=30)


def ant(gw: BackgroundGateway) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key="x", max_retries=0, timeout=30)


def sent(engine: EngineDouble) -> dict[str, Any]:
    return engine.records[-1].body


def expected_ids(tok: K2Tokenizer, messages: list[dict[str, Any]], family: str = "k2.6", **kw: Any) -> list[int]:
    return render_ids(tok, normalize_tool_call_ids(messages)[0], TOOLS, family=family, **kw)


def reasoning_tokens(tok: K2Tokenizer, text: str, markers: int) -> int:
    return len(tok.encode(text)) + markers


def accumulate(stream: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"reasoning": "", "content": "", "calls": {}, "finish": None, "usage": None, "chunks": [],
                           "order": []}
    for ch in stream:
        out["chunks"].append(ch)
        if ch.usage:
            out["usage"] = ch.usage
        for c in ch.choices:
            r = getattr(c.delta, "reasoning_content", None)
            if r:
                out["reasoning"] += r
                out["order"].append("r")
            if c.delta.content:
                out["content"] += c.delta.content
                out["order"].append("c")
            for t in c.delta.tool_calls or []:
                call = out["calls"].setdefault(t.index, {"id": t.id, "name": t.function.name, "arguments": ""})
                call["arguments"] += t.function.arguments or ""
                out["order"].append("t")
            out["finish"] = c.finish_reason or out["finish"]
    return out


# --- OpenAI ---------------------------------------------------------------------------------------------------
def test_reasoning_and_tool_call_in_one_response(k26: BackgroundGateway, engine: EngineDouble,
                                                 tok: K2Tokenizer) -> None:
    engine.script(Reply(K26_CALL))
    msgs = [{"role": "user", "content": "Weather in Paris?"}]
    r = oai(k26).chat.completions.create(model="m", messages=msgs, tools=TOOLS)  # type: ignore[arg-type]
    m = r.choices[0].message
    assert m.reasoning_content == THOUGHT and m.content == "Let me check."  # type: ignore[attr-defined]
    [call] = m.tool_calls or []
    assert (call.id, call.function.name, json.loads(call.function.arguments)) == (
        "functions.get_weather:0", "get_weather", {"city": "Paris"})
    assert r.choices[0].finish_reason == "tool_calls"
    body = sent(engine)
    assert body["prompt"] == expected_ids(tok, msgs) and body["prompt"][-1] == tok.token_id("<think>")
    assert (body["temperature"], body["top_p"]) == (1.0, 0.95)  # K2.6 thinking-mode defaults
    u = r.usage
    assert u is not None and u.prompt_tokens == len(body["prompt"])
    assert u.completion_tokens == len(tok.encode_with_specials(K26_CALL))
    assert u.completion_tokens_details.reasoning_tokens == reasoning_tokens(tok, THOUGHT, 1)  # type: ignore[union-attr]
    assert u.prompt_tokens_details.cached_tokens == 0  # type: ignore[union-attr]


def test_streaming_reasoning_deltas_and_the_usage_frame(k26: BackgroundGateway, engine: EngineDouble,
                                                        tok: K2Tokenizer) -> None:
    engine.script(Reply(K26_CALL))
    s = accumulate(oai(k26).chat.completions.create(
        model="m", messages=[{"role": "user", "content": "Weather in Paris?"}], tools=TOOLS, stream=True,
        stream_options={"include_usage": True}))
    assert s["reasoning"] == THOUGHT and s["content"] == "Let me check." and s["finish"] == "tool_calls"
    assert s["calls"] == {0: {"id": "functions.get_weather:0", "name": "get_weather",
                              "arguments": '{"city": "Paris"}'}}
    assert s["order"][0] == "r" and s["order"].index("c") > max(i for i, k in enumerate(s["order"]) if k == "r")
    *_, fin, last = s["chunks"]
    assert fin.choices[0].finish_reason == "tool_calls" and fin.choices[0].delta.model_dump(exclude_none=True) == {}
    assert last.choices == [] and last.usage.prompt_tokens == len(sent(engine)["prompt"])
    assert last.usage.completion_tokens_details.reasoning_tokens == reasoning_tokens(tok, THOUGHT, 1)
    # continuation chunks of a call carry only index and arguments
    cont = [t for ch in s["chunks"] for c in ch.choices for t in c.delta.tool_calls or [] if t.id is None]
    assert cont and all(t.function.name is None and t.type is None for t in cont)


def test_reasoning_passed_back_in_the_history(k26: BackgroundGateway, engine: EngineDouble,
                                              tok: K2Tokenizer) -> None:
    """The agent loop: the current turn's reasoning goes back with the tool call and the template replays it; once
    the turn has a final answer, the next turn's prompt drops that turn's reasoning (the official history rule)."""
    engine.script(Reply(K26_CALL), Reply(K26_FINAL), Reply("New question, new thought.</think>OK."))
    client = oai(k26)
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Weather in Paris?"}]
    ask: Any = client.chat.completions.create
    m: Any = ask(model="m", messages=messages, tools=TOOLS).choices[0].message
    messages.append({"role": "assistant", "content": m.content, "reasoning_content": m.reasoning_content,
                     "tool_calls": [tc.model_dump() for tc in m.tool_calls or []]})
    messages.append({"role": "tool", "tool_call_id": m.tool_calls[0].id, "content": "rain, 14°C"})
    final: Any = ask(model="m", messages=messages, tools=TOOLS).choices[0].message
    assert final.content == "Paris: rain, 14°C." and final.reasoning_content == "It rained; now summarise."
    assert sent(engine)["prompt"] == expected_ids(tok, messages)
    assert f"<think>{THOUGHT}</think>Let me check.{SB}" in tok.decode(sent(engine)["prompt"])
    messages += [{"role": "assistant", "content": final.content, "reasoning_content": final.reasoning_content},
                 {"role": "user", "content": "And tomorrow?"}]
    client.chat.completions.create(model="m", messages=messages, tools=TOOLS)  # type: ignore[arg-type]
    prompt = tok.decode(sent(engine)["prompt"])
    assert sent(engine)["prompt"] == expected_ids(tok, messages)
    assert THOUGHT not in prompt and "now summarise" not in prompt and prompt.count("<think></think>") == 2
    # vLLM's newer field name is read the same way
    messages[-2] = {"role": "assistant", "content": final.content, "reasoning": "ignored once answered"}  # type: ignore
    client.chat.completions.create(model="m", messages=messages, tools=TOOLS)  # type: ignore[arg-type]
    assert sent(engine)["prompt"] == expected_ids(tok, messages[:-2] + [
        {"role": "assistant", "content": final.content}, messages[-1]])  # type: ignore


def test_preserve_thinking_and_instant_mode(k26: BackgroundGateway, engine: EngineDouble, tok: K2Tokenizer) -> None:
    history = [{"role": "user", "content": "2+2?"},
               {"role": "assistant", "content": "4", "reasoning_content": "add"},
               {"role": "user", "content": "3+3?"}]
    engine.script(Reply("x</think>6"), Reply("6"), Reply('{"city": "Oslo"}' + CE + SE))
    client = oai(k26)
    client.chat.completions.create(model="m", messages=history,  # type: ignore[arg-type]
                                   extra_body={"chat_template_kwargs": {"preserve_thinking": True}})
    assert "<think>add</think>4" in tok.decode(sent(engine)["prompt"])
    r = client.chat.completions.create(model="m", messages=history,  # type: ignore[arg-type]
                                       extra_body={"chat_template_kwargs": {"thinking": False}})
    m = r.choices[0].message
    assert m.content == "6" and m.reasoning_content is None  # type: ignore[attr-defined]
    assert r.usage.completion_tokens_details.reasoning_tokens == 0  # type: ignore[union-attr]
    body = sent(engine)
    assert tok.decode(body["prompt"]).endswith("<|im_assistant|>assistant<|im_middle|><think></think>")
    assert (body["temperature"], body["top_p"]) == (0.6, 0.95)  # instant-mode defaults
    # instant mode with a named tool: the prefill follows the closed think block
    r = client.chat.completions.create(model="m", messages=history, tools=TOOLS,  # type: ignore[arg-type]
                                       tool_choice={"type": "function", "function": {"name": "get_weather"}},
                                       temperature=0.2, extra_body={"thinking": {"type": "disabled"}})
    assert tok.decode(sent(engine)["prompt"]).endswith(
        f"<think></think>{SB}{CB}functions.get_weather:0{AB}") and sent(engine)["temperature"] == 0.2
    assert json.loads(r.choices[0].message.tool_calls[0].function.arguments) == {"city": "Oslo"}  # type: ignore


def test_forced_tool_choice_while_thinking_is_not_prefilled(k26: BackgroundGateway, engine: EngineDouble,
                                                            tok: K2Tokenizer) -> None:
    """A prefill would end the reasoning before it starts: the prompt stays open at <think>, and the response check
    alone enforces the named tool."""
    msgs = [{"role": "user", "content": "Weather in Paris?"}]
    engine.script(Reply(K26_CALL), Reply(THOUGHT + "</think>No tool needed."))
    named = {"type": "function", "function": {"name": "get_weather"}}
    r = oai(k26).chat.completions.create(model="m", messages=msgs, tools=TOOLS, tool_choice=named)  # type: ignore
    assert sent(engine)["prompt"] == expected_ids(tok, msgs)  # nothing appended after <think>
    assert r.choices[0].message.tool_calls[0].function.name == "get_weather"  # type: ignore[index]
    with pytest.raises(openai.InternalServerError, match="tool_choice"):
        oai(k26).chat.completions.create(model="m", messages=msgs, tools=TOOLS, tool_choice="required")


def test_truncated_inside_reasoning(k26: BackgroundGateway, engine: EngineDouble) -> None:
    engine.script(Reply("Still thinking about the answ", finish_reason="length"))
    r = oai(k26).chat.completions.create(model="m", messages=[{"role": "user", "content": "hard"}], max_tokens=9)
    m = r.choices[0].message
    assert r.choices[0].finish_reason == "length" and m.content == ""
    assert m.reasoning_content == "Still thinking about the answ"  # type: ignore[attr-defined]


def test_k2_thinking_opens_think_itself(k2t: BackgroundGateway, engine: EngineDouble, dirs: dict[str, Path]) -> None:
    tok = K2Tokenizer.from_dir(dirs["k2-thinking"])
    engine.script(Reply("<think>Greeting.</think>Hello!"))
    msgs = [{"role": "user", "content": "Hi"}]
    r = oai(k2t).chat.completions.create(model="m", messages=msgs)  # type: ignore[arg-type]
    assert r.choices[0].message.reasoning_content == "Greeting."  # type: ignore[attr-defined]
    assert r.choices[0].message.content == "Hello!"
    body = sent(engine)
    assert tok.decode(body["prompt"]) == render(msgs, family="k2-thinking") and body["temperature"] == 1.0
    assert "top_p" not in body  # K2-Thinking has no top_p recommendation
    assert r.usage.completion_tokens_details.reasoning_tokens == reasoning_tokens(tok, "Greeting.", 2)  # type: ignore
    with pytest.raises(openai.BadRequestError, match="always thinks") as ei:
        oai(k2t).chat.completions.create(model="m", messages=msgs,  # type: ignore[arg-type]
                                         extra_body={"chat_template_kwargs": {"thinking": False}})
    assert ei.value.body["param"] == "thinking"  # type: ignore[index]


@pytest.mark.parametrize("kw, param", [
    ({"n": 2}, "n"), ({"temperature": 2.5}, "temperature"), ({"top_p": 1.5}, "top_p"),
    ({"presence_penalty": 3}, "presence_penalty"), ({"frequency_penalty": -2.5}, "frequency_penalty"),
    ({"logprobs": True}, "logprobs"), ({"reasoning_effort": "high"}, "reasoning_effort"),
    ({"seed": "7"}, "seed"), ({"logit_bias": {"5": 10}}, "logit_bias"),
    ({"extra_body": {"best_of": 2}}, "best_of"),
    ({"extra_body": {"chat_template_kwargs": {"temperature": 1}}}, "chat_template_kwargs"),
    ({"extra_body": {"chat_template_kwargs": {"thinking": True}, "thinking": {"type": "disabled"}}}, "thinking"),
    ({"extra_body": {"chat_template_kwargs": {"thinking": False, "preserve_thinking": "yes"}}},
     "chat_template_kwargs"),
])
def test_openai_parameters_outside_the_model_are_400s(k26: BackgroundGateway, engine: EngineDouble,
                                                      kw: dict[str, Any], param: str) -> None:
    engine.script()
    with pytest.raises(openai.BadRequestError) as ei:
        oai(k26).chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}], **kw)
    err: Any = ei.value.body
    assert ei.value.status_code == 400 and err["param"] == param and err["type"] == "invalid_request_error"
    assert engine.records == []  # refused before reaching the engine


def test_openai_defaults_of_unsupported_parameters_are_accepted(k26: BackgroundGateway, engine: EngineDouble) -> None:
    engine.script(Reply("r</think>ok"))
    r = oai(k26).chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}], n=1,
                                         logprobs=False, presence_penalty=0.5, frequency_penalty=0, seed=3,
                                         user="u1", extra_body={"top_k": 20})
    assert r.choices[0].message.content == "ok"
    body = sent(engine)
    assert (body["presence_penalty"], body["frequency_penalty"], body["seed"], body["top_k"]) == (0.5, 0, 3, 20)


# --- Anthropic ------------------------------------------------------------------------------------------------
def test_anthropic_thinking_blocks(k26: BackgroundGateway, engine: EngineDouble, tok: K2Tokenizer) -> None:
    engine.script(Reply(K26_CALL))
    m = ant(k26).messages.create(model="m", max_tokens=4096, messages=[{"role": "user", "content": "Paris?"}],
                                 tools=A_TOOLS, thinking={"type": "enabled", "budget_tokens": 2048})  # type: ignore
    assert [b.type for b in m.content] == ["thinking", "text", "tool_use"] and m.stop_reason == "tool_use"
    think = m.content[0]
    assert think.thinking == THOUGHT and think.signature  # type: ignore[union-attr]
    assert m.content[2].input == {"city": "Paris"}  # type: ignore[union-attr]
    assert sent(engine)["temperature"] == 1.0  # no temperature given: the thinking-mode default, not 1.0 × 0.6
    assert m.usage.output_tokens == len(tok.encode_with_specials(K26_CALL))


def test_anthropic_thinking_stream_event_sequence(k26: BackgroundGateway, engine: EngineDouble) -> None:
    engine.script(Reply(K26_CALL), Reply(K26_CALL))
    kw: dict[str, Any] = dict(model="m", max_tokens=4096, messages=[{"role": "user", "content": "Paris?"}],
                              tools=A_TOOLS, thinking={"type": "enabled", "budget_tokens": 1024})
    with ant(k26).messages.stream(**kw) as s:
        final = s.get_final_message()
    assert [b.type for b in final.content] == ["thinking", "text", "tool_use"]
    assert final.content[0].thinking == THOUGHT and final.content[0].signature  # type: ignore[union-attr]
    events = list(ant(k26).messages.create(stream=True, **kw))
    kinds = [(e.type, getattr(getattr(e, "delta", None), "type", None) or
              getattr(getattr(e, "content_block", None), "type", None)) for e in events]
    i = kinds.index(("content_block_start", "thinking"))
    thinking = [k for k in kinds[i + 1:] if k[0] != "content_block_stop"][:1]
    assert thinking == [("content_block_delta", "thinking_delta")]
    j = kinds.index(("content_block_delta", "signature_delta"))
    assert kinds[j + 1] == ("content_block_stop", None) and all(k == ("content_block_delta", "thinking_delta")
                                                                  for k in kinds[i + 1:j])
    assert [e.index for e in events if e.type == "content_block_start"] == [0, 1, 2]


def test_anthropic_thinking_passed_back_and_switched_off(k26: BackgroundGateway, engine: EngineDouble,
                                                         tok: K2Tokenizer) -> None:
    engine.script(Reply("done</think>It rains."), Reply("It rains."))
    msgs: list[Any] = [
        {"role": "user", "content": "Paris?"},
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": THOUGHT, "signature": "sig"},
            {"type": "redacted_thinking", "data": "opaque"},
            {"type": "tool_use", "id": "toolu_01", "name": "get_weather", "input": {"city": "Paris"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_01", "content": "rain"}]}]
    m = ant(k26).messages.create(model="m", max_tokens=4096, messages=msgs, tools=A_TOOLS)  # type: ignore
    assert m.content[0].type == "thinking" and m.content[1].text == "It rains."  # type: ignore[union-attr]
    prompt = tok.decode(sent(engine)["prompt"])
    assert f"<think>{THOUGHT}</think>{SB}{CB}functions.get_weather:0{AB}" in prompt and "opaque" not in prompt
    m = ant(k26).messages.create(model="m", max_tokens=64, messages=msgs, tools=A_TOOLS,  # type: ignore
                                 thinking={"type": "disabled"})
    assert [b.type for b in m.content] == ["text"] and sent(engine)["temperature"] == 0.6
    assert tok.decode(sent(engine)["prompt"]).endswith("<think></think>") and THOUGHT not in tok.decode(
        sent(engine)["prompt"])


@pytest.mark.parametrize("kw, needle", [
    ({"thinking": {"type": "enabled", "budget_tokens": 100}}, "budget_tokens"),
    ({"thinking": {"type": "enabled", "budget_tokens": 9000}}, "below max_tokens"),
    ({"thinking": {"type": "sometimes"}}, "thinking must be"),
    ({"extra_body": {"frequency_penalty": 1}}, "Extra inputs"),
    ({"extra_body": {"temperature": 1.5}}, "temperature"),
])
def test_anthropic_validation(k26: BackgroundGateway, engine: EngineDouble, kw: dict[str, Any], needle: str) -> None:
    engine.script()
    with pytest.raises(anthropic.BadRequestError, match=needle) as ei:
        ant(k26).messages.create(model="m", max_tokens=4096, messages=[{"role": "user", "content": "x"}], **kw)
    assert ei.value.body["error"]["type"] == "invalid_request_error" and engine.records == []  # type: ignore


# --- passthrough ----------------------------------------------------------------------------------------------
def test_passthrough_carries_reasoning_and_switches(passthrough: BackgroundGateway, engine: EngineDouble) -> None:
    msg = {"role": "assistant", "content": "Sunny.", "reasoning_content": "Check the sky."}
    engine.script(Reply(message=msg), Reply(message=msg), Reply(message=msg))
    with ant(passthrough).messages.stream(model="m", max_tokens=64, messages=[{"role": "user", "content": "?"}],
                                          thinking={"type": "disabled"}) as s:
        final: Any = s.get_final_message()
    assert [b.type for b in final.content] == ["thinking", "text"] and final.content[0].thinking == "Check the sky."
    body = sent(engine)
    assert body["chat_template_kwargs"] == {"thinking": False} and (body["temperature"], body["top_p"]) == (0.6, 0.95)
    m = ant(passthrough).messages.create(model="m", max_tokens=64, messages=[{"role": "user", "content": "?"}])
    assert m.content[0].thinking == "Check the sky." and "chat_template_kwargs" not in sent(engine)  # type: ignore
    r = oai(passthrough).chat.completions.create(model="m", messages=[{"role": "user", "content": "?"}])
    assert (sent(engine)["temperature"], sent(engine)["top_p"]) == (1.0, 0.95)  # K2.6 thinking defaults filled in
    assert r.choices[0].message.reasoning_content == "Check the sky."  # type: ignore[attr-defined]
