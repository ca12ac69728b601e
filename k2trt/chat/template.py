"""K2's chat template: a Python renderer of the canonical structure, its jinja twin, and ID normalisation.

The structure (kimi_formats.md §4.4) rendered here and by ``CHAT_TEMPLATE``::

    [tools]      <|im_system|>tool_declare<|im_middle|>{tools as compact JSON, keys sorted}<|im_end|>
    [first message is not system]
                 <|im_system|>system<|im_middle|>You are Kimi, an AI assistant created by Moonshot AI.<|im_end|>
    user         <|im_user|>{NAME}<|im_middle|>{content}<|im_end|>
    assistant    <|im_assistant|>{NAME}<|im_middle|>{content}[<|tool_calls_section_begin|>
                    (<|tool_call_begin|>{id}<|tool_call_argument_begin|>{args}<|tool_call_end|>)*
                 <|tool_calls_section_end|>]<|im_end|>
    system/other <|im_system|>{NAME}<|im_middle|>{content}<|im_end|>
    tool         <|im_system|>{NAME}<|im_middle|>## Return of {tool_call_id}\\n{content}<|im_end|>
    [generation] <|im_assistant|>assistant<|im_middle|>

``NAME`` is ``message["name"]`` when set, else the role. Content is a string, ``None`` (nothing) or a list of
parts (text parts concatenated, image parts as K2's media placeholder) — never the repr of a list. Tool-call
``arguments`` go in verbatim when a string, else as ``json.dumps(..., ensure_ascii=False)``.

``render_ids`` encodes the message text as plain text and only the markers the template writes as control tokens,
so a user who types ``<|im_end|>`` cannot forge a turn. ``normalize_tool_call_ids`` rewrites client IDs
(``call_…``, ``toolu_…``) to ``functions.{name}:{k}`` with a conversation-wide counter (§4.5).
"""

from __future__ import annotations

import copy
import json
from typing import Any, Mapping, Sequence

from k2trt.chat import vocab
from k2trt.errors import K2trtError

DEFAULT_SYSTEM_PROMPT = "You are Kimi, an AI assistant created by Moonshot AI."
MEDIA_PLACEHOLDER = "<|media_start|>image<|media_content|><|media_pad|><|media_end|>"  # plain text in K2
GENERATION_PROMPT = f"{vocab.IM_ASSISTANT}assistant{vocab.IM_MIDDLE}"

Message = Mapping[str, Any]


class ChatFormatError(K2trtError, ValueError):
    """A chat message or tool declaration cannot be rendered (bad role, content or tool call)."""


# The jinja twin of ``render`` (byte for byte; a test renders both): it ships in the tokenizer files vocab writes,
# so it lives there.
CHAT_TEMPLATE = vocab.CHAT_TEMPLATE


def _content_text(content: Any, where: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, (list, tuple)):
        out = []
        for part in content:
            if not isinstance(part, Mapping):
                raise ChatFormatError(f"{where}: a content part is {type(part).__name__}, not an object",
                                      'use {"type": "text", "text": "…"} parts')
            if part.get("type") == "image" or "image" in part or "image_url" in part:
                out.append(MEDIA_PLACEHOLDER)
            elif part.get("text") is not None:
                out.append(str(part["text"]))
        return "".join(out)
    raise ChatFormatError(f"{where}: content is {type(content).__name__}",
                          "content must be a string, null or a list of parts")


def _json(obj: Any, where: str, **kw: Any) -> str:
    try:
        return json.dumps(obj, ensure_ascii=False, **kw)
    except (TypeError, ValueError) as e:
        raise ChatFormatError(f"{where} is not JSON-serialisable ({e})", "send plain JSON values") from None


def sort_tools(tools: Sequence[Any]) -> list[Any]:
    """``tools`` with every object's keys sorted, recursively (lists keep their order).

    Moonshot's K2 tokenizers do this (``deep_sort_dict`` in their ``apply_chat_template``) before the chat template
    writes the ``tool_declare`` turn, and TensorRT-LLM's and vLLM's chat paths call that ``apply_chat_template``: a
    served K2 sees ``{"function":{"description":…,"name":…,"parameters":…},"type":"function"}`` whatever order the
    client sent. ``docs/reference/k2_tool_declarations.md`` lists the evidence per family.
    """
    def deep(x: Any) -> Any:
        if isinstance(x, Mapping):
            return {k: deep(x[k]) for k in sorted(x)}
        return [deep(v) for v in x] if isinstance(x, list) else x

    return [deep(t) for t in tools]


