"""K2 tool-call parser: the grammar (kimi_formats.md §5.1), every parser row of the bug table (§5.5), the decisions
of §5.6, and the property that any split of the output into deltas gives the one-shot result."""

from __future__ import annotations

import json
import random

import pytest

from k2trt.chat.toolcalls import (ContentDelta, StreamDone, ToolCallArgs, ToolCallEnd, ToolCallStart, ToolCallStream,
                                  name_from_id, parse_tool_calls)

SB, SE = "<|tool_calls_section_begin|>", "<|tool_calls_section_end|>"
CB, AB, CE = "<|tool_call_begin|>", "<|tool_call_argument_begin|>", "<|tool_call_end|>"
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
SEARCH = {"type": "function", "function": {"name": "search", "parameters": {"type": "object"}}}


def call(cid: str, args: str) -> str:
    return f"{CB}{cid}{AB}{args}{CE}"


def summary(content: str, calls: list) -> tuple:
    return content, [(c.index, c.id, c.name, c.arguments, c.complete) for c in calls]


def stream(text_chunks: list[str], tools=None, unknown_tools="keep", reason="stop") -> tuple[tuple, list]:
    """Feed chunks, rebuild the result from the events alone, and check the events' ordering rules."""
    s = ToolCallStream(tools, unknown_tools)
    events = []
    for ch in text_chunks:
        events += s.feed(ch)
    events += s.finish(reason)
    content, names, args, ended = [], {}, {}, {}
    for e in events[:-1]:
        if isinstance(e, ContentDelta):
            assert e.text
            content.append(e.text)
        elif isinstance(e, ToolCallStart):
            assert e.index == len(names), "indices are dense and in order"
            names[e.index] = (e.id, e.name)
            args[e.index] = []
        elif isinstance(e, ToolCallArgs):
            assert e.index in names and e.index not in ended, "arguments only between start and end"
            args[e.index].append(e.fragment)
        elif isinstance(e, ToolCallEnd):
            ended[e.index] = e.complete
    done = events[-1]
    assert isinstance(done, StreamDone)
    assert set(ended) == set(names)
    rebuilt = ("".join(content), [(i, *names[i], "".join(args[i]), ended[i]) for i in sorted(names)])
    assert rebuilt == summary(done.content, list(done.calls)), "events and the final result agree"
    return rebuilt, events


# --- grammar -----------------------------------------------------------------------------------------------------
def test_canonical_single_call() -> None:
    text = SB + call("functions.get_weather:0", '{"city": "Beijing"}') + SE
    content, calls = parse_tool_calls(text, [WEATHER])
    assert content == ""
    assert [c.to_openai() for c in calls] == [{"id": "functions.get_weather:0", "type": "function", "function": {
        "name": "get_weather", "arguments": '{"city": "Beijing"}'}}]
    assert calls[0].arguments_json() == {"city": "Beijing"} and calls[0].complete


def test_text_before_section_and_several_calls() -> None:
    text = ("Let me check both." + SB + call("functions.get_weather:0", '{"city": "Paris"}') + "\n"
            + call("functions.search:1", '{"q": "news"}') + SE)
    content, calls = parse_tool_calls(text)
    assert content == "Let me check both."
    assert [(c.index, c.name, c.id) for c in calls] == [(0, "get_weather", "functions.get_weather:0"),
                                                        (1, "search", "functions.search:1")]


def test_plain_text_without_markers_is_content() -> None:
    text = "No tools needed: 3 < 4 and <b>bold</b> and a lone <| bar |> here."
    assert parse_tool_calls(text) == (text, [])
    s = ToolCallStream()
    evs = s.feed(text) + s.finish()
    assert isinstance(evs[-1], StreamDone) and evs[-1].finish_reason == "stop"


