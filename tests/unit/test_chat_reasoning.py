"""K2 reasoning parser: the grammar (k2_family.md §2), one test per disagreement point decided in
``k2trt.chat.reasoning``'s docstring, the chain with the tool-call parser, and the property that any split of the
output into deltas gives the one-shot result."""

from __future__ import annotations

import random

import pytest

from k2trt.chat.reasoning import ReasoningDelta, ReasoningDone, ReasoningStream, split_reasoning
from k2trt.chat.toolcalls import ContentDelta, ToolCallStream, parse_tool_calls

SB, SE = "<|tool_calls_section_begin|>", "<|tool_calls_section_end|>"
CB, AB, CE = "<|tool_call_begin|>", "<|tool_call_argument_begin|>", "<|tool_call_end|>"
CALL = f"{SB}{CB}functions.get_weather:0{AB}{{\"city\": \"Paris\"}}{CE}{SE}"


def run(chunks: list[str], **kw: bool) -> tuple[tuple[str, str, int, bool], list]:
    """Feed chunks; rebuild the split from the events alone and check it against ``ReasoningDone``."""
    s = ReasoningStream(**kw)
    events = []
    for ch in chunks:
        events += s.feed(ch)
    events += s.finish()
    *body, done = events
    assert isinstance(done, ReasoningDone) and not any(isinstance(e, ReasoningDone) for e in body)
    assert all(e.text for e in body), "no empty events"
    reasoning = "".join(e.text for e in body if isinstance(e, ReasoningDelta))
    content = "".join(e.text for e in body if isinstance(e, ContentDelta))
    assert (reasoning, content) == (done.reasoning, done.content), "events and the final result agree"
    return (done.reasoning, done.content, done.markers, done.truncated), events


CASES = [  # (name, text, kwargs, reasoning, content, markers, truncated)
    ("tagged", "<think>2+2 is 4.</think>The answer is 4.", {}, "2+2 is 4.", "The answer is 4.", 2, False),
    ("opened_by_template", "Add them.</think>4", {"opened": True}, "Add them.", "4", 1, False),
    ("untagged", "Just an answer.", {}, "", "Just an answer.", 0, False),
    ("thinking_off_plain", "Instant answer.", {"thinking": False}, "", "Instant answer.", 0, False),
    ("truncated", "<think>Let me consider", {}, "Let me consider", "", 1, True),
    ("truncated_opened", "Step 1: ", {"opened": True}, "Step 1: ", "", 0, True),
    ("implicit_end_section", "<think>I should call it." + CALL, {}, "I should call it.", CALL, 1, False),
    ("implicit_end_call_begin", "<think>call" + CB + "functions.f:0" + AB + "{}" + CE, {},
     "call", CB + "functions.f:0" + AB + "{}" + CE, 1, False),
    ("empty_think", "<think></think>Fast.", {}, "", "Fast.", 2, False),
    ("empty", "", {}, "", "", 0, False),
    ("empty_opened", "", {"opened": True}, "", "", 0, True),
    ("unicode", "<think>先想一想 😀</think>北京晴。", {}, "先想一想 😀", "北京晴。", 2, False),
    ("lookalikes", "<think>a < b and <thought> and </ok></think>x <t y", {}, "a < b and <thought> and </ok>",
     "x <t y", 2, False),
]


@pytest.mark.parametrize("name, text, kw, reasoning, content, markers, truncated", CASES, ids=[c[0] for c in CASES])
def test_grammar(name: str, text: str, kw: dict, reasoning: str, content: str, markers: int, truncated: bool) -> None:
    got, _ = run([text], **kw)
    assert got == (reasoning, content, markers, truncated)
    assert split_reasoning(text, **kw) == (reasoning, content)


@pytest.mark.parametrize("name, text, kw", [(c[0], c[1], c[2]) for c in CASES], ids=[c[0] for c in CASES])
def test_every_split_gives_the_one_shot_result(name: str, text: str, kw: dict) -> None:
    """Decision 10 and the design rule: markers cut anywhere across deltas, one-character deltas, random splits."""
    want, _ = run([text], **kw)
    for i in range(len(text) + 1):
        assert run([text[:i], text[i:]], **kw)[0] == want, i
        for j in range(i, min(len(text), i + 12) + 1):
            assert run([text[:i], text[i:j], text[j:]], **kw)[0] == want, (i, j)
    assert run(list(text), **kw)[0] == want
    rng = random.Random(7)
    for _ in range(20):
        cuts = sorted(rng.sample(range(len(text) + 1), k=min(len(text), rng.randint(0, 6))))
        parts = [text[a:b] for a, b in zip([0] + cuts, cuts + [len(text)])]
        assert run(parts, **kw)[0] == want


def test_point1_untagged_output_is_content_and_streams_at_once() -> None:
    """Untagged output is content (TRT-LLM kimi_k2, llama.cpp), delivered delta by delta, not held to the end; a
    ``</think>`` that closes nothing is dropped rather than leaked."""
    s = ReasoningStream()
    assert s.feed("Hello") == [ContentDelta("Hello")]
    assert s.feed(" world</think>!") == [ContentDelta(" world!")]  # one event per kind and feed
    assert split_reasoning("Hello world</think>!") == ("", "Hello world!")


def test_point2_truncated_reasoning_stays_reasoning() -> None:
    got, events = run(["<think>Let me think about ", "the"], opened=False)
    assert got == ("Let me think about the", "", 1, True)
    assert all(isinstance(e, ReasoningDelta) for e in events[:-1])