def tools_json(tools: Sequence[Any]) -> str:
    """The ``tool_declare`` turn's text: ``sort_tools`` as compact JSON, as the template's
    ``tojson(separators=(',', ':'))`` writes it."""
    return _json(sort_tools(tools), "tools", separators=(",", ":"))


def _turn(marker: str, name: str) -> list[tuple[str, bool]]:
    """The opening of a turn: role marker, sub-role name (plain text), ``<|im_middle|>``."""
    return [(marker, True), (name, False), (vocab.IM_MIDDLE, True)]


def _segments(messages: Sequence[Message], tools: Sequence[Any] | None,
              add_generation_prompt: bool) -> list[tuple[str, bool]]:
    """The render as (text, is_control_marker) pieces, in order."""
    v = vocab
    end = (v.IM_END, True)
    seg: list[tuple[str, bool]] = []
    if tools:
        seg += _turn(v.IM_SYSTEM, "tool_declare")
        seg += [(tools_json(tools), False), end]
    for n, m in enumerate(messages):
        where = f"messages[{n}]"
        if not isinstance(m, Mapping) or not isinstance(m.get("role"), str):
            raise ChatFormatError(f"{where} has no string 'role'", "each message needs a role such as 'user'")
        role = m["role"]
        if n == 0 and role != "system":
            seg += _turn(v.IM_SYSTEM, "system") + [(DEFAULT_SYSTEM_PROMPT, False), end]
        marker = v.IM_USER if role == "user" else v.IM_ASSISTANT if role == "assistant" else v.IM_SYSTEM
        seg += _turn(marker, str(m.get("name") or role))
        if role == "tool":
            seg.append((f"## Return of {m.get('tool_call_id') or ''}\n", False))
        seg.append((_content_text(m.get("content"), where), False))
        calls = m.get("tool_calls") if role == "assistant" else None
        if calls:
            seg.append((v.SECTION_BEGIN, True))
            for k, tc in enumerate(calls):
                fn = tc.get("function") if isinstance(tc, Mapping) else None
                if not isinstance(fn, Mapping) or "arguments" not in fn:
                    raise ChatFormatError(f"{where}.tool_calls[{k}] has no function.arguments",
                                          'use {"id", "type": "function", "function": {"name", "arguments"}}')
                args = fn["arguments"]
                args = args if isinstance(args, str) else _json(args, f"{where}.tool_calls[{k}] arguments")
                seg += [(v.CALL_BEGIN, True), (str(tc.get("id") or ""), False), (v.ARG_BEGIN, True),
                        (args, False), (v.CALL_END, True)]
            seg.append((v.SECTION_END, True))
        seg.append(end)
    if add_generation_prompt:
        seg += _turn(v.IM_ASSISTANT, "assistant")
    return seg


def render(messages: Sequence[Message], tools: Sequence[Any] | None = None,
           add_generation_prompt: bool = True) -> str:
    """Render a conversation to K2's prompt text (the canonical structure in the module docstring).

    Args:
        messages: OpenAI-style messages (``role``, ``content``, optional ``name``, ``tool_calls``,
            ``tool_call_id``). Normalise tool-call IDs first with ``normalize_tool_call_ids``.
        tools: the OpenAI ``tools`` array, rendered as compact JSON with sorted keys (``tools_json``) in a
            ``tool_declare`` turn.
        add_generation_prompt: end with ``<|im_assistant|>assistant<|im_middle|>``.

    Returns:
        The prompt text.

    Raises:
        ChatFormatError: a message cannot be rendered.

    Example:
        >>> render([{"role": "user", "content": "hi"}])[-50:]
        'hi<|im_end|><|im_assistant|>assistant<|im_middle|>'
    """
    return "".join(t for t, _ in _segments(messages, tools, add_generation_prompt))


def render_ids(tokenizer: Any, messages: Sequence[Message], tools: Sequence[Any] | None = None,
               add_generation_prompt: bool = True) -> list[int]:
    """Render and tokenise: template markers become control tokens, all message text is encoded as plain text.

    Args:
        tokenizer: a ``K2Tokenizer``.
        messages, tools, add_generation_prompt: as for ``render``.

    Returns:
        Token ids; ``tokenizer.decode(ids) == render(...)``.
    """
    return ids_from_segments(tokenizer, _segments(messages, tools, add_generation_prompt))


