"""A copying circuit wired into the tiny K2 at initialisation, so that training starts able to copy.

Tool calls are mostly copying: the function name from the tools declared in the system turn, the arguments from
the user's words. A transformer learns to copy a span it has seen with two heads (an *induction* circuit): one that
attends to the previous token, so each position also holds the token before it, and one that matches the current
token against those copies and attends to the position just after the match. Trained from random weights, the tiny
K2 does not find that circuit on a CPU budget: on repeated random strings, a plain 2-layer GPT jumps to copying
after ~1,400 steps, and the tiny K2 had not by step 1,775 (loss 5.6); the committed run before this circuit
never copied a held-out name. Here the two heads are set by hand, and the tiny K2 copies repeated random strings
with 0.99 accuracy before its first step; the training then learns when to copy. On the committed corpus and
schedule, the held-out figures went from trigger F1 0.84, schema-valid arguments 0.00, exact calls 0.00 (random
start) to 0.91, 0.57, 0.36 (this start), and the target loss from 1.47 to 0.12.

The residual stream is split at initialisation: dimension 0 a constant (every embedding's entry ``CONST``),
the token dimensions ``1..K`` the embedding, the previous-token dimensions ``D/2..D/2+K-1`` zero (filled by
layer 0). In the reference model's MLA terms (``k2trt/reference/model.py``):

- layer 0, head 0, *previous token*: a rope-only score. The shared rope key ``k_pe`` and head 0's ``q_pe`` are
  fixed vectors read off the constant dimension, built so that after rotation the score is
  ``Σ a_i² cos(θ_i (d − 1))`` for a query ``d`` positions after the key — largest at ``d = 1``. Only the
  highest-frequency pairs carry weight (YaRN's scaled pairs rotate too slowly to tell neighbours apart). The value
  is the token dimensions (the KV latent's first ``K`` entries), written by ``o`` into the previous-token
  dimensions; nothing else in layer 0 writes there.
- layer 1, head 0, *induction*: the query is the token dimensions, the key the previous-token dimensions (through
  the KV latent's entries ``K..2K−1``), so the score is large where the key's previous token is the current
  token; the value is the key position's own token, which ``o`` adds to the token dimensions.
- the lm_head reads the token dimensions, tied to the embeddings, so the copied token is the likeliest next one.

Every other weight keeps its random initialisation (``weights.initial_value``); all of them train.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from k2trt.reference.model import MLP, Transformer
from k2trt.spec import ModelSpec

CONST = 32.0
"""The constant embedding entry the previous-token head's rope query and key are read from."""
ROPE_PAIRS = 11
"""Rope pairs the previous-token score uses: the fastest-rotating ones, which YaRN leaves unscaled in the tiny K2."""
ROPE_AMPLITUDE = 28.0
"""Norm of the previous-token head's rope query and key weights (the score's peak ∝ its square)."""
MATCH = 1.5
"""Gain of the induction head's query (its score for a matching token, before the softmax scale)."""
WRITE = 3.0
"""Gain of the induction head's output into the token dimensions (against the current token's own embedding)."""
HEAD = 0.2
"""Scale of the lm_head tied to the embeddings' token dimensions (loss 0.11 on copying repeated strings at init)."""


def width(spec: ModelSpec) -> int:
    """K: the token (and previous-token) dimensions the circuit uses."""
    return min(spec.hidden_size // 2 - 1, spec.qk_nope_head_dim, spec.v_head_dim, spec.kv_lora_rank // 2,
               spec.q_lora_rank or spec.hidden_size)


@torch.no_grad()
def wire(model: Transformer, spec: ModelSpec) -> None:
    """Set the copying circuit's weights in ``model`` (module docstring); raises ValueError on a model it does not
    fit (fewer than 2 layers, no q LoRA, or no rope)."""
    if spec.num_hidden_layers < 2 or not spec.q_lora_rank or spec.qk_rope_head_dim < 2 * ROPE_PAIRS:
        raise ValueError(f"the copying circuit needs 2 layers, a q LoRA and {2 * ROPE_PAIRS} rope dimensions")
    k, half = width(spec), spec.hidden_size // 2
    tok, prev, idx = torch.arange(1, 1 + k), torch.arange(half, half + k), torch.arange(k)
    model.embed[:, 0] = CONST
    model.embed[:, half:] = 0
    _previous_token_head(model, spec, tok, prev, idx)
    _induction_head(model, spec, tok, prev, idx)
    model.head.zero_()
    model.head[:, tok] = model.embed[:model.head.shape[0], tok] * HEAD


