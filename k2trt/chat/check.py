"""``k2trt chat check``: prove that our renderer matches a model directory's own chat template.

A built-in set of conversations (plain, system, the ``name`` field, list content, empty content, tools, a tool round
trip, several calls, unicode, no generation prompt) is rendered twice — by ``template.render`` and by the model's
``chat_template.jinja`` (or ``tokenizer_config.json``'s ``chat_template``) under Transformers' jinja settings — and
every differing region is reported with its byte offsets. A template that fails to render a conversation counts as a
difference too.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from k2trt.chat.template import render, render_with_jinja
from k2trt.errors import CheckpointError

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

    @property
    def ok(self) -> bool:
        return all(r.equal for r in self.results)

    def to_dict(self) -> dict[str, Any]:
        return {"template": self.template, "ok": self.ok, "results": [asdict(r) for r in self.results]}


def load_template(path: str | Path) -> tuple[str, str]:
    """A chat template from a model directory (``chat_template.jinja``, else ``tokenizer_config.json``'s
    ``chat_template``) or a template file. Returns ``(text, where it came from)``.

    Raises:
        CheckpointError: no template is found.
    """
    p = Path(path)
    if p.is_file():
        return p.read_text(encoding="utf-8"), str(p)
    if not p.is_dir():
        raise CheckpointError(f"{p} does not exist", "pass a model directory or a .jinja template file")
    if (p / "chat_template.jinja").is_file():
        return (p / "chat_template.jinja").read_text(encoding="utf-8"), str(p / "chat_template.jinja")
    cfg_path = p / "tokenizer_config.json"
    if cfg_path.is_file():
        try:
            tpl = json.loads(cfg_path.read_text(encoding="utf-8")).get("chat_template")
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{cfg_path} is not valid JSON ({e.msg})", "fix or re-copy the file") from None
        if isinstance(tpl, list):  # named templates: use "default"
            tpl = next((t.get("template") for t in tpl if isinstance(t, dict) and t.get("name") == "default"), None)
        if isinstance(tpl, str):
            return tpl, f"{cfg_path}:chat_template"
    raise CheckpointError(f"{p} has no chat template (neither chat_template.jinja nor tokenizer_config.json's "
                          "chat_template)", "copy the model's chat_template.jinja into the directory")


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
                   template_name: str = "<template>") -> CheckReport:
    """Render each conversation with ``render`` and with ``template_text``; report every difference.

    Args:
        template_text: the jinja chat template to compare against.
        conversations: name → {"messages", "tools"?, "add_generation_prompt"?}; default ``CONVERSATIONS``.
        template_name: where the template came from (for the report).

    Returns:
        A ``CheckReport``; ``report.ok`` is true when every render is byte-identical.

    Example:
        >>> from k2trt.chat.template import CHAT_TEMPLATE
        >>> check_template(CHAT_TEMPLATE).ok
        True
    """
    import jinja2

    results = []
    for name, conv in (conversations or CONVERSATIONS).items():
        msgs, tools = conv["messages"], conv.get("tools")
        agp = conv.get("add_generation_prompt", True)
        ours = render(msgs, tools, agp)
        try:
            theirs = render_with_jinja(template_text, msgs, tools, agp, bos_token="[BOS]", eos_token="[EOS]")
        except (jinja2.TemplateError, TypeError, KeyError, AttributeError, ValueError) as e:
            results.append(ConversationCheck(name, False, len(ours.encode()), 0,
                                             error=f"{type(e).__name__}: {e}"))
            continue
        diffs = diff_renders(ours, theirs)
        results.append(ConversationCheck(name, not diffs, len(ours.encode()), len(theirs.encode()), diffs))
    return CheckReport(template_name, results)