def ids_from_segments(tokenizer: Any, segments: Sequence[tuple[str, bool]]) -> list[int]:
    """Token ids of a render given as ``(text, is_control_marker)`` pieces: each marker is its control token, and
    adjacent plain pieces are encoded together as plain text (as the rendered string would be).

    Args:
        tokenizer: a ``K2Tokenizer``.
        segments: the pieces in order (``_segments`` here, ``k2trt.chat.thinking`` for the thinking families).

    Returns:
        Token ids; ``tokenizer.decode(ids) == "".join(text for text, _ in segments)``.
    """
    ids: list[int] = []
    text: list[str] = []
    for piece, control in segments:
        if control:
            if text:  # adjacent plain pieces are encoded together, as the rendered string would be
                ids += tokenizer.encode("".join(text))
                text.clear()
            ids.append(tokenizer.token_id(piece))
        elif piece:
            text.append(piece)
    if text:
        ids += tokenizer.encode("".join(text))
    return ids


def normalize_tool_call_ids(messages: Sequence[Message], *, fill_tool_names: bool = True,
                            start: int = 0) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Rewrite every tool-call ID in history to ``functions.{name}:{k}``, ``k`` counting over the conversation.

    K2 expects its own ID format in history; foreign IDs (``call_…``, ``toolu_…``, UUIDs) make it emit bad IDs
    (kimi_formats.md §4.5). Tool messages follow the ID of the call they answer (the most recent call with that
    ID); one whose ID matches no call keeps it. The input is not modified.

    Args:
        messages: OpenAI-style messages.
        fill_tool_names: give a tool message without ``name`` the function name of its call, so its turn
            renders ``<|im_system|>{function}<|im_middle|>`` as K2 was trained (§7).
        start: first value of ``k``.

    Returns:
        ``(messages, id_map)``: copies with rewritten IDs, and ``{new_id: original_id}`` to map IDs back.

    Example:
        >>> msgs, back = normalize_tool_call_ids([{"role": "assistant", "content": None, "tool_calls": [
        ...     {"id": "call_9", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}])
        >>> msgs[0]["tool_calls"][0]["id"], back
        ('functions.f:0', {'functions.f:0': 'call_9'})
    """
    out = [dict(m) if isinstance(m, Mapping) else m for m in messages]
    forward: dict[str, tuple[str, str]] = {}  # original id -> (new id, function name)
    back: dict[str, str] = {}
    k = start
    for n, m in enumerate(out):
        if not isinstance(m, dict):
            raise ChatFormatError(f"messages[{n}] is {type(m).__name__}, not an object", "send message objects")
        if m.get("role") == "assistant" and m.get("tool_calls"):
            calls = []
            for tc in m["tool_calls"]:
                if not isinstance(tc, Mapping):
                    raise ChatFormatError(f"messages[{n}] has a tool call that is not an object",
                                          'use {"id", "type": "function", "function": {"name", "arguments"}}')
                tc = copy.deepcopy(dict(tc))
                fn = tc.get("function") or {}
                name = str(fn.get("name") or "")
                if not name:
                    raise ChatFormatError(f"messages[{n}] has a tool call without function.name",
                                          "every tool call needs the function name")
                new = f"functions.{name}:{k}"
                k += 1
                old = tc.get("id")
                if old:
                    forward[str(old)] = (new, name)
                    back[new] = str(old)
                tc["id"] = new
                calls.append(tc)
            m["tool_calls"] = calls
        elif m.get("role") == "tool" and m.get("tool_call_id") in forward:
            new, name = forward[m["tool_call_id"]]
            m["tool_call_id"] = new
            if fill_tool_names and not m.get("name"):
                m["name"] = name
    return out, back


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
            sort_keys: bool = False) -> str:
    # Transformers' tojson: json.dumps with its keyword order, never HTML-escaping (jinja's own filter does)
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def jinja_environment() -> Any:
    """A sandboxed jinja2 environment with Transformers' chat-template settings."""
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                       extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = raise_exception
    return env


def render_with_jinja(template_text: str, messages: Sequence[Message], tools: Sequence[Any] | None = None,
                      add_generation_prompt: bool = True, **extra: Any) -> str:
    """Render with a jinja chat template exactly as Transformers' ``apply_chat_template`` would.

    Args:
        template_text: the template source (for example a model's ``chat_template.jinja``).
        messages, tools, add_generation_prompt: the conversation.
        extra: more template variables (Transformers passes the special tokens, e.g. ``bos_token``).

    Returns:
        The rendered text.
    """
    tpl = jinja_environment().from_string(template_text)
    return tpl.render(messages=[dict(m) for m in messages], tools=list(tools) if tools else None,
                      add_generation_prompt=add_generation_prompt, **extra)
