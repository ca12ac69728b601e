"""Run the reference K2's routing and routed experts through k2trt's custom kernels (``plugins/k2trt_plugins``).

``use_plugins(model, "triton")`` swaps every MoE layer's router + routed-expert loop for the Triton router and the
grouped block-FP8 MoE GEMMs: the held experts are re-quantised to e4m3 with 128×128 scales (from weights that were
dequantised from FP8 this gives back the checkpoint's bytes), global expert ids are mapped to this rank's local
ones, and slots routed to other ranks' experts get weight 0. Shared experts, attention and the collectives stay
as they are. Activations are quantised per token per 128 columns in the kernels, so logits differ from the plain
float path by about 4 % per MoE layer on the tiny K2 (two e4m3 roundings), compounding over layers; the tests
bound that end-to-end difference and, tightly, the Triton kernels against their torch twins. MLA decode is not
swapped in: the reference keeps a left-padded contiguous cache, the kernel a paged one (plugins/README.md).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F

from k2trt.reference.model import MoE, Transformer

PluginImpl = Literal["auto", "triton", "reference"]


class KernelMoE:
    """The routed part of one MoE layer through the plugin ops: ``tokens [M, D] → [M, D]``."""

    def __init__(self, moe: MoE, ops: Any) -> None:
        from k2trt_plugins.fp8 import quantize_weight

        s = moe.spec
        self.spec, self.ops, self.gate = s, ops, moe.gate
        # noaux_tc + sigmoid is the routing the router kernel implements; anything else keeps the torch gate
        self.kernel_routing = s.has_router_bias and s.scoring_func == "sigmoid"
        lut = torch.full((s.n_routed_experts,), -1, dtype=torch.long)
        lut[list(moe.expert_ids)] = torch.arange(len(moe.expert_ids))
        self.local = lut                                                       # global id -> local index or -1

        def stack(attr: str) -> tuple[torch.Tensor, torch.Tensor]:
            qs = [quantize_weight(getattr(e, attr).detach().float()) for e in moe.experts]
            return torch.stack([q for q, _ in qs]).contiguous(), torch.stack([sc for _, sc in qs]).contiguous()

        self.w1, self.s1 = stack("w1")                                         # [E, F, D], [E, F/128, D/128]
        self.w3, self.s3 = stack("w3")
        self.w2, self.s2 = stack("w2")                                         # [E, D, F], [E, D/128, F/128]

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        s = self.spec
        if self.kernel_routing:
            logits = F.linear(tokens.float(), self.gate.weight.float())        # [M, E]
            ids, weights = self.ops.route(logits, self.gate.bias, s.num_experts_per_tok, s.n_group, s.topk_group,
                                          s.routed_scaling_factor, s.norm_topk_prob)
        else:
            weights, ids = self.gate(tokens)
        local = self.local[ids.long()]                                         # [M, K]
        weights = weights.float().masked_fill(local < 0, 0.0)                 # other ranks' experts add nothing
        return self.ops.moe_fp8(tokens, local.clamp_min(0), weights.contiguous(), self.w1, self.s1, self.w3,
                                self.s3, self.w2, self.s2)


def use_plugins(model: Transformer, impl: PluginImpl = "triton", device: str = "cpu") -> dict[str, str | None]:
    """Route every MoE layer of ``model`` through the plugin ops; returns ``{op: reason it cannot run or None}``.

    ``impl="triton"`` fails (PluginUnavailable, naming the reason) where a kernel cannot run; ``"auto"`` falls back
    to the ops' torch references with a logged reason; ``"reference"`` uses those references on purpose.
    Example: ``use_plugins(load_model(d), "triton")`` (on CPU with ``TRITON_INTERPRET=1``).
    """
    import k2trt_plugins

    ops = k2trt_plugins.implementations(impl, device)
    for m in model.modules():
        if isinstance(m, MoE):
            m.routed = KernelMoE(m, ops)
    return k2trt_plugins.status(device)
