"""Corpus examples → token ids and a loss mask, through the project's own K2 renderer.

Non-thinking examples render with ``k2trt.chat.template.render_ids`` (K2-Instruct's template). Thinking examples
render with ``render_thinking_ids``, a stand-in for the thinking families' renderer of ``k2trt.chat``; at
integration ``RENDERERS`` points at that renderer instead (same signature) and nothing else changes.

``encode`` builds one training sequence per conversation: the conversation rendered as it is when the model
generates its *last* message, with every assistant message the model would have generated in that same history
marked for the loss. Each marked span is checked: the prompt for message ``k`` (``render(messages[:k],
add_generation_prompt=True)``) followed by the message's own output tokens (``output_ids``) must be exactly the
sequence's first tokens — so what the model learns to continue is what a server will send it.
"""

from __future__ import annotations

import hashlib
import sys
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from k2trt.chat.template import render_ids
from k2trt.spec import ModelSpec, preset
from k2trt.train.config import TOKENIZER_SEED, TrainConfig
from k2trt.train.corpus import Example, Thinking, build_examples

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


def render_thinking_ids(tokenizer: Any, messages: Sequence[Mapping[str, Any]], tools: Sequence[Any] | None = None,
                        add_generation_prompt: bool = True, *, thinking: bool = True,
                        open_think: bool = False) -> list[int]:
    """K2-Thinking / K2.5 prompt ids (a stand-in until ``k2trt.chat`` renders the thinking families).

    The published grammar, as the official templates apply it (tinker-cookbook ``renderers/kimi_k2.py`` and
    ``kimi_k25.py``, which test against them): an assistant turn is ``<think>REASONING</think>CONTENT`` plus any
    tool-call section; assistant messages up to the last one *without* tool calls are history and carry an empty
    ``<think></think>``, the later ones (the current turn's calls) keep ``reasoning_content``. The generation prompt
    is K2-Thinking's ``<|im_assistant|>assistant<|im_middle|>``; K2.5 appends ``<think>`` when thinking is on
    (``open_think``) and ``<think></think>`` when it is off (``thinking=False``, which also empties every turn's
    reasoning). Tools are declared as K2's JSON (K2.5's TypeScript-style declaration is not rendered here).

    Args:
        tokenizer: a ``K2Tokenizer``.
        messages, tools, add_generation_prompt: as for ``k2trt.chat.template.render_ids``.
        thinking: reasoning on (K2-Thinking, K2.5 default) or off (K2.5 ``thinking=false``).
        open_think: K2.5's thinking-on prompt, ending in ``<think>``.
    Returns:
        Token ids; the think tags are text to this tokenizer unless it registers them as special tokens.
    Example:
        >>> ids = render_thinking_ids(tok, [{"role": "user", "content": "hi"}], thinking=False)  # doctest: +SKIP
        >>> tok.decode(ids).endswith("<|im_middle|><think></think>")                              # doctest: +SKIP
        True
    """
    last_plain = max((i for i, m in enumerate(messages) if m.get("role") == "assistant" and not m.get("tool_calls")),
                     default=-1)
    shown = []
    for i, m in enumerate(messages):
        if m.get("role") == "assistant":
            reasoning = (m.get("reasoning_content") or "") if thinking and i > last_plain else ""
            m = {**m, "content": f"{THINK_OPEN}{reasoning}{THINK_CLOSE}{m.get('content') or ''}"}
        shown.append(m)
    ids = render_ids(tokenizer, shown, tools, add_generation_prompt)
    if add_generation_prompt and (open_think or not thinking):
        ids += tokenizer.encode(THINK_OPEN if thinking else THINK_OPEN + THINK_CLOSE)
    return ids


Renderer = Callable[..., list[int]]
RENDERERS: dict[Thinking, tuple[Renderer, dict[str, Any]]] = {
    "none": (render_ids, {}),
    "on": (render_thinking_ids, {"thinking": True}),
    "open": (render_thinking_ids, {"thinking": True, "open_think": True}),
    "off": (render_thinking_ids, {"thinking": False}),
}
"""Thinking mode → (renderer, its keyword arguments). Swap ``render_thinking_ids`` for ``k2trt.chat``'s here."""


def prompt_ids(tokenizer: Any, ex: Example, upto: int | None = None) -> list[int]:
    """The generation prompt for ``ex.messages[upto]`` (default: the scored message ``ex.eval_at``)."""
    fn, kw = RENDERERS[ex.thinking]
    k = ex.eval_at if upto is None else upto
    return fn(tokenizer, ex.messages[:k], ex.tools, True, **kw)


