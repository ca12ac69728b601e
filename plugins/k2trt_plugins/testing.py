"""What the CPU (interpreter) tests, the GPU tests and the bench share: random inputs and the tolerance every op is
held to, so a kernel passes on a GPU by the same standard as on CPU.

Tolerances are ``(rtol, atol as a fraction of max|expected|)``. Why these sizes:
  route        float32 end to end; only sigmoid/sum rounding differs.
  act_quant    scales float32-exact; codes may differ by one e4m3 step where x/s lands on a rounding tie.
  fp8_gemm     Hopper's FP8 MMA accumulates each 128-wide K block in reduced precision (≈14 bits) before the kernel
               promotes it to float32; CPU results are float32-exact. bf16 outputs add one bf16 step.
  moe_fp8      the SwiGLU output is re-quantised to FP8 inside: a value on a rounding boundary can move one e4m3
               step (12.5 %) in one implementation and not the other; over F inputs that averages to ≲1 %.
  mla_decode   float32 softmax (tf32x3 dots on GPU), bf16 output.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._runtime import poison_outputs  # noqa: F401  (re-exported for tests)

if TYPE_CHECKING:
    import torch

TOLERANCES: dict[str, tuple[float, float]] = {
    "route": (1e-5, 1e-6),
    "act_quant_scale": (1e-6, 0.0),
    "fp8_gemm": (2e-3, 2e-3),
    "fp8_gemm_bf16": (1e-2, 1e-2),
    "moe_fp8": (2e-2, 1e-2),
    "mla_decode": (2e-2, 1e-2),
}


def assert_close(kind: str, actual: "torch.Tensor", expected: "torch.Tensor", what: str = "") -> None:
    """Assert ``actual ≈ expected`` with the tolerance of ``kind``; non-finite values (a poisoned element the kernel
    never wrote) always fail."""
    import torch

    rtol, atol_frac = TOLERANCES[kind]
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    a, e = actual.float(), expected.float()
    bad = ~torch.isfinite(a)
    assert not bad.any(), f"{what}: {int(bad.sum())} non-finite values (unwritten output?) at {bad.nonzero()[:5]}"
    atol = atol_frac * float(e.abs().max()) if e.numel() else 0.0
    torch.testing.assert_close(a, e, rtol=rtol, atol=atol, msg=lambda m: f"{what} [{kind}]: {m}")


def assert_fp8_codes_close(actual: "torch.Tensor", expected: "torch.Tensor", what: str = "",
                           max_fraction: float = 0.01) -> None:
    """FP8 codes equal up to one e4m3 step, and at most ``max_fraction`` of them differ at all."""
    import torch

    assert actual.dtype == expected.dtype == torch.float8_e4m3fn, f"{what}: dtypes {actual.dtype}, {expected.dtype}"
    a, e = actual.float(), expected.float()
    assert torch.isfinite(a).all(), f"{what}: non-finite FP8 codes (unwritten output?)"
    mag = torch.maximum(a.abs(), e.abs()).clamp_min(2.0 ** -6)
    step = torch.exp2(torch.floor(torch.log2(mag)) - 3)  # e4m3: 3 mantissa bits
    diff = (a - e).abs()
    assert (diff <= step).all(), f"{what}: FP8 codes differ by more than one step, max {float((diff / step).max())}"
    frac = float((diff > 0).float().mean()) if diff.numel() else 0.0
    assert frac <= max_fraction, f"{what}: {frac:.2%} of FP8 codes differ (allowed {max_fraction:.0%})"


def assert_route_close(ids: "torch.Tensor", weights: "torch.Tensor", ref_ids: "torch.Tensor",
                       ref_weights: "torch.Tensor", logits: "torch.Tensor", bias: "torch.Tensor | None",
                       tie_eps: float = 1e-6) -> None:
    """Same experts in the same order, except where two biased scores tie within ``tie_eps`` (then the chosen
    experts' biased scores must agree and the weights are compared as sets)."""
    import torch

    assert ids.shape == ref_ids.shape and ids.dtype == ref_ids.dtype, f"ids {ids.shape}/{ids.dtype}"
    assert bool((ids >= 0).all() and (ids < logits.shape[1]).all()), "expert ids out of range (unwritten output?)"
    sel = logits.float().sigmoid() + (bias.float() if bias is not None else 0.0)
    rows = (ids != ref_ids).any(1)
    if rows.any():
        got = sel[rows].gather(1, ids[rows].long())
        want = sel[rows].gather(1, ref_ids[rows].long())
        assert torch.allclose(got, want, rtol=0, atol=tie_eps), (
            f"{int(rows.sum())} token(s) routed differently without a tie: {ids[rows][:3]} vs {ref_ids[rows][:3]}")
        order, ref_order = ids.long().argsort(1), ref_ids.long().argsort(1)
        weights, ref_weights = weights.gather(1, order), ref_weights.gather(1, ref_order)
    assert_close("route", weights, ref_weights, "route weights")


# ---- inputs ------------------------------------------------------------------------------------------------------


def randn(gen: "torch.Generator", *shape: int, dtype: "torch.dtype | None" = None, scale: float = 1.0,
          device: "torch.device | str" = "cpu") -> "torch.Tensor":
    """Standard normal × scale from ``gen`` (never all zeros), made on CPU and moved, so CPU and GPU runs with one seed
    see the same numbers."""
    import torch

    t = torch.randn(*shape, generator=gen) * scale
    return t.to(device=device, dtype=dtype or torch.float32)


def fp8_weights(gen: "torch.Generator", experts: int, n: int, k: int, scale: float = 0.05,
                device: "torch.device | str" = "cpu") -> "tuple[torch.Tensor, torch.Tensor]":
    """``experts`` random ``[n, k]`` weights in K2's block FP8: ``(w [E, n, k] e4m3, scale_inv [E, nb, kb])``."""
    import torch

    from .fp8 import quantize_weight

    pairs = [quantize_weight(randn(gen, n, k, scale=scale)) for _ in range(experts)]
    return (torch.stack([p[0] for p in pairs]).to(device), torch.stack([p[1] for p in pairs]).to(device))


def paged_cache(gen: "torch.Generator", seq_lens: list[int], page: int, width: int, dtype: "torch.dtype",
                spare_pages: int = 3, device: "torch.device | str" = "cpu"
                ) -> "tuple[torch.Tensor, torch.Tensor, torch.Tensor]":
    """A shuffled paged cache holding random rows: ``(kv_cache [P, page, width], block_table [B, pages] int32,
    seq_lens [B] int32)``; every sequence owns ``max(seq_lens)/page`` pages (rounded up), some unused."""
    import torch

    pages = max(1, -(-max(seq_lens) // page))
    total = len(seq_lens) * pages + spare_pages
    cache = randn(gen, total, page, width, dtype=dtype, device=device)
    table = torch.randperm(total, generator=gen)[: len(seq_lens) * pages].view(len(seq_lens), pages)
    return cache, table.to(device=device, dtype=torch.int32), torch.tensor(seq_lens, dtype=torch.int32,
                                                                            device=device)
