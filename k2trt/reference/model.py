"""Kimi K2 (DeepseekV3ForCausalLM) in plain PyTorch: the reference the verification path trusts.

One readable file, after DeepSeek-V3's ``inference/model.py`` and gpt-fast's ``model.py`` (STYLE P8): embeddings,
RMSNorm, MLA with the q_lora path, a latent KV cache (the normed ``kv_lora_rank`` latent plus the shared RoPE key),
YaRN RoPE with DeepSeek's frequency correction, naive and weight-absorbed attention side by side (plus ``sdpa``,
the naive math through torch's fused attention kernel, which training uses), the dense SwiGLU MLP of the first
layers, the noaux_tc MoE (sigmoid scores, ``e_score_correction_bias`` for selection only, group-limited selection,
normalisation, ``routed_scaling_factor``, shared experts) and the lm_head.

Every model-dependent branch reads a named ``ModelSpec`` field; nothing is stored in module globals. The model is
single-process: a sharded rank builds the same classes from its slice of the weights and passes a ``Placement``
(what it holds, which outputs are partial sums) and a ``Collectives`` object (torch.distributed on that rank, the
identity here). Weights are dequantised at load (float32 by default), so FP8 and BF16 checkpoints run the same code.

Legend (all modules): B batch, S new tokens, T cached + new tokens, D hidden, H heads held, N qk_nope_head_dim,
R qk_rope_head_dim, V v_head_dim, C kv_lora_rank, Q q_lora_rank, E routed experts, K experts per token,
F FFN width held, W vocab rows held, M tokens in the MoE (all ranks' tokens under attention-DP).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from k2trt.spec import ModelSpec

AttnImpl = Literal["naive", "absorb", "sdpa"]
# get(role, layer, expert) -> this process's (possibly sliced) float tensor; see checkpoint.reader.CheckpointReader.
WeightFn = Callable[[str, "int | None", "int | None"], torch.Tensor]


# ---- parallel hooks (identity when unsharded) --------------------------------------------------------------------

class Collectives(Protocol):
    """The collectives a sharded rank needs; ``Local`` is the single-process identity."""

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """Sum over the tensor-parallel group."""
        ...

    def all_gather(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        """Concatenate equal-shaped tensors of the group along ``dim``, in rank order."""
        ...

    def gather_tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Attention-DP: every rank's ``[n_r, D]`` tokens, concatenated in rank order, and this rank's offset."""
        ...


class Local:
    """Collectives of a world of one."""

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def all_gather(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        return x

    def gather_tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, int]:
        return x, 0


@dataclass(frozen=True)
class Placement:
    """What one process holds and which of its outputs are partial. The default is the whole model."""

    attn_partial: bool = False
    """o_proj is row-parallel over heads: its output is summed over the group."""
    dense_partial: bool = False
    """The dense MLP's FFN columns are split: its output is summed over the group."""
    dense_scale: float = 1.0
    """Multiplier on the dense MLP output before the sum (a TP group larger than the MLP's split sums replicas)."""
    experts: tuple[int, ...] | None = None
    """Routed experts held (None: all)."""
    moe_partial: bool = False
    """Routed (and shared) expert outputs are summed over the group."""
    shared_scale: float = 1.0
    """Multiplier on the shared expert's output before the sum (replicated shared-expert slices)."""
    moe_dp: bool = False
    """Attention-DP: the MoE runs on every rank's tokens (gathered), and each rank keeps its own rows."""
    lm_head_part: int = 0
    """lm_head rows are split by vocabulary in parts of this many rows (the last may be short; 0: not split):
    the logits are gathered over the group."""


# ---- building blocks -------------------------------------------------------------------------------------------