def _previous_token_head(model: Transformer, spec: ModelSpec, tok: torch.Tensor, prev: torch.Tensor,
                         idx: torch.Tensor) -> None:
    blk, k = model.layers[0], len(idx)
    at, n, r, c, h = blk.attn, spec.qk_nope_head_dim, spec.qk_rope_head_dim, spec.kv_lora_rank, spec.num_attention_heads
    q_pe, k_pe = _rope_pair(model.inv_freq, r)
    x = blk.attn_norm(model.embed)
    at.wkv_a[c:, :] = 0
    at.wkv_a[c:, 0] = k_pe / x[:, 0].mean()            # the shared rope key, off the normed constant
    at.wq_a[0, :] = 0
    at.wq_a[0, 0] = 1.0
    lat = at.q_norm(F.linear(x, at.wq_a))[:, 0].mean()
    at.wq_b[:n + r, :] = 0                            # head 0: no content score, the rope query off the constant
    at.wq_b[n:n + r, 0] = q_pe / lat
    at.wkv_a[:k, :] = 0
    at.wkv_a[idx, tok] = 1.0                          # KV latent 0..K-1 = the token dimensions
    wkv_b = at.wkv_b.view(h, n + spec.v_head_dim, c)
    wkv_b[0, n:, :] = 0
    wkv_b[0, n + idx, idx] = 1.0                      # head 0's value = those entries
    at.wo[prev[0]:, :] = 0                            # only head 0 writes the previous-token dimensions
    at.wo[:, :spec.v_head_dim] = 0
    at.wo[prev, idx] = 1.0
    for mlp in blk.ffn.modules():  # the dense FFN (or every expert) adds nothing there either
        if isinstance(mlp, MLP):
            mlp.w2[prev[0]:, :] = 0


def _induction_head(model: Transformer, spec: ModelSpec, tok: torch.Tensor, prev: torch.Tensor,
                    idx: torch.Tensor) -> None:
    at, k = model.layers[1].attn, len(idx)
    n, r, c, h = spec.qk_nope_head_dim, spec.qk_rope_head_dim, spec.kv_lora_rank, spec.num_attention_heads
    at.wq_a[:k, :] = 0
    at.wq_a[idx, tok] = 1.0                           # q latent 0..K-1 = the token dimensions
    at.wq_b[:n + r, :] = 0
    at.wq_b[idx, idx] = MATCH                         # head 0's query: those entries, no rope
    at.wkv_a[:2 * k, :] = 0
    at.wkv_a[idx, tok] = 1.0                          # KV latent 0..K-1: the token, K..2K-1: the previous token
    at.wkv_a[k + idx, prev] = 1.0
    wkv_b = at.wkv_b.view(h, n + spec.v_head_dim, c)
    wkv_b[0] = 0
    wkv_b[0, idx, k + idx] = 1.0                      # key: the previous token
    wkv_b[0, n + idx, idx] = 1.0                      # value: the token itself
    at.wo[:, :spec.v_head_dim] = 0
    at.wo[tok, idx] = WRITE


def _rope_pair(inv_freq: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(q_pe, k_pe) weights whose rotated product is ``Σ a_i² cos(θ_i (d − 1))`` for a query ``d`` positions after
    the key: pair i of the key is ``(a_i, 0)``, of the query ``a_i (cos θ_i, −sin θ_i)``."""
    a = torch.zeros(r // 2)
    a[:ROPE_PAIRS] = ROPE_AMPLITUDE / math.sqrt(ROPE_PAIRS)
    q, k = torch.zeros(r), torch.zeros(r)
    k[0::2] = a
    q[0::2], q[1::2] = a * torch.cos(inv_freq), -a * torch.sin(inv_freq)
    return q, k
