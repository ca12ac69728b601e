"""The tiny K2's training corpus: deterministic, split without leaks, schema-valid, rendered by K2's template.

The jinja oracle: non-thinking conversations are rendered by our ``chat_template.jinja`` under Transformers'
settings and must equal what the training sequences decode to.
"""

from __future__ import annotations

import json
import random
import re

import jsonschema
import pytest

from k2trt.chat import vocab
from k2trt.chat.template import CHAT_TEMPLATE, render, render_with_jinja, sort_tools
from k2trt.chat.tokenizer import K2Tokenizer
from k2trt.train.corpus import KINDS, build_examples
from k2trt.train.pools import CITIES, Pools, heldout_atom
from k2trt.train.render import encode, output_ids, prompt_ids, render_mode_ids, targets


@pytest.fixture(scope="module")
def tok(tmp_path_factory) -> K2Tokenizer:
    d = tmp_path_factory.mktemp("tok")
    vocab.write_tokenizer_files(d, n_ranks=1024, seed=0)
    return K2Tokenizer.from_dir(d)


@pytest.fixture(scope="module")
def train_ex():
    return build_examples("train", 600, seed=3)


@pytest.fixture(scope="module")
def heldout_ex():
    return build_examples("heldout", 300, seed=3)


def test_deterministic_and_seeded() -> None:
    a, b = build_examples("train", 30, seed=1), build_examples("train", 30, seed=1)
    assert [x.messages for x in a] == [x.messages for x in b]
    assert [x.messages for x in a] != [x.messages for x in build_examples("train", 30, seed=2)]
    # extending a corpus keeps its start
    assert build_examples("train", 5, seed=1, offset=25)[0].messages == a[25].messages


def test_every_kind_and_mode_occurs(train_ex) -> None:
    assert {x.kind for x in train_ex} == set(KINDS)
    # no K2-Thinking ("on") turns: their prompts are K2-Instruct's token for token (THINKING_MIX)
    assert {x.thinking for x in train_ex} == {"none", "open", "off"}


def _tool_names(examples) -> set[str]:
    return {t["function"]["name"] for x in examples for t in x.tools or []}


def test_heldout_names_and_values_never_trained(train_ex, heldout_ex) -> None:
    seen = _tool_names(train_ex)
    held = _tool_names(heldout_ex)
    assert held and not held & seen
    cities = {a for x in heldout_ex for _, args in x.expect_calls for a in args.values() if a in CITIES}
    assert cities and all(heldout_atom(c) for c in cities)
    trained = {v for x in train_ex for m in x.messages for tc in m.get("tool_calls") or []
               for v in json.loads(tc["function"]["arguments"]).values()}
    assert not cities & trained
    # pseudo-words (the bulk of names and places) come from disjoint halves of the hash space
    p = Pools("train")
    rng = random.Random(0)
    assert not any(heldout_atom(p.pseudo(rng)) for _ in range(200))


def test_calls_are_schema_valid_with_conversation_wide_ids(train_ex, heldout_ex) -> None:
    n_calls = 0
    for x in train_ex + heldout_ex:
        schemas = {t["function"]["name"]: t["function"]["parameters"] for t in x.tools or []}
        k = 0
        for m in x.messages:
            for tc in m.get("tool_calls") or []:
                name = tc["function"]["name"]
                assert tc["id"] == f"functions.{name}:{k}"
                jsonschema.validate(json.loads(tc["function"]["arguments"]), schemas[name])
                k += 1
                n_calls += 1
        at = x.messages[x.eval_at]
        assert at["role"] == "assistant" and x.messages[x.eval_at - 1]["role"] == "user"
        got = [(tc["function"]["name"], json.loads(tc["function"]["arguments"]))
               for tc in at.get("tool_calls") or []]
        assert got == list(x.expect_calls)
    assert n_calls > 500


