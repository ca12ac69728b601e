"""``k2trt toolcheck`` against the gateway on 127.0.0.1, with an engine double whose answers are known, so every
metric is checked against a value computed by hand.

The engine double (tests/e2e/engine_double.py) stands in only for the model: it picks each answer by the case tag in
the prompt (requests arrive concurrently, in no fixed order), in K2.6's thinking format, so the run covers a
reasoning model. Everything else is real: the gateway (K2.6 template, reasoning and tool-call parsers, its 400s), the
openai SDK that toolcheck drives, jsonschema, and the ``k2trt`` CLI as a subprocess.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from engine_double import EngineDouble, Reply

from k2trt.bench.toolcheck import Gate, ToolcheckSpec, run_toolcheck
from k2trt.chat.tokenizer import K2Tokenizer
from k2trt.gateway import BackgroundGateway, GatewayConfig

pytestmark = pytest.mark.e2e
ENGINE_PORT, GATEWAY_PORT = 18170, 18171
SB, SE, CB, AB, CE = ("<|tool_calls_section_begin|>", "<|tool_calls_section_end|>", "<|tool_call_begin|>",
                      "<|tool_call_argument_begin|>", "<|tool_call_end|>")
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather", "parameters": {
    "type": "object", "required": ["city"], "properties": {"city": {"type": "string"}}, "additionalProperties": False}}}
PING = {"type": "function", "function": {"name": "ping", "parameters": {}}}


def calls(name: str, args: str) -> str:
    return f"Let me look.</think>{SB}{CB}functions.{name}:0{AB}{args}{CE}{SE}"


# case tag -> (the engine's answer, the official finish_reason or None when the reference lacks the line)
ANSWERS: dict[str, tuple[Reply, str | None]] = {
    "case-01": (Reply(calls("get_weather", '{"city": "Paris"}')), "tool_calls"),  # valid call: TP
    "case-02": (Reply(calls("get_weather", '{"town": "Paris"}')), "tool_calls"),  # schema error: TP
    "case-03": (Reply(calls("get_weather", '{"city": "Par')), "stop"),  # not JSON: FP
    "case-04": (Reply("No need.</think>It is sunny."), "tool_calls"),  # answers in text: FN
    "case-05": (Reply("Still weighing the options", finish_reason="length"), "stop"),  # cut in reasoning: TN
    "case-06": (Reply("Hmm.</think>Sure." + f"{SB}{CB}functions.rm_rf:0{AB}{{}}{CE}{SE}"), "stop"),  # dropped: TN
    "case-07": (Reply(calls("get_weather", '{"city": "Oslo"}')), "tool_calls"),  # streamed, valid: TP
    "case-09": (Reply("Terse.</think>Fine."), "stop"),  # _input → system: TN
    "case-10": (Reply("never sent"), "tool_calls"),  # n=2 → 400 from the gateway, failed: FN
    "case-11": (Reply(calls("get_weather", '{"city": "Rome"}')), "tool_calls"),  # a 503 first, retried: TP
    "case-12": (Reply(calls("ping", "{}")), None),  # empty schema → invalid (the verifier's rule); not joined
}


def sample(tag: str, **extra: Any) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": f"{tag}: what is the weather?"}], "tools": [WEATHER],
            "temperature": 0.6, **extra}


SAMPLES = [sample("case-01"), sample("case-02"), sample("case-03"), sample("case-04"), sample("case-05"),
           sample("case-06"), sample("case-07", stream=True), None,
           {"messages": [{"role": "_input", "content": "Be terse."}, {"role": "user", "content": "case-09: hi"}],
            "tools": [WEATHER]},
           sample("case-10", n=2), sample("case-11"),
           {"messages": [{"role": "user", "content": "case-12: ping"}], "tools": [PING], "max_tokens": 32}]


@pytest.fixture(scope="module")
def tok(family_dir: Callable[[str], Path]) -> tuple[K2Tokenizer, Path]:
    d = family_dir("k2.6")
    return K2Tokenizer.from_dir(d), d


@pytest.fixture(scope="module")
def stack(tok: tuple[K2Tokenizer, Path]) -> Iterator[tuple[EngineDouble, str]]:
    tokenizer, model_dir = tok
    unavailable = {"case-11": 1}

    def respond(body: dict[str, Any]) -> Reply:
        prompt = tokenizer.decode(body["prompt"])
        tag = next(t for t in ANSWERS if t in prompt)
        if unavailable.get(tag):
            unavailable[tag] -= 1
            return Reply(status=503)
        return ANSWERS[tag][0]

    engine = EngineDouble(port=ENGINE_PORT, tokenizer=tokenizer, responder=respond).start()
    try:
        with BackgroundGateway(GatewayConfig(engine_url=engine.url, model_dir=str(model_dir),
                                             port=GATEWAY_PORT, model_aliases=("kimi-k2.6",))) as gw:
            yield engine, gw.url + "/v1"
    finally:
        engine.stop()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("toolcheck")
    (d / "samples.jsonl").write_text("".join((json.dumps(s) if s else "") + "\n" for s in SAMPLES))
    ref = [{"data_index": i + 1, "finish_reason": ANSWERS[s["messages"][-1]["content"][:7]][1]}
           for i, s in enumerate(SAMPLES) if s and ANSWERS[s["messages"][-1]["content"][:7]][1]]
    (d / "official.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ref))
    return {"samples": d / "samples.jsonl", "reference": d / "official.jsonl", "dir": d}


KEYS = ["data_index", "request", "extra_body", "response", "status", "finish_reason", "tool_calls_valid",
        "last_run_at", "duration_ms", "hash"]


def test_every_metric_against_hand_computed_values(stack: tuple[EngineDouble, str], files: dict[str, Path]) -> None:
    engine, url = stack
    out = files["dir"] / "lib"
    spec = ToolcheckSpec(files["samples"], url, "kimi-k2.6", concurrency=4, output=out / "results.jsonl",
                         summary=out / "summary.json", reference=files["reference"], retry_base_s=0.05,
                         gates=(Gate.parse("schema_accuracy>=50%"), Gate.parse("tool_call_f1>=0.73")))
    res = run_toolcheck(spec, progress=False)
    lines = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert [r["data_index"] for r in lines] == [1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12]  # blank line 8 keeps its number
    assert all(list(r) == KEYS for r in lines)
    by = {r["data_index"]: r for r in lines}
    assert [(i, by[i]["finish_reason"], by[i]["tool_calls_valid"]) for i in by] == [
        (1, "tool_calls", True), (2, "tool_calls", False), (3, "tool_calls", False), (4, "stop", None),
        (5, "length", None), (6, "stop", None), (7, "tool_calls", True), (9, "stop", None), (10, None, None),
        (11, "tool_calls", True), (12, "tool_calls", False)]
    assert by[10]["status"] == "failed" and by[10]["response"]["error_type"] == "BadRequestError"
    assert "n=2" in by[10]["response"]["error_message"]
    assert by[1]["response"]["choices"][0]["message"]["reasoning_content"] == "Let me look."
    assert by[7]["request"]["stream"] is True and by[7]["request"]["stream_options"] == {"include_usage": True}
    assert by[7]["response"]["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] == '{"city": "Oslo"}'
    assert by[9]["request"]["messages"][0]["role"] == "system" and by[1]["request"]["model"] == "kimi-k2.6"
    s = json.loads((out / "summary.json").read_text())
    assert s == res.summary
    assert {k: s[k] for k in ("success_count", "failure_count", "finish_stop", "finish_tool_calls", "finish_others",
                              "finish_others_detail", "successful_tool_call_count",
                              "schema_validation_error_count")} == {
        "success_count": 10, "failure_count": 1, "finish_stop": 3, "finish_tool_calls": 6, "finish_others": 1,
        "finish_others_detail": {"length": 1}, "successful_tool_call_count": 3, "schema_validation_error_count": 3}
    assert s["schema_accuracy"] == 0.5
    assert s["trigger_confusion"] == {"tp": 4, "fp": 1, "fn": 2, "tn": 3, "joined": 10, "reference": 10}
    assert (s["tool_call_precision"], s["tool_call_recall"]) == (0.8, pytest.approx(4 / 6))
    assert s["tool_call_f1"] == pytest.approx(2 * 0.8 * (4 / 6) / (0.8 + 4 / 6))  # 0.7273
    usages = [r["response"]["usage"] for r in lines if r["status"] == "success"]
    assert s["usage"]["prompt_tokens"] == sum(u["prompt_tokens"] for u in usages) > 0
    assert res.gate_failures == ["tool_call_f1 = 0.7273, gate >= 0.73"]
    # the retried 503 reached the engine twice; the refused n=2 never did
    assert len(engine.records) == 11


def test_cli_gate_json_and_incremental_resume(stack: tuple[EngineDouble, str], files: dict[str, Path]) -> None:
    engine, url = stack
    out = files["dir"] / "cli"
    base = [sys.executable, "-m", "k2trt.cli", "toolcheck", str(files["samples"]), "--base-url", url, "--model",
            "kimi-k2.6", "--output", str(out / "results.jsonl"), "--summary", str(out / "summary.json"),
            "--reference", str(files["reference"]), "--no-progress"]
    r = subprocess.run(base + ["--gate", "tool_call_f1>=0.73"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stderr
    assert "gate failed: tool_call_f1 = 0.7273, gate >= 0.73" in r.stderr and "F1 72.73%" in r.stdout
    engine.records.clear()
    r = subprocess.run(base + ["--incremental", "--json", "--gate", "schema_accuracy>=50%"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    assert rep["reused"] == 10 and rep["gate_failures"] == [] and rep["failure_count"] == 1
    assert engine.records == []  # only the failed request was sent again, and the gateway refused it
    lines = (out / "results.jsonl").read_text().splitlines()
    # one line per data_index after the rerun (not appended duplicates), sorted again
    assert [json.loads(x)["data_index"] for x in lines] == [1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12]
    r = subprocess.run(base + ["--dry-run"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and json.loads(r.stdout)["requests"] == 11 and json.loads(r.stdout)["streamed"] == 1
