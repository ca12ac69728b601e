"""The K2 chat families: what each model's chat template does, how to tell them apart, and how to sample them.

| family      | thinking                        | prompt ends with        | earlier turns' reasoning                |
|-------------|---------------------------------|-------------------------|-----------------------------------------|
| k2-instruct | none                            | —                       | —                                       |
| k2-thinking | always (the model opens it)     | nothing                 | dropped up to the last final answer     |
| k2.5        | on; off with ``thinking=false`` | ``<think>`` / ``<think></think>`` | as K2-Thinking; all dropped when off |
| k2.6        | as K2.5                         | as K2.5                 | as K2.5; kept with ``preserve_thinking`` |
| k2.7-code   | always                          | ``<think>``             | always kept; no default system turn     |

Sources: K2-Thinking's official ``chat_template.jinja`` (verbatim copy in ggml-org/llama.cpp
``models/templates/moonshotai-Kimi-K2-Thinking.jinja`` @0c3c896; the Hugging Face file at revision 6126819
"fix-default-system-prompt (#12)" differs only in compact tools JSON). K2.5/K2.6/K2.7-Code's templates were not
obtainable verbatim; their rules follow what the published material shows of them: the generation-prompt and
suffix branches quoted from K2.6's template (``thinking is defined and thinking is false`` → ``<think></think>``,
``preserve_thinking`` setting ``last_non_tool_call_assistant_msg=-1``), the K2.5 rewrite rules in OpenPipe/ART
``src/art/utils/chat_template.py`` @53d212d, thinking-machines-lab/tinker-cookbook
``tinker_cookbook/renderers/kimi_k25.py`` @0703356 and ``kimi_k26.py`` @54364d7 (``<think>`` / ``<think></think>``
prefill, ``preserve_thinking`` keeping every turn), a K2.7-Code renderer's notes (thinking preserved, no default
system message, ``tools_ts_str`` or compact JSON in ``tool_declare``), and k2_family.md §1–§2.

Sampling defaults (overridable per request and per gateway): K2-Instruct temperature 0.6 (Moonshot's README);
thinking mode temperature 1.0, top_p 0.95 and instant mode temperature 0.6, top_p 0.95 (Moonshot's K2.5/K2.6
deployment guidance; Kimi Vendor Verifier, k2_family.md §3); K2-Thinking temperature 1.0 (its model card, the K2
Vendor Verifier's K2-Thinking runs).

A family is read from a model directory (``detect``): a template written by k2trt names its family in its first
line; otherwise the template's own text decides (no ``<think>`` → k2-instruct; no default system prompt →
k2.7-code; ``preserve_thinking`` → k2.6; a ``thinking`` switch → k2.5; else k2-thinking), with ``config.json``'s
``model_type`` (``kimi_k25``) as the fallback when there is no template. ``--chat-family`` overrides it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from k2trt.chat.template import ChatFormatError
from k2trt.errors import CheckpointError

Thinking = Literal["none", "switch", "always"]


@dataclass(frozen=True)
class Sampling:
    """Recommended sampling for one mode of one family."""
    temperature: float
    top_p: float | None = None


@dataclass(frozen=True)
class Family:
    """What a K2 family's chat template does (module docstring)."""
    name: str
    thinking: Thinking
    """``none``: no reasoning channel; ``switch``: on unless ``thinking=false``; ``always``: cannot be switched off."""
    prompt_opens_think: bool
    """The generation prompt ends with ``<think>`` (thinking on) or ``<think></think>`` (off)."""
    preserve: Literal["no", "switch", "always"]
    """Earlier turns' reasoning: dropped (``no``), kept with ``preserve_thinking=true`` (``switch``), kept."""
    default_system: bool
    """A conversation that does not start with a system message gets Moonshot's default system turn."""
    tools_ts: bool
    """The template takes a pre-encoded ``tools_ts_str`` declaration instead of the tools JSON."""
    thinking_sampling: Sampling
    instant_sampling: Sampling

    @property
    def thinks(self) -> bool:
        return self.thinking != "none"

    def resolve(self, thinking: bool | None, preserve_thinking: bool | None = None) -> tuple[bool, bool]:
        """The effective ``(thinking, preserve_thinking)`` for a request; ``None`` means the family's default.

        Raises:
            ChatFormatError: a switch this family does not have (thinking on K2-Instruct, thinking off on
                K2-Thinking/K2.7-Code, ``preserve_thinking`` outside K2.6/K2.7-Code).
        """
        if thinking is None:
            thinking = self.thinks
        elif thinking and not self.thinks:
            raise ChatFormatError(f"{self.name} has no thinking mode", "send the request without thinking")
        elif not thinking and self.thinking == "always":
            raise ChatFormatError(f"{self.name} always thinks; thinking cannot be switched off",
                                  "drop the thinking switch, or serve K2.5/K2.6 for an instant mode")
        if preserve_thinking is None:
            preserve_thinking = self.preserve == "always"
        elif preserve_thinking and self.preserve == "no":
            raise ChatFormatError(f"{self.name}'s template has no preserve_thinking switch",
                                  "drop preserve_thinking (K2.6 and K2.7-Code have it)")
        elif not preserve_thinking and self.preserve == "always":
            raise ChatFormatError(f"{self.name} always keeps earlier reasoning", "drop preserve_thinking=false")
        return thinking, preserve_thinking

    def sampling(self, thinking: bool) -> Sampling:
        """The recommended sampling for the mode."""
        return self.thinking_sampling if thinking else self.instant_sampling


