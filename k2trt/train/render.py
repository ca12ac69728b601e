"""Corpus examples → token ids and a loss mask, through the project's own K2 renderer.

Every thinking mode renders with ``k2trt.chat.thinking`` — the one renderer of every K2 family, the gateway's
too: ``none`` as K2-Instruct, ``on`` as K2-Thinking, ``open``/``off`` as K2.5 with thinking on/off (``MODES``).
Prompts are its ``segments`` with the generation prompt, outputs its ``completion_segments``. The tiny K2's
tokenizer registers ``<think>``/``</think>`` as K2-Thinking's and K2.5's do (``workdir_tokenizer``), so the think
markers are their control ids, as a K2.5 gateway sends them; with a tokenizer that lacks them (K2-Instruct's) they
are text.

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
from typing import Any, Mapping, Sequence

from k2trt.chat import families, thinking
from k2trt.chat.reasoning import THINK_CLOSE, THINK_OPEN
from k2trt.chat.template import ids_from_segments
from k2trt.spec import ModelSpec, preset
from k2trt.train.config import TOKENIZER_SEED, TrainConfig
from k2trt.train.corpus import Example, Thinking, build_examples

MODES: dict[Thinking, tuple[str, bool]] = {
    "none": ("k2-instruct", False), "on": ("k2-thinking", True), "open": ("k2.5", True), "off": ("k2.5", False)}
"""Thinking mode → (chat family, thinking switch) it renders as."""


def _ids(tokenizer: Any, segments: Sequence[tuple[str, bool]]) -> list[int]:
    """Segments to ids; think markers the tokenizer does not register are text (module docstring)."""
    known = tokenizer.special_tokens
    return ids_from_segments(tokenizer, [(t, c and (t in known or t not in (THINK_OPEN, THINK_CLOSE)))
                                         for t, c in segments])


def render_mode_ids(tokenizer: Any, messages: Sequence[Mapping[str, Any]], tools: Sequence[Any] | None,
                    mode: Thinking) -> list[int]:
    """The generation prompt's ids for ``messages`` in thinking ``mode`` (``k2trt.chat.thinking.segments``).

    Args:
        tokenizer: a ``K2Tokenizer`` (with or without think tokens).
        messages, tools: OpenAI-style messages (assistant ``reasoning_content`` included) and tools.
        mode: ``none``, ``on``, ``open`` or ``off`` (``MODES``).
    Returns:
        Token ids ending in the assistant turn's opening (``<think>`` for ``open``, ``<think></think>`` for
        ``off``).
    Example:
        >>> ids = render_mode_ids(tok, [{"role": "user", "content": "hi"}], None, "off")  # doctest: +SKIP
        >>> tok.decode(ids).endswith("<|im_middle|><think></think>")                       # doctest: +SKIP
        True
    """
    name, on = MODES[mode]
    fam = families.family(name)
    if not fam.thinks:
        return thinking.render_ids(tokenizer, messages, tools, family=fam)
    _, keep = fam.resolve(on)
    return _ids(tokenizer, thinking.segments(messages, tools, fam, on, keep, True))


def prompt_ids(tokenizer: Any, ex: Example, upto: int | None = None) -> list[int]:
    """The generation prompt for ``ex.messages[upto]`` (default: the scored message ``ex.eval_at``)."""
    k = ex.eval_at if upto is None else upto
    return render_mode_ids(tokenizer, ex.messages[:k], ex.tools, ex.thinking)


def output_ids(tokenizer: Any, message: Mapping[str, Any], mode: Thinking) -> list[int]:
    """The tokens a model emits for one assistant ``message`` after the generation prompt, ``<|im_end|>`` included
    (``k2trt.chat.thinking.completion_segments``)."""
    name, on = MODES[mode]
    fam = families.family(name)
    return _ids(tokenizer, thinking.completion_segments(message, family=fam, thinking=on if fam.thinks else None))


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
    """The tiny K2 tokenizer (the files ``synth`` writes, with the think tokens registered:
    ``thinking.register_thinking_tokens``), written into ``work/tokenizer`` and loaded."""
    from k2trt.chat import vocab
    from k2trt.chat.tokenizer import K2Tokenizer

    d = Path(work) / "tokenizer"
    vocab.write_tokenizer_files(d, n_ranks=tiny_spec().vocab_size - vocab.NUM_RESERVED, seed=TOKENIZER_SEED)
    thinking.register_thinking_tokens(d)
    return K2Tokenizer.from_dir(d)
