"""The gateway's ``/metrics`` scraped over HTTP with prometheus_client's text parser, after known traffic through
the real openai and anthropic SDKs: exact request and token counters, histogram counts and sums, tool-call
outcomes, engine errors, client disconnects, passthrough mode, and the JSON request log of ``k2trt gateway``.

The engine double (tests/e2e/engine_double.py) stands in for the model's output — K2.6 completions with reasoning
and tool calls, which the tiny random K2 never writes — and, where a request must take a known time (latency lower
bounds, a read timeout, a client leaving mid-stream), for the engine's timing: a fixed pause before each text
delta, which the reference engine's CPU-bound speed cannot give. Token counts are known exactly: the prompt ids the gateway sent (recorded by the double)
and the reply texts' token counts. Everything else — the gateway, the tokenizer and K2.6 template, both parsers,
sockets, SDKs, the Prometheus parser and the CLI process — is real.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import anthropic
import httpx
import openai
import pytest
from engine_double import EngineDouble, Reply
from prometheus_client.parser import text_string_to_metric_families

from k2trt.chat.tokenizer import K2Tokenizer
from k2trt.gateway import BackgroundGateway, GatewayConfig
from k2trt.gateway import metrics as gm

pytestmark = pytest.mark.e2e

ENGINE_PORT, GW_PORT, PASS_PORT, DOWN_PORT, CLI_PORT, NOTHING_PORT = 18560, 18561, 18562, 18563, 18564, 18569
KEY = "sk-metrics-test-key"
MODEL = "kimi-k2.6-tiny"
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
A_TOOLS = [{"name": "get_weather", "input_schema": TOOLS[0]["function"]["parameters"]}]
SB, SE, CB, AB, CE = ("<|tool_calls_section_begin|>", "<|tool_calls_section_end|>", "<|tool_call_begin|>",
                      "<|tool_call_argument_begin|>", "<|tool_call_end|>")
THOUGHT = "The user wants Paris weather; call get_weather.\n"
CALL = f"{SB}{CB}functions.get_weather:0{AB}{{\"city\": \"Paris\"}}{CE}{SE}"
WITH_CALL = THOUGHT + "</think>Let me check." + CALL  # K2.6, thinking on: the prompt opened <think>
ANSWER = "Short thought.</think>Paris: rain, 14°C."
PLAIN = "Plain answer without thinking."
OAI = {"model": MODEL, "api": "openai"}
ANT = {"model": MODEL, "api": "anthropic"}


@pytest.fixture(scope="module")
def k26_dir(family_dir: Callable[[str], Path]) -> Path:
    return family_dir("k2.6")


@pytest.fixture(scope="module")
def tok(k26_dir: Path) -> K2Tokenizer:
    return K2Tokenizer.from_dir(k26_dir)


@pytest.fixture(scope="module")
def engine(tok: K2Tokenizer) -> Iterator[EngineDouble]:
    d = EngineDouble(port=ENGINE_PORT, tokenizer=tok).start()
    yield d
    d.stop()


@pytest.fixture(scope="module")
def gw(engine: EngineDouble, k26_dir: Path, tok: K2Tokenizer) -> Iterator[BackgroundGateway]:
    cfg = GatewayConfig(engine_url=engine.url, model_dir=str(k26_dir), port=GW_PORT, served_model_name=MODEL,
                        model_aliases=("*",),  # any client model id is served (and labelled with the served name)
                        api_keys=(KEY,), read_timeout_s=2.0)
    with BackgroundGateway(cfg, tokenizer=tok) as g:
        yield g


@pytest.fixture(autouse=True)
def _reset(engine: EngineDouble) -> Iterator[None]:
    engine.script()
    engine.delay_s = 0.0
    yield
    engine.delay_s = 0.0


def oai(g: BackgroundGateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=g.url + "/v1", api_key=KEY, max_retries=0, timeout=30)


def ant(g: BackgroundGateway) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=g.url, api_key=KEY, max_retries=0, timeout=30)


class Scrape:
    """One scrape of /metrics (no API key sent), parsed by prometheus_client's text parser."""

    def __init__(self, g: BackgroundGateway) -> None:
        r = httpx.get(g.url + "/metrics", timeout=10)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain"), r.text
        self.values: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        self.types: dict[str, str] = {}
        for fam in text_string_to_metric_families(r.text):
            self.types[fam.name] = fam.type
            for s in fam.samples:
                self.values[(s.name, frozenset(s.labels.items()))] = s.value

    def __call__(self, name: str, **labels: str) -> float:
        return self.values.get((name, frozenset(labels.items())), 0.0)

    def diff(self, before: "Scrape", name: str, **labels: str) -> float:
        return self(name, **labels) - before(name, **labels)


