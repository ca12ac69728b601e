"""The thinking families' chat templates (K2-Thinking, K2.5, K2.6, K2.7-Code): a Python renderer, its jinja twin,
and the tokenizer additions a thinking checkpoint carries.

The structure rendered here and by ``thinking_template(family)`` (K2-Instruct's is in ``k2trt.chat.template``)::

    [tools]     <|im_system|>tool_declare<|im_middle|>{tools_ts, or tools as compact JSON, keys sorted}<|im_end|>
    [family has a default system turn and messages[0] is not system]
                <|im_system|>system<|im_middle|>You are Kimi, an AI assistant created by Moonshot AI.<|im_end|>
    history     assistant: <|im_assistant|>{NAME}<|im_middle|><think></think>{content}[tool calls]<|im_end|>
    suffix      assistant: <|im_assistant|>{NAME}<|im_middle|><think>{reasoning_content}</think>{content}[calls]…
                user / system / tool turns as K2-Instruct's (tool: ``## Return of {id}\\n{content}``)
    [generation] <|im_assistant|>assistant<|im_middle|> + ``<think>`` (K2.5+ thinking on) | ``<think></think>``
                (K2.5/K2.6 thinking off) | nothing (K2-Thinking: the model opens ``<think>`` itself)

History rule (the official templates'): the *history* is every message up to and including the last assistant
message without tool calls — a finished answer — and its reasoning is dropped (``<think></think>``); the *suffix*
after it (the current turn's tool-call loop) keeps ``reasoning_content``, which is why clients must send it back
(k2_family.md §2). ``preserve_thinking`` (K2.6, forced on K2.7-Code) makes the history empty, so every turn keeps
its reasoning; thinking off (K2.5/K2.6) drops the suffix's reasoning too unless preserved.

Deviations from the official text, on purpose: ``reasoning_content: null`` renders as nothing (the official jinja
prints ``None``); images in K2.5+ are refused (their vision encoder is not served); the ``tools_ts`` TypeScript
declaration is the caller's to pass (``k2trt.chat.tools_ts.declare_tools_ts``, as Moonshot's tokenizer supplies
``tools_ts_str``), else the template's compact-JSON fallback is rendered. ``k2trt chat check DIR`` proves byte
identity of this renderer with a checkpoint's own template for the family it detects.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from k2trt.chat import families as fam
from k2trt.chat import template as k2
from k2trt.chat import vocab
from k2trt.chat.reasoning import THINK_CLOSE, THINK_OPEN
from k2trt.chat.template import ChatFormatError, Message
from k2trt.fsio import atomic_write, atomic_write_json

# The thinking models' extra tokens (kimi_formats.md §3.3): (offset from n_ranks, token, special flag). The think
# markers are registered special: false, like the tool-call markers, so skip_special_tokens keeps them in the text
# a reasoning parser reads.
THINKING_TOKENS: tuple[tuple[int, str, bool], ...] = (
    (18, "<|media_begin|>", True), (19, "<|media_content|>", True), (20, "<|media_end|>", True),
    (21, "<|media_pad|>", True), (22, THINK_OPEN, False), (23, THINK_CLOSE, False))

_T = tuple[str, bool]  # (text, is_control_marker)


def _content(content: Any, where: str, family: fam.Family) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, (list, tuple)):
        raise ChatFormatError(f"{where}: content is {type(content).__name__}",
                              "content must be a string, null or a list of parts")
    out = []
    for part in content:
        if not isinstance(part, Mapping):
            raise ChatFormatError(f"{where}: a content part is {type(part).__name__}, not an object",
                                  'use {"type": "text", "text": "…"} parts')
        if part.get("type") == "image" or "image" in part or "image_url" in part:
            if family.name != "k2-thinking":
                raise ChatFormatError(f"{where}: image input needs {family.name}'s vision encoder, which k2trt "
                                      "does not serve", "send text parts only")
            out.append(k2.MEDIA_PLACEHOLDER + "\n")  # K2-Thinking's template keeps the line break after it
        elif part.get("text") is not None:
            out.append(str(part["text"]))
    return "".join(out)


def _tool_calls(calls: Sequence[Any], where: str) -> list[_T]:
    v = vocab
    seg: list[_T] = [(v.SECTION_BEGIN, True)]
    for k, tc in enumerate(calls):
        fn = tc.get("function") if isinstance(tc, Mapping) else None
        if not isinstance(fn, Mapping) or "arguments" not in fn:
            raise ChatFormatError(f"{where}.tool_calls[{k}] has no function.arguments",
                                  'use {"id", "type": "function", "function": {"name", "arguments"}}')
        args = fn["arguments"]
        args = args if isinstance(args, str) else k2._json(args, f"{where}.tool_calls[{k}] arguments")
        seg += [(v.CALL_BEGIN, True), (str(tc.get("id") or ""), False), (v.ARG_BEGIN, True), (args, False),
                (v.CALL_END, True)]
    return seg + [(v.SECTION_END, True)]


def _history_end(messages: Sequence[Message], preserve: bool) -> int:
    """Index of the last assistant message without tool calls (the history's end), -1 for none or preserve."""
    if preserve:
        return -1
    for i in range(len(messages) - 1, -1, -1):
        m = messages[i]
        if isinstance(m, Mapping) and m.get("role") == "assistant" and not m.get("tool_calls"):
            return i
    return -1


def segments(messages: Sequence[Message], tools: Sequence[Any] | None, family: fam.Family, thinking: bool,
             preserve: bool, add_generation_prompt: bool, tools_ts: str | None = None) -> list[_T]:
    """The render of a thinking family as ``(text, is_control_marker)`` pieces (resolved switches; see ``render``)."""
    v = vocab
    end = (v.IM_END, True)
    seg: list[_T] = []
    if tools:
        decl = tools_ts if (tools_ts is not None and family.tools_ts) else \
            k2.tools_json(tools)
        seg += k2._turn(v.IM_SYSTEM, "tool_declare") + [(decl, False), end]
    if family.default_system and (not messages or not isinstance(messages[0], Mapping)
                                  or messages[0].get("role") != "system"):
        seg += k2._turn(v.IM_SYSTEM, "system") + [(k2.DEFAULT_SYSTEM_PROMPT, False), end]
    last = _history_end(messages, preserve)
    drop_all = not thinking and not preserve
    for n, m in enumerate(messages):
        where = f"messages[{n}]"
        if not isinstance(m, Mapping) or not isinstance(m.get("role"), str):
            raise ChatFormatError(f"{where} has no string 'role'", "each message needs a role such as 'user'")
        role = m["role"]
        marker = v.IM_USER if role == "user" else v.IM_ASSISTANT if role == "assistant" else v.IM_SYSTEM
        seg += k2._turn(marker, str(m.get("name") or role))
        if role == "assistant":
            rc = m.get("reasoning_content")
            if rc is not None and not isinstance(rc, str):
                raise ChatFormatError(f"{where}.reasoning_content is {type(rc).__name__}", "send a string or null")
            seg.append((THINK_OPEN, True))
            if n > last and not drop_all and rc:
                seg.append((rc, False))
            seg += [(THINK_CLOSE, True), (_content(m.get("content"), where, family), False)]
            if m.get("tool_calls"):
                seg += _tool_calls(m["tool_calls"], where)
        elif role == "tool":
            seg.append((f"## Return of {m.get('tool_call_id') or ''}\n", False))
            seg.append((_content(m.get("content"), where, family), False))
        else:
            seg.append((_content(m.get("content"), where, family), False))
        seg.append(end)
    if add_generation_prompt:
        seg += k2._turn(v.IM_ASSISTANT, "assistant")
        if family.prompt_opens_think:
            seg += [(THINK_OPEN, True)] if thinking else [(THINK_OPEN, True), (THINK_CLOSE, True)]
    return seg


def _resolve(family: str | fam.Family, thinking: bool | None,
             preserve_thinking: bool | None) -> tuple[fam.Family, bool, bool]:
    f = family if isinstance(family, fam.Family) else fam.family(family)
    return (f, *f.resolve(thinking, preserve_thinking))


def render(messages: Sequence[Message], tools: Sequence[Any] | None = None, *, family: str | fam.Family,
           thinking: bool | None = None, preserve_thinking: bool | None = None, add_generation_prompt: bool = True,
           tools_ts: str | None = None) -> str:
    """Render a conversation to any K2 family's prompt text — the one entry point for prompts and training text.

    Args:
        messages: OpenAI-style messages (``role``, ``content``, optional ``name``, ``tool_calls``,
            ``tool_call_id``, and for assistant turns ``reasoning_content``: the thinking to replay). Normalise
            tool-call IDs first with ``k2trt.chat.template.normalize_tool_call_ids``.
        tools: the OpenAI ``tools`` array (a ``tool_declare`` turn).
        family: ``k2-instruct``, ``k2-thinking``, ``k2.5``, ``k2.6`` or ``k2.7-code`` (``families.FAMILY_NAMES``),
            or a ``families.Family``.
        thinking: thinking on/off; ``None`` = the family's default (on for every thinking family).
        preserve_thinking: keep every earlier turn's reasoning (K2.6; always on for K2.7-Code).
        add_generation_prompt: end with the assistant turn's opening (and ``<think>`` where the family opens it).
            For training text, render the prompt with it and append ``render_completion`` of the target turn: the
            history rule drops a finished answer's reasoning, so the whole conversation rendered without a
            generation prompt would not contain the reasoning being trained.
        tools_ts: a pre-encoded TypeScript tool declaration, used instead of the JSON by K2.5+ templates.

    Returns:
        The prompt text.

    Raises:
        ChatFormatError: a message cannot be rendered, or a switch the family does not have.

    Example:
        >>> msgs = [{"role": "user", "content": "2+2?"},
        ...         {"role": "assistant", "content": "4", "reasoning_content": "Add them."}]
        >>> render(msgs, family="k2.5", add_generation_prompt=False)[-64:]
        '<|im_assistant|>assistant<|im_middle|><think></think>4<|im_end|>'
        >>> render(msgs[:1], family="k2.5", thinking=False)[-53:]
        '<|im_assistant|>assistant<|im_middle|><think></think>'
    """
    f, on, keep = _resolve(family, thinking, preserve_thinking)
    if not f.thinks:
        return k2.render(messages, tools, add_generation_prompt)
    return "".join(t for t, _ in segments(messages, tools, f, on, keep, add_generation_prompt, tools_ts))


def render_ids(tokenizer: Any, messages: Sequence[Message], tools: Sequence[Any] | None = None, *,
               family: str | fam.Family, thinking: bool | None = None, preserve_thinking: bool | None = None,
               add_generation_prompt: bool = True, tools_ts: str | None = None) -> list[int]:
    """``render`` to token ids: template markers (think markers included) are control tokens, all message text —
    reasoning included — is encoded as plain text, so no message can forge a marker.

    Args:
        tokenizer: a ``K2Tokenizer`` of the family (thinking families need ``<think>``/``</think>`` tokens).
        messages, tools, family, thinking, preserve_thinking, add_generation_prompt, tools_ts: as for ``render``.

    Returns:
        Token ids; ``tokenizer.decode(ids) == render(...)``.

    Raises:
        ChatFormatError: as ``render``, or the tokenizer has no think tokens.
    """
    f, on, keep = _resolve(family, thinking, preserve_thinking)
    if not f.thinks:
        return k2.render_ids(tokenizer, messages, tools, add_generation_prompt)
    if THINK_OPEN not in tokenizer.special_tokens or THINK_CLOSE not in tokenizer.special_tokens:
        raise ChatFormatError(f"the tokenizer has no {THINK_OPEN}/{THINK_CLOSE} tokens, so it is not a "
                              f"{f.name} tokenizer", "point --model-dir at the thinking model's directory")
    return k2.ids_from_segments(tokenizer, segments(messages, tools, f, on, keep, add_generation_prompt, tools_ts))


def completion_segments(message: Message, *, family: str | fam.Family, thinking: bool | None = None) -> list[_T]:
    """What the model writes for an assistant ``message`` after the generation prompt, as ``(text, control)``
    pieces (see ``render_completion``)."""
    f, on, _ = _resolve(family, thinking, None)
    if not isinstance(message, Mapping) or message.get("role") != "assistant":
        raise ChatFormatError("a completion is an assistant message", 'pass {"role": "assistant", …}')
    seg: list[_T] = []
    rc = message.get("reasoning_content")
    if f.thinks and on:
        if not f.prompt_opens_think:
            seg.append((THINK_OPEN, True))
        seg += [(str(rc or ""), False), (THINK_CLOSE, True)]
    seg.append((_content(message.get("content"), "message", f), False))
    if message.get("tool_calls"):
        seg += _tool_calls(message["tool_calls"], "message")
    return seg + [(vocab.IM_END, True)]


def render_completion(message: Message, *, family: str | fam.Family, thinking: bool | None = None) -> str:
    """The text a model of ``family`` writes for an assistant ``message`` after ``render(...,
    add_generation_prompt=True)``: ``[<think>]{reasoning_content}</think>{content}[tool calls]<|im_end|>`` — with
    ``<think>`` only where the prompt did not open it, and no think block with thinking off. ``prompt + completion``
    is one training sequence; ``k2trt.chat.reasoning`` and ``toolcalls`` parse the completion back into
    ``message``.

    Example:
        >>> render_completion({"role": "assistant", "content": "4", "reasoning_content": "Add."}, family="k2.6")
        'Add.</think>4<|im_end|>'
    """
    return "".join(t for t, _ in completion_segments(message, family=family, thinking=thinking))


def render_completion_ids(tokenizer: Any, message: Message, *, family: str | fam.Family,
                          thinking: bool | None = None) -> list[int]:
    """``render_completion`` to token ids (markers as control tokens, text as plain text)."""
    return k2.ids_from_segments(tokenizer, completion_segments(message, family=family, thinking=thinking))


def prompt_opens_reasoning(family: str | fam.Family, thinking: bool | None = None) -> bool:
    """Whether the generation prompt ends inside ``<think>`` (the output then starts inside reasoning: pass
    ``opened=True`` to ``k2trt.chat.reasoning``)."""
    f, on, _ = _resolve(family, thinking, None)
    return f.prompt_opens_think and on


# The jinja twin: one text for every thinking family, which its first line names (that line is also how
# families.detect recognises a template k2trt wrote). Every literal is inside {{- '…' -}} so no template
# whitespace leaks under Transformers' settings (trim_blocks, lstrip_blocks).
_TEMPLATE = r"""{#- k2trt chat template, family: @FAMILY@ -#}
{%- set k2_family = '@FAMILY@' -%}
{%- macro render_content(content) -%}
  {%- if content is string -%}
    {{- content -}}
  {%- elif content is not none and content is not mapping and content is iterable -%}
    {%- for part in content -%}
      {%- if part is mapping -%}
        {%- if part.get('type') == 'image' or 'image' in part or 'image_url' in part -%}
          {%- if k2_family != 'k2-thinking' -%}
            {{- raise_exception('image input needs the vision encoder, which k2trt does not serve') -}}
          {%- endif -%}
          {{- '<|media_start|>image<|media_content|><|media_pad|><|media_end|>\n' -}}
        {%- elif part.get('text') is not none -%}
          {{- part.get('text') -}}
        {%- endif -%}
      {%- endif -%}
    {%- endfor -%}
  {%- endif -%}
{%- endmacro -%}
@TOOL_CALLS_MACRO@{%- set thinking_on = k2_family in ('k2-thinking', 'k2.7-code') or not (thinking is defined and thinking is false) -%}
{%- set preserve = k2_family == 'k2.7-code' or
                   (k2_family == 'k2.6' and preserve_thinking is defined and preserve_thinking) -%}
{%- set ns = namespace(last=-1) -%}
{%- if not preserve -%}
  {%- for idx in range(messages|length - 1, -1, -1) -%}
    {%- if ns.last == -1 and messages[idx]['role'] == 'assistant' and not messages[idx].get('tool_calls') -%}
      {%- set ns.last = idx -%}
    {%- endif -%}
  {%- endfor -%}
{%- endif -%}
{%- if tools -%}
  {{- '<|im_system|>tool_declare<|im_middle|>' -}}
  {%- if tools_ts_str is defined and k2_family != 'k2-thinking' -%}
    {{- tools_ts_str -}}
  {%- else -%}
    {{- tools | tojson(separators=(',', ':')) -}}
  {%- endif -%}
  {{- '<|im_end|>' -}}
{%- endif -%}
{%- if k2_family != 'k2.7-code' and (messages|length == 0 or messages[0]['role'] != 'system') -%}
  {{- '<|im_system|>system<|im_middle|>You are Kimi, an AI assistant created by Moonshot AI.<|im_end|>' -}}
{%- endif -%}
{%- for message in messages -%}
  {%- set role = message['role'] -%}
  {%- if role == 'user' -%}
    {{- '<|im_user|>' -}}
  {%- elif role == 'assistant' -%}
    {{- '<|im_assistant|>' -}}
  {%- else -%}
    {{- '<|im_system|>' -}}
  {%- endif -%}
  {{- message.get('name') or role -}}
  {{- '<|im_middle|>' -}}
  {%- if role == 'assistant' -%}
    {{- '<think>' -}}
    {%- if loop.index0 > ns.last and (thinking_on or preserve) -%}
      {{- message.get('reasoning_content') or '' -}}
    {%- endif -%}
    {{- '</think>' -}}
    {{- render_content(message.get('content')) -}}
    {%- if message.get('tool_calls') -%}
      {{- render_tool_calls(message['tool_calls']) -}}
    {%- endif -%}
  {%- elif role == 'tool' -%}
    {{- '## Return of ' -}}
    {{- message.get('tool_call_id') or '' -}}
    {{- '\n' -}}
    {{- render_content(message.get('content')) -}}
  {%- else -%}
    {{- render_content(message.get('content')) -}}
  {%- endif -%}
  {{- '<|im_end|>' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
  {{- '<|im_assistant|>assistant<|im_middle|>' -}}
  {%- if k2_family != 'k2-thinking' -%}
    {%- if thinking_on -%}
      {{- '<think>' -}}
    {%- else -%}
      {{- '<think></think>' -}}
    {%- endif -%}
  {%- endif -%}
{%- endif -%}
""".replace("@TOOL_CALLS_MACRO@", vocab.TOOL_CALLS_MACRO)


def thinking_template(family: str) -> str:
    """k2trt's ``chat_template.jinja`` for a thinking family: renders byte for byte what ``render`` does.

    Raises:
        ChatFormatError: ``family`` is not a thinking family.
    """
    if not fam.family(family).thinks:
        raise ChatFormatError(f"{family} is not a thinking family", "use k2trt.chat.template.CHAT_TEMPLATE")
    return _TEMPLATE.replace("@FAMILY@", family)


def register_thinking_tokens(model_dir: str | Path) -> Path:
    """Give a (tiny) K2 tokenizer the think and media tokens of the thinking families (``THINKING_TOKENS``), as
    K2-Thinking's and K2.5's ``tokenizer_config.json`` register them; ``tokenizer_config.json`` is edited in place,
    atomically. Idempotent.

    Returns:
        The file written.
    """
    cfg_path = Path(model_dir) / "tokenizer_config.json"
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ChatFormatError(f"cannot read {cfg_path}: {e}", "run it on a K2 model directory") from None
    decoder = cfg.setdefault("added_tokens_decoder", {})
    n_ranks = min(int(k) for k in decoder) if decoder else vocab.K2_N_RANKS  # [BOS] sits at n_ranks + 0
    for off, tok, special in THINKING_TOKENS:
        decoder[str(n_ranks + off)] = {"content": tok, "lstrip": False, "normalized": False, "rstrip": False,
                                       "single_word": False, "special": special}
    cfg["added_tokens_decoder"] = dict(sorted(decoder.items(), key=lambda kv: int(kv[0])))
    return atomic_write_json(cfg_path, cfg)


def write_family_files(model_dir: str | Path, family: str) -> list[Path]:
    """Make a (tiny) K2 model directory a ``family`` checkpoint: its ``chat_template.jinja`` becomes that family's
    template, and a thinking family's tokenizer gains the think and media tokens (``register_thinking_tokens``).

    Args:
        model_dir: a directory holding ``tokenizer_config.json`` (``k2trt synth`` writes one); edited in place,
            each file atomically.
        family: a name from ``families.FAMILY_NAMES``.

    Returns:
        The files written.

    Example:
        >>> write_family_files(tmp_path / "tiny", "k2.6")  # doctest: +SKIP
    """
    f = fam.family(family)
    d = Path(model_dir)
    written = [register_thinking_tokens(d)] if f.thinks else []
    text = thinking_template(family) if f.thinks else k2.CHAT_TEMPLATE
    return written + [atomic_write(d / "chat_template.jinja", text)]
