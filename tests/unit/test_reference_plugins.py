"""The reference engine with plugins: every MoE layer's routing and routed experts run through the Triton router
and the grouped block-FP8 MoE kernels (Triton's interpreter on CPU).

Two different claims, two tolerances: the Triton kernels compute what their torch twins compute (tight), and the
plugged model — FP8 activations, quantised per token per 128 columns — stays within FP8 rounding of the plain float
path (about 4 % per MoE layer on the tiny K2's random weights).
"""

from __future__ import annotations

import os

if not os.path.exists("/dev/nvidiactl"):  # no GPU: Triton kernels run in its interpreter (set before triton loads)
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch

from k2trt.reference.model import MoE, load_model
from k2trt.reference.plugins import KernelMoE, use_plugins


def _logits(model, tokens):
    with torch.no_grad():
        return model(tokens)[0].float()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / a.norm())


@pytest.fixture(scope="module")
def models(tiny_ckpt):
    plain, kernels, twins = load_model(tiny_ckpt), load_model(tiny_ckpt), load_model(tiny_ckpt)
    status = use_plugins(kernels, "triton")
    use_plugins(twins, "reference")
    assert set(status) >= {"route", "moe_fp8"} and status["moe_fp8"] is None
    return plain, kernels, twins


def _tokens(model, seed: int | None = None) -> torch.Tensor:
    seed = int.from_bytes(os.urandom(4), "little") if seed is None else seed  # fresh inputs every run
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.spec.vocab_size - 256, (2, 9), generator=g)


def test_every_moe_layer_is_swapped(models) -> None:
    _, kernels, _ = models
    moes = [m for m in kernels.modules() if isinstance(m, MoE)]
    assert moes and all(m.routed is not None for m in moes)


def test_triton_kernels_match_their_torch_twins_inside_the_model(models) -> None:
    """Layer by layer, on the same hidden states (fresh every run), so routing cannot diverge between the two."""
    _, kernels, twins = models
    pairs = [(a, b) for a, b in zip(kernels.modules(), twins.modules()) if isinstance(a, MoE)]
    x = torch.randn(24, kernels.spec.hidden_size, generator=torch.Generator().manual_seed(
        int.from_bytes(os.urandom(4), "little")))
    for k, t in pairs:
        got, want = k.routed(x), t.routed(x)
        assert _rel(want, got) < 1e-3


def test_experts_held_by_other_ranks_add_nothing(models) -> None:
    """Under EP a rank holds some experts; tokens routed to the others must get weight 0 in the kernel path (their
    outputs arrive through the all-reduce), not land on a local expert."""
    import k2trt_plugins

    plain, _, _ = models
    moe = next(m for m in plain.modules() if isinstance(m, MoE))
    k = KernelMoE(moe, k2trt_plugins.implementations("triton", "cpu"))
    mine = [e for e in moe.expert_ids if e % 2 == 0]  # as if this rank held the even experts only
    k.local = torch.where(torch.arange(len(k.local)) % 2 == 0, k.local, torch.full_like(k.local, -1))
    x = torch.randn(24, plain.spec.hidden_size, generator=torch.Generator().manual_seed(
        int.from_bytes(os.urandom(4), "little")))
    with torch.no_grad():
        weights, idx = moe.gate(x)
        want = torch.zeros_like(x)
        for e in mine:
            rows, slot = (idx == e).nonzero(as_tuple=True)
            want.index_add_(0, rows, moe.experts[moe.expert_ids.index(e)](x[rows]) * weights[rows, slot, None])
        got = k(x)
    assert _rel(want, got) < 0.1  # FP8 activations: ≈ 0.04


@pytest.mark.parametrize("seed", [0, 3, 9])  # 3 and 9: the largest differences of 12 measured seeds (rel ≈ 0.09)
def test_plugged_model_stays_within_fp8_activation_rounding_of_the_plain_path(models, seed) -> None:
    plain, kernels, _ = models
    x = _tokens(plain, seed)
    a, b = _logits(plain, x), _logits(kernels, x)
    assert _rel(a, b) < 0.2
    assert torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0) > 0.98
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() >= 0.75


def test_plugins_change_what_runs(tiny_ckpt) -> None:
    """A broken expert scale inside the kernel path must show in the logits (the swap is real)."""
    model = load_model(tiny_ckpt)
    use_plugins(model, "reference")
    x = torch.arange(1, 12).unsqueeze(0)
    before = _logits(model, x)
    for m in model.modules():
        if isinstance(m, MoE):
            m.routed.s2.mul_(4.0)  # every down-proj block scale ×4: only the kernel path reads these
    after = _logits(model, x)
    assert torch.isfinite(after).all()
    assert (before - after).abs().max() > 1e-2
