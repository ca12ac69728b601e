"""Token accounting: the one place a response's usage is computed, and written in each API's shape.

- ``prompt_tokens`` is the length of the token ids the gateway sent (render mode: the rendered conversation plus
  any tool-choice prefill — exactly what the engine received). An engine that reports a different count is
  believed (it is what it processed) and the mismatch is logged.
- ``completion_tokens`` is the engine's count; an engine without usage gets the output re-tokenised.
- ``reasoning_tokens``: the reasoning text re-tokenised plus one per think marker the model wrote, capped at
  ``completion_tokens``. The engine returns text, not ids, so this is exact when the model's tokenisation of its
  reasoning is the canonical one (BPE output nearly always is); an engine that reports
  ``completion_tokens_details.reasoning_tokens`` itself is believed.
- ``cached_tokens`` is passed on from the engine's ``prompt_tokens_details`` (0 when it does not say).

Wire shapes: OpenAI ``usage`` with ``prompt_tokens_details.cached_tokens`` and
``completion_tokens_details.reasoning_tokens`` (the fields Moonshot's vendor verifier reads, k2_family.md §3);
Anthropic ``usage`` with ``input_tokens``/``output_tokens`` (thinking is part of the output, as Anthropic counts it)
and ``cache_read_input_tokens``.
"""

from __future__ import annotations

import logging
from typing import Any

from k2trt.gateway.events import Finish

log = logging.getLogger("k2trt.gateway")


def _int(x: Any) -> int | None:
    return x if isinstance(x, int) and not isinstance(x, bool) and x >= 0 else None


def count(engine_usage: dict[str, Any] | None, *, prompt_tokens: int | None, completion_text: str,
          reasoning_text: str = "", reasoning_markers: int = 0, tokenizer: Any = None) -> dict[str, int]:
    """The usage numbers of one response, as ``Finish`` keyword arguments.

    Args:
        engine_usage: the engine's ``usage`` object (may be ``None``).
        prompt_tokens: ids the gateway sent (``None`` when the engine rendered the prompt itself).
        completion_text: the output text (re-tokenised only when the engine gives no completion count).
        reasoning_text, reasoning_markers: what the reasoning parser found (``ReasoningDone``).
        tokenizer: a ``K2Tokenizer`` for re-tokenising; without one, counts the engine does not give are 0.

    Returns:
        ``{"prompt_tokens", "completion_tokens", "reasoning_tokens", "cached_tokens"}``.

    Example:
        >>> count({"prompt_tokens": 12, "completion_tokens": 9}, prompt_tokens=12, completion_text="x")
        {'prompt_tokens': 12, 'completion_tokens': 9, 'reasoning_tokens': 0, 'cached_tokens': 0}
    """
    u = engine_usage or {}
    engine_prompt = _int(u.get("prompt_tokens"))
    prompt = prompt_tokens if prompt_tokens is not None else (engine_prompt or 0)
    if engine_prompt is not None and prompt_tokens is not None and engine_prompt != prompt_tokens:
        log.warning("the engine counted %d prompt tokens for the %d ids sent; reporting the engine's count",
                    engine_prompt, prompt_tokens)
        prompt = engine_prompt
    completion = _int(u.get("completion_tokens"))
    if completion is None:
        completion = len(tokenizer.encode(completion_text)) if tokenizer is not None and completion_text else 0
    details = u.get("completion_tokens_details") if isinstance(u.get("completion_tokens_details"), dict) else {}
    reasoning = _int(details.get("reasoning_tokens"))
    if reasoning is None:
        body = len(tokenizer.encode(reasoning_text)) if tokenizer is not None and reasoning_text else 0
        reasoning = min(completion, body + reasoning_markers)
    pdetails = u.get("prompt_tokens_details") if isinstance(u.get("prompt_tokens_details"), dict) else {}
    cached = _int(pdetails.get("cached_tokens")) or 0
    return {"prompt_tokens": prompt, "completion_tokens": completion, "reasoning_tokens": reasoning,
            "cached_tokens": min(cached, prompt)}


def openai_usage(f: Finish) -> dict[str, Any]:
    """The OpenAI ``usage`` object."""
    return {"prompt_tokens": f.prompt_tokens, "completion_tokens": f.completion_tokens,
            "total_tokens": f.prompt_tokens + f.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": f.cached_tokens},
            "completion_tokens_details": {"reasoning_tokens": f.reasoning_tokens}}


def anthropic_usage(f: Finish) -> dict[str, int]:
    """The Anthropic ``usage`` object."""
    return {"input_tokens": f.prompt_tokens, "output_tokens": f.completion_tokens,
            "cache_read_input_tokens": f.cached_tokens}