def test_point3_text_before_think_is_content_in_place() -> None:
    got, events = run(["Sure. <think>why</think>Because."])
    assert got[:2] == ("why", "Sure. Because.")
    assert [type(e).__name__ for e in events[:-1]] == ["ContentDelta", "ReasoningDelta", "ContentDelta"]


def test_point4_reasoning_ends_at_the_earliest_marker() -> None:
    """``</think>`` after a tool section: the section is content (the calls are not swallowed), the late
    ``</think>`` is dropped."""
    text = "<think>plan" + CALL + "</think>done"
    reasoning, content = split_reasoning(text)
    assert reasoning == "plan" and content == CALL + "done"
    _, calls = parse_tool_calls(content)
    assert [(c.name, c.arguments_json()) for c in calls] == [("get_weather", {"city": "Paris"})]


def test_point5_call_begin_without_section_ends_reasoning() -> None:
    reasoning, content = split_reasoning(f"thinking{CB}functions.f:0{AB}{{\"a\": 1}}{CE}", opened=True)
    assert reasoning == "thinking"
    _, calls = parse_tool_calls(content)
    assert calls[0].name == "f" and calls[0].arguments_json() == {"a": 1}


def test_point6_whitespace_is_kept_byte_for_byte() -> None:
    text = "<think>\n  step one\n\n</think>\n\nAnswer.  \n"
    reasoning, content = split_reasoning(text)
    assert (reasoning, content) == ("\n  step one\n\n", "\n\nAnswer.  \n")
    assert "<think>" + reasoning + "</think>" + content == text  # lossless apart from the markers


def test_point7_empty_values_are_empty_strings() -> None:
    assert split_reasoning("<think></think>") == ("", "")
    assert split_reasoning("x") == ("", "x")


def test_point8_every_think_block_is_reasoning() -> None:
    text = "<think>first</think>Between.<think>second</think>End."
    assert split_reasoning(text) == ("firstsecond", "Between.End.")
    # a <think> inside an open block (the template opened it and the model repeats it) is dropped
    assert run(["<think>again</think>x"], opened=True)[0] == ("again", "x", 2, False)  # both markers are tokens


def test_point9_think_sharing_a_delta_with_text_does_not_leak() -> None:
    got, events = run(["<think>thought</think>Answer"])  # an MTP/speculative bundle: everything in one delta
    assert got[:2] == ("thought", "Answer")
    assert not any("<think>" in e.text or "</think>" in e.text for e in events[:-1])


def test_point10_partial_marker_is_held_back_then_released() -> None:
    s = ReasoningStream(opened=True)
    assert s.feed("abc</th") == [ReasoningDelta("abc")]  # "</th" could be </think>: held
    assert s.feed("ink>x") == [ContentDelta("x")]
    s = ReasoningStream()
    assert s.feed("a <thi") == [ContentDelta("a ")]
    assert s.finish()[:-1] == [ContentDelta("<thi")]  # a prefix at the very end is ordinary text


def test_point11_thinking_off_still_extracts_a_think_block() -> None:
    assert split_reasoning("<think>oops</think>Answer", thinking=False) == ("oops", "Answer")
    with pytest.raises(ValueError, match="contradicts"):
        ReasoningStream(thinking=False, opened=True)


def test_think_markers_inside_a_tool_section_are_argument_text() -> None:
    args = '{"html": "<think>x</think>"}'
    text = f"<think>r</think>{SB}{CB}functions.save:0{AB}{args}{CE}{SE}after"
    reasoning, content = split_reasoning(text)
    assert reasoning == "r" and content.endswith("after")
    _, calls = parse_tool_calls(content)
    assert calls[0].arguments == args


def test_stray_section_end_in_reasoning_is_dropped() -> None:
    """Tool markers never reach reasoning_content (MoonshotAI/Kimi-K2 issue #89)."""
    assert split_reasoning(f"<think>a{SE}b</think>c") == ("ab", "c")


def test_chained_with_the_tool_call_parser_in_one_token_deltas() -> None:
    text = "<think>Need the weather.</think>Let me check." + CALL
    rs, ts = ReasoningStream(), ToolCallStream()
    thought, names = [], []
    for ch in text:
        for ev in rs.feed(ch):
            if isinstance(ev, ReasoningDelta):
                thought.append(ev.text)
            else:
                names += [type(e).__name__ for e in ts.feed(ev.text)]
    for ev in rs.finish()[:-1]:
        names += [type(e).__name__ for e in ts.feed(ev.text)]
    done = ts.finish()[-1]
    assert "".join(thought) == "Need the weather." and done.content == "Let me check."
    assert done.finish_reason == "tool_calls" and done.calls[0].arguments_json() == {"city": "Paris"}
    assert "ToolCallStart" in names


def test_feed_after_finish_and_double_finish_raise() -> None:
    s = ReasoningStream()
    s.finish()
    with pytest.raises(RuntimeError):
        s.feed("x")
    with pytest.raises(RuntimeError):
        s.finish()


def test_work_is_linear_in_the_output() -> None:
    """No re-scan: a long reasoning streamed one character at a time keeps the held-back buffer bounded."""
    s = ReasoningStream(opened=True)
    longest = 0
    for ch in "<thin" * 2000:  # a worst case: endless marker prefixes
        s.feed(ch)
        longest = max(longest, len(s._hold))
    assert longest < len("<|tool_calls_section_begin|>")
