"""The demo's agent loop on a recorded exchange: the real openai SDK through the real gateway on 127.0.0.1, in front
of the engine double (tests/e2e/engine_double.py). The double stands in only for the model's output — a recorded
K2 tool call, then an answer — so that the loop's every message (the rendered tool result, the call id renamed
both ways, the printed lines) is checked exactly against a fixed exchange. The demo's own run (test_demo.py)
covers the loop with the trained tiny K2 under mpirun, whose exact words may change with a retrained checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import openai
import pytest
from engine_double import EngineDouble, Reply

from k2trt.chat.tokenizer import K2Tokenizer
from k2trt.demo import AGENT_QUESTION, _agent_loop, run_tool
from k2trt.gateway import BackgroundGateway, GatewayConfig

pytestmark = pytest.mark.e2e
ENGINE_PORT, GATEWAY_PORT = 18610, 18611
CALL = ('<|tool_calls_section_begin|><|tool_call_begin|>functions.get_weather:0<|tool_call_argument_begin|>'
        '{"city": "Paris"}<|tool_call_end|><|tool_calls_section_end|>')


@pytest.fixture()
def client(tiny_ckpt: Path) -> Iterator[tuple[openai.OpenAI, EngineDouble]]:
    engine = EngineDouble(port=ENGINE_PORT).start()
    cfg = GatewayConfig(engine_url=engine.url, model_dir=str(tiny_ckpt), port=GATEWAY_PORT, model_aliases=("m",))
    try:
        with BackgroundGateway(cfg, tokenizer=K2Tokenizer.from_dir(tiny_ckpt)) as gw:
            yield openai.OpenAI(base_url=gw.url + "/v1", api_key="x", max_retries=0, timeout=30), engine
    finally:
        engine.stop()


def test_the_call_is_run_and_its_result_reaches_the_model(client, tiny_ckpt: Path) -> None:
    oai, engine = client
    tok = K2Tokenizer.from_dir(tiny_ckpt)
    result = run_tool("get_weather", '{"city": "Paris"}')
    answer = f"It is {result['temperature']} degrees and {result['condition']} in Paris."
    engine.script(Reply(CALL), Reply(answer))
    lines: list[str] = []
    out = _agent_loop(oai, "m", lines.append)
    t = out["transcript"]
    assert [m["role"] for m in t] == ["user", "assistant", "tool", "assistant"]
    call = t[1]["tool_calls"][0]
    assert (call["function"]["name"], json.loads(call["function"]["arguments"])) == ("get_weather", {"city": "Paris"})
    assert t[2] == {"role": "tool", "tool_call_id": call["id"], "content": json.dumps(result)}
    assert (out["tool_calls"], out["answered"], out["grounded"], out["reply"]) == (1, True, True, answer)
    # the second prompt the engine got holds the call under K2's id and the result the demo computed
    second = tok.decode(engine.records[1].body["prompt"])
    assert f"## Return of functions.get_weather:0\n{json.dumps(result)}<|im_end|>" in second
    assert lines[0].startswith(f"    user: {AGENT_QUESTION}") and "get_weather" in lines[1]
    assert json.dumps(result) in lines[2] and lines[3] == f"    assistant: {answer}"


def test_a_model_that_keeps_calling_stops_after_the_last_round(client) -> None:
    oai, engine = client
    engine.script(Reply(CALL), Reply(CALL), Reply(CALL), Reply("never asked for"))
    out = _agent_loop(oai, "m", lambda _: None)
    assert out["tool_calls"] == 3 and not out["answered"] and out["reply"] is None
    assert len(engine.records) == 3
