"""Hypothesis strategies for the hostile-client suite: request bodies of both APIs.

Half of the bodies are drawn from values real clients send (K2's control markers inside message text included:
they must stay text), so the fuzz reaches rendering, the engine and the response shaping; the other half let any
field be arbitrary JSON (wrong types, NaN/Infinity, integers past 64 bits, lone surrogates, nesting, unknown
fields). ``max_tokens`` stays tiny so the real engine answers fast.

``encode(body)`` is the wire form: ``json.dumps`` with NaN/Infinity literals and ``\\ud800``-style escapes, which is
what a hostile client can send (Python's ``json`` parses both).
"""

from __future__ import annotations

import json
from typing import Any, Callable

from hypothesis import strategies as st

MARKERS = ["<|im_end|>", "<|im_system|>", "<|tool_calls_section_begin|>", "<|tool_call_begin|>",
           "<|tool_call_argument_begin|>", "<think>", "</think>", "[EOS]"]
MODEL = "tiny-k2"
S = st.SearchStrategy

clean_text = st.one_of(st.text(st.characters(exclude_categories=["Cs"]), max_size=12),
                       st.sampled_from(MARKERS + ["", "名前", "\U0001F600", "functions.x:0"]))
odd_text = st.one_of(clean_text, st.sampled_from(["\ud800", "a\udc00b", "\x00"]))
scalar = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(), odd_text)
junk = st.recursive(scalar, lambda kids: st.one_of(st.lists(kids, max_size=3),
                                                   st.dictionaries(odd_text, kids, max_size=3)), max_leaves=6)
schema = st.sampled_from([{"type": "object", "properties": {"city": {"type": "string"}}}, {"type": "object"}])


def _fields(clean: bool) -> dict[str, Any]:
    """Per-field strategies: only valid values when ``clean``, else each field sometimes anything."""

    def v(valid: S[Any]) -> S[Any]:
        return valid if clean else st.one_of(valid, valid, junk)

    text = clean_text if clean else odd_text
    name = st.sampled_from(["get_weather", "lookup-1"]) if clean else st.one_of(st.just("get_weather"), odd_text)
    return {"v": v, "text": text, "name": name,
            "temperature": v(st.one_of(st.floats(0, 1), st.sampled_from([0, 1, 1e-300, 5e-324, 1e-5]))),
            "top_p": v(st.floats(0.01, 1)), "top_k": v(st.integers(0, 50)), "seed": v(st.integers(0, 2**63 - 1)),
            "max_tokens": v(st.integers(1, 3))}


def _openai(clean: bool) -> S[dict[str, Any]]:
    f = _fields(clean)
    v, text, name = f["v"], f["text"], f["name"]
    call = st.fixed_dictionaries({
        "id": v(st.sampled_from(["call_1", "functions.get_weather:0"])), "type": v(st.just("function")),
        "function": v(st.fixed_dictionaries({"name": name, "arguments": v(st.sampled_from(
            ['{"city": "Oslo"}', "{}", "not json"]))}))})
    message = st.one_of(
        st.fixed_dictionaries({"role": st.sampled_from(["system", "developer", "user"]), "content": v(st.one_of(
            text, st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": text}), max_size=2)))},
            optional={"name": v(text)}),
        st.fixed_dictionaries({"role": st.just("assistant")}, optional={
            "content": v(st.one_of(text, st.none())), "tool_calls": v(st.lists(call, max_size=2)),
            "reasoning_content": v(text)}),
        st.fixed_dictionaries({"role": st.just("tool"), "tool_call_id": v(st.just("call_1")), "content": v(text)}))
    tool = v(st.fixed_dictionaries({"type": v(st.just("function")), "function": v(st.fixed_dictionaries(
        {"name": name}, optional={"description": v(text), "parameters": v(schema)}))}))
    optional = {
        "model": v(st.just(MODEL)), "temperature": f["temperature"], "top_p": f["top_p"], "top_k": f["top_k"],
        "seed": f["seed"], "stop": v(st.one_of(text, st.lists(text, max_size=2))), "stream": v(st.booleans()),
        "stream_options": v(st.fixed_dictionaries({"include_usage": st.booleans()})),
        "tools": v(st.lists(tool, max_size=2)),
        "tool_choice": v(st.one_of(st.sampled_from(["auto", "none", "required"]), st.fixed_dictionaries(
            {"type": st.just("function"), "function": st.fixed_dictionaries({"name": name})}))),
        "parallel_tool_calls": v(st.booleans()), "presence_penalty": v(st.floats(-2, 2)),
        "frequency_penalty": v(st.floats(-2, 2)), "user": v(text)}
    if not clean:
        optional.update({"n": st.sampled_from([1, 2]), "response_format": junk, "logprobs": junk,
                         "chat_template_kwargs": junk, "an_unknown_field": junk})
    return st.fixed_dictionaries({"messages": v(st.lists(message, min_size=1, max_size=3)),
                                  "max_tokens": f["max_tokens"]}, optional=optional)


def _anthropic(clean: bool) -> S[dict[str, Any]]:
    f = _fields(clean)
    v, text, name = f["v"], f["text"], f["name"]
    text_block = st.fixed_dictionaries({"type": st.just("text"), "text": v(text)})
    user_block = st.one_of(text_block, st.fixed_dictionaries({
        "type": st.just("tool_result"), "tool_use_id": v(st.just("toolu_01")),
        "content": v(st.one_of(text, st.lists(text_block, max_size=2)))}))
    assistant_block = st.one_of(text_block, st.fixed_dictionaries({
        "type": st.just("tool_use"), "id": v(st.just("toolu_01")), "name": name,
        "input": v(st.just({"city": "Oslo"}))}))
    message = st.one_of(
        st.fixed_dictionaries({"role": st.just("user"), "content": v(st.one_of(
            text, st.lists(user_block, min_size=1, max_size=2)))}),
        st.fixed_dictionaries({"role": st.just("assistant"), "content": v(st.one_of(
            text, st.lists(assistant_block, min_size=1, max_size=2)))}))
    tool = v(st.fixed_dictionaries({"name": name, "input_schema": v(schema)}, optional={"description": v(text)}))
    optional = {
        "model": v(st.just(MODEL)), "system": v(st.one_of(text, st.lists(text_block, max_size=2))),
        "temperature": f["temperature"], "top_p": f["top_p"], "top_k": f["top_k"],
        "stop_sequences": v(st.lists(text, max_size=2)), "stream": v(st.booleans()),
        "tools": v(st.lists(tool, max_size=2)),
        "tool_choice": v(st.one_of(st.fixed_dictionaries({"type": st.sampled_from(["auto", "any", "none"])}),
                                   st.fixed_dictionaries({"type": st.just("tool"), "name": name}))),
        "metadata": v(st.just({"user_id": "u"}))}
    if not clean:
        optional.update({"thinking": junk, "an_unknown_field": junk})
    return st.fixed_dictionaries({"messages": v(st.lists(message, min_size=1, max_size=3)),
                                  "max_tokens": f["max_tokens"]}, optional=optional)


def _both(build: Callable[[bool], S[dict[str, Any]]]) -> S[dict[str, Any]]:
    return st.one_of(build(True), build(False))


openai_body = _both(_openai)
anthropic_body = _both(_anthropic)


def encode(body: Any) -> bytes:
    """The body as a hostile client sends it (NaN/Infinity literals and lone-surrogate escapes included)."""
    return json.dumps(body, allow_nan=True).encode()