def _hist_consistent(s: Scrape, name: str, labels: dict[str, str]) -> None:
    """The +Inf bucket equals _count, and buckets never decrease."""
    buckets = sorted((float(dict(k[1])["le"]), v) for k, v in s.values.items()
                     if k[0] == name + "_bucket" and {**dict(k[1])} == {**labels, "le": dict(k[1])["le"]})
    assert buckets and buckets[-1] == (float("inf"), s(name + "_count", **labels))
    assert all(a[1] <= b[1] for a, b in zip(buckets, buckets[1:]))


def completion_tokens(tok: K2Tokenizer, text: str) -> int:
    return len(tok.encode_with_specials(text))


def test_known_openai_traffic_exact_counters(gw: BackgroundGateway, engine: EngineDouble, tok: K2Tokenizer) -> None:
    """Four requests (two streamed) with known prompts and replies: every counter and histogram count moves by
    exactly what was sent; the model label is the served name whatever the client asks for."""
    before = Scrape(gw)
    engine.script(Reply(WITH_CALL), Reply(PLAIN), Reply(WITH_CALL), Reply(ANSWER))
    c = oai(gw)
    msgs = [{"role": "user", "content": "Weather in Paris?"}]
    usages = [c.chat.completions.create(model="whatever-the-client-says", messages=msgs, tools=TOOLS).usage]
    for reply, kw in ((PLAIN, {"extra_body": {"chat_template_kwargs": {"thinking": False}}}),
                      (WITH_CALL, {"tools": TOOLS})):
        stream = c.chat.completions.create(model=MODEL, messages=msgs, stream=True,  # type: ignore[call-overload]
                                           stream_options={"include_usage": True}, **kw)
        usages.append([ch.usage for ch in stream if ch.usage][-1])
    usages.append(c.chat.completions.create(model=MODEL, messages=msgs).usage)  # type: ignore[arg-type]
    after = Scrape(gw)

    prompts = [len(r.body["prompt"]) for r in engine.records]
    outs = [completion_tokens(tok, t) for t in (WITH_CALL, PLAIN, WITH_CALL, ANSWER)]
    reasoning = [len(tok.encode(THOUGHT)) + 1, 0, len(tok.encode(THOUGHT)) + 1, len(tok.encode("Short thought.")) + 1]
    assert [u.prompt_tokens for u in usages] == prompts and [u.completion_tokens for u in usages] == outs
    assert [u.completion_tokens_details.reasoning_tokens for u in usages] == reasoning  # type: ignore[union-attr]
    assert after.diff(before, gm.REQUESTS, **OAI, status="200") == 4
    assert not [k for k in after.values if dict(k[1]).get("model", MODEL) != MODEL]
    assert after.diff(before, gm.PROMPT, **OAI) == sum(prompts)
    assert after.diff(before, gm.COMPLETION, **OAI) == sum(outs)
    assert after.diff(before, gm.REASONING, **OAI) == sum(reasoning)
    assert after.diff(before, gm.CACHED, **OAI) == 0
    for name, n, total in ((gm.DURATION, 4, None), (gm.INPUT_TOKENS, 4, sum(prompts)),
                           (gm.OUTPUT_TOKENS, 4, sum(outs)), (gm.TTFT, 2, None), (gm.ITL, 2, None)):
        assert after.diff(before, name + "_count", **OAI) == n, name
        if total is not None:
            assert after.diff(before, name + "_sum", **OAI) == total, name
        _hist_consistent(after, name, OAI)
    assert after.diff(before, gm.TOOL_CALLS, **OAI, outcome="parsed") == 2
    assert after(gm.INFLIGHT, **OAI) == 0
    assert after.types[gm.REQUESTS[:-6]] == "counter" and after.types[gm.TTFT] == "histogram"
    assert after.types[gm.INFLIGHT] == "gauge"


