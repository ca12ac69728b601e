"""The gateway's metrics in-process: the documented table is what the registry exports, registries are per app,
the tracker's rules (what counts when), tool-call outcomes from the real parsers, the passthrough SSE reader under
every byte split. Over-HTTP checks with known traffic are in
tests/e2e/test_gateway_metrics_e2e.py."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any, AsyncIterator

from prometheus_client.parser import text_string_to_metric_families
from starlette.responses import Response

from k2trt.gateway import metrics as gm
from k2trt.gateway.errors import ApiError
from k2trt.gateway.events import Finish, Job, Text, ToolChoice
from k2trt.gateway.output import OutputChain

TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
SB, SE, CB, AB, CE = ("<|tool_calls_section_begin|>", "<|tool_calls_section_end|>", "<|tool_call_begin|>",
                      "<|tool_call_argument_begin|>", "<|tool_call_end|>")


def _families(m: gm.GatewayMetrics) -> dict[str, Any]:
    text = m.exposition(None).body.decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_documented_table_is_what_the_registry_exports() -> None:
    """Every row of the module docstring's table (name, type, labels) is exported, and nothing else."""
    rows = re.findall(r"^``(k2trt_gateway_\w+)``\s+(\w+)\s+([\w, ]+?)\s*$", gm.__doc__ or "", re.M)
    assert len(rows) == 13
    m = gm.GatewayMetrics("kimi-k2")
    t = m.start("openai")
    t.see(Finish("stop", prompt_tokens=3, completion_tokens=2, tool_calls=(("parsed", 1),)))
    t.close(200)
    t = m.start("openai")
    t.fail(ApiError(503, "down", "engine_unavailable"))
    t.close(200)
    t2 = m.start("anthropic")
    t2.streamed = True
    t2.see(Text("hi"))
    t2.see(Finish("stop", prompt_tokens=3, completion_tokens=2))
    t2.close(200)
    fams = _families(m)
    exported = {}
    for name, f in fams.items():
        if name.endswith("_created"):  # prometheus_client's creation timestamps of each series
            continue
        labels = set()
        for s in f.samples:
            labels |= set(s.labels) - {"le"}
        exported[name + ("_total" if f.type == "counter" else "")] = (f.type, labels)
    documented = {name: (kind, {x.strip() for x in labels.split(",")}) for name, kind, labels in rows}
    assert exported == documented


def test_each_app_has_its_own_registry_with_every_known_series_at_zero() -> None:
    a, b = gm.GatewayMetrics("a"), gm.GatewayMetrics("b")
    a.start("openai").close(200)
    assert a.registry.get_sample_value(gm.REQUESTS, {"model": "a", "api": "openai", "status": "200"}) == 1
    assert b.registry.get_sample_value(gm.REQUESTS, {"model": "a", "api": "openai", "status": "200"}) is None
    assert b.registry.get_sample_value(gm.REQUESTS, {"model": "b", "api": "openai", "status": "200"}) == 0
    for api in ("openai", "anthropic"):  # present before any traffic: a scraper's first sample is a baseline
        lab = {"model": "b", "api": api}
        assert b.registry.get_sample_value(gm.INFLIGHT, lab) == 0
        assert b.registry.get_sample_value(gm.TTFT + "_count", lab) == 0
        for outcome in gm.TOOL_OUTCOMES:
            assert b.registry.get_sample_value(gm.TOOL_CALLS, {**lab, "outcome": outcome}) == 0
        for kind in gm.ENGINE_ERROR_KINDS:
            assert b.registry.get_sample_value(gm.ENGINE_ERRORS, {**lab, "kind": kind}) == 0


