"""``k2trt chat check``: prove that our renderer matches a model directory's own chat template.

The template's family is detected (``k2trt.chat.families``) or given. A built-in set of conversations (plain, system,
the ``name`` field, list content, empty content, tools, a tool round trip, several calls, unicode, no generation
prompt; and for the thinking families reasoning in the history and in the current tool-call loop, an empty
conversation, whitespace-exact reasoning and a pre-encoded ``tools_ts_str``) is rendered twice — by k2trt's renderer
for that family and by the template under Transformers' jinja settings, given the tools with sorted keys as Moonshot's
tokenizer hands them over — once per template switch the family has (``thinking=false``, ``preserve_thinking=true``),
and every differing region is reported with its byte offsets. A template that fails to render a conversation counts
as a difference too.
"""

from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass, field
from typing import Any

from k2trt.chat import families as fam
from k2trt.chat import thinking
from k2trt.chat.families import load_template
from k2trt.chat.template import render_with_jinja, sort_tools

__all__ = ["CONVERSATIONS", "THINKING_CONVERSATIONS", "CheckReport", "check_template", "diff_renders",
           "family_conversations", "load_template"]

_WEATHER = {"type": "function", "function": {
    "name": "get_weather",
    "description": "Get weather information. Call this tool when the user needs to get weather information",
    "parameters": {"type": "object", "required": ["city"],
                   "properties": {"city": {"type": "string", "description": "City name"}}}}}
_SEARCH = {"type": "function", "function": {
    "name": "web.search-v2", "description": "Search the web",
    "parameters": {"type": "object", "properties": {"query": {"type": "string"}, "limit": {"type": "integer"}},
                   "required": ["query"]}}}


def _call(k: int, name: str, args: Any) -> dict[str, Any]:
    return {"id": f"functions.{name}:{k}", "type": "function", "function": {"name": name, "arguments": args}}


def _tool(k: int, name: str, content: Any) -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": f"functions.{name}:{k}", "name": name, "content": content}