@pytest.mark.parametrize("cid, name", [
    ("functions.get_weather:0", "get_weather"),
    ("functions.get-weather-v2:3", "get-weather-v2"),           # bug table: '-' in the ID
    ("search:0", "search"),                                      # bug table: no 'functions.' (IndexError peers)
    ("functions.my.ns.do:1", "my.ns.do"),                        # bug table: dotted names kept whole
    ("api.tools.search:12", "api.tools.search"),
    ("functions.tool2go:7", "tool2go"),
    ("\n  functions.get_weather:0 \n", "get_weather"),           # whitespace/newlines around the ID
])
def test_names_from_ids(cid: str, name: str) -> None:
    content, calls = parse_tool_calls(f"{SB}{call(cid, '{}')}{SE}")
    assert content == "" and [(c.name, c.id) for c in calls] == [(name, cid.strip())]


@pytest.mark.parametrize("cid, declared, name", [
    ("functions_get_weather_1", {"get_weather", "search"}, "get_weather"),   # client-sanitised
    ("functionsget_weather5", {"get_weather", "search"}, "get_weather"),
    ("functions.search", {"get_weather", "search"}, "search"),                # no ':N'
    ("api.v1.search:4", {"search"}, "search"),                                # only the last segment declared
    ("call_59adf56", {"get_weather"}, "get_weather"),                         # client ID, one tool declared
    ("3", {"get_weather"}, "get_weather"),                                    # bare counter, one tool declared
    ("3", {"get_weather", "search"}, "3"),                                    # ambiguous: not guessed
])
def test_non_canonical_ids_are_recovered_against_declared_tools(cid: str, declared: set, name: str) -> None:
    assert name_from_id(cid, frozenset(declared)) == name


# --- bug table rows ----------------------------------------------------------------------------------------------
def test_adjacent_calls_do_not_merge() -> None:
    text = SB + call("functions.a-b:0", '{"x": 1}') + call("functions.c:1", '{"y": 2}') + SE
    _, calls = parse_tool_calls(text)
    assert [(c.name, c.arguments) for c in calls] == [("a-b", '{"x": 1}'), ("c", '{"y": 2}')]


def test_multiline_pretty_json_arguments() -> None:
    args = json.dumps({"code": "def f():\n    return 1\n", "nested": {"a": [1, 2]}}, indent=2)
    _, calls = parse_tool_calls(f"{SB}{CB}functions.run:0{AB}\n{args}\n{CE}{SE}")
    assert calls[0].arguments == args and calls[0].arguments_json()["nested"] == {"a": [1, 2]}


def test_newline_before_id_streaming() -> None:
    text = f"{SB}{CB}\nfunctions.get_weather:0\n{AB}{{\"city\": \"Oslo\"}}{CE}{SE}"
    for chunks in ([text], list(text), [text[:len(SB) + len(CB) + 1], text[len(SB) + len(CB) + 1:]]):
        (content, calls), _ = stream(chunks)
        assert content == "" and calls == [(0, "functions.get_weather:0", "get_weather", '{"city": "Oslo"}', True)]


def test_markers_and_noise_never_leak_into_content() -> None:
    text = (f"Checking.{SB} noise before the call {call('functions.f:0', '{}')} between {SE}"
            f"{CE}{AB}<|tool_calls_section_end|>")
    (content, calls), _ = stream(list(text))
    assert content == "Checking." and len(calls) == 1
    assert "<|" not in content


def test_undeclared_tools_keep_or_drop() -> None:
    text = (SB + call("functions.rm_rf:0", '{"path": "/"}') + call("functions.get_weather:1", "{}")
            + call("functions.ghost:2", '{"a": 1}') + SE)
    _, kept = parse_tool_calls(text, [WEATHER])
    assert [c.name for c in kept] == ["rm_rf", "get_weather", "ghost"]
    (content, calls), events = stream([text], tools=[WEATHER], unknown_tools="drop")
    assert content == "" and calls == [(0, "functions.get_weather:1", "get_weather", "{}", True)]
    assert not any(isinstance(e, ToolCallArgs) and "/" in e.fragment for e in events)
    _, none_declared = parse_tool_calls(text, None, unknown_tools="drop")
    assert len(none_declared) == 3, "without a tools list nothing can be checked, so nothing is dropped"