def test_missing_tool_requests_declare_no_fitting_tool(train_ex) -> None:
    for x in (e for e in train_ex if e.kind == "missing"):
        assert not x.expect_calls and not x.messages[x.eval_at].get("tool_calls")


def test_prose_turns_ask_nothing_and_get_text(train_ex) -> None:
    prose = [e for e in train_ex if e.kind == "prose"]
    assert prose and any(e.tools for e in prose) and any(not e.tools for e in prose)
    for x in prose:
        user = x.messages[x.eval_at - 1]["content"]
        assert x.messages[x.eval_at - 1]["role"] == "user" and len(user.split()) >= 3
        assert not x.expect_calls and not x.messages[x.eval_at].get("tool_calls") and x.messages[x.eval_at]["content"]


def _spans(ids: list[int], mask: list[int]) -> list[tuple[int, int]]:
    out, start = [], None
    for i, m in enumerate(mask + [0]):
        if m and start is None:
            start = i
        elif not m and start is not None:
            out.append((start, i))
            start = None
    return out


def test_encoded_sequence_is_the_template_render_and_masks_assistant_turns(tok, train_ex) -> None:
    for x in (e for e in train_ex[:200] if e.thinking == "none"):
        ids, mask = encode(tok, x)
        text = tok.decode(ids)
        assert text == render_with_jinja(CHAT_TEMPLATE, x.messages, sort_tools(x.tools) if x.tools else None, False)
        assert text == render(x.messages, x.tools, False)
        spans = _spans(ids, mask)
        assert len(spans) == len(targets(x)) == sum(m["role"] == "assistant" for m in x.messages)
        for (a, b), k in zip(spans, targets(x)):
            assert tok.decode(ids[:a]).endswith("<|im_assistant|>assistant<|im_middle|>")
            assert ids[b - 1] == tok.im_end_id and ids[a:b] == output_ids(tok, x.messages[k], "none")


def test_thinking_render_follows_the_k2_thinking_grammar(tok, train_ex) -> None:
    # "on" is out of the training mix, but the renderer (and the gateway) still serve K2-Thinking
    x = build_examples("train", 1, seed=0, kinds={"followup": 1.0}, thinking="on")[0]
    ids, mask = encode(tok, x)
    text = tok.decode(ids)
    # the first turn (before the last user message) is history: empty think; the current turn keeps reasoning
    first_call = text.index("<|tool_calls_section_begin|>")
    assert text[:first_call].endswith("<|im_middle|><think></think>")
    last_user = text.rindex("<|im_user|>")
    assert re.search(r"<\|im_middle\|><think>The user wants .+?</think><\|tool_calls_section_begin\|>",
                     text[last_user:])
    assert text.endswith("I can answer now.</think>" + x.messages[-1]["content"] + "<|im_end|>")
    trained = tok.decode([i for i, m in zip(ids, mask) if m])
    assert "<think></think>" not in trained and trained.count("<think>") == 2
    # generation prompts: K2-Thinking ends at <|im_middle|>, K2.5 opens <think>, thinking off closes it
    msgs = [{"role": "user", "content": "hi"}]
    assert tok.decode(render_mode_ids(tok, msgs, None, "on")).endswith("<|im_middle|>")
    assert tok.decode(render_mode_ids(tok, msgs, None, "open")).endswith("<|im_middle|><think>")
    assert tok.decode(render_mode_ids(tok, msgs, None, "off")).endswith("<|im_middle|><think></think>")


def test_thinking_off_and_open_prompts_continue_into_their_outputs(tok, train_ex) -> None:
    for mode, head in (("off", "<think></think>"), ("open", "<think>")):
        x = next(e for e in train_ex if e.thinking == mode and e.kind == "call")
        p = tok.decode(prompt_ids(tok, x))
        assert p.endswith("<|im_middle|>" + head)
        out = tok.decode(output_ids(tok, x.messages[x.eval_at], mode))
        assert out.startswith("<|tool_calls_section_begin|>" if mode == "off" else "The user wants")
