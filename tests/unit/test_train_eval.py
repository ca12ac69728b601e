"""The held-out scorer of the tiny K2 (a stand-in for ``k2trt toolcheck``): hand-written model outputs, each
with a known verdict, through the real parser and jsonschema."""

from __future__ import annotations

import pytest

from k2trt.train.corpus import build_examples
from k2trt.train.evaluate import (Scored, gateway_separated, score_answer, score_call, split_reasoning, summarize,
                                  toolcheck_samples)

SB, SE, CB, AB, CE = ("<|tool_calls_section_begin|>", "<|tool_calls_section_end|>", "<|tool_call_begin|>",
                      "<|tool_call_argument_begin|>", "<|tool_call_end|>")


def _call(cid: str, args: str) -> str:
    return f"{CB}{cid}{AB}{args}{CE}"


@pytest.fixture(scope="module")
def weather():
    """A held-out single-call conversation whose tool takes a required string and an optional enum."""
    for x in build_examples("heldout", 400, seed=5, kinds={"call": 1.0}, thinking="none"):
        if x.expect_calls and len(x.tools[0]["function"]["parameters"]["properties"]) == 2 and any(
                "enum" in p for t in x.tools for p in t["function"]["parameters"]["properties"].values()):
            tool = next(t for t in x.tools if t["function"]["name"] == x.expect_calls[0][0])
            if any("enum" in p for p in tool["function"]["parameters"]["properties"].values()):
                return x, tool
    raise AssertionError("no weather example drawn")


def test_reference_call_scores_valid_exact_and_well_numbered(weather) -> None:
    x, _ = weather
    name, args = x.expect_calls[0]
    import json
    s = score_call(x, SB + _call(f"functions.{name}:0", json.dumps(args)) + SE)
    assert (s.triggered, s.valid, s.exact, s.ids_ok, s.separated) == (True, True, True, True, True)


@pytest.mark.parametrize("bad", ["wrong_type", "missing_required", "enum", "undeclared", "bad_json", "truncated"])
def test_schema_violations_are_invalid(weather, bad) -> None:
    x, tool = weather
    name = tool["function"]["name"]
    props = tool["function"]["parameters"]["properties"]
    req = tool["function"]["parameters"]["required"][0]
    enum_key = next(k for k, p in props.items() if "enum" in p)
    args = {"wrong_type": f'{{"{req}": 12}}', "missing_required": f'{{"{enum_key}": "celsius"}}',
            "enum": f'{{"{req}": "Oslo", "{enum_key}": "kelvin"}}', "undeclared": f'{{"{req}": "Oslo"}}',
            "bad_json": f'{{"{req}": "Oslo"', "truncated": f'{{"{req}": "Os'}[bad]
    cid = f"functions.{'not_declared' if bad == 'undeclared' else name}:0"
    text = SB + (f"{CB}{cid}{AB}{args}" if bad == "truncated" else _call(cid, args) + SE)
    s = score_call(x, text)
    assert s.triggered and not s.valid and not s.exact


def test_plain_text_does_not_trigger_and_ids_must_continue_the_count(weather) -> None:
    x, tool = weather
    s = score_call(x, "It is sunny.")
    assert not s.triggered and s.content == "It is sunny."
    name = tool["function"]["name"]
    s = score_call(x, SB + _call(f"functions.{name}:3", '{}') + SE)
    assert s.triggered and not s.ids_ok


def test_reasoning_split_per_mode() -> None:
    assert split_reasoning("<think>Plan.</think>Hi", "on") == ("Plan.", "Hi", True)
    assert split_reasoning("Plan.</think>Hi", "open") == ("Plan.", "Hi", True)
    assert not split_reasoning("Hi", "on")[2]                      # no reasoning at all
    assert not split_reasoning("<think></think>Hi", "on")[2]       # empty reasoning
    assert not split_reasoning("<think>a</think>b</think>", "on")[2]  # stray tag in the content
    assert not split_reasoning("<think>never closed", "on")[2]
    assert split_reasoning("Hi", "none") == (None, "Hi", True)
    assert not split_reasoning("<think></think>Hi", "off")[2]      # the prompt already closed it


def test_summary_f1_and_rates() -> None:
    x_call = build_examples("heldout", 1, seed=1, kinds={"call": 1.0}, thinking="on")[0]
    x_plain = build_examples("heldout", 1, seed=1, kinds={"chat_tools": 1.0}, thinking="none")[0]

    def s(x, triggered, valid=True, separated=True):
        return Scored(x, "", separated, triggered, valid and triggered, False, True, "" if triggered else "ok")

    scored = [s(x_call, True), s(x_call, True, valid=False), s(x_call, False, separated=False),
              s(x_plain, False), s(x_plain, True)]
    out = summarize(scored, [(x_call, True, True), (x_call, False, True)])
    assert out["trigger"] == {"tp": 2, "fp": 1, "fn": 1, "f1": 0.6667, "precision": 0.6667, "recall": 0.6667}
    assert out["schema_valid"] == round(2 / 3, 4)  # 3 triggered, one invalid
    assert out["plain_no_call"] == 0.5
    assert out["reasoning_separated"] == 0.8        # 2 of 3 scored turns + 2 of 2 answers, thinking only
    assert out["grounded_answers"] == 0.5


def test_grounded_answer_needs_every_result_value() -> None:
    x = build_examples("heldout", 1, seed=2, kinds={"call": 1.0}, thinking="none")[0]
    good = x.messages[x.answer_at]["content"]
    assert score_answer(x, good) == (True, True)
    assert score_answer(x, good.replace(x.answer_keys[0], "?")) == (False, True)


def test_toolcheck_samples_carry_the_scored_turn_and_its_expected_trigger() -> None:
    exs = build_examples("heldout", 6, seed=3, kinds={"call": 0.5, "chat_tools": 0.5}, thinking="off") + \
        build_examples("heldout", 2, seed=3, kinds={"call": 1.0}, thinking="none")
    requests, reference = toolcheck_samples(exs, max_tokens=50)
    for i, (ex, req, ref) in enumerate(zip(exs, requests, reference), 1):
        assert req["messages"] == ex.messages[:ex.eval_at] and req["messages"][-1]["role"] == "user"
        assert req.get("tools") == ex.tools and (req["temperature"], req["max_tokens"]) == (0, 50)
        assert ref == {"data_index": i, "finish_reason": "tool_calls" if ex.expect_calls else "stop"}
        # K2.5's switch goes with the request; K2-Instruct has none
        assert req.get("chat_template_kwargs") == ({"thinking": False} if ex.thinking == "off" else None)
    assert {r["finish_reason"] for r in reference} == {"tool_calls", "stop"}


def _completion(content, reasoning=None):
    return {"choices": [{"message": {"role": "assistant", "content": content, "reasoning_content": reasoning}}]}


def test_gateway_separation_verdicts() -> None:
    assert gateway_separated(_completion("Hi", "Plan."), "on")
    assert gateway_separated(_completion(None, "Call it."), "open")  # a tool-call-only answer
    assert not gateway_separated(_completion("Hi"), "on")              # no reasoning with thinking on
    assert not gateway_separated(_completion("Hi", " "), "on")
    assert not gateway_separated(_completion("<think>Plan.</think>Hi"), "on")  # tags left in the content
    assert not gateway_separated(_completion("Hi", "a</think>b"), "on")
    assert gateway_separated(_completion("Hi"), "off")
    assert not gateway_separated(_completion("Hi", "Plan."), "off")  # reasoning although thinking is off
