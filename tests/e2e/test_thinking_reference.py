"""A thinking-family tiny K2 end to end with nothing stood in: ``k2trt serve`` launches the PyTorch reference engine
under real mpirun (tp 2) on the tiny checkpoint made a K2.6 checkpoint (its template and think tokens), the gateway
renders K2.6 prompts in front of it, and the openai/anthropic SDKs and ``k2trt toolcheck`` talk to the gateway.

The tiny model's weights are random, so it neither reasons nor calls tools on purpose; what is checked is the
plumbing with its real output: the prompt ids the engine received (``<think>`` opened or closed by the thinking
switch), the gateway's reasoning/content split equal to the parser applied to the engine's own greedy answer for
the same ids, exact ``prompt_tokens``, reasoning tokens within the completion, and toolcheck's files on a live stack.
(Completions that do think and call tools are replayed by the engine double in test_gateway_thinking.py.)
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Iterator

import anthropic
import httpx
import openai
import pytest
from launch_helpers import served_reference

from k2trt.bench.toolcheck import ToolcheckSpec, run_toolcheck
from k2trt.chat.reasoning import split_reasoning
from k2trt.chat.thinking import render_ids, write_family_files
from k2trt.chat.tokenizer import K2Tokenizer
from k2trt.chat.toolcalls import parse_tool_calls
from k2trt.gateway import BackgroundGateway, GatewayConfig

pytestmark = pytest.mark.e2e
PORT, MASTER_PORT, GATEWAY_PORT = 18180, 18181, 18182
MSGS = [{"role": "user", "content": "Think, then say hello."}]
MAX = 8


@pytest.fixture(scope="module")
def k26_ckpt(tiny_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("tiny-k26") / "tiny-k26"
    shutil.copytree(tiny_ckpt, d)
    write_family_files(d, "k2.6")
    return d


@pytest.fixture(scope="module")
def engine_url(k26_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with served_reference(k26_ckpt, tmp_path_factory.mktemp("bundle"), PORT, MASTER_PORT) as (res, _, _):
        yield res["url"]


@pytest.fixture(scope="module")
def gateway(engine_url: str, k26_ckpt: Path) -> Iterator[BackgroundGateway]:
    cfg = GatewayConfig(engine_url=engine_url, model_dir=str(k26_ckpt), port=GATEWAY_PORT, read_timeout_s=120,
                        model_aliases=("m",))
    with BackgroundGateway(cfg) as gw:
        yield gw


def direct(engine_url: str, tok: K2Tokenizer, ids: list[int]) -> str:
    """The engine's own greedy answer for the same prompt ids (what the gateway must have parsed)."""
    r = httpx.post(engine_url + "/v1/completions", timeout=120, json={
        "model": "m", "prompt": ids, "max_tokens": MAX, "temperature": 0, "stop_token_ids": list(tok.stop_ids),
        "skip_special_tokens": False, "spaces_between_special_tokens": False})
    return r.json()["choices"][0]["text"].removesuffix("<|im_end|>").removesuffix("[EOS]")


@pytest.mark.timeout(600)
@pytest.mark.parametrize("thinking", [True, False])
def test_thinking_switch_on_the_reference_engine(gateway: BackgroundGateway, engine_url: str, k26_ckpt: Path,
                                                 thinking: bool) -> None:
    tok = K2Tokenizer.from_dir(k26_ckpt)
    ids = render_ids(tok, MSGS, family="k2.6", thinking=thinking)
    assert ids[-1] == tok.token_id("<think>" if thinking else "</think>")
    text = direct(engine_url, tok, ids)
    reasoning, content = split_reasoning(text, thinking=thinking, opened=thinking)
    want = (reasoning, parse_tool_calls(content)[0])  # random weights may write tool-call markers too
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="x", max_retries=0, timeout=120)
    extra: dict[str, Any] = {"chat_template_kwargs": {"thinking": thinking}}
    r = client.chat.completions.create(model="m", messages=MSGS, max_tokens=MAX, temperature=0,  # type: ignore
                                       extra_body=extra)
    m = r.choices[0].message
    got = (getattr(m, "reasoning_content", None) or "", m.content or "")
    assert got == want
    u = r.usage
    assert u is not None and u.prompt_tokens == len(ids) and 0 < u.completion_tokens <= MAX
    assert 0 <= u.completion_tokens_details.reasoning_tokens <= u.completion_tokens  # type: ignore[union-attr]
    if thinking and want[0]:
        assert u.completion_tokens_details.reasoning_tokens > 0  # type: ignore[union-attr]
    stream = client.chat.completions.create(model="m", messages=MSGS, max_tokens=MAX, temperature=0,  # type: ignore
                                            stream=True, stream_options={"include_usage": True}, extra_body=extra)
    chunks = list(stream)
    reasoning = "".join(getattr(c.choices[0].delta, "reasoning_content", None) or "" for c in chunks if c.choices)
    assert reasoning == got[0]
    assert chunks[-1].usage.completion_tokens_details.reasoning_tokens == \
        u.completion_tokens_details.reasoning_tokens  # type: ignore[union-attr]
    ant = anthropic.Anthropic(base_url=gateway.url, api_key="x", max_retries=0, timeout=120)
    switch: dict[str, Any] = {} if thinking else {"thinking": {"type": "disabled"}}
    msg = ant.messages.create(model="m", max_tokens=MAX, messages=MSGS, extra_body={"temperature": 0},  # type: ignore
                              **switch)
    blocks = {b.type: b for b in msg.content}
    assert (blocks["thinking"].thinking if "thinking" in blocks else "") == got[0]  # type: ignore[union-attr]
    assert msg.usage.input_tokens == len(ids)


@pytest.mark.timeout(600)
def test_toolcheck_against_the_gateway_on_the_tiny_model(gateway: BackgroundGateway, k26_ckpt: Path,
                                                         tmp_path: Path) -> None:
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
    samples = [{"messages": [{"role": "user", "content": f"Weather in city {i}?"}], "tools": tools,
                "max_tokens": MAX, "temperature": 0, "stream": i == 2} for i in range(3)]
    (tmp_path / "s.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    res = run_toolcheck(ToolcheckSpec(tmp_path / "s.jsonl", gateway.url + "/v1", "tiny-k26", concurrency=2,
                                      output=tmp_path / "r.jsonl", summary=tmp_path / "sum.json"), progress=False)
    s = json.loads((tmp_path / "sum.json").read_text())
    assert s["success_count"] == 3 and s["failure_count"] == 0
    assert s["finish_stop"] + s["finish_tool_calls"] + s["finish_others"] == 3
    lines = [json.loads(x) for x in (tmp_path / "r.jsonl").read_text().splitlines()]
    tok = K2Tokenizer.from_dir(k26_ckpt)
    for r, sample in zip(lines, samples):
        assert r["finish_reason"] == r["response"]["choices"][0]["finish_reason"]
        assert r["response"]["usage"]["prompt_tokens"] == len(render_ids(tok, sample["messages"], tools,
                                                                          family="k2.6"))
    assert s["usage"]["completion_tokens"] == sum(r["response"]["usage"]["completion_tokens"] for r in lines)
    assert res.results == lines