def test_truncated_output_keeps_partial_call() -> None:
    text = f"Sure.{SB}{call('functions.a:0', '{}')}{CB}functions.write_file:1{AB}{{\"path\": \"/tmp/x\", \"con"
    (content, calls), events = stream(list(text), reason="length")
    assert content == "Sure."
    assert calls[1] == (1, "functions.write_file:1", "write_file", '{"path": "/tmp/x", "con', False)
    assert events[-1].finish_reason == "length"
    _, calls2 = parse_tool_calls(text)
    assert not calls2[1].complete and calls2[1].arguments_json() is None


def test_truncated_inside_id_drops_the_call() -> None:
    content, calls = parse_tool_calls(f"ok{SB}{call('functions.a:0', '{}')}{CB}functions.get_wea")
    assert content == "ok" and [c.name for c in calls] == ["a"]


def test_missing_section_end_and_missing_call_end() -> None:
    _, calls = parse_tool_calls(SB + call("functions.a:0", '{"k": 1}'))
    assert [(c.name, c.arguments, c.complete) for c in calls] == [("a", '{"k": 1}', True)]
    _, calls = parse_tool_calls(f"{SB}{CB}functions.a:0{AB}{{\"k\": 1}}{CB}functions.b:1{AB}{{}}{SE}")
    assert [(c.name, c.arguments, c.complete) for c in calls] == [("a", '{"k": 1}', True), ("b", "{}", True)]


def test_malformed_json_passes_through() -> None:
    bad = "{'city': Beijing,"
    _, calls = parse_tool_calls(f"{SB}{call('functions.get_weather:0', bad)}{SE}")
    assert calls[0].arguments == bad and calls[0].arguments_json() is None and calls[0].complete


def test_singular_section_marker_variant() -> None:
    text = f"<|tool_call_section_begin|>{call('functions.f:0', '[1, 2]')}<|tool_call_section_end|>after"
    content, calls = parse_tool_calls(text)
    assert content == "after" and calls[0].arguments == "[1, 2]"


def test_mtp_multi_token_chunks() -> None:
    # one delta carrying the end of one call, the whole header of the next and its first argument bytes
    chunks = [SB + CB + "functions.a:0" + AB + '{"x": ', '1}' + CE + CB + "functions.b:1" + AB + '{"y"',
              ': 2}' + CE + SE]
    (content, calls), events = stream(chunks)
    assert calls == [(0, "functions.a:0", "a", '{"x": 1}', True), (1, "functions.b:1", "b", '{"y": 2}', True)]
    kinds = [type(e).__name__ for e in events]
    assert kinds == ["ToolCallStart", "ToolCallArgs", "ToolCallArgs", "ToolCallEnd", "ToolCallStart",
                     "ToolCallArgs", "ToolCallArgs", "ToolCallEnd", "StreamDone"]


# --- decisions (§5.6) --------------------------------------------------------------------------------------------
def test_content_after_section_is_kept_and_later_sections_parsed() -> None:
    text = f"A{SB}{call('functions.f:0', '{}')}{SE} B {SB}{call('functions.g:1', '{}')}{SE}"
    content, calls = parse_tool_calls(text)
    assert content == "A B " and [c.index for c in calls] == [0, 1]


def test_index_is_dense_not_the_id_suffix() -> None:
    _, calls = parse_tool_calls(f"{SB}{call('functions.f:5', '{}')}{call('functions.g:6', '{}')}{SE}")
    assert [c.index for c in calls] == [0, 1]


def test_call_begin_without_section_opens_one_and_header_without_args() -> None:
    content, calls = parse_tool_calls(f"hi {CB}functions.now:0{CE}{call('functions.f:1', '{}')}")
    assert content == "hi " and [(c.name, c.arguments) for c in calls] == [("now", ""), ("f", "{}")]
    assert calls[0].arguments_json() == {}


def test_header_without_call_begin_is_recovered() -> None:
    text = SB + "functions.f:0" + AB + "{}" + CE + " functions.g:1 " + AB + '{"a": 1}' + CE + SE
    assert summary(*parse_tool_calls(text)) == ("", [(0, "functions.f:0", "f", "{}", True),
                                                     (1, "functions.g:1", "g", '{"a": 1}', True)])


