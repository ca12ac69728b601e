"""The synthetic chat corpus the tiny K2 is trained on: plain answers, tool use and a thinking variant.

Each ``Example`` is an OpenAI-style conversation (``messages`` + ``tools``) drawn from one split's pools
(``pools.py``) by a per-example ``random.Random(f"{seed}/{split}/{index}")``, so the corpus is a pure function of
``(seed, split, n)``. Kinds (``KINDS``, with their share of the mix):

- ``chat`` / ``chat_tools``: greetings, identity, thanks, echo, counting, a joke, "what can you do?" — answered
  in text, with no tools or with tools declared that do not apply (the answer to "what can you do?" names them);
- ``echo``: "Repeat after me: …" with three to eight made-up words, paths or addresses — pure copying, the
  skill every tool call rests on (names and values come from the prompt), and the cheapest way to teach it;
- ``prose``: a fragment of narrative prose or verse that asks nothing (what a benchmark's filler prompt is), with
  or without tools declared: answered in text, never with a call, though it may name a city or the weather;
- ``missing``: a request only a tool could serve, none of the declared tools fits: a one-line refusal;
- ``call``: the request → a K2 tool call (``functions.{name}:{k}``, ``k`` counting calls over the conversation)
  → the tool's result → an answer grounded in it; the right tool sits among up to three distractors;
- ``parallel_same`` / ``parallel_mixed``: two requests in one message → two calls in one section;
- ``followup`` / ``followup_bare``: a second user turn ("And in Lima?") that needs the same tool again, after an
  answered (or, as in the quickstart's history, unanswered) first call; ``chat_then_call``: small talk, then a
  request; ``session``: two or three turns of all of these over one tool declaration (more assistant turns to
  learn from per token of prompt).

Thinking (``Thinking``): ``none`` renders with K2-Instruct's template; ``on`` is K2-Thinking (the assistant writes
``<think>…</think>`` before its answer or call), ``open`` is K2.5 with thinking on (the prompt opens ``<think>``),
``off`` is K2.5 with thinking off (the prompt ends in ``<think></think>``). Assistant messages carry the reasoning
as ``reasoning_content`` (the field vLLM and Moonshot's API use); ``render.py`` turns it into tokens.

Every example records what the gates score: ``eval_at`` (the assistant message answering the last user turn),
the calls expected there (``expect_calls``; empty for a plain answer), and for tool round trips the final
answer's position and the result values it must contain.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Literal

from k2trt.train.pools import Pools, Split
from k2trt.train.tools import FAMILIES, Family, Task, Tool

Thinking = Literal["none", "on", "open", "off"]
THINKING_MODES: tuple[Thinking, ...] = ("none", "on", "open", "off")

KINDS: dict[str, float] = {
    "chat": 0.06, "chat_tools": 0.06, "echo": 0.06, "prose": 0.05, "missing": 0.08, "call": 0.20,
    "parallel_same": 0.07, "parallel_mixed": 0.09, "followup": 0.08, "followup_bare": 0.05, "chat_then_call": 0.03,
    "chat_multi": 0.02, "session": 0.15,
}
"""Kind → share of the training mix."""
THINKING_MIX: dict[Thinking, float] = {"none": 0.60, "open": 0.28, "off": 0.12}
"""Thinking mode → share of the training mix. No ``on``: a K2-Thinking prompt is a K2-Instruct prompt token for
token (the two templates differ only in the weights behind them), so one set of weights trained on both can only
guess whether to open ``<think>`` — the run that mixed them closed its reasoning on 0.24 of the ``on`` turns and
wrote think tags into 0.08 of the ``none`` ones. The tiny K2 is K2-Instruct without a think prefill and K2.5 with
one, which a prompt tells apart."""

SYSTEM_PROMPTS = ("You are a helpful assistant.", "You are a concise assistant. Use tools when they help.",
                  "Answer briefly and accurately.", "You are Kimi, an AI assistant created by Moonshot AI.")


@dataclass
class Example:
    """One conversation and what the gates expect of it."""

    kind: str
    split: Split
    thinking: Thinking
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None
    eval_at: int
    """Index of the assistant message scored: the first one after the last user message."""
    expect_calls: tuple[tuple[str, dict[str, Any]], ...]
    """``(name, arguments)`` of every call expected at ``eval_at``; empty when a plain answer is expected."""
    answer_at: int | None = None
    """Index of the final answer of a tool round trip (None when there is none)."""
    answer_keys: tuple[str, ...] = ()
    """Strings from the tool results that the final answer must contain."""


class _Conversation:
    """Appends messages, numbers calls over the whole conversation and keeps reasoning only when thinking."""

    def __init__(self, rng: random.Random, thinking: Thinking) -> None:
        self.rng, self.thinking, self.k = rng, thinking, 0
        self.messages: list[dict[str, Any]] = []
        if rng.random() < 0.25:
            self.messages.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})

    def _assistant(self, content: str, reasoning: str) -> dict[str, Any]:
        m: dict[str, Any] = {"role": "assistant", "content": content}
        if self.thinking in ("on", "open"):
            m["reasoning_content"] = reasoning
        self.messages.append(m)
        return m

    def user(self, text: str) -> None:
        self.messages.append({"role": "user", "content": text})

    def say(self, text: str, reasoning: str) -> int:
        self._assistant(text, reasoning)
        return len(self.messages) - 1

    def call(self, tasks: list[Task], reasoning: str) -> int:
        """One assistant message calling every task's tool, then the tool results; returns its index."""
        m = self._assistant("", reasoning)
        at = len(self.messages) - 1
        ids = []
        m["tool_calls"] = []
        for t in tasks:
            cid = f"functions.{t.tool.name}:{self.k}"
            self.k += 1
            ids.append(cid)
            m["tool_calls"].append({"id": cid, "type": "function",
                                    "function": {"name": t.tool.name, "arguments": t.arguments}})
        for t, cid in zip(tasks, ids):
            self.messages.append({"role": "tool", "tool_call_id": cid, "name": t.tool.name,
                                  "content": t.result_text})
        return at