_INSTANT = Sampling(0.6, 0.95)
_THINK = Sampling(1.0, 0.95)
FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("k2-instruct", "none", False, "no", True, False, Sampling(0.6), Sampling(0.6)),
    Family("k2-thinking", "always", False, "no", True, False, Sampling(1.0), Sampling(1.0)),
    Family("k2.5", "switch", True, "no", True, True, _THINK, _INSTANT),
    Family("k2.6", "switch", True, "switch", True, True, _THINK, _INSTANT),
    Family("k2.7-code", "always", True, "always", False, True, _THINK, _THINK),
)}
"""Every family k2trt renders, by name."""
FAMILY_NAMES: tuple[str, ...] = tuple(FAMILIES)

DEFAULT_SYSTEM_LINE = "You are Kimi, an AI assistant created by Moonshot AI."
_OWN_MARKER = re.compile(r"\{#-? k2trt chat template, family: (?P<name>[\w.\-]+) -?#\}")


def family(name: str) -> Family:
    """The family called ``name``.

    Raises:
        ChatFormatError: an unknown name.
    """
    try:
        return FAMILIES[name]
    except KeyError:
        raise ChatFormatError(f"unknown chat family {name!r}", f"use one of {', '.join(FAMILY_NAMES)}") from None


def detect(template_text: str | None, config: dict[str, Any] | None = None) -> Family:
    """The family of a chat template (and ``config.json``), by the rules in the module docstring.

    Example:
        >>> detect("{%- if add_generation_prompt -%}<|im_assistant|>assistant<|im_middle|>{%- endif -%}").name
        'k2-instruct'
    """
    if template_text:
        m = _OWN_MARKER.search(template_text[:200])
        if m:
            return family(m["name"])
        if "<think>" not in template_text:
            return FAMILIES["k2-instruct"]
        if DEFAULT_SYSTEM_LINE not in template_text:
            return FAMILIES["k2.7-code"]
        if "preserve_thinking" in template_text:
            return FAMILIES["k2.6"]
        if re.search(r"\bthinking is defined\b", template_text):
            return FAMILIES["k2.5"]
        return FAMILIES["k2-thinking"]
    model_type = (config or {}).get("model_type")
    return FAMILIES["k2.5" if model_type == "kimi_k25" else "k2-instruct"]


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


def from_model_dir(model_dir: str | Path) -> Family:
    """The family of a model directory: its chat template, else its ``config.json``.

    Raises:
        CheckpointError: ``config.json`` is unreadable when it is needed.
    """
    d = Path(model_dir)
    try:
        text: str | None = load_template(d)[0]
    except CheckpointError:
        text = None
    config = None
    if text is None and (d / "config.json").is_file():
        try:
            config = json.loads((d / "config.json").read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{d / 'config.json'} is not valid JSON ({e.msg})", "fix or re-copy it") from None
    return detect(text, config)