def test_known_anthropic_traffic_exact_counters(gw: BackgroundGateway, engine: EngineDouble,
                                                tok: K2Tokenizer) -> None:
    before = Scrape(gw)
    engine.script(Reply(WITH_CALL), Reply(ANSWER))
    c = ant(gw)
    msgs = [{"role": "user", "content": "Weather in Paris?"}]
    r1 = c.messages.create(model=MODEL, max_tokens=2048, messages=msgs, tools=A_TOOLS)  # type: ignore[arg-type]
    with c.messages.stream(model=MODEL, max_tokens=2048, messages=msgs) as s:  # type: ignore[arg-type]
        r2 = s.get_final_message()
    after = Scrape(gw)
    prompts = [len(r.body["prompt"]) for r in engine.records]
    outs = [completion_tokens(tok, WITH_CALL), completion_tokens(tok, ANSWER)]
    assert [r1.usage.input_tokens, r2.usage.input_tokens] == prompts
    assert [r1.usage.output_tokens, r2.usage.output_tokens] == outs
    assert [b.type for b in r1.content] == ["thinking", "text", "tool_use"]
    assert after.diff(before, gm.REQUESTS, **ANT, status="200") == 2
    assert after.diff(before, gm.REQUESTS, **OAI, status="200") == 0
    assert after.diff(before, gm.PROMPT, **ANT) == sum(prompts)
    assert after.diff(before, gm.COMPLETION, **ANT) == sum(outs)
    assert after.diff(before, gm.REASONING, **ANT) == len(tok.encode(THOUGHT)) + len(tok.encode("Short thought.")) + 2
    assert after.diff(before, gm.DURATION + "_count", **ANT) == 2 and after.diff(before, gm.TTFT + "_count", **ANT) == 1
    assert after.diff(before, gm.TOOL_CALLS, **ANT, outcome="parsed") == 1


def test_latency_histograms_follow_the_engine_pace(gw: BackgroundGateway, engine: EngineDouble,
                                                   tok: K2Tokenizer) -> None:
    """With a 50 ms pause before each of the reply's text deltas: TTFT is at least one pause, the duration at
    least one pause per delta, and ITL at least (deltas − 2) pauses over (tokens − 1) (the double writes its SSE
    bytes in fixed strides, so a delta's last bytes may wait for the next pause)."""
    from engine_double import deltas

    reply = "Paris: rain, 14 degrees."  # thinking off: every delta is output
    engine.delay_s = 0.05
    engine.script(Reply(reply))
    before = Scrape(gw)
    stream = oai(gw).chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True,
                                             extra_body={"chat_template_kwargs": {"thinking": False}})
    t0 = time.monotonic()
    text = "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices)
    wall = time.monotonic() - t0
    after = Scrape(gw)
    n_deltas, n_tok = len(deltas(reply)), completion_tokens(tok, reply)
    ttft = after.diff(before, gm.TTFT + "_sum", **OAI)
    dur = after.diff(before, gm.DURATION + "_sum", **OAI)
    itl = after.diff(before, gm.ITL + "_sum", **OAI)
    assert text == reply and after.diff(before, gm.ITL + "_count", **OAI) == 1
    assert 0.05 <= ttft < dur <= wall + 0.5
    assert dur >= 0.05 * n_deltas
    assert itl >= 0.05 * (n_deltas - 2) / (n_tok - 1)
    assert itl == pytest.approx((dur - ttft) / (n_tok - 1), rel=0.05)


def test_tool_call_outcomes(gw: BackgroundGateway, engine: EngineDouble) -> None:
    bad = f"{THOUGHT}</think>{SB}{CB}functions.get_weather:0{AB}{{\"city\": {CE}{SE}"
    undeclared = f"{THOUGHT}</think>{SB}{CB}functions.rm_rf:0{AB}{{}}{CE}{SE}"
    cut = f"{THOUGHT}</think>{SB}{CB}functions.get_weather:0{AB}{{\"city\": \"Pa"
    before = Scrape(gw)
    engine.script(Reply(bad), Reply(undeclared), Reply(cut, finish_reason="length"), Reply(WITH_CALL),
                  Reply(ANSWER))
    c = oai(gw)
    msgs = [{"role": "user", "content": "Weather?"}]
    c.chat.completions.create(model=MODEL, messages=msgs, tools=TOOLS)  # type: ignore[arg-type]
    c.chat.completions.create(model=MODEL, messages=msgs, tools=TOOLS)  # type: ignore[arg-type]
    c.chat.completions.create(model=MODEL, messages=msgs, tools=TOOLS, max_tokens=40)  # type: ignore[arg-type]
    c.chat.completions.create(model=MODEL, messages=msgs, tools=TOOLS, tool_choice="none")  # type: ignore[arg-type]
    with pytest.raises(openai.InternalServerError) as e:  # required, and the model answered in text
        c.chat.completions.create(model=MODEL, messages=msgs, tools=TOOLS, tool_choice="required")  # type: ignore
    assert e.value.status_code == 502
    after = Scrape(gw)
    got = {o: after.diff(before, gm.TOOL_CALLS, **OAI, outcome=o) for o in gm.TOOL_OUTCOMES}
    assert got == {"parsed": 0, "invalid_arguments": 1, "truncated": 1, "discarded": 1, "dropped": 1, "missing": 1}
    assert after.diff(before, gm.REQUESTS, **OAI, status="200") == 4
    assert after.diff(before, gm.REQUESTS, **OAI, status="502") == 1
    assert after.diff(before, gm.ENGINE_ERRORS, **OAI, kind="engine_error") == 0  # the model's fault, not the engine's