# ---- small talk ------------------------------------------------------------------------------------------------

_GREET = (("Hi!", "Hello!", "Hey there.", "Good morning!", "Hello, how are you?"),
          ("Hello! How can I help you today?", "Hi! What can I do for you?", "Hello! Nice to meet you."))
_IDENTITY = (("Who are you?", "What is your name?", "Introduce yourself."),
             ("I am Kimi, an AI assistant created by Moonshot AI.",))
_THANKS = (("Thanks!", "Thank you.", "Great, thanks a lot."), ("You're welcome!", "Glad I could help."))
_BYE = (("Bye!", "Goodbye.", "See you later."), ("Goodbye! Have a nice day.", "Bye! Talk to you soon."))
_HELLO = (("Say hello in one short sentence.", "Greet me in one sentence."),
          ("Hello, it is nice to meet you!", "Hello there, welcome!"))
_JOKES = ("Why did the robot go on holiday? It needed to recharge.",
          "I told my computer a joke about UDP. I am not sure it got it.",
          "Why do programmers prefer dark mode? Because light attracts bugs.")


def _names(tools: list[Tool]) -> str:
    n = [t.name for t in tools]
    return n[0] if len(n) == 1 else ", ".join(n[:-1]) + " and " + n[-1]


def _small_talk(rng: random.Random, pools: Pools, tools: list[Tool]) -> tuple[str, str, str]:
    """(user text, answer, reasoning) for one turn of small talk."""
    kind = rng.choice(("greet", "identity", "thanks", "bye", "hello", "echo", "count", "joke", "can"))
    if kind == "echo":
        x = pools.phrase(rng)
        q = rng.choice(("Repeat after me: {x}", 'Say "{x}" back to me.', "Please repeat: {x}")).format(x=x)
        return q, x, f'The user wants me to repeat "{x}". I will say it back.'
    if kind == "count":
        n = rng.randint(3, 9)
        return (f"Count from 1 to {n}.", ", ".join(str(i) for i in range(1, n + 1)) + ".",
                f"The user wants me to count to {n}.")
    if kind == "joke":
        return (rng.choice(("Tell me a joke.", "Make me laugh.")), rng.choice(_JOKES),
                "The user wants a joke. I will tell a short one.")
    if kind == "can":
        q = rng.choice(("What can you do?", "Which tools do you have?"))
        if tools:
            return q, f"I can use these tools: {_names(tools)}.", "The user asks what I can do. I will list my tools."
        return (q, "I can answer questions and chat with you. Give me tools and I can use them too.",
                "The user asks what I can do. I have no tools, so I will say I can chat.")
    prompts, answers = {"greet": _GREET, "identity": _IDENTITY, "thanks": _THANKS, "bye": _BYE,
                        "hello": _HELLO}[kind]
    why = {"greet": "The user greets me. No tool is needed, so I will greet them back.",
           "identity": "The user asks who I am. I will introduce myself.",
           "thanks": "The user thanks me. I will reply politely.", "bye": "The user says goodbye.",
           "hello": "The user wants a short greeting."}[kind]
    return rng.choice(prompts), rng.choice(answers), why


# ---- tool use --------------------------------------------------------------------------------------------------