def test_finish_reason_mapping_and_misuse() -> None:
    s = ToolCallStream()
    s.feed(f"{SB}{call('functions.f:0', '{}')}{SE}")
    assert s.finish("stop")[-1].finish_reason == "tool_calls"
    with pytest.raises(RuntimeError):
        s.feed("x")
    with pytest.raises(ValueError):
        ToolCallStream(unknown_tools="maybe")  # type: ignore[arg-type]


def test_argument_whitespace_is_trimmed_but_inner_whitespace_kept() -> None:
    _, calls = parse_tool_calls(f"{SB}{CB}functions.f:0{AB}  \n {{\"a\":  \"b  \"}}  \n {CE}{SE}")
    assert calls[0].arguments == '{"a":  "b  "}'


def test_marker_lookalikes_inside_arguments_stay_text() -> None:
    args = '{"html": "<|im_end|> <|tool_call <| x", "lt": "a < b"}'
    (content, calls), _ = stream(list(f"{SB}{call('functions.f:0', args)}{SE}"))
    assert calls[0][3] == args


# --- the streaming property --------------------------------------------------------------------------------------
EXAMPLES = [
    "Plain answer with <angle> brackets and 中文 😀.",
    SB + call("functions.get_weather:0", '{"city": "Beijing"}') + SE,
    "Let me look.\n" + SB + "\n" + call(" functions.search-web:0 ", ' {"q": "k2"} ') + "\n" + call("x.y.z:1", "[]")
    + "\n" + SE,
    SB + call("functions.a:0", "{}") + call("functions.b:1", '{"s": "<|tool"}') + SE + "tail",
    f"{SB}{CB}functions.f:0{AB}{{\"code\": \"x = 1\\n\\n\"}}   {CB}functions.g:1{AB}{{\"v\": 2}}",
    f"{SB}junk{CB}\nsearch:3\n{AB}\n{{\n  \"q\": \"multi\\nline\"\n}}\n{CE}<|tool_call_section_end|>after <| x",
    SB + call("functions.rm:0", '{"p": 1}') + call("functions.get_weather:1", '{"city": "Rome"}'),
    "<|tool_call_section_begin|>" + call("functions_get_weather_2", '{"city": "Köln"}') + SE + "<",
    f"{SB}{CB}functions.write:0{AB}{{\"text\": \"truncated mid <|tool_call_e",
]


@pytest.mark.parametrize("n", range(len(EXAMPLES)))
def test_every_split_position_matches_one_shot(n: int) -> None:
    text = EXAMPLES[n]
    for tools, policy in ((None, "keep"), ([WEATHER, SEARCH], "drop")):
        expected = summary(*parse_tool_calls(text, tools, unknown_tools=policy))
        for i in range(len(text) + 1):
            got, _ = stream([text[:i], text[i:]], tools, policy)
            assert got == expected, f"split at {i}: {text[:i]!r} | {text[i:]!r}"
        assert stream(list(text), tools, policy)[0] == expected
        rng = random.Random(n)
        for _ in range(20):
            cuts = sorted(rng.sample(range(len(text) + 1), k=min(5, len(text))))
            parts = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
            assert stream(parts, tools, policy)[0] == expected


def test_hold_back_stays_bounded_on_long_arguments() -> None:
    """Incrementality: only a partial marker is ever held, whatever the argument length."""
    s = ToolCallStream()
    s.feed(SB + CB + "functions.write:0" + AB)
    body = json.dumps({"text": "<|" + "lorem ipsum <b> " * 4000})
    total = 0
    for k in range(0, len(body), 3):
        for e in s.feed(body[k:k + 3]):
            total += len(e.fragment) if isinstance(e, ToolCallArgs) else 0
        assert len(s._hold) < 28
    s.feed(CE + SE)
    assert s.finish()[-1].calls[0].arguments == body and total == len(body)