def test_failures_by_status_and_engine_errors_by_kind(gw: BackgroundGateway, engine: EngineDouble,
                                                      k26_dir: Path, tok: K2Tokenizer) -> None:
    before = Scrape(gw)
    msgs = [{"role": "user", "content": "hi"}]
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=gw.url + "/v1", api_key="wrong", max_retries=0).chat.completions.create(
            model=MODEL, messages=msgs)  # type: ignore[arg-type]
    with pytest.raises(openai.BadRequestError):
        oai(gw).chat.completions.create(model=MODEL, messages=msgs, n=2)  # type: ignore[arg-type]
    engine.script(Reply(status=500))
    with pytest.raises(anthropic.InternalServerError):
        ant(gw).messages.create(model=MODEL, max_tokens=64, messages=msgs)  # type: ignore[arg-type]
    engine.delay_s = 3.0  # past the gateway's 2 s read timeout, before the first token
    with pytest.raises(openai.APIStatusError) as e:
        oai(gw).chat.completions.create(model=MODEL, messages=msgs, stream=True)  # type: ignore[arg-type]
    assert e.value.status_code == 504
    engine.delay_s = 0.0
    after = Scrape(gw)
    for labels, status, n in ((OAI, "401", 1), (OAI, "400", 1), (ANT, "502", 1), (OAI, "504", 1)):
        assert after.diff(before, gm.REQUESTS, **labels, status=status) == n, status
    assert after.diff(before, gm.ENGINE_ERRORS, **ANT, kind="engine_error") == 1
    assert after.diff(before, gm.ENGINE_ERRORS, **OAI, kind="timeout") == 1
    assert after.diff(before, gm.PROMPT, **OAI) == after.diff(before, gm.DURATION + "_count", **OAI) == 0

    cfg = GatewayConfig(engine_url=f"http://127.0.0.1:{NOTHING_PORT}", model_dir=str(k26_dir), port=DOWN_PORT,
                        served_model_name=MODEL)
    with BackgroundGateway(cfg, tokenizer=tok) as down:
        with pytest.raises(openai.APIStatusError) as e:
            oai(down).chat.completions.create(model=MODEL, messages=msgs)  # type: ignore[arg-type]
        assert e.value.status_code == 503
        s = Scrape(down)
        assert s(gm.REQUESTS, **OAI, status="503") == 1 and s(gm.ENGINE_ERRORS, **OAI, kind="engine_unavailable") == 1
    assert Scrape(gw)(gm.ENGINE_ERRORS, **OAI, kind="engine_unavailable") == 0  # each gateway has its registry


def test_client_disconnect_mid_stream(gw: BackgroundGateway, engine: EngineDouble) -> None:
    """A client that leaves mid-stream is a 499, nothing is in flight afterwards, and no tokens are counted."""
    engine.delay_s = 0.2
    engine.script(Reply("A long answer that streams slowly, one delta at a time."))
    before = Scrape(gw)
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True,
            "chat_template_kwargs": {"thinking": False}}
    with httpx.stream("POST", gw.url + "/v1/chat/completions", json=body, timeout=30,
                      headers={"Authorization": f"Bearer {KEY}"}) as r:
        rid = r.headers["x-request-id"]
        for line in r.iter_lines():
            if '"content":"A' in line:
                break
    deadline = time.monotonic() + 10
    while Scrape(gw).diff(before, gm.REQUESTS, **OAI, status="499") < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    after = Scrape(gw)
    assert len(rid) == 32 and after.diff(before, gm.REQUESTS, **OAI, status="499") == 1
    assert after(gm.INFLIGHT, **OAI) == 0 and after.diff(before, gm.COMPLETION, **OAI) == 0
    engine.wait_cancelled()


