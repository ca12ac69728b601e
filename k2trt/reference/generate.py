"""Sampling and static-batch generation over the reference model (whole, tensor-parallel or attention-DP).

``generate(model, prompts, params)`` left-pads the prompts into one batch, prefills once, then decodes one token per
step with the latent KV cache until every row has stopped (a stop token, ``max_tokens``, or the ``on_token``
callback asking to stop, which is how the server applies stop strings). Greedy when ``temperature == 0``; otherwise
temperature + top-p (nucleus) sampling with a per-request seedable ``torch.Generator``.

In a sharded job every rank runs this same loop in lockstep; ``agree`` (a broadcast from rank 0) makes every rank
take rank 0's tokens and stop decisions, so callbacks only need to run on rank 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal, Protocol, Sequence

import torch

from k2trt.reference.model import KVCache

FinishReason = Literal["stop", "length"]


class CausalLM(Protocol):
    """What generate needs: a cache factory and a forward pass returning float32 logits."""

    def new_cache(self, batch: int, pad: torch.Tensor | list[int] | None = None) -> KVCache: ...

    def __call__(self, tokens: torch.Tensor, cache: KVCache | None = None, *, last_only: bool = False
                 ) -> torch.Tensor: ...


@dataclass(frozen=True)
class SamplingParams:
    """One request's decoding settings."""

    max_tokens: int = 16
    """Tokens to generate at most (the stop token counts)."""
    temperature: float = 0.0
    """0 → greedy (argmax)."""
    top_p: float = 1.0
    """Nucleus mass kept when sampling (1.0 → all)."""
    top_k: int = 0
    """Sample among the k most likely tokens only (0 → all)."""
    seed: int | None = None
    """Seed of this request's sampling generator (None → nondeterministic)."""
    stop_ids: tuple[int, ...] = ()
    """Token ids that end the request (not included in the output tokens)."""


@dataclass
class Completion:
    """The outcome of one request."""

    tokens: list[int] = field(default_factory=list)
    """Generated tokens, the stop token excluded."""
    finish_reason: FinishReason | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    """Tokens the model produced, a stop token included."""
    stop_token: int | None = None
    """The stop token that ended the request, if one did."""


def sample_row(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None,
               top_k: int = 0) -> int:
    """One token from ``logits [V]``: argmax when temperature ≤ 0, else temperature + top-k + top-p sampling."""
    if temperature <= 0:
        return int(torch.argmax(logits))
    logits = logits.float()
    if 0 < top_k < logits.shape[-1]:
        kth = logits.topk(top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(descending=True)
        keep = (sorted_p.cumsum(0) - sorted_p) < top_p  # the smallest prefix whose mass reaches top_p
        keep[0] = True
        probs = torch.zeros_like(probs).scatter_(0, order[keep], sorted_p[keep])
    return int(torch.multinomial(probs / probs.sum(), 1, generator=generator))


def _generator(seed: int | None) -> torch.Generator:
    g = torch.Generator()
    if seed is None:
        g.seed()
    else:
        g.manual_seed(seed)
    return g


@torch.no_grad()
def generate(model: CausalLM, prompts: Sequence[Sequence[int]], params: SamplingParams | Sequence[SamplingParams],
             *, on_token: Callable[[int, int], bool] | None = None,
             on_finish: Callable[[int, Completion], None] | None = None,
             agree: Callable[[torch.Tensor], torch.Tensor] | None = None) -> list[Completion]:
    """Generate for a static batch of token-id prompts.

    Args:
        model: a ``Transformer`` (or a sharded wrapper with the same interface).
        prompts: one non-empty token-id list per request.
        params: one SamplingParams for all, or one per request.
        on_token: ``on_token(row, token)`` for every generated non-stop token; returning True ends that row
            with finish_reason "stop" (stop strings).
        on_finish: ``on_finish(row, completion)`` as soon as a row is done (the rest of the batch may go on).
        agree: maps the step's ``[B, 2]`` (token, finish code) tensor to the value every rank uses; a
            broadcast from rank 0 in a sharded job.
    Returns:
        One Completion per prompt.
    Example:
        ``generate(load_model(d), [[1, 2, 3]], SamplingParams(max_tokens=8))[0].tokens``
    """
    n = len(prompts)
    plist = list(params) if isinstance(params, Sequence) else [params] * n
    if len(plist) != n:
        raise ValueError(f"{len(plist)} sampling params for {n} prompts")
    if any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    gens = [_generator(p.seed) if p.temperature > 0 else None for p in plist]
    out = [Completion(prompt_tokens=len(p)) for p in prompts]
    width = max(len(p) for p in prompts)
    pad = [width - len(p) for p in prompts]
    batch = torch.tensor([[0] * pad[i] + list(p) for i, p in enumerate(prompts)], dtype=torch.long)  # [B, S]
    cache = model.new_cache(n, pad)
    active = [p.max_tokens > 0 for p in plist]
    for i, a in enumerate(active):
        if not a:
            out[i].finish_reason = "length"
            if on_finish is not None:
                on_finish(i, out[i])
    while any(active):
        logits = model(batch, cache, last_only=True)[:, -1]               # [B, V]
        # (token, finish): 0 go on, 1 stop token (dropped), 2 length, 3 stopped by on_token (token kept)
        step = torch.zeros(n, 2, dtype=torch.long)
        for i in range(n):
            if not active[i]:
                continue
            tok = sample_row(logits[i], plist[i].temperature, plist[i].top_p, gens[i], plist[i].top_k)
            step[i, 0] = tok
            if tok in plist[i].stop_ids:
                step[i, 1] = 1
            elif on_token is not None and on_token(i, tok):
                step[i, 1] = 3
            elif len(out[i].tokens) + 1 >= plist[i].max_tokens:
                step[i, 1] = 2
        if agree is not None:
            step = agree(step)
        for i in range(n):
            if not active[i]:
                continue
            tok, fin = int(step[i, 0]), int(step[i, 1])
            out[i].completion_tokens += 1
            if fin != 1:
                out[i].tokens.append(tok)
            else:
                out[i].stop_token = tok
            if fin:
                out[i].finish_reason = "length" if fin == 2 else "stop"
                active[i] = False
                if on_finish is not None:
                    on_finish(i, out[i])
        batch = step[:, :1].clone()                                        # [B, 1] next input
    return out