def _conversations() -> dict[str, dict[str, Any]]:
    u = {"role": "user", "content": "What's the weather like in Beijing today? Use the tool to check."}
    return {
        "plain": {"messages": [{"role": "user", "content": "Hello! Who are you?"}]},
        "system": {"messages": [{"role": "system", "content": "You are a terse assistant."},
                                {"role": "user", "content": "Name a prime."},
                                {"role": "assistant", "content": "7."},
                                {"role": "user", "content": "Another one."}]},
        "name_field": {"messages": [{"role": "system", "content": "Moderate the chat.", "name": "moderator"},
                                    {"role": "user", "content": "Hi, I'm Alice.", "name": "alice"},
                                    {"role": "assistant", "content": "Hello Alice!"},
                                    {"role": "user", "content": "And I'm Bob.", "name": "bob"}]},
        "list_content": {"messages": [
            {"role": "user", "content": [{"type": "text", "text": "Describe "},
                                         {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
                                         {"type": "text", "text": " in one line."}]},
            {"role": "assistant", "content": [{"type": "text", "text": "A red square."}]},
            {"role": "user", "content": [{"type": "text", "text": "Thanks."}]}]},
        "empty_content": {"messages": [{"role": "user", "content": "Say nothing."},
                                       {"role": "assistant", "content": ""},
                                       {"role": "user", "content": [{"type": "text", "text": ""}]}]},
        "tools": {"messages": [u], "tools": [_WEATHER, _SEARCH]},
        "tool_round_trip": {"tools": [_WEATHER], "messages": [
            u, {"role": "assistant", "content": "", "tool_calls": [_call(0, "get_weather", '{"city": "Beijing"}')]},
            _tool(0, "get_weather", '{"weather": "Sunny"}')]},
        "several_calls": {"tools": [_WEATHER, _SEARCH], "messages": [
            {"role": "user", "content": "Weather in Paris and Rome, then news about both."},
            {"role": "assistant", "content": "Checking both cities.", "tool_calls": [
                _call(0, "get_weather", {"city": "Paris"}), _call(1, "get_weather", '{"city":"Rome"}')]},
            _tool(0, "get_weather", "Rain, 14°C"), _tool(1, "get_weather", "Sun, 24°C"),
            {"role": "assistant", "content": "Paris: rain. Rome: sun.", "tool_calls": [
                _call(2, "web.search-v2", {"query": "Paris news", "limit": 3})]},
            _tool(2, "web.search-v2", "[]"),
            {"role": "assistant", "content": "No news found."},
            {"role": "user", "content": "Thanks"}]},
        "unicode": {"tools": [_WEATHER], "messages": [
            {"role": "system", "content": "用中文回答。"},
            {"role": "user", "content": "北京今天天气怎么样？😀 «quotes» \"double\" \\ backslash\n\tnew line"},
            {"role": "assistant", "content": "", "tool_calls": [_call(0, "get_weather", {"city": "北京"})]},
            _tool(0, "get_weather", "晴，25°C ☀️")]},
        "no_generation_prompt": {"add_generation_prompt": False, "messages": [
            {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"}]},
    }


CONVERSATIONS: dict[str, dict[str, Any]] = _conversations()
"""name → {"messages", optional "tools", optional "add_generation_prompt"} rendered by ``check_template``."""


def _thinking_conversations() -> dict[str, dict[str, Any]]:
    q1 = {"role": "user", "content": "Is 91 prime?"}
    a1 = {"role": "assistant", "content": "No: 91 = 7 × 13.", "reasoning_content": "Try 7: 7 × 13 = 91."}
    q2 = {"role": "user", "content": "Weather in Paris and Rome?"}
    call1 = {"role": "assistant", "content": "Checking Paris first.", "reasoning_content": "Two cities; one call "
             "each.", "tool_calls": [_call(0, "get_weather", '{"city": "Paris"}')]}
    call2 = {"role": "assistant", "content": "", "reasoning_content": "Paris done; now Rome.",
             "tool_calls": [_call(1, "get_weather", {"city": "Rome"})]}
    return {
        "reasoning_history": {"tools": [_WEATHER], "messages": [
            {"role": "system", "content": "Think briefly."}, q1, a1, q2, call1,
            _tool(0, "get_weather", "Rain, 14°C"), call2, _tool(1, "get_weather", "Sun, 24°C")]},
        "reasoning_two_answers": {"messages": [q1, a1, {"role": "user", "content": "And 97?"},
                                               {"role": "assistant", "content": "97 is prime.",
                                                "reasoning_content": "No factor up to 9."},
                                               {"role": "user", "content": "Thanks."}]},
        "reasoning_last_turn": {"add_generation_prompt": False, "messages": [q1, a1]},
        "reasoning_whitespace": {"messages": [
            q2, {"role": "assistant", "content": "\n\nLet me look.", "reasoning_content": "\n  用中文想：先查天气。\n",
                 "tool_calls": [_call(0, "get_weather", {"city": "巴黎"})]},
            _tool(0, "get_weather", "晴")], "tools": [_WEATHER]},
        "empty_conversation": {"messages": []},
        "tools_ts": {"messages": [q2], "tools": [_WEATHER],
                     "tools_ts": "# Tools\n\n## functions\nnamespace functions {\n// Get weather\n"
                                 "type get_weather = (_: {city: string}) => any;\n}"},
    }


THINKING_CONVERSATIONS: dict[str, dict[str, Any]] = _thinking_conversations()
"""Extra conversations for the thinking families (reasoning history rules, ``tools_ts``); same shape as
``CONVERSATIONS`` plus an optional "tools_ts" (a pre-encoded declaration, passed to templates as
``tools_ts_str``)."""

SWITCHES: dict[str, tuple[dict[str, bool], ...]] = {
    "k2-instruct": ({},), "k2-thinking": ({},), "k2.5": ({}, {"thinking": False}),
    "k2.6": ({}, {"thinking": False}, {"preserve_thinking": True}, {"thinking": False, "preserve_thinking": True}),
    "k2.7-code": ({},)}
"""The template switches each family is checked under (as ``chat_template_kwargs``)."""


def _has_image(conv: dict[str, Any]) -> bool:
    return any(isinstance(m.get("content"), list) and any(isinstance(p, dict) and p.get("type") == "image_url"
                                                          for p in m["content"]) for m in conv["messages"])


def family_conversations(family: fam.Family) -> dict[str, dict[str, Any]]:
    """Every conversation (with its template switches, key ``kwargs``) ``check_template`` renders for ``family``:
    names carry the switches, e.g. ``reasoning_history[thinking=false]``."""
    if not family.thinks:
        return dict(CONVERSATIONS)
    base = {**CONVERSATIONS, **THINKING_CONVERSATIONS}
    out = {}
    for name, conv in base.items():
        if (_has_image(conv) and family.name != "k2-thinking") or ("tools_ts" in conv and not family.tools_ts):
            continue  # K2.5+ images need the vision encoder; tools_ts_str exists from K2.5 on
        for kw in SWITCHES[family.name]:
            label = name + ("[" + ",".join(f"{k}={str(v).lower()}" for k, v in kw.items()) + "]" if kw else "")
            out[label] = {**conv, "kwargs": kw}
    return out


@dataclass
class Difference:
    """One differing region: ``ours[ours_start:ours_end]`` vs ``theirs[theirs_start:theirs_end]`` (byte offsets)."""
    kind: str  # replace | delete (only in ours) | insert (only in theirs)
    ours_start: int
    ours_end: int
    theirs_start: int
    theirs_end: int
    ours: str
    theirs: str


@dataclass
class ConversationCheck:
    """The result of rendering one conversation both ways."""
    name: str
    equal: bool
    ours_bytes: int
    theirs_bytes: int
    differences: list[Difference] = field(default_factory=list)
    error: str | None = None
    """The template's rendering error, if it failed."""


@dataclass
class CheckReport:
    """``check_template``'s result for a whole template."""
    template: str
    results: list[ConversationCheck]
    family: str = "k2-instruct"
    """The family the template was checked as (detected, or given)."""

    @property
    def ok(self) -> bool:
        return all(r.equal for r in self.results)

    def to_dict(self) -> dict[str, Any]:
        return {"template": self.template, "family": self.family, "ok": self.ok,
                "results": [asdict(r) for r in self.results]}


def _byte_offset(s: str, i: int, cache: dict[int, int]) -> int:
    if i not in cache:
        cache[i] = len(s[:i].encode("utf-8"))
    return cache[i]


def diff_renders(ours: str, theirs: str) -> list[Difference]:
    """Every differing region between two renders, with byte offsets and the differing text."""
    sm = difflib.SequenceMatcher(None, ours, theirs, autojunk=False)
    out: list[Difference] = []
    co: dict[int, int] = {}
    ct: dict[int, int] = {}
    for tag, i1, i2, j1, j2 in sm.get_opcodes():
        if tag == "equal":
            continue
        out.append(Difference(tag, _byte_offset(ours, i1, co), _byte_offset(ours, i2, co),
                              _byte_offset(theirs, j1, ct), _byte_offset(theirs, j2, ct), ours[i1:i2], theirs[j1:j2]))
    return out


def check_template(template_text: str, conversations: dict[str, dict[str, Any]] | None = None, *,
                   template_name: str = "<template>", family: str | None = None) -> CheckReport:
    """Render each conversation with k2trt's renderer and with ``template_text``; report every difference.

    Args:
        template_text: the jinja chat template to compare against.
        conversations: name → {"messages", "tools"?, "add_generation_prompt"?, "kwargs"?, "tools_ts"?}; default
            ``family_conversations(family)``.
        template_name: where the template came from (for the report).
        family: the family to render as; default: detected from ``template_text`` (``families.detect``).

    Returns:
        A ``CheckReport``; ``report.ok`` is true when every render is byte-identical.

    Example:
        >>> from k2trt.chat.template import CHAT_TEMPLATE
        >>> check_template(CHAT_TEMPLATE).ok
        True
    """
    import jinja2

    f = fam.family(family) if family else fam.detect(template_text)
    results = []
    for name, conv in (conversations or family_conversations(f)).items():
        msgs, tools = conv["messages"], conv.get("tools")
        agp = conv.get("add_generation_prompt", True)
        kw = dict(conv.get("kwargs") or {})
        ours = thinking.render(msgs, tools, family=f, add_generation_prompt=agp, tools_ts=conv.get("tools_ts"), **kw)
        if conv.get("tools_ts") is not None:
            kw["tools_ts_str"] = conv["tools_ts"]
        try:
            # the template gets the tools as Moonshot's tokenizer hands them over: keys sorted (sort_tools)
            theirs = render_with_jinja(template_text, msgs, sort_tools(tools) if tools else None, agp,
                                       bos_token="[BOS]", eos_token="[EOS]", **kw)
        except (jinja2.TemplateError, TypeError, KeyError, AttributeError, ValueError) as e:
            results.append(ConversationCheck(name, False, len(ours.encode()), 0,
                                             error=f"{type(e).__name__}: {e}"))
            continue
        diffs = diff_renders(ours, theirs)
        results.append(ConversationCheck(name, not diffs, len(ours.encode()), len(theirs.encode()), diffs))
    return CheckReport(template_name, results, f.name)