def test_passthrough_counts_the_engines_usage(engine: EngineDouble, k26_dir: Path) -> None:
    """Passthrough: OpenAI requests are relayed as the engine sent them (usage counted when the engine sends it);
    Anthropic requests are translated, with tool-call outcomes. The double's chat usage is 7 prompt + 5 completion
    tokens per request."""
    cfg = GatewayConfig(engine_url=engine.url, model_dir=str(k26_dir), port=PASS_PORT, mode="passthrough",
                        served_model_name=MODEL)
    msg = {"role": "assistant", "reasoning_content": "Think.", "content": "Checking.",
           "tool_calls": [{"id": "functions.get_weather:0", "type": "function",
                           "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]}
    with BackgroundGateway(cfg) as g:
        engine.script(Reply(message=msg), Reply(message=msg), Reply(message=msg), Reply(message=msg))
        c = openai.OpenAI(base_url=g.url + "/v1", api_key="x", max_retries=0)
        msgs = [{"role": "user", "content": "Weather?"}]
        c.chat.completions.create(model=MODEL, messages=msgs, tools=TOOLS)  # type: ignore[arg-type]
        list(c.chat.completions.create(model=MODEL, messages=msgs, tools=TOOLS, stream=True,  # type: ignore
                                       stream_options={"include_usage": True}))
        list(c.chat.completions.create(model=MODEL, messages=msgs, tools=TOOLS, stream=True))  # type: ignore
        a = anthropic.Anthropic(base_url=g.url, api_key="x", max_retries=0)
        a.messages.create(model=MODEL, max_tokens=64, messages=msgs, tools=A_TOOLS)  # type: ignore[arg-type]
        s = Scrape(g)
    assert s(gm.REQUESTS, **OAI, status="200") == 3 and s(gm.REQUESTS, **ANT, status="200") == 1
    assert (s(gm.PROMPT, **OAI), s(gm.COMPLETION, **OAI)) == (14, 10)  # the stream without a usage event adds none
    assert s(gm.TTFT + "_count", **OAI) == 1 and s(gm.DURATION + "_count", **OAI) == 2
    assert (s(gm.PROMPT, **ANT), s(gm.COMPLETION, **ANT)) == (7, 5)
    assert s(gm.TOOL_CALLS, **ANT, outcome="parsed") == 1 and s(gm.TOOL_CALLS, **OAI, outcome="parsed") == 0


def test_cli_json_logs_one_line_per_request_without_prompts_or_keys(engine: EngineDouble, k26_dir: Path) -> None:
    """``k2trt gateway --log-format json``: every stderr line is a JSON object; each model request has one line
    with its id (the one sent back in ``x-request-id``), API, model, status, latency and tokens; no line holds the
    prompt text or the API key."""
    secret = "SECRET-PROMPT-7f3a"
    env = {**os.environ, "K2TRT_GATEWAY_API_KEYS": KEY}
    proc = subprocess.Popen([sys.executable, "-m", "k2trt.cli", "gateway", "--engine-url", engine.url,
                             "--model-dir", str(k26_dir), "--port", str(CLI_PORT), "--served-model-name", MODEL,
                             "--log-format", "json"], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            env=env)
    try:
        url = f"http://127.0.0.1:{CLI_PORT}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        engine.script(Reply(PLAIN))
        r = httpx.post(url + "/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}",
                                                              "x-request-id": "client-req-1"},
                       json={"model": MODEL, "messages": [{"role": "user", "content": secret}],
                             "chat_template_kwargs": {"thinking": False}}, timeout=30)
        assert r.status_code == 200 and r.headers["x-request-id"] == "client-req-1"
        r401 = httpx.post(url + "/v1/messages", json={"model": MODEL, "max_tokens": 8, "messages": []}, timeout=30)
        assert r401.status_code == 401
        time.sleep(0.3)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    objs = [json.loads(ln) for ln in err.splitlines()]  # every line is one JSON object
    assert secret not in err and KEY not in err
    reqs = {o["request_id"]: o for o in objs if o.get("logger") == "k2trt.gateway.requests"}
    ok = reqs["client-req-1"]
    usage = r.json()["usage"]
    assert (ok["api"], ok["model"], ok["status"], ok["stream"], ok["component"]) == ("openai", MODEL, 200, False,
                                                                                      "gateway")
    assert ok["prompt_tokens"] == usage["prompt_tokens"] and ok["completion_tokens"] == usage["completion_tokens"]
    assert 0 < ok["latency_s"] < 30
    [denied] = [o for o in reqs.values() if o["status"] == 401]
    assert denied["api"] == "anthropic" and denied["request_id"] == r401.headers["x-request-id"]
    assert "error_kind" in denied and "prompt_tokens" not in denied
    assert any(o["logger"].startswith("uvicorn") for o in objs)  # the server's own lines are JSON too
    assert not [o for o in objs if o["logger"] == "httpx" or "color_message" in o]  # no per-call or ANSI noise
