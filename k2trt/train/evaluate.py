"""Score a tiny K2 on the held-out split: tool-call trigger F1, schema-valid arguments, plain answers, reasoning.

A stand-in scorer until ``k2trt toolcheck`` (the tool-call accuracy checker) exists; its definitions follow the K2
Vendor Verifier's (k2_family.md §3) so that the checker can replace ``score_call`` one for one:

- **trigger**: a response *triggers* when it holds at least one tool call; positives are the conversations whose
  reference answer calls a tool. F1 over the held-out conversations that declare tools.
- **schema-valid**: of the responses that trigger, those whose every call names a declared tool, is complete,
  and has arguments that decode as JSON and pass ``jsonschema.validate`` against that tool's ``parameters``.
- **exact**: the calls equal the reference ones (names and arguments, in order); **ids**: every call's ID is
  ``functions.{name}:{k}`` with ``k`` continuing the conversation's count.
- **plain**: a conversation whose reference answer is text gets text and no call.
- **reasoning separated** (thinking modes ``on``/``open``): the output is ``<think>REASONING</think>REST`` (``on``)
  or ``REASONING</think>REST`` after the prompt's ``<think>`` (``open``), with non-empty reasoning and no stray tag.
- **grounded**: after the reference call and its result, the model's answer holds the result's values.

Generation runs through the reference model's own ``generate`` (greedy, batched); the parser is the project's
``parse_tool_calls``. The same held-out turns also go through a served stack: ``toolcheck_samples`` writes them
as ``k2trt toolcheck`` requests (with a reference file of the expected trigger), and ``gateway_separated`` judges
the gateway's reasoning/content split of one response.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from k2trt.chat.reasoning import THINK_CLOSE, THINK_OPEN
from k2trt.chat.toolcalls import ToolCall, parse_tool_calls
from k2trt.train.corpus import Example, Thinking, build_examples
from k2trt.train.render import MODES, prompt_ids

HELDOUT_THINKING: dict[Thinking, float] = {"none": 0.5, "open": 0.35, "off": 0.15}
"""The held-out split's thinking modes (more thinking than training, so the reasoning gate has samples; no ``on``,
for the reason ``corpus.THINKING_MIX`` gives)."""


def heldout_examples(seed: int, n: int) -> list[Example]:
    """The held-out conversations the gates score."""
    return build_examples("heldout", n, seed, thinking=HELDOUT_THINKING)


def split_reasoning(text: str, mode: Thinking) -> tuple[str | None, str, bool]:
    """``(reasoning, rest, separated)`` of a model output in thinking ``mode`` (module docstring)."""
    if mode in ("none", "off"):
        return None, text, THINK_OPEN not in text and THINK_CLOSE not in text
    body = text
    if mode == "on":
        if not text.startswith(THINK_OPEN):
            return None, text, False
        body = text[len(THINK_OPEN):]
    reasoning, sep, rest = body.partition(THINK_CLOSE)
    ok = bool(sep) and bool(reasoning.strip()) and THINK_OPEN not in body and THINK_CLOSE not in rest
    return (reasoning, rest, ok) if sep else (None, text, False)


def _schema_ok(call: ToolCall, tools: dict[str, dict[str, Any]]) -> bool:
    import jsonschema

    if not call.complete or call.name not in tools:
        return False
    args = call.arguments_json()
    if not isinstance(args, dict):
        return False
    try:
        jsonschema.validate(args, tools[call.name])
    except jsonschema.ValidationError:
        return False
    return True


def _calls_before(ex: Example, at: int) -> int:
    return sum(len(m.get("tool_calls") or []) for m in ex.messages[:at])


@dataclass
class Scored:
    """One held-out response, scored."""

    example: Example
    text: str
    separated: bool
    triggered: bool
    valid: bool
    exact: bool
    ids_ok: bool
    content: str

    @property
    def expected(self) -> bool:
        return bool(self.example.expect_calls)


def score_call(ex: Example, text: str) -> Scored:
    """Score the model's ``text`` (decoded, markers included) for ``ex``'s scored turn."""
    _, rest, separated = split_reasoning(text, ex.thinking)
    content, calls = parse_tool_calls(rest, ex.tools)
    tools = {t["function"]["name"]: t["function"]["parameters"] for t in ex.tools or []}
    k0 = _calls_before(ex, ex.eval_at)
    got = [(c.name, c.arguments_json()) for c in calls]
    return Scored(ex, text, separated, bool(calls), bool(calls) and all(_schema_ok(c, tools) for c in calls),
                  got == [(n, a) for n, a in ex.expect_calls],
                  all(c.id == f"functions.{c.name}:{k0 + i}" for i, c in enumerate(calls)), content.strip())


def score_answer(ex: Example, text: str) -> tuple[bool, bool]:
    """``(grounded, separated)`` for the final answer after the reference tool results."""
    _, rest, separated = split_reasoning(text, ex.thinking)
    content, calls = parse_tool_calls(rest, ex.tools)
    return not calls and all(k in content for k in ex.answer_keys), separated


def _rate(num: int, den: int) -> float | None:
    return round(num / den, 4) if den else None


def summarize(scored: list[Scored], answers: list[tuple[Example, bool, bool]]) -> dict[str, Any]:
    """The gate figures, overall and per kind and thinking mode."""
    with_tools = [s for s in scored if s.example.tools]
    tp = sum(s.triggered and s.expected for s in with_tools)
    fp = sum(s.triggered and not s.expected for s in with_tools)
    fn = sum(not s.triggered and s.expected for s in with_tools)
    trig = [s for s in scored if s.triggered]
    want = [s for s in scored if s.expected]
    plain = [s for s in scored if not s.expected]
    think = [s for s in scored if s.example.thinking in ("on", "open")]
    think_ans = [a for a in answers if a[0].thinking in ("on", "open")]
    out: dict[str, Any] = {
        "responses": len(scored),
        "trigger": {"tp": tp, "fp": fp, "fn": fn, "f1": _rate(2 * tp, 2 * tp + fp + fn),
                    "precision": _rate(tp, tp + fp), "recall": _rate(tp, tp + fn)},
        "schema_valid": _rate(sum(s.valid for s in trig), len(trig)),
        "exact_calls": _rate(sum(s.exact for s in want), len(want)),
        "call_ids": _rate(sum(s.ids_ok for s in trig), len(trig)),
        "plain_no_call": _rate(sum(not s.triggered and bool(s.content) for s in plain), len(plain)),
        "reasoning_separated": _rate(sum(s.separated for s in think) + sum(a[2] for a in think_ans),
                                     len(think) + len(think_ans)),
        "format_ok": _rate(sum(s.separated for s in scored), len(scored)),
        "grounded_answers": _rate(sum(a[1] for a in answers), len(answers)),
    }
    for by, key in (("by_kind", lambda s: s.example.kind), ("by_thinking", lambda s: s.example.thinking)):
        groups: dict[str, list[Scored]] = defaultdict(list)
        for s in scored:
            groups[key(s)].append(s)
        out[by] = {k: {"n": len(v), "trigger_ok": _rate(sum(s.triggered == s.expected for s in v), len(v)),
                       "exact": _rate(sum(s.exact for s in v if s.expected), sum(s.expected for s in v)),
                       "separated": _rate(sum(s.separated for s in v), len(v))} for k, v in sorted(groups.items())}
    return out


def _generate(model: Any, tok: Any, prompts: list[list[int]], max_tokens: int, batch: int,
              progress: Callable[[int], None]) -> list[str]:
    from k2trt.reference.generate import SamplingParams, generate

    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    texts: list[str] = [""] * len(prompts)
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, stop_ids=tuple(tok.stop_ids))
    for b in range(0, len(order), batch):
        rows = order[b:b + batch]
        for i, c in zip(rows, generate(model, [prompts[i] for i in rows], params)):
            texts[i] = tok.decode(c.tokens)
        progress(min(b + batch, len(order)))
    return texts


def evaluate_checkpoint(model_dir: str | Path, seed: int, n: int, *, batch: int = 16, max_tokens: int = 200,
                        echo: Callable[[str], None] = print, examples: Iterable[Example] | None = None
                        ) -> dict[str, Any]:
    """Generate on the held-out split with the reference model and score it.

    Args:
        model_dir: a tiny K2 checkpoint (its tokenizer is used).
        seed, n: the held-out split (``heldout_examples``), unless ``examples`` are given.
        batch, max_tokens: generation batch size and output limit.
        echo: progress lines.
    Returns:
        ``summarize``'s figures plus ``samples``: a few transcripts per category.
    """
    import torch

    from k2trt.chat.tokenizer import K2Tokenizer
    from k2trt.reference.model import load_model

    exs = list(examples) if examples is not None else heldout_examples(seed, n)
    tok = K2Tokenizer.from_dir(model_dir)
    model = load_model(model_dir)
    with torch.no_grad():
        texts = _generate(model, tok, [prompt_ids(tok, e) for e in exs], max_tokens, batch,
                          lambda k: echo(f"eval: {k}/{len(exs)} scored turns"))
        scored = [score_call(e, t) for e, t in zip(exs, texts)]
        grounded = [e for e in exs if e.answer_at is not None]
        atexts = _generate(model, tok, [prompt_ids(tok, e, e.answer_at) for e in grounded], max_tokens, batch,
                           lambda k: echo(f"eval: {k}/{len(grounded)} answers from tool results"))
    answers = [(e, *score_answer(e, t)) for e, t in zip(grounded, atexts)]
    out = summarize(scored, answers)
    out["samples"] = _samples(scored, answers, atexts)
    echo("eval: " + json.dumps({k: v for k, v in out.items() if not k.startswith("by_") and k != "samples"}))
    return out


def _samples(scored: list[Scored], answers: list[tuple[Example, bool, bool]], atexts: list[str]
             ) -> list[dict[str, Any]]:
    picks: dict[str, Scored] = {}
    for s in scored:
        cat = f"{s.example.kind}/{s.example.thinking}"
        if cat not in picks and s.example.kind in ("call", "parallel_mixed", "chat", "missing", "followup_bare"):
            picks[cat] = s
    out = [{"category": c, "user": s.example.messages[s.example.eval_at - 1].get("content"),
            "tools": [t["function"]["name"] for t in s.example.tools or []], "output": s.text,
            "exact": s.exact, "valid": s.valid} for c, s in sorted(picks.items())]
    for (e, ok, _), t in list(zip(answers, atexts))[:3]:
        out.append({"category": f"answer/{e.kind}/{e.thinking}", "tool_result": e.messages[e.answer_at - 1]["content"],
                    "output": t, "grounded": ok})
    return out


def toolcheck_samples(exs: Iterable[Example], max_tokens: int = 200) -> tuple[list[dict[str, Any]],
                                                                              list[dict[str, Any]]]:
    """Held-out scored turns as ``k2trt toolcheck`` input: (request bodies, reference result lines).

    A request is the conversation up to the scored turn with its tools, greedy; K2.5 modes carry their thinking
    switch (``chat_template_kwargs``), so a gateway of the mode's family (``render.MODES``) renders the prompt the
    model was trained on. A reference line says whether a call is expected (``finish_reason`` ``tool_calls`` or
    ``stop``), which is what toolcheck's trigger precision/recall/F1 join on.

    Example:
        >>> reqs, ref = toolcheck_samples(heldout_examples(0, 10))  # doctest: +SKIP
    """
    requests, reference = [], []
    for i, ex in enumerate(exs, 1):
        body: dict[str, Any] = {"messages": ex.messages[:ex.eval_at], "temperature": 0, "max_tokens": max_tokens}
        if ex.tools:
            body["tools"] = ex.tools
        family, on = MODES[ex.thinking]
        if family == "k2.5":
            body["chat_template_kwargs"] = {"thinking": on}
        requests.append(body)
        reference.append({"data_index": i, "finish_reason": "tool_calls" if ex.expect_calls else "stop"})
    return requests, reference


def gateway_separated(response: dict[str, Any], mode: Thinking) -> bool:
    """Whether the gateway split one chat completion (its ``model_dump()``) cleanly in thinking ``mode``: with
    thinking on, non-empty ``reasoning_content``; off, none; either way no think tag left in content or
    reasoning."""
    msg = response["choices"][0]["message"]
    reasoning, content = msg.get("reasoning_content") or "", msg.get("content") or ""
    clean = not any(tag in text for tag in (THINK_OPEN, THINK_CLOSE) for text in (reasoning, content))
    return clean and (bool(reasoning.strip()) if mode in ("on", "open") else not reasoning)
