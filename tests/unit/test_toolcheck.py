"""toolcheck's K2 Vendor Verifier computations on hand-built inputs: request preparation and hash, schema validity
with the real jsonschema validator, the summary counts, schema accuracy, trigger precision/recall/F1, and gates."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from k2trt.bench.toolcheck import (Gate, ToolcheckSpec, judge, prepare_request, read_samples, request_hash,
                                   summarize, trigger_metrics, validate_tool_call)
from k2trt.errors import ConfigError

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "required": ["city"], "properties": {"city": {"type": "string"}}, "additionalProperties": False}}}
EMPTY = {"type": "function", "function": {"name": "ping", "parameters": {}}}


def call(name: str, args: object) -> dict:
    return {"id": "functions.x:0", "type": "function", "function": {"name": name, "arguments": args}}


def spec(tmp_path: Path, **kw: object) -> ToolcheckSpec:
    p = tmp_path / "s.jsonl"
    if not p.exists():
        p.write_text("")
    return ToolcheckSpec(p, "http://127.0.0.1:1/v1", "kimi", **kw)  # type: ignore[arg-type]


def test_prepare_request_and_hash(tmp_path: Path) -> None:
    raw = {"model": "orig", "messages": [{"role": "_input", "content": "sys"}, {"role": "user", "content": "hi"}],
           "stream": True, "temperature": 0.1}
    s = spec(tmp_path, temperature=0.6, max_tokens=64)
    req = prepare_request(raw, s)
    assert req == {"model": "kimi", "messages": [{"role": "system", "content": "sys"},
                                                 {"role": "user", "content": "hi"}],
                   "stream": True, "temperature": 0.6, "max_tokens": 64, "stream_options": {"include_usage": True}}
    assert raw["messages"][0]["role"] == "_input"  # the raw request is not modified
    want = hashlib.md5(json.dumps(req, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
    assert request_hash(req) == want == request_hash(dict(reversed(list(req.items()))))


def test_read_samples_numbers_lines_and_names_bad_ones(tmp_path: Path) -> None:
    p = tmp_path / "s.jsonl"
    p.write_text('{"messages": [{"role": "user", "content": "a"}]}\n\n{"messages": [], "tools": []}\n')
    assert [s.data_index for s in read_samples(spec(tmp_path))] == [1, 3]
    p.write_text('{"messages": []}\nnot json\n')
    with pytest.raises(ConfigError, match=r"s.jsonl:2 is not JSON"):
        read_samples(spec(tmp_path))


@pytest.mark.parametrize("c, tools, valid", [
    (call("get_weather", '{"city": "Paris"}'), [WEATHER], True),
    (call("get_weather", {"city": "Paris"}), [WEATHER], True),  # arguments as an object are validated as is
    (call("get_weather", '{"town": "Paris"}'), [WEATHER], False),  # required missing, extra property
    (call("get_weather", '{"city": 5}'), [WEATHER], False),
    (call("get_weather", '{"city": "Par'), [WEATHER], False),  # not JSON
    (call("get_time", "{}"), [WEATHER], False),  # not declared
    (call("ping", "{}"), [EMPTY], False),  # the verifier's rule: an empty schema is "no schema found"
    ({"function": {"arguments": "{}"}}, [WEATHER], False),  # no name
])
def test_validate_tool_call(c: dict, tools: list, valid: bool) -> None:
    assert validate_tool_call(c, tools) is valid


def test_judge() -> None:
    resp = {"choices": [{"finish_reason": "tool_calls", "message": {"tool_calls": [
        call("get_weather", '{"city": "A"}'), call("get_weather", "{}")]}}]}
    assert judge(resp, [WEATHER]) == ("tool_calls", False)  # every call must be valid
    assert judge({"choices": [{"finish_reason": "tool_calls", "message": {"tool_calls": []}}]}, [WEATHER]) == \
        ("tool_calls", None)
    assert judge({"error": "x"}, []) == (None, None) and judge({"choices": [{"finish_reason": "stop"}]}, []) == \
        ("stop", None)


def results() -> list[dict]:
    """Hand-built result lines: (data_index, status, finish_reason, valid, usage)."""
    rows = [(1, "success", "tool_calls", True), (2, "success", "tool_calls", False), (3, "success", "tool_calls", None),
            (4, "success", "stop", None), (5, "success", "length", None), (6, "success", "content_filter", None),
            (7, "failed", None, None), (8, "success", "length", None)]
    return [{"data_index": i, "status": st, "finish_reason": fr, "tool_calls_valid": v,
             "response": {"usage": {"prompt_tokens": 10 * i, "completion_tokens": i, "total_tokens": 11 * i}}
             if st == "success" else {"error": "boom"}} for i, st, fr, v in rows]


def test_summary_counts_by_hand() -> None:
    s = summarize(results(), "kimi", started_at="t0", finished_at="t1", duration_ms=5)
    assert {k: s[k] for k in ("success_count", "failure_count", "finish_stop", "finish_tool_calls", "finish_others",
                              "successful_tool_call_count", "schema_validation_error_count")} == {
        "success_count": 7, "failure_count": 1, "finish_stop": 1, "finish_tool_calls": 3, "finish_others": 3,
        "successful_tool_call_count": 1, "schema_validation_error_count": 2}
    assert s["finish_others_detail"] == {"length": 2, "content_filter": 1}
    assert s["usage"] == {"prompt_tokens": 10 * 29, "completion_tokens": 29, "total_tokens": 11 * 29}  # 1..8 minus 7
    assert s["schema_accuracy"] == pytest.approx(1 / 3)
    assert list(s)[:14] == ["model", "success_count", "failure_count", "finish_stop", "finish_tool_calls",
                            "finish_others", "finish_others_detail", "schema_validation_error_count",
                            "successful_tool_call_count", "usage", "eval_started_at", "eval_finished_at",
                            "eval_duration_ms", "schema_accuracy"]  # the verifier's keys, in its order, then ours
    assert "tool_call_f1" not in s and summarize([], "m")["schema_accuracy"] is None


def test_trigger_metrics_by_hand() -> None:
    ref = [{"data_index": 1, "finish_reason": "tool_calls"}, {"data_index": 2, "finish_reason": "stop"},
           {"data_index": 3, "finish_reason": "tool_calls"}, {"data_index": 4, "finish_reason": "tool_calls"},
           {"data_index": 5, "finish_reason": "stop"}, {"data_index": 7, "finish_reason": "tool_calls"},
           {"data_index": 99, "finish_reason": "tool_calls"}]
    m = trigger_metrics(results(), ref)
    # TP 1, 3; FP 2; FN 4, 7 (a failure never calls); TN 5; 6 and 8 not in the reference, 99 not in ours
    assert m["trigger_confusion"] == {"tp": 2, "fp": 1, "fn": 2, "tn": 1, "joined": 6, "reference": 7}
    assert m["tool_call_precision"] == pytest.approx(2 / 3) and m["tool_call_recall"] == pytest.approx(2 / 4)
    assert m["tool_call_f1"] == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))  # 0.5714…
    none = trigger_metrics(results(), [{"data_index": 4, "finish_reason": "stop"}])
    assert none["tool_call_f1"] is None and none["trigger_confusion"]["tn"] == 1


@pytest.mark.parametrize("text, metric, op, value", [
    ("tool_call_f1>=0.73", "tool_call_f1", ">=", 0.73), ("schema_accuracy >= 95%", "schema_accuracy", ">=", 0.95),
    ("failure_count<=0", "failure_count", "<=", 0.0)])
def test_gate_parse(text: str, metric: str, op: str, value: float) -> None:
    assert Gate.parse(text) == Gate(metric, op, value)


def test_gate_check_and_errors() -> None:
    s = summarize(results(), "m")
    assert Gate.parse("schema_accuracy>=0.3").check(s) is None
    assert Gate.parse("schema_accuracy>=50%").check(s) == "schema_accuracy = 0.3333, gate >= 0.5"
    assert Gate.parse("failure_count<=0").check(s) == "failure_count = 1, gate <= 0"
    assert "need --reference" in Gate.parse("tool_call_f1>=0.8").check(s)  # type: ignore[operator]
    with pytest.raises(ConfigError, match="unknown metric"):
        Gate.parse("f1>=0.8")
    with pytest.raises(ConfigError, match="METRIC>=VALUE"):
        Gate.parse("tool_call_f1 > 0.8")


def test_spec_validation(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        ToolcheckSpec(tmp_path / "nope", "http://x/v1", "m").validate()
    with pytest.raises(ConfigError, match="not an http"):
        ToolcheckSpec(spec(tmp_path).samples, "localhost:8080", "m").validate()
    with pytest.raises(ConfigError, match="--concurrency"):
        spec(tmp_path, concurrency=0).validate()
