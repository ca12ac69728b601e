"""Sampling and static-batch generation over the reference model (whole, tensor-parallel or attention-DP).

``generate(model, prompts, params)`` left-pads the prompts into one batch, prefills once, then decodes one token per
step with the latent KV cache until every row has stopped (a stop token, ``max_tokens``, or the ``on_token``
callback asking to stop, which is how the server applies stop strings). Greedy when ``temperature`` is below
``k2trt.sampling.GREEDY_BELOW`` (a vanishing temperature would divide the logits into infinities); otherwise
temperature + top-k + top-p (nucleus) sampling with a per-request seedable ``torch.Generator``.

One request never takes the batch (or the process) down: ``SamplingParams`` refuses values that are not finite, in
range and representable (``SamplingValueError``, a 400 at the server), and a failure while sampling or in a row's
callback ends that row with ``finish_reason="error"`` while the others go on. Between decode steps ``cancelled(row)``
is asked (the server: its client disconnected); a cancelled row ends with ``finish_reason="cancelled"``.

In a sharded job every rank runs this same loop in lockstep; ``agree`` (a broadcast from rank 0) makes every rank
take rank 0's tokens and finish decisions — stops, cancellations and failures alike — so callbacks only need to run
on rank 0 and every rank drops a row at the same step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal, Protocol, Sequence

import torch

from k2trt import sampling as rules
from k2trt.reference.model import KVCache
from k2trt.sampling import SamplingValueError

FinishReason = Literal["stop", "length", "cancelled", "error"]
# a step's finish code per row, as broadcast from rank 0
_GO, _STOP_TOKEN, _LENGTH, _STOPPED, _CANCELLED, _FAILED = range(6)


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

    def __post_init__(self) -> None:
        """Refuse what the sampler cannot represent (``SamplingValueError`` naming the field)."""
        rules.integer(self.max_tokens, "max_tokens", 0)
        rules.number(self.temperature, "temperature", 0.0)
        rules.number(self.top_p, "top_p", 0.0, 1.0, lo_open=True)
        rules.integer(self.top_k, "top_k", 0)
        if self.seed is not None:
            rules.integer(self.seed, "seed", *rules.ENGINE_SEEDS)
        if not isinstance(self.stop_ids, tuple):
            raise SamplingValueError("stop_token_ids must be a list of token ids", "stop_token_ids")
        for t in self.stop_ids:
            rules.integer(t, "stop_token_ids", 0)


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
    error: str | None = None
    """Why the request failed (``finish_reason == "error"``)."""


def sample_row(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None,
               top_k: int = 0) -> int:
    """One token from ``logits [V]``: argmax when the temperature vanishes (``k2trt.sampling.temperature``), else
    temperature + top-k + top-p sampling."""
    if rules.temperature(temperature) == 0.0:
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
             agree: Callable[[torch.Tensor], torch.Tensor] | None = None,
             cancelled: Callable[[int], bool] | None = None) -> list[Completion]:
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
        cancelled: ``cancelled(row)`` before each step: True ends that row (``finish_reason="cancelled"``, nothing
            more generated for it). Asked on the ranks that pass it; ``agree`` carries rank 0's answer to all.
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
    gens = [_generator(p.seed) if rules.temperature(p.temperature) > 0 else None for p in plist]
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
        step = torch.zeros(n, 2, dtype=torch.long)                          # [B, (token, finish code)]
        errors: dict[int, str] = {}
        for i in range(n):
            if active[i]:
                step[i, 1] = _decide(i, logits[i], plist[i], gens[i], len(out[i].tokens), on_token, cancelled,
                                     step, errors)
        if agree is not None:
            step = agree(step)
        for i in range(n):
            if not active[i]:
                continue
            tok, fin = int(step[i, 0]), int(step[i, 1])
            if fin in (_CANCELLED, _FAILED):  # nothing produced this step
                out[i].finish_reason = "cancelled" if fin == _CANCELLED else "error"
                out[i].error = errors.get(i, "the request failed on rank 0") if fin == _FAILED else None
            else:
                out[i].completion_tokens += 1
                if fin == _STOP_TOKEN:
                    out[i].stop_token = tok
                else:
                    out[i].tokens.append(tok)
                if fin:
                    out[i].finish_reason = "length" if fin == _LENGTH else "stop"
            if fin:
                active[i] = False
                if on_finish is not None:
                    on_finish(i, out[i])
        batch = step[:, :1].clone()                                        # [B, 1] next input
    return out


def _decide(i: int, logits: torch.Tensor, p: SamplingParams, gen: torch.Generator | None, produced: int,
            on_token: Callable[[int, int], bool] | None, cancelled: Callable[[int], bool] | None,
            step: torch.Tensor, errors: dict[int, str]) -> int:
    """Row ``i``'s finish code for this step (its sampled token written to ``step[i, 0]``). A failure here is this
    row's alone: it becomes ``_FAILED`` with the reason in ``errors``, so the batch and every rank go on."""
    try:
        if cancelled is not None and cancelled(i):
            return _CANCELLED
        tok = sample_row(logits, p.temperature, p.top_p, gen, p.top_k)
        step[i, 0] = tok
        if tok in p.stop_ids:
            return _STOP_TOKEN
        if on_token is not None and on_token(i, tok):
            return _STOPPED
        return _LENGTH if produced + 1 >= p.max_tokens else _GO
    except Exception as e:  # noqa: BLE001 - one request's failure ends that request, never the engine
        errors[i] = f"{type(e).__name__}: {e}"
        return _FAILED
