"""Tool families of the synthetic corpus: a declaration, a request that needs it, its call, result and answer.

A *family* is a kind of tool (weather, read a file, web search, …). ``declare`` draws one concrete tool of the
family — a name (``Pools.tool_name``: a held-out name is never seen in training), a one-line description (how the
model recognises the tool when its name is new) and parameter names from the family's synonyms — and ``task``
draws one use of it: values from the split's pools, the user's words, the JSON arguments (valid for the declared
schema by construction; ``tests/unit/test_train_corpus.py`` validates them with jsonschema), the tool's result and
an answer grounded in it, plus the phrases the thinking variant reasons with. ``task(..., followup=True)`` phrases
the request as a short follow-up ("And in Lima?") that only makes sense after an earlier call of the same tool.

Descriptions are deliberately short: K2's template declares tools as JSON in the prompt, and every token of it is
paid for on every training step.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any, Callable

from k2trt.train.pools import CONDITIONS, EXTENSIONS, Pools, clock, date


@dataclass(frozen=True)
class Tool:
    """One declared tool: its name, the parameter name chosen for each role, and the OpenAI declaration."""

    family: str
    name: str
    keys: dict[str, str]
    """Role in the family (``city``, ``unit``, …) → the parameter name this declaration uses."""
    declaration: dict[str, Any]
    """``{"type": "function", "function": {"name", "description", "parameters"}}``."""

    @property
    def schema(self) -> dict[str, Any]:
        return self.declaration["function"]["parameters"]


@dataclass(frozen=True)
class Task:
    """One use of a tool, with everything a conversation about it needs."""

    tool: Tool
    args: dict[str, Any]
    request: str
    result: dict[str, Any]
    answer: str
    intent: str
    """What the user wants, for reasoning: ``the weather in Oslo``."""
    summary: str
    """What the result says, for reasoning: ``12 degrees and cloudy``."""
    keys: tuple[str, ...] = ()
    """Strings a grounded answer must contain (values from the result)."""

    @property
    def arguments(self) -> str:
        """The arguments as K2 writes them (``json.dumps``: ``{"city": "Oslo"}``)."""
        return json.dumps(self.args, ensure_ascii=False)

    @property
    def result_text(self) -> str:
        return json.dumps(self.result, ensure_ascii=False)


@dataclass(frozen=True)
class Family:
    """A kind of tool: naming vocabulary, descriptions, parameter synonyms per role, and the task builder."""

    key: str
    verbs: tuple[str, ...]
    nouns: tuple[str, ...]
    descriptions: tuple[str, ...]
    params: dict[str, tuple[tuple[str, ...], dict[str, Any], bool]]
    """Role → (parameter-name synonyms, JSON-schema type, required)."""
    build: Callable[[random.Random, Pools, Tool, bool], Task]
    capability: str
    """What the tool lets the assistant do (``check the weather``), for the refusal when it is missing."""
    refusable: bool = True
    """Whether a request of this kind without the tool is answered with a refusal (not arithmetic)."""

    def declare(self, rng: random.Random, pools: Pools) -> Tool:
        """A concrete tool of this family for ``pools``'s split. Like real clients' schemas, some give their
        properties a description and some list ``required`` before ``properties``."""
        keys = {role: rng.choice(names) for role, (names, _, _) in self.params.items()}
        described = rng.random() < 0.2
        props = {keys[role]: dict(typ) | ({"description": role.capitalize()} if described else {})
                 for role, (_, typ, _) in self.params.items()}
        required = [keys[role] for role, (_, _, req) in self.params.items() if req]
        name = pools.tool_name(rng, self.verbs, self.nouns)
        params: dict[str, Any] = {"type": "object", "properties": props, "required": required}
        if rng.random() < 0.3:
            params = {"type": "object", "required": required, "properties": props}
        decl = {"type": "function", "function": {"name": name, "description": rng.choice(self.descriptions),
                                                 "parameters": params}}
        return Tool(self.key, name, keys, decl)

    def task(self, rng: random.Random, pools: Pools, tool: Tool, followup: bool = False) -> Task:
        """One use of ``tool``; ``followup`` phrases the request as a short follow-up question."""
        return self.build(rng, pools, tool, followup)


def _pick(rng: random.Random, options: tuple[str, ...], **values: Any) -> str:
    return rng.choice(options).format(**values)


def _weather(rng: random.Random, p: Pools, t: Tool, followup: bool) -> Task:
    city = p.city(rng)
    unit = rng.choice(("celsius", "fahrenheit")) if rng.random() < 0.4 and not followup else None
    deg = rng.randint(-10, 35) if unit != "fahrenheit" else rng.randint(14, 95)
    cond = rng.choice(CONDITIONS)
    args: dict[str, Any] = {t.keys["city"]: city}
    if unit:
        args[t.keys["unit"]] = unit
        request = _pick(rng, ("What is the temperature in {c} in {u}?", "How warm is it in {c}? Use {u}.",
                              "Tell me the weather in {c} in {u}."), c=city, u=unit)
    elif followup:
        request = _pick(rng, ("And in {c}?", "What about {c}?", "How about {c}?"), c=city)
    else:
        request = _pick(rng, ("What's the weather in {c}?", "How is the weather in {c} today?",
                              "Is it raining in {c} right now?", "Tell me the weather for {c}.",
                              "What is the temperature in {c}?"), c=city)
    answer = _pick(rng, ("It is {d} degrees and {w} in {c}.", "The weather in {c} is {w}, {d} degrees."),
                   d=deg, w=cond, c=city)
    return Task(t, args, request, {"temperature": deg, "condition": cond}, answer, f"the weather in {city}",
                f"{deg} degrees and {cond}", (str(deg), cond))


def _time(rng: random.Random, p: Pools, t: Tool, followup: bool) -> Task:
    city, now = p.city(rng), clock(rng)
    request = _pick(rng, ("And in {c}?", "What about {c}?") if followup else (
        "What time is it in {c}?", "What's the local time in {c}?", "Tell me the current time in {c}."), c=city)
    return Task(t, {t.keys["city"]: city}, request, {"time": now}, f"It is {now} in {city}.",
                f"the local time in {city}", f"it is {now} there", (now,))


def _read_file(rng: random.Random, p: Pools, t: Tool, followup: bool) -> Task:
    path, text = p.path(rng), p.phrase(rng)
    request = _pick(rng, ("Now read {f}.", "And {f}?") if followup else (
        "Show me the contents of {f}.", "Read the file {f}.", "What does {f} say?",
        "Open {f} and tell me what is inside."), f=path)
    answer = _pick(rng, ("The file {f} says: {x}", "{f} contains: {x}"), f=path, x=text)
    return Task(t, {t.keys["path"]: path}, request, {"content": text}, answer, f"to read {path}",
                f"the file says {text}", (text,))


def _list_dir(rng: random.Random, p: Pools, t: Tool, followup: bool) -> Task:
    path = p.directory(rng)
    files = [f"{p.word(rng)}.{rng.choice(EXTENSIONS)}" for _ in range(rng.choice((1, 2, 3)))]
    deep = rng.random() < 0.3 and not followup
    args: dict[str, Any] = {t.keys["path"]: path}
    if deep:
        args[t.keys["recursive"]] = True
        request = _pick(rng, ("List every file under {d}, including subfolders.",
                              "Show all files in {d} recursively."), d=path)
    else:
        request = _pick(rng, ("And in {d}?", "Now list {d}.") if followup else (
            "List the files in {d}.", "What files are in {d}?", "Show me the folder {d}."), d=path)
    listing = files[0] if len(files) == 1 else ", ".join(files[:-1]) + " and " + files[-1]
    return Task(t, args, request, {"files": files}, f"{path} holds {listing}.", f"the files in {path}",
                f"it holds {listing}", tuple(files))


def _search(rng: random.Random, p: Pools, t: Tool, followup: bool) -> Task:
    q = p.query(rng)
    limit = rng.choice((1, 2, 3, 5, 10)) if rng.random() < 0.35 and not followup else None
    title = f"{rng.choice(('Guide to', 'News on', 'Basics of', 'All about'))} {q}"
    url = f"https://{p.pseudo(rng, 2)}.com/{p.word(rng)}"
    args: dict[str, Any] = {t.keys["query"]: q}
    if limit:
        args[t.keys["limit"]] = limit
        request = _pick(rng, ("Find the top {n} results for {q}.", "Search for {q} and give me {n} results."),
                        n=limit, q=q)
    else:
        request = _pick(rng, ("Now search for {q}.", "And {q}?") if followup else (
            "Search the web for {q}.", "Look up {q} online.", "Find information about {q}."), q=q)
    return Task(t, args, request, {"results": [{"title": title, "url": url}]},
                f'The top result is "{title}" at {url}.', f"a web search for {q}", f"the top result is {title}",
                (title, url))


_FACTORS = {("km", "miles"): 0.621371, ("miles", "km"): 1.609344, ("kg", "pounds"): 2.204623,
            ("pounds", "kg"): 0.453592, ("liters", "gallons"): 0.264172, ("gallons", "liters"): 3.785412,
            ("meters", "feet"): 3.28084, ("feet", "meters"): 0.3048, ("inches", "cm"): 2.54, ("cm", "inches"): 0.393701}


def _convert(rng: random.Random, p: Pools, t: Tool, followup: bool) -> Task:
    (a, b), f = rng.choice(sorted(_FACTORS.items()))
    v: int | float = rng.randint(1, 500) if rng.random() < 0.7 else round(rng.uniform(0.5, 99.5), 1)
    r = round(v * f, 2)
    args = {t.keys["value"]: v, t.keys["from"]: a, t.keys["to"]: b}
    request = _pick(rng, ("And {v} {a}?",) if followup else (
        "Convert {v} {a} to {b}.", "How many {b} is {v} {a}?", "What is {v} {a} in {b}?"), v=v, a=a, b=b)
    return Task(t, args, request, {"result": r}, f"{v} {a} is {r} {b}.", f"to convert {v} {a} to {b}",
                f"the result is {r}", (str(r),))


def _stock(rng: random.Random, p: Pools, t: Tool, followup: bool) -> Task:
    sym, price = p.symbol(rng), round(rng.uniform(5, 900), 2)
    request = _pick(rng, ("And {s}?", "What about {s}?") if followup else (
        "What is {s} trading at?", "Get me the stock price of {s}.", "How much is one share of {s}?"), s=sym)
    return Task(t, {t.keys["symbol"]: sym}, request, {"price": price, "currency": "USD"},
                f"{sym} is trading at {price} USD.", f"the stock price of {sym}", f"{sym} costs {price} USD",
                (str(price),))


def _email(rng: random.Random, p: Pools, t: Tool, followup: bool) -> Task:
    to, subject = p.email(rng), p.phrase(rng)
    body = p.phrase(rng) if rng.random() < 0.3 and not followup else None
    args: dict[str, Any] = {t.keys["to"]: to, t.keys["subject"]: subject}
    if body:
        args[t.keys["body"]] = body
        request = f'Email {to} with the subject "{subject}" and say: {body}'
    else:
        request = _pick(rng, ('Also email {a} with the subject "{s}".',) if followup else (
            'Send an email to {a} with the subject "{s}".', "Email {a} about {s}."), a=to, s=subject)
    mid = f"msg-{rng.randint(100, 999)}"
    return Task(t, args, request, {"status": "sent", "id": mid}, f"Done: the email to {to} was sent.",
                f"to email {to}", "the email was sent", (to,))


def _reminder(rng: random.Random, p: Pools, t: Tool, followup: bool) -> Task:
    task, day = p.task(rng), date(rng)
    at = clock(rng) if rng.random() < 0.4 else None
    args: dict[str, Any] = {t.keys["title"]: task, t.keys["date"]: day}
    if at:
        args[t.keys["time"]] = at
    when = f"{day} at {at}" if at else day
    request = _pick(rng, ("Also remind me to {x} on {w}.",) if followup else (
        "Remind me to {x} on {w}.", "Set a reminder to {x} on {w}."), x=task, w=when)
    return Task(t, args, request, {"ok": True, "id": rng.randint(1, 999)}, f"I set a reminder to {task} on {when}.",
                f"a reminder to {task} on {when}", "the reminder is set", (task,))


_OPS = (("plus", "+", lambda a, b: a + b), ("minus", "-", lambda a, b: a - b), ("times", "*", lambda a, b: a * b))


def _calculate(rng: random.Random, p: Pools, t: Tool, followup: bool) -> Task:
    a, b = rng.randint(2, 999), rng.randint(2, 99)
    word, sym, fn = rng.choice(_OPS)
    expr, value = f"{a} {sym} {b}", fn(a, b)
    request = _pick(rng, ("And {a} {w} {b}?",) if followup else (
        "What is {a} {w} {b}?", "Calculate {a} {w} {b}.", "Compute {e}."), a=a, w=word, b=b, e=expr)
    return Task(t, {t.keys["expression"]: expr}, request, {"value": value}, f"{a} {word} {b} is {value}.",
                f"{a} {word} {b}", f"the value is {value}", (str(value),))


def _translate(rng: random.Random, p: Pools, t: Tool, followup: bool) -> Task:
    text, lang = p.phrase(rng), p.language(rng)
    out = " ".join(p.pseudo(rng, 2) for _ in range(len(text.split())))
    request = _pick(rng, ('And "{x}"?',) if followup else (
        'Translate "{x}" into {l}.', 'How do you say "{x}" in {l}?'), x=text, l=lang)
    return Task(t, {t.keys["text"]: text, t.keys["language"]: lang}, request, {"translation": out},
                f'In {lang}, "{text}" is "{out}".', f'"{text}" in {lang}', f"the translation is {out}", (out,))


_S = {"type": "string"}
FAMILIES: dict[str, Family] = {f.key: f for f in (
    Family("weather", ("get", "fetch", "check", "lookup", "query", "current"),
           ("weather", "forecast", "conditions", "temperature"),
           ("Get the current weather for a city.", "Look up the weather in a place.", "Current weather report."),
           {"city": (("city", "location", "place"), _S, True),
            "unit": (("unit", "units", "scale"), {"type": "string", "enum": ["celsius", "fahrenheit"]}, False)},
           _weather, "check the weather"),
    Family("time", ("get", "fetch", "check", "current", "local"), ("time", "clock", "local_time", "hour"),
           ("Get the current local time in a city.", "Tell the local time of a place."),
           {"city": (("city", "location"), _S, True)}, _time, "tell the time"),
    Family("read_file", ("read", "open", "load", "cat", "fetch"), ("file", "text", "document", "contents"),
           ("Read a text file and return its contents.", "Return the contents of a file."),
           {"path": (("path", "file_path", "filename"), _S, True)}, _read_file, "read files"),
    Family("list_dir", ("list", "show", "scan", "browse"), ("directory", "folder", "files", "dir"),
           ("List the files in a directory.", "Show what a folder contains."),
           {"path": (("path", "directory", "folder"), _S, True),
            "recursive": (("recursive", "deep"), {"type": "boolean"}, False)}, _list_dir, "list directories"),
    Family("search", ("search", "find", "query", "lookup"), ("web", "internet", "pages", "docs", "news"),
           ("Search the web and return the top results.", "Web search."),
           {"query": (("query", "q", "terms"), _S, True),
            "limit": (("limit", "max_results", "count"), {"type": "integer"}, False)}, _search, "search the web"),
    Family("convert", ("convert", "change", "transform"), ("units", "measure", "quantity", "unit"),
           ("Convert a value from one unit to another.", "Unit conversion."),
           {"value": (("value", "amount", "quantity"), {"type": "number"}, True),
            "from": (("from_unit", "source_unit", "from"), _S, True),
            "to": (("to_unit", "target_unit", "to"), _S, True)}, _convert, "convert units"),
    Family("stock", ("get", "fetch", "quote", "check"), ("stock", "price", "ticker", "quote"),
           ("Get the latest stock price for a ticker symbol.", "Stock quote by ticker."),
           {"symbol": (("symbol", "ticker"), _S, True)}, _stock, "look up stock prices"),
    Family("email", ("send", "write", "compose", "post"), ("email", "mail", "message"),
           ("Send an email.", "Send an email to a recipient."),
           {"to": (("to", "recipient", "address"), _S, True), "subject": (("subject", "title"), _S, True),
            "body": (("body", "text", "message"), _S, False)}, _email, "send emails"),
    Family("reminder", ("create", "add", "set", "schedule"), ("reminder", "event", "alarm", "todo"),
           ("Create a reminder on a date (YYYY-MM-DD).", "Schedule a reminder."),
           {"title": (("title", "task", "text"), _S, True), "date": (("date", "day"), _S, True),
            "time": (("time", "at"), _S, False)}, _reminder, "set reminders"),
    Family("calculate", ("calculate", "compute", "evaluate", "eval"), ("expression", "math", "sum", "numbers"),
           ("Evaluate an arithmetic expression.", "Calculator."),
           {"expression": (("expression", "expr", "formula"), _S, True)}, _calculate, "do calculations",
           refusable=False),
    Family("translate", ("translate", "render", "convert"), ("text", "language", "phrase"),
           ("Translate text into another language.", "Translator."),
           {"text": (("text", "source_text"), _S, True),
            "language": (("target_language", "language", "to"), _S, True)}, _translate, "translate text"),
)}