def test_tracker_rules() -> None:
    """Tokens and latencies only for completed responses; TTFT only when streamed; an error's status and kind win;
    closing twice counts once; in flight goes back to zero."""
    m = gm.GatewayMetrics("k")
    lab = {"model": "k", "api": "openai"}

    def v(name: str, **extra: str) -> float:
        return m.registry.get_sample_value(name, {**lab, **extra}) or 0.0

    t = m.start("openai")
    assert v(gm.INFLIGHT) == 1
    t.see(Text("x"))  # not streamed: no first token
    t.see(Finish("stop", prompt_tokens=10, completion_tokens=4, reasoning_tokens=2, cached_tokens=1))
    t.close(200)
    t.close(200)
    assert v(gm.INFLIGHT) == 0 and v(gm.REQUESTS, status="200") == 1
    assert (v(gm.PROMPT), v(gm.COMPLETION), v(gm.REASONING), v(gm.CACHED)) == (10, 4, 2, 1)
    assert v(gm.TTFT + "_count") == 0 and v(gm.DURATION + "_count") == 1 and v(gm.INPUT_TOKENS + "_sum") == 10

    t = m.start("openai")  # a stream that ended with an engine failure after its first token
    t.streamed = True
    t.see(Text("x"))
    t.fail(ApiError(502, "broken", "engine_error"))
    t.close(200)
    assert v(gm.REQUESTS, status="502") == 1 and v(gm.ENGINE_ERRORS, kind="engine_error") == 1
    assert v(gm.PROMPT) == 10 and v(gm.TTFT + "_count") == 0  # nothing from an incomplete response

    t = m.start("openai")  # a client that left after the last token but before the end of the stream
    t.streamed = True
    t.see(Text("x"))
    t.see(Finish("stop", prompt_tokens=5, completion_tokens=5))
    t.close(499)
    assert v(gm.REQUESTS, status="499") == 1 and v(gm.PROMPT) == 10 and v(gm.DURATION + "_count") == 1

    t = m.start("openai")  # tool_choice required and no call
    t.fail(ApiError(502, "no call", "model_output"))
    t.end(Response(status_code=502))
    assert v(gm.TOOL_CALLS, outcome="missing") == 1 and v(gm.ENGINE_ERRORS, kind="model_output") == 0

    t = m.start("openai")  # streamed, 5 tokens: ITL = (end - first) / 4
    t.streamed = True
    t.t0, = (0.0,)
    t.see(Text("a"))
    t.first, t.last = 1.0, 3.0
    t.finish = Finish("stop", prompt_tokens=1, completion_tokens=5)
    t.close(200)
    assert v(gm.TTFT + "_sum") == 1.0 and v(gm.ITL + "_sum") == 0.5 and v(gm.ITL + "_count") == 1


def _chain(text: str, *, choice: ToolChoice = ToolChoice(), parallel: bool = True, reason: str = "stop",
           tools: Any = TOOLS) -> tuple[tuple[str, int], ...]:
    job = Job(messages=[], tools=tools, tool_choice=choice, parallel_tool_calls=parallel)
    c = OutputChain(job, {}, unknown_tools="drop")
    for i in range(0, len(text), 3):  # any split gives the same outcomes
        c.feed(text[i:i + 3])
    c.finish(reason)
    return c.tool_outcomes()


def _call(name: str, k: int, args: str) -> str:
    return f"{CB}functions.{name}:{k}{AB}{args}{CE}"


def test_tool_call_outcomes_from_the_real_parsers() -> None:
    good = _call("get_weather", 0, '{"city": "Paris"}')
    assert _chain(SB + good + SE) == (("parsed", 1),)
    assert _chain(SB + _call("get_weather", 0, '{"city": ') + SE) == (("invalid_arguments", 1),)
    assert _chain(SB + f'{CB}functions.get_weather:0{AB}{{"city": "Pa', reason="length") == (("truncated", 1),)
    assert _chain(SB + _call("rm_rf", 0, "{}") + good + SE) == (("parsed", 1), ("dropped", 1))
    assert dict(_chain(SB + good + _call("get_weather", 1, "{}") + SE, parallel=False)) == {"parsed": 1,
                                                                                          "discarded": 1}
    assert _chain(SB + good + SE, choice=ToolChoice("none"), tools=TOOLS) == (("discarded", 1),)
    assert _chain("plain text") == ()


def test_relay_reads_first_output_and_usage_under_any_byte_split() -> None:
    """The passthrough reader sees the first content delta and the usage event wherever the bytes are cut, and
    passes the bytes through unchanged."""
    events = [{"choices": [{"delta": {"role": "assistant", "content": ""}}]},
              {"choices": [{"delta": {"content": "Hé"}}]},
              {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 5,
                                        "completion_tokens_details": {"reasoning_tokens": 2}}}]
    raw = b"".join(b"data: " + json.dumps(e, ensure_ascii=False).encode() + b"\n\n" for e in events)
    raw += b"data: [DONE]\n\n"

    async def run(step: int) -> tuple[bytes, gm.RequestTracker]:
        t = gm.GatewayMetrics("m").start("openai")

        async def chunks() -> AsyncIterator[bytes]:
            for i in range(0, len(raw), step):
                yield raw[i:i + step]

        out = b"".join([c async for c in t.relay(chunks())])
        return out, t

    for step in (1, 2, 3, 7, 50, len(raw)):
        out, t = asyncio.run(run(step))
        assert out == raw and t.first is not None and t.streamed
        assert t.engine_usage == {"prompt_tokens": 7, "completion_tokens": 5, "reasoning_tokens": 2,
                                  "cached_tokens": 0}


def test_request_id_accepts_plain_tokens_only() -> None:
    class R:
        def __init__(self, rid: str) -> None:
            self.headers = {"x-request-id": rid}

    assert gm.request_id(R("abc-123_X.y:z")) == "abc-123_X.y:z"  # type: ignore[arg-type]
    for bad in ("", "a b", "é", "x" * 129, "a\nb"):
        assert re.fullmatch(r"[0-9a-f]{32}", gm.request_id(R(bad)))  # type: ignore[arg-type]