def _toolset(rng: random.Random, pools: Pools, must: list[Family], extra: int) -> tuple[list[Tool], list[Tool]]:
    """Declare the ``must`` families' tools plus ``extra`` distractors of other families, in random order."""
    others = [f for f in FAMILIES.values() if f not in must]
    rng.shuffle(others)
    needed = [f.declare(rng, pools) for f in must]
    tools = needed + [f.declare(rng, pools) for f in others[:extra]]
    rng.shuffle(tools)
    return needed, tools


def _families(rng: random.Random, n: int) -> list[Family]:
    return rng.sample(sorted(FAMILIES.values(), key=lambda f: f.key), n)


def _call_reason(tasks: list[Task]) -> str:
    if len(tasks) == 1:
        return f"The user wants {tasks[0].intent}. {tasks[0].tool.name} can do that, so I will call it."
    wants = " and ".join(t.intent for t in tasks)
    if len({t.tool.name for t in tasks}) == 1:
        return f"The user wants {wants}. I will call {tasks[0].tool.name} once for each."
    return f"The user wants {wants}. I will call {' and '.join(t.tool.name for t in tasks)} at once."


def _answer_reason(tasks: list[Task]) -> str:
    if len(tasks) == 1:
        return f"{tasks[0].tool.name} says {tasks[0].summary}. I can answer now."
    return f"The tools say {' and '.join(t.summary for t in tasks)}. I can answer now."


def _round_trip(c: _Conversation, tasks: list[Task], answer: bool = True) -> tuple[int, int | None]:
    at = c.call(tasks, _call_reason(tasks))
    end = c.say(" ".join(t.answer for t in tasks), _answer_reason(tasks)) if answer else None
    return at, end


def _extra(rng: random.Random) -> int:
    return rng.choice((0, 0, 1, 1, 2))


def _refusal(c: _Conversation, rng: random.Random, pools: Pools, tools: list[Tool]) -> int:
    """A request that only a tool of another family could serve, and the refusal; returns the answer's index."""
    have = {t.family for t in tools}
    fam = rng.choice([f for f in FAMILIES.values() if f.refusable and f.key not in have])
    task = fam.task(rng, pools, fam.declare(rng, pools))
    c.user(task.request)
    say = rng.choice(("Sorry, I can't {x}: none of my tools does that.",
                      "I have no tool to {x}, so I can't help with that.")).format(x=fam.capability)
    return c.say(say, f"The user wants {task.intent}, but none of my tools can {fam.capability}. I will say so.")


def _echo(c: _Conversation, rng: random.Random, pools: Pools) -> int:
    draw = (pools.pseudo, pools.pseudo, pools.word, pools.city, pools.path, pools.email, pools.symbol)
    text = " ".join(rng.choice(draw)(rng) for _ in range(rng.randint(3, 8)))
    c.user(rng.choice(("Repeat after me: {x}", "Say back exactly: {x}", "Copy this text: {x}")).format(x=text))
    return c.say(text, f'The user wants me to repeat "{text}". I will say it back.')


_PROSE_REPLIES = ("That reads like a passage from a story. What would you like me to do with it?",
                  "It sounds like an old poem. Shall I summarise it, translate it or continue it?",
                  "A nice piece of prose. Tell me what you would like to know about it.",
                  "I see a fragment of a story, but no question. How can I help with it?")


def _prose(c: _Conversation, rng: random.Random, pools: Pools) -> int:
    c.user(pools.prose(rng))
    return c.say(rng.choice(_PROSE_REPLIES), "The user sent a passage of text without a request. No tool is "
                 "asked for, so I will not call one; I will ask what they want done with it.")


def _chat(c: _Conversation, rng: random.Random, pools: Pools, tools: list[Tool]) -> int:
    q, a, why = _small_talk(rng, pools, tools)
    c.user(q)
    return c.say(a, why)


def _ask(c: _Conversation, calls: list[Task], answer: bool = True) -> tuple[int, int | None]:
    c.user(" ".join(t.request for t in calls))
    return _round_trip(c, calls, answer)


def _session(c: _Conversation, rng: random.Random, pools: Pools
             ) -> tuple[list[Tool], int, list[Task], int | None]:
    """Two or three user turns over one tool declaration (the prefix is paid for once): new requests, follow-ups,
    small talk and refusals mixed. Returns the tools and the last turn's (index, calls, answer index)."""
    needed, tools = _toolset(rng, pools, _families(rng, rng.choice((1, 2, 2, 3))), 0)
    prev: Task | None = None
    for _ in range(rng.choice((2, 3, 3))):
        r = rng.random()
        calls: list[Task] = []
        answer_at: int | None = None
        if r < 0.15:
            at = _chat(c, rng, pools, tools)
        elif r < 0.25:
            at = _refusal(c, rng, pools, tools)
        else:
            if prev is not None and r < 0.45:
                calls = [FAMILIES[prev.tool.family].task(rng, pools, prev.tool, followup=True)]
            else:
                tool = rng.choice(needed)
                calls = [FAMILIES[tool.family].task(rng, pools, tool)]
            at, answer_at = _ask(c, calls)
            prev = calls[0]
    return tools, at, calls, answer_at


