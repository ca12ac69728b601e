"""K2's MoE router: sigmoid scores, bias-corrected selection, top-k, unbiased normalised weights.

# T tokens, E routed experts (K2: 384), k experts per token (K2: 8), G expert groups (K2: 1)

K2 (``topk_method: noaux_tc``) routes each token by
  1. ``s = sigmoid(logits)`` in float32 — the *weights* come from these unbiased scores;
  2. ``sel = s + e_score_correction_bias`` — used only to *choose* experts;
  3. with ``n_group > 1`` (DeepSeek-V3's 8 groups; K2 has one), a group scores the sum of its two best ``sel`` and
     only the ``topk_group`` best groups stay eligible (the others are set to -inf, not 0: biased scores can be
     negative);
  4. the top-k of ``sel``; the weights are ``s`` at those experts, divided by their sum (``norm_topk_prob``), times
     ``routed_scaling_factor`` (K2: 2.827).
The output order is torch.topk's (descending ``sel``; the kernel breaks exact ties by the lower expert index).

Why a kernel: with ``n_group == topk_group == 1`` some TensorRT-LLM releases leave their fused routing kernel for an
unfused torch path; this does the whole chain in one launch, one program per BLOCK_T tokens.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._runtime import cdiv, check_same_device, check_tensor, empty, load_kernels, next_pow2, require_triton

if TYPE_CHECKING:
    import torch


def _check(logits: "torch.Tensor", bias: "torch.Tensor | None", top_k: int, n_group: int, topk_group: int,
           ids_dtype: "torch.dtype") -> None:
    import torch

    check_tensor("logits", logits, ndim=2, dtypes=(torch.float32, torch.bfloat16, torch.float16))
    t, e = logits.shape
    if bias is not None:
        check_tensor("bias", bias, ndim=1, dtypes=(torch.float32, torch.bfloat16, torch.float16), shape=(e,))
        check_same_device(logits=logits, bias=bias)
    if ids_dtype not in (torch.int32, torch.int64):
        raise ValueError(f"ids_dtype must be torch.int32 or torch.int64, got {ids_dtype}")
    if n_group < 1 or e % n_group:
        raise ValueError(f"n_group={n_group} must be ≥ 1 and divide the {e} experts")
    if not 1 <= topk_group <= n_group:
        raise ValueError(f"topk_group={topk_group} must be in 1..n_group={n_group}")
    if n_group > 1 and e // n_group < 2:
        raise ValueError(f"groups of {e // n_group} expert cannot be scored by their top-2 sum (n_group={n_group})")
    eligible = e // n_group * topk_group
    if not 1 <= top_k <= eligible:
        raise ValueError(f"top_k={top_k} must be in 1..{eligible} (the experts in {topk_group} kept group(s))")


def route(logits: "torch.Tensor", bias: "torch.Tensor | None", top_k: int, n_group: int = 1, topk_group: int = 1,
          routed_scaling_factor: float = 1.0, renormalize: bool = True,
          ids_dtype: "torch.dtype | None" = None) -> "tuple[torch.Tensor, torch.Tensor]":
    """Route tokens to experts with the Triton kernel.

    Args:
        logits: ``[T, E]`` router logits (float32/bf16/fp16; computed in float32). See ``router_logits``.
        bias: ``[E]`` ``e_score_correction_bias`` (selection only), or None.
        top_k: experts per token (K2: 8).
        n_group, topk_group: group-limited routing (K2: 1 and 1).
        routed_scaling_factor: multiplier on the weights (K2: 2.827).
        renormalize: divide the chosen weights by their sum (``norm_topk_prob``).
        ids_dtype: torch.int32 (default) or torch.int64.
    Returns:
        ``(ids [T, k] ids_dtype, weights [T, k] float32)``.
    Raises:
        ValueError for bad shapes/dtypes/arguments; PluginUnavailable (with the reason) where Triton cannot run.
    Example:
        ``ids, w = route(hidden.float() @ gate_w.float().T, bias, 8, routed_scaling_factor=2.827)``
    """
    import torch

    ids_dtype = ids_dtype or torch.int32
    _check(logits, bias, top_k, n_group, topk_group, ids_dtype)
    require_triton(logits.device)
    k = load_kernels("_router_kernel")
    t, e = logits.shape
    ids = empty(t, top_k, dtype=ids_dtype, device=logits.device)
    weights = empty(t, top_k, dtype=torch.float32, device=logits.device)
    if t == 0:
        return ids, weights
    block_e = next_pow2(e)
    # Registers hold BLOCK_T × BLOCK_E floats; the interpreter prefers few, large programs.
    block_t = 16 if logits.device.type == "cpu" else max(1, min(8, 4096 // block_e))
    k.route_kernel[(cdiv(t, block_t),)](
        logits, bias if bias is not None else logits, ids, weights, t, e, e // n_group,
        logits.stride(0), ids.stride(0), weights.stride(0), float(routed_scaling_factor),
        TOP_K=top_k, N_GROUP=n_group, TOPK_GROUP=topk_group, HAS_BIAS=bias is not None, RENORM=bool(renormalize),
        BLOCK_T=block_t, BLOCK_E=block_e, BLOCK_G=next_pow2(n_group), BLOCK_K=next_pow2(top_k))
    return ids, weights


def route_reference(logits: "torch.Tensor", bias: "torch.Tensor | None", top_k: int, n_group: int = 1,
                    topk_group: int = 1, routed_scaling_factor: float = 1.0, renormalize: bool = True,
                    ids_dtype: "torch.dtype | None" = None) -> "tuple[torch.Tensor, torch.Tensor]":
    """Plain-torch twin of ``route`` (same signature and results); runs anywhere."""
    import torch

    ids_dtype = ids_dtype or torch.int32
    _check(logits, bias, top_k, n_group, topk_group, ids_dtype)
    t, e = logits.shape
    scores = logits.float().sigmoid()  # [T, E]
    sel = scores + bias.float() if bias is not None else scores
    if n_group > 1:
        grouped = sel.view(t, n_group, e // n_group)  # [T, G, E/G]
        group_scores = grouped.topk(2, dim=-1).values.sum(-1)  # [T, G]
        kept = group_scores.topk(topk_group, dim=-1).indices  # [T, topk_group]
        drop = torch.ones(t, n_group, dtype=torch.bool, device=logits.device).scatter_(1, kept, False)
        sel = grouped.masked_fill(drop[..., None], float("-inf")).reshape(t, e)
    ids = sel.topk(top_k, dim=-1).indices  # [T, k], descending
    weights = scores.gather(1, ids)
    if renormalize:
        weights = weights / weights.sum(-1, keepdim=True)
    return ids.to(ids_dtype), weights * routed_scaling_factor


def router_logits(hidden: "torch.Tensor", weight: "torch.Tensor") -> "torch.Tensor":
    """``hidden [T, H] @ weight[E, H]ᵀ`` in float32 (K2 keeps the router weight in BF16; scores are float32).

    Example: ``route(router_logits(h, gate_w), bias, 8, routed_scaling_factor=2.827)``.
    """
    import torch

    check_tensor("hidden", hidden, ndim=2)
    check_tensor("weight", weight, ndim=2, shape=(None, hidden.shape[1]))
    return torch.nn.functional.linear(hidden.float(), weight.float())