def output_ids(tokenizer: Any, message: Mapping[str, Any], thinking: Thinking) -> list[int]:
    """The tokens a model emits for one assistant ``message`` after the generation prompt, ``<|im_end|>`` included.

    Derived from the K2 renderer itself (the message rendered after a one-word user turn, minus that turn's
    prompt), so the output tokenises exactly as the template writes it.
    """
    m = dict(message)
    if thinking in ("on", "open"):
        m["content"] = f"{THINK_OPEN}{m.get('reasoning_content') or ''}{THINK_CLOSE}{m.get('content') or ''}"
        if thinking == "open":  # the prompt already holds <think>
            m["content"] = m["content"][len(THINK_OPEN):]
    ctx = [{"role": "user", "content": "x"}]
    full = render_ids(tokenizer, ctx + [m], None, False)
    head = render_ids(tokenizer, ctx, None, True)
    if full[:len(head)] != head:
        raise AssertionError("the K2 renderer is not prefix-consistent for an assistant turn")
    return full[len(head):]


def targets(ex: Example) -> list[int]:
    """Indices of the assistant messages trained on: all of them, except in thinking conversations, where turns
    before the last user message are history (their reasoning is no longer shown) and only the last turn is."""
    last_user = max(i for i, m in enumerate(ex.messages) if m["role"] == "user")
    first = last_user if ex.thinking in ("on", "open") else 0
    return [i for i, m in enumerate(ex.messages) if m["role"] == "assistant" and i > first]


def encode(tokenizer: Any, ex: Example) -> tuple[list[int], list[int]]:
    """One training sequence: token ids and a 0/1 mask marking the tokens the model must predict.

    Raises:
        AssertionError: a marked span does not continue its own generation prompt (a renderer inconsistency).
    """
    last = len(ex.messages) - 1
    if ex.messages[last]["role"] != "assistant":
        raise ValueError("a training conversation must end with an assistant message")
    ids = prompt_ids(tokenizer, ex, last) + output_ids(tokenizer, ex.messages[last], ex.thinking)
    mask = [0] * len(ids)
    for k in targets(ex):
        prompt = prompt_ids(tokenizer, ex, k)
        out = output_ids(tokenizer, ex.messages[k], ex.thinking)
        if ids[:len(prompt) + len(out)] != prompt + out:
            raise AssertionError(f"{ex.kind}/{ex.thinking}: message {k} is not a continuation of its prompt")
        mask[len(prompt):len(prompt) + len(out)] = [1] * len(out)
    return ids, mask


def corpus_digest(sequences: Sequence[tuple[Sequence[int], Sequence[int]]]) -> str:
    """sha256 over every sequence's length, ids (little-endian uint16) and mask bytes: a tokenised corpus's
    identity."""
    h = hashlib.sha256()
    for ids, mask in sequences:
        a = array("H", ids)
        if sys.byteorder == "big":
            a.byteswap()
        h.update(len(a).to_bytes(4, "little"))
        h.update(a.tobytes())
        h.update(bytes(mask))
    return h.hexdigest()


@dataclass
class Corpus:
    """Tokenised training sequences and their identity."""

    sequences: list[tuple[array, bytes]]
    """(token ids as uint16, loss mask as 0/1 bytes) per sequence: compact, a corpus is millions of tokens."""
    digest: str
    examples: int
    dropped: int
    tokens: int = 0
    targets: int = 0


def tiny_spec() -> ModelSpec:
    """The model trained: the ``tiny`` preset (its block-FP8 checkpoint layout)."""
    return preset("tiny")


def build_corpus(cfg: TrainConfig, tokenizer: Any) -> Corpus:
    """Draw, render and tokenise ``cfg``'s training conversations (sequences over ``max_len`` are left out)."""
    seqs, dropped = [], 0
    for ex in build_examples("train", cfg.examples, cfg.seed):
        ids, mask = encode(tokenizer, ex)
        if len(ids) > cfg.max_len:
            dropped += 1
            continue
        seqs.append((array("H", ids), bytes(mask)))
    return Corpus(seqs, corpus_digest(seqs), cfg.examples, dropped, sum(len(s[0]) for s in seqs),
                  sum(sum(s[1]) for s in seqs))


def workdir_tokenizer(work: str | Path) -> Any:
    """The tiny K2 tokenizer (the files ``synth`` writes), written into ``work/tokenizer`` and loaded."""
    from k2trt.chat import vocab
    from k2trt.chat.tokenizer import K2Tokenizer

    d = Path(work) / "tokenizer"
    vocab.write_tokenizer_files(d, n_ranks=tiny_spec().vocab_size - vocab.NUM_RESERVED, seed=TOKENIZER_SEED)
    return K2Tokenizer.from_dir(d)