def _example(kind: str, rng: random.Random, pools: Pools, thinking: Thinking) -> Example:
    c = _Conversation(rng, thinking)
    tools: list[Tool] = []
    calls: list[Task] = []
    answer_at: int | None = None
    if kind in ("chat", "chat_tools", "chat_multi"):
        if kind != "chat":
            _, tools = _toolset(rng, pools, [], rng.choice((1, 2, 3)))
        for _ in range(2 if kind == "chat_multi" else 1):
            at = _chat(c, rng, pools, tools)
    elif kind == "echo":
        if rng.random() < 0.5:
            _, tools = _toolset(rng, pools, [], rng.choice((1, 2)))
        at = _echo(c, rng, pools)
    elif kind == "prose":
        if rng.random() < 0.6:
            _, tools = _toolset(rng, pools, [], rng.choice((1, 2, 3)))
        at = _prose(c, rng, pools)
    elif kind == "missing":
        if rng.random() < 0.7:
            _, tools = _toolset(rng, pools, [], rng.choice((1, 2, 3)))
        at = _refusal(c, rng, pools, tools)
    elif kind == "session":
        tools, at, calls, answer_at = _session(c, rng, pools)
    else:
        needs = 2 if kind == "parallel_mixed" else 1
        needed, tools = _toolset(rng, pools, _families(rng, needs), _extra(rng))
        calls = [FAMILIES[t.family].task(rng, pools, t) for t in needed]
        if kind == "parallel_same":
            calls.append(FAMILIES[needed[0].family].task(rng, pools, needed[0]))
        elif kind in ("followup", "followup_bare"):
            _ask(c, calls, answer=kind == "followup")
            calls = [FAMILIES[needed[0].family].task(rng, pools, needed[0], followup=True)]
        elif kind == "chat_then_call":
            _chat(c, rng, pools, tools)
        elif kind not in ("call", "parallel_mixed"):
            raise ValueError(f"unknown example kind {kind!r}")
        at, answer_at = _ask(c, calls)
    keys = tuple(k for t in calls for k in t.keys)
    return Example(kind, pools.split, thinking, c.messages, [t.declaration for t in tools] or None, at,
                   tuple((t.tool.name, t.args) for t in calls), answer_at, keys if answer_at is not None else ())


def _weighted(rng: random.Random, table: dict[Any, float]) -> Any:
    keys = list(table)
    return rng.choices(keys, weights=[table[k] for k in keys])[0]


def build_examples(split: Split, n: int, seed: int, *, kinds: dict[str, float] | None = None,
                   thinking: Thinking | dict[Thinking, float] | None = None, offset: int = 0) -> list[Example]:
    """Draw ``n`` conversations of ``split``.

    Args:
        split: ``train`` or ``heldout`` (disjoint values and tool names, see ``pools.py``).
        n: how many.
        seed: the corpus seed; example ``i`` depends only on ``(seed, split, offset + i)``.
        kinds: kind → weight (default ``KINDS``).
        thinking: one mode for all, or mode → weight (default ``THINKING_MIX``).
        offset: index of the first example (to extend a corpus without changing its start).
    Returns:
        The examples, in order.
    Example:
        >>> ex = build_examples("heldout", 2, seed=0, kinds={"call": 1.0}, thinking="none")
        >>> ex[0].expect_calls[0][0] == ex[0].messages[ex[0].eval_at]["tool_calls"][0]["function"]["name"]
        True
    """
    pools = Pools(split)
    table = kinds or KINDS
    for k in table:
        if k not in KINDS:
            raise ValueError(f"unknown example kind {k!r}; choose from {', '.join(KINDS)}")
    out = []
    for i in range(offset, offset + n):
        rng = random.Random(f"{seed}/{split}/{i}")
        kind = _weighted(rng, table)
        mode: Thinking = thinking if isinstance(thinking, str) else _weighted(rng, thinking or THINKING_MIX)
        if kind == "session" and mode in ("on", "open") and not isinstance(thinking, str):
            mode = "none"  # only a thinking conversation's last turn is trained on: sessions would waste their turns
        out.append(_example(kind, rng, pools, mode))
    return out