class RMSNorm(nn.Module):
    def __init__(self, weight: torch.Tensor, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


def _yarn_mscale(factor: float, mscale: float) -> float:
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def rope_inv_freq(spec: ModelSpec) -> tuple[torch.Tensor, float]:
    """RoPE inverse frequencies ``[R/2]`` with YaRN's frequency correction, and the cos/sin multiplier.

    YaRN (DeepSeek's rule): dimensions rotating more than ``beta_fast`` times over the original context keep their
    frequency, those rotating fewer than ``beta_slow`` times are divided by ``factor``, with a linear ramp between.
    The cos/sin multiplier is ``mscale(factor, mscale) / mscale(factor, mscale_all_dim)`` (1.0 for K2); the
    attention-logit part of YaRN's mscale is in ``spec.softmax_scale``.
    """
    dim, base = spec.qk_rope_head_dim, spec.rope_theta
    inv = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))  # [R/2]
    y = spec.yarn
    if y is None:
        return inv, 1.0
    factor, orig = y["factor"], y["original_max_position_embeddings"]

    def correction_dim(rotations: float) -> float:
        return dim * math.log(orig / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low = max(math.floor(correction_dim(y["beta_fast"])), 0)
    high = min(math.ceil(correction_dim(y["beta_slow"])), dim - 1)
    if low == high:
        high += 0.001  # avoid a zero-width ramp
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    keep = 1 - ramp  # 1: extrapolate (original frequency), 0: interpolate (divided by factor)
    inv = inv / factor * (1 - keep) + inv * keep
    attn = _yarn_mscale(factor, y["mscale"]) / _yarn_mscale(factor, y["mscale_all_dim"]) \
        if y["mscale"] and y["mscale_all_dim"] else _yarn_mscale(factor, 1.0)
    return inv, attn


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs (x0, x1), (x2, x3), … of the last dim (DeepSeek's layout).

    x: [B, S, ..., R]; cos/sin: [B, S, R/2], broadcast over the middle dims.
    """
    while cos.dim() < x.dim():
        cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)


@dataclass
class KVCache:
    """MLA's latent cache for a batch: per layer the normed latent ``[B, T, C]`` and the roped key ``[B, T, R]``.

    ``pad[b]`` left-padding slots of row b (never attended to; positions start after them).
    """

    pad: torch.Tensor
    kv: list[torch.Tensor | None] = field(default_factory=list)
    pe: list[torch.Tensor | None] = field(default_factory=list)

    @property
    def length(self) -> int:
        first = self.kv[0] if self.kv else None
        return 0 if first is None else first.shape[1]

    def append(self, layer: int, kv: torch.Tensor, pe: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        old_kv, old_pe = self.kv[layer], self.pe[layer]
        self.kv[layer] = kv if old_kv is None else torch.cat([old_kv, kv], dim=1)
        self.pe[layer] = pe if old_pe is None else torch.cat([old_pe, pe], dim=1)
        return self.kv[layer], self.pe[layer]  # type: ignore[return-value]


class MLA(nn.Module):
    """Multi-head latent attention over the heads this process holds."""

    def __init__(self, spec: ModelSpec, layer: int, get: WeightFn, attn_impl: AttnImpl, placement: Placement,
                 comm: Collectives) -> None:
        super().__init__()
        self.spec, self.layer, self.attn_impl, self.placement, self.comm = spec, layer, attn_impl, placement, comm
        p = lambda t: nn.Parameter(t, requires_grad=False)  # noqa: E731
        if spec.q_lora_rank:
            self.wq_a = p(get("q_a", layer, None))                          # [Q, D]
            self.q_norm = RMSNorm(get("q_a_norm", layer, None), spec.rms_norm_eps)
            self.wq_b = p(get("q_b", layer, None))                          # [H*(N+R), Q]
        else:
            self.wq = p(get("q", layer, None))                              # [H*(N+R), D]
        self.wkv_a = p(get("kv_a", layer, None))                            # [C+R, D]
        self.kv_norm = RMSNorm(get("kv_a_norm", layer, None), spec.rms_norm_eps)
        self.wkv_b = p(get("kv_b", layer, None))                            # [H*(N+V), C]
        self.wo = p(get("o", layer, None))                                  # [D, H*V]
        self.n_heads = self.wkv_b.shape[0] // (spec.qk_nope_head_dim + spec.v_head_dim)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor,
                cache: KVCache) -> torch.Tensor:
        s = self.spec
        b, n_new, _ = x.shape
        h, nd, rd, vd = self.n_heads, s.qk_nope_head_dim, s.qk_rope_head_dim, s.v_head_dim
        if s.q_lora_rank:
            q = F.linear(self.q_norm(F.linear(x, self.wq_a)), self.wq_b)
        else:
            q = F.linear(x, self.wq)
        q = q.view(b, n_new, h, nd + rd)
        q_nope, q_pe = q.split([nd, rd], dim=-1)                             # [B,S,H,N], [B,S,H,R]
        q_pe = apply_rope(q_pe, cos, sin)
        kv, k_pe = F.linear(x, self.wkv_a).split([s.kv_lora_rank, rd], dim=-1)  # [B,S,C], [B,S,R]
        kv_all, pe_all = cache.append(self.layer, self.kv_norm(kv), apply_rope(k_pe, cos, sin))  # [B,T,C],[B,T,R]
        wkv_b = self.wkv_b.view(h, nd + vd, s.kv_lora_rank)                  # [H, N+V, C]
        if self.attn_impl == "sdpa":
            out = self._sdpa(q_nope, q_pe, kv_all, pe_all, wkv_b, mask)       # [B,S,H,V]
            y = F.linear(out.reshape(b, n_new, h * vd), self.wo)
            return self.comm.all_reduce(y) if self.placement.attn_partial else y
        if self.attn_impl == "naive":
            kv_full = torch.einsum("btc,hdc->bthd", kv_all, wkv_b)           # [B,T,H,N+V]
            k_nope, v = kv_full.split([nd, vd], dim=-1)
            scores = torch.einsum("bshn,bthn->bsht", q_nope, k_nope)
        else:  # absorb W_UK into the query and W_UV into the output: attention runs in the latent space
            q_lat = torch.einsum("bshn,hnc->bshc", q_nope, wkv_b[:, :nd])   # [B,S,H,C]
            scores = torch.einsum("bshc,btc->bsht", q_lat, kv_all)
        scores = (scores + torch.einsum("bshr,btr->bsht", q_pe, pe_all)) * s.softmax_scale  # [B,S,H,T]
        scores = scores.masked_fill(~mask[:, :, None, :], float("-inf"))
        probs = scores.softmax(dim=-1, dtype=torch.float32).to(x.dtype)
        if self.attn_impl == "naive":
            out = torch.einsum("bsht,bthv->bshv", probs, v)
        else:
            out = torch.einsum("bshc,hvc->bshv", torch.einsum("bsht,btc->bshc", probs, kv_all), wkv_b[:, nd:])
        y = F.linear(out.reshape(b, n_new, h * vd), self.wo)                # [B,S,D]
        return self.comm.all_reduce(y) if self.placement.attn_partial else y

    def _sdpa(self, q_nope: torch.Tensor, q_pe: torch.Tensor, kv_all: torch.Tensor, pe_all: torch.Tensor,
              wkv_b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The naive path's attention through torch's fused kernel (what training uses: about twice as fast on a
        CPU at 512 tokens, and it never materialises the [B,S,H,T] scores for the backward pass)."""
        s = self.spec
        nd, rd, vd = s.qk_nope_head_dim, s.qk_rope_head_dim, s.v_head_dim
        k_nope, v = torch.einsum("btc,hdc->bthd", kv_all, wkv_b).split([nd, vd], dim=-1)  # [B,T,H,N], [B,T,H,V]
        q = torch.cat([q_nope, q_pe], dim=-1)                                             # [B,S,H,N+R]
        k = torch.cat([k_nope, pe_all[:, :, None].expand(-1, -1, q.shape[2], -1)], dim=-1)  # [B,T,H,N+R]
        width = max(nd + rd, vd)  # the fused CPU kernel wants one head size: zero columns change no dot product
        q, k, v = (F.pad(t, (0, width - t.shape[-1])).transpose(1, 2) for t in (q, k, v))  # [B,H,*,W]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None], scale=s.softmax_scale)
        return out.transpose(1, 2)[..., :vd]                                              # [B,S,H,V]


class MLP(nn.Module):
    """SwiGLU FFN: the dense layers, one routed expert, or the (fused) shared experts."""

    def __init__(self, gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor) -> None:
        super().__init__()
        self.w1 = nn.Parameter(gate, requires_grad=False)  # [F, D]
        self.w3 = nn.Parameter(up, requires_grad=False)    # [F, D]
        self.w2 = nn.Parameter(down, requires_grad=False)  # [D, F]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.silu(F.linear(x, self.w1)) * F.linear(x, self.w3), self.w2)


class Gate(nn.Module):
    """K2's router: scores, optional group-limited selection, top-k, normalised and scaled weights."""

    def __init__(self, spec: ModelSpec, layer: int, get: WeightFn) -> None:
        super().__init__()
        self.spec = spec
        self.weight = nn.Parameter(get("router", layer, None), requires_grad=False)        # [E, D]
        bias = get("router_bias", layer, None) if spec.has_router_bias else None
        self.bias = None if bias is None else nn.Parameter(bias.float(), requires_grad=False)  # [E]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [M, D] → (weights [M, K] float32, expert ids [M, K])."""
        s = self.spec
        logits = F.linear(x.float(), self.weight.float())                   # [M, E]
        scores = logits.sigmoid() if s.scoring_func == "sigmoid" else logits.softmax(dim=-1)
        choice = scores if self.bias is None else scores + self.bias        # the bias steers selection only
        if s.n_group > 1:
            grouped = choice.view(x.shape[0], s.n_group, -1)                 # [M, G, E/G]
            # noaux_tc ranks a group by its best two biased scores; the older group-limited greedy by its best one
            gscore = grouped.topk(2, dim=-1).values.sum(-1) if s.has_router_bias else grouped.amax(-1)  # [M, G]
            keep = torch.zeros_like(gscore, dtype=torch.bool)
            keep.scatter_(1, gscore.topk(s.topk_group, dim=-1).indices, True)
            choice = choice.masked_fill(~keep.repeat_interleave(s.n_routed_experts // s.n_group, 1), float("-inf"))
        idx = choice.topk(s.num_experts_per_tok, dim=-1).indices             # [M, K]
        weights = scores.gather(1, idx)                                      # unbiased scores of the chosen
        if s.norm_topk_prob and s.num_experts_per_tok > 1:
            weights = weights / (weights.sum(-1, keepdim=True) + 1e-20)
        return weights * s.routed_scaling_factor, idx


class MoE(nn.Module):
    """Routed experts (those held) + shared experts; partial sums completed by the group's all-reduce."""

    def __init__(self, spec: ModelSpec, layer: int, get: WeightFn, placement: Placement,
                 comm: Collectives) -> None:
        super().__init__()
        self.spec, self.placement, self.comm = spec, placement, comm
        self.gate = Gate(spec, layer, get)
        held = placement.experts if placement.experts is not None else tuple(range(spec.n_routed_experts))
        self.expert_ids = held
        self.experts = nn.ModuleList(
            MLP(get("expert_gate", layer, e), get("expert_up", layer, e), get("expert_down", layer, e)) for e in held)
        self.shared = MLP(get("shared_gate", layer, None), get("shared_up", layer, None),
                          get("shared_down", layer, None)) if spec.n_shared_experts else None
        # routing + routed experts through the custom kernels (k2trt.reference.plugins.use_plugins), or None
        self.routed: Callable[[torch.Tensor], torch.Tensor] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        mine = x.reshape(-1, shape[-1])                                      # [n, D]
        pl = self.placement
        tokens, offset = self.comm.gather_tokens(mine) if pl.moe_dp else (mine, 0)  # [M, D]
        if self.routed is not None:
            out = self.routed(tokens)
        else:
            weights, idx = self.gate(tokens)                                 # [M, K]
            out = torch.zeros_like(tokens)
            for e, expert in zip(self.expert_ids, self.experts):
                rows, slot = (idx == e).nonzero(as_tuple=True)
                if rows.numel():
                    out.index_add_(0, rows, expert(tokens[rows]) * weights[rows, slot, None].to(tokens.dtype))
        if pl.moe_dp:  # shared experts are replicated under attention-DP: applied to this rank's tokens only
            out = self.comm.all_reduce(out)[offset: offset + mine.shape[0]]
            if self.shared is not None:
                out = out + self.shared(mine)
            return out.view(shape)
        if self.shared is not None:
            out = out + self.shared(mine) * pl.shared_scale
        if pl.moe_partial:
            out = self.comm.all_reduce(out)
        return out.view(shape)


class Block(nn.Module):
    def __init__(self, spec: ModelSpec, layer: int, get: WeightFn, attn_impl: AttnImpl, placement: Placement,
                 comm: Collectives) -> None:
        super().__init__()
        self.placement, self.comm = placement, comm
        self.attn_norm = RMSNorm(get("input_norm", layer, None), spec.rms_norm_eps)
        self.attn = MLA(spec, layer, get, attn_impl, placement, comm)
        self.ffn_norm = RMSNorm(get("post_norm", layer, None), spec.rms_norm_eps)
        self.is_moe = spec.is_moe_layer(layer)
        self.ffn: nn.Module = MoE(spec, layer, get, placement, comm) if self.is_moe else MLP(
            get("dense_gate", layer, None), get("dense_up", layer, None), get("dense_down", layer, None))

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor,
                cache: KVCache) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin, mask, cache)
        y = self.ffn(self.ffn_norm(x))
        if not self.is_moe and self.placement.dense_partial:
            y = self.comm.all_reduce(y * self.placement.dense_scale)
        return x + y


class Transformer(nn.Module):
    """K2: embeddings → decoder blocks → final norm → lm_head.

    Build with ``load_model(dir)`` (whole model) or ``Transformer(spec, get, ...)`` with any weight function.
    Example:
        ``m = load_model(d); logits = m(torch.tensor([[1, 2, 3]]))  # [1, 3, vocab]``
    """

    def __init__(self, spec: ModelSpec, get: WeightFn, *, attn_impl: AttnImpl = "absorb",
                 placement: Placement | None = None, comm: Collectives | None = None) -> None:
        super().__init__()
        if attn_impl not in ("naive", "absorb", "sdpa"):
            raise ValueError(f"attn_impl must be 'naive', 'absorb' or 'sdpa', got {attn_impl!r}")
        self.spec, self.attn_impl = spec, attn_impl
        self.placement = placement or Placement()
        self.comm: Collectives = comm or Local()
        self.embed = nn.Parameter(get("embed", None, None), requires_grad=False)      # [vocab, D], replicated
        self.layers = nn.ModuleList(Block(spec, i, get, attn_impl, self.placement, self.comm)
                                    for i in range(spec.num_hidden_layers))
        self.norm = RMSNorm(get("final_norm", None, None), spec.rms_norm_eps)
        head = "embed" if spec.tie_word_embeddings else "lm_head"
        self.head = nn.Parameter(get(head, None, None), requires_grad=False)          # [W, D]
        inv_freq, self.rope_mult = rope_inv_freq(spec)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def new_cache(self, batch: int, pad: torch.Tensor | list[int] | None = None) -> KVCache:
        """An empty latent cache for ``batch`` rows; ``pad[b]`` = left-padding slots of row b."""
        p = torch.zeros(batch, dtype=torch.long) if pad is None else torch.as_tensor(pad, dtype=torch.long)
        n = self.spec.num_hidden_layers
        return KVCache(p, [None] * n, [None] * n)

    def forward(self, tokens: torch.Tensor, cache: KVCache | None = None, *, last_only: bool = False
                ) -> torch.Tensor:
        """tokens [B, S] → float32 logits [B, S, vocab] (``last_only``: [B, 1, vocab]).

        With a cache, the tokens continue the cached sequences (slot ``cache.length`` onwards); without one, they
        are whole sequences. Weights are loaded with ``requires_grad=False``, so inference builds no autograd
        graph; training (``k2trt.train``) switches gradients on for the parameters it learns.
        """
        b, n_new = tokens.shape
        cache = cache if cache is not None else self.new_cache(b)
        start = cache.length
        slots = torch.arange(start, start + n_new)                              # [S]
        pos = (slots[None, :] - cache.pad[:, None]).clamp_min(0)                # [B, S]
        freqs = pos[..., None].float() * self.inv_freq                         # [B, S, R/2]
        cos, sin = freqs.cos() * self.rope_mult, freqs.sin() * self.rope_mult
        keys = torch.arange(start + n_new)                                      # [T]
        mask = (keys[None, None, :] <= slots[None, :, None]) & (keys[None, None, :] >= cache.pad[:, None, None])
        mask = mask | (keys[None, None, :] == slots[None, :, None])             # [B, S, T]; pad rows see themselves
        x = F.embedding(tokens, self.embed)                                      # [B, S, D]
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        for layer in self.layers:
            x = layer(x, cos, sin, mask, cache)
        x = self.norm(x[:, -1:] if last_only else x)
        logits = F.linear(x, self.head).float()                                 # [B, S, W]
        part = self.placement.lm_head_part
        if part:  # vocab-parallel head: pad the (short) last part, gather, crop to the vocabulary
            logits = F.pad(logits, (0, part - logits.shape[-1]))
            logits = self.comm.all_gather(logits, -1)[..., :self.spec.vocab_size]
        return logits


def load_model(model_dir: str | Path, dtype: torch.dtype = torch.float32, attn_impl: AttnImpl = "absorb",
               spec: ModelSpec | None = None) -> Transformer:
    """The whole model from a checkpoint directory in any format ``checkpoint.reader`` reads (block FP8, BF16,
    NVFP4, W4A8), weights dequantised to ``dtype``.

    ``rotary_emb.inv_freq`` tensors are never loaded (RoPE is recomputed from the config).
    Example:
        ``model = load_model("/tmp/tiny-k2", attn_impl="naive")``
    """
    from k2trt.checkpoint.reader import CheckpointReader

    spec = spec or ModelSpec.from_config(model_dir)
    with CheckpointReader(Path(model_dir)) as reader:
        model = Transformer(spec, lambda role, layer, expert: reader.get(role, layer, expert, dtype=dtype),
                            attn_impl=attn_impl)
    return model.eval()
