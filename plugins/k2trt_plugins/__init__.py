"""k2trt's custom kernels for Kimi K2, each a Triton kernel beside a plain-torch reference with the same signature.

Ops (``op`` runs the Triton kernel, ``op_reference`` is the torch twin; both also as ``torch.ops.k2trt.<op>``):
  route       K2's sigmoid / bias-corrected / grouped top-k router                       (router.py)
  act_quant   per-token, per-128-column FP8 activation quantiser                        (fp8.py)
  fp8_gemm    block-scaled FP8 GEMM (128×128 weight scales, 1×128 activation scales)  (fp8.py)
  fp8_linear  act_quant + fp8_gemm                                                     (fp8.py)
  moe_fp8     routed experts: grouped FP8 gate/up + SwiGLU, then down, router-weighted (moe.py)
  mla_decode  absorbed MLA decode over the latent cache, split-K over the sequence     (mla.py)

This directory is self-contained: it imports torch (and triton, lazily, only when a kernel first runs) and nothing
from k2trt except, when k2trt is installed, its ``PluginUnavailable`` error class. Importing it registers the torch
ops — which is what ``trtllm-serve --custom_module_dirs …/plugins/k2trt_plugins`` does (see plugins/README.md).

The registry below picks between the two implementations:
    impl = k2trt_plugins.implementations("triton" if use_plugins else "reference", device)
    ids, w = impl.route(logits, bias, 8, routed_scaling_factor=2.827)
``"triton"`` raises PluginUnavailable with the reason when the kernels cannot run on that device; ``"auto"`` falls
back to the reference and logs the reason once.
"""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Callable, Literal

from . import fp8, mla, moe, ops, router
from ._runtime import PluginUnavailable, interpreting, triton_problem

if TYPE_CHECKING:
    import torch

__all__ = ["OPS", "FP8_OPS", "PluginUnavailable", "get", "implementations", "status", "unavailable_reason",
           "interpreting", "fp8", "mla", "moe", "router"]

Impl = Literal["auto", "triton", "reference"]
_LOG = logging.getLogger(__name__)

# op name -> module holding ``op`` and ``op_reference``
OPS: dict[str, Any] = {"route": router, "act_quant": fp8, "fp8_gemm": fp8, "fp8_linear": fp8, "moe_fp8": moe,
                       "mla_decode": mla}
FP8_OPS = frozenset({"fp8_gemm", "fp8_linear", "moe_fp8"})  # need FP8 tl.dot (sm_89+ on a GPU)
_warned: set[tuple[str, str]] = set()

ops.register()


def unavailable_reason(name: str, device: "torch.device | str | None" = None) -> str | None:
    """Why the Triton kernel of op ``name`` cannot run on ``device``, or None when it can."""
    if name not in OPS:
        raise ValueError(f"unknown plugin op {name!r}; known: {', '.join(OPS)}")
    return triton_problem(device, fp8=name in FP8_OPS)


def get(name: str, impl: Impl = "auto", device: "torch.device | str | None" = None) -> Callable[..., Any]:
    """The implementation of op ``name``: ``"triton"``, ``"reference"``, or ``"auto"`` (Triton where it can run).

    Raises PluginUnavailable (with the reason) for ``"triton"`` where the kernel cannot run; ``"auto"`` logs that
    reason once at WARNING and returns the reference.
    Example: ``get("route", "triton", "cuda")(logits, bias, 8)``.
    """
    if impl not in ("auto", "triton", "reference"):
        raise ValueError(f"impl must be 'auto', 'triton' or 'reference', got {impl!r}")
    module = OPS.get(name)
    if module is None:
        raise ValueError(f"unknown plugin op {name!r}; known: {', '.join(OPS)}")
    if impl == "reference":
        return getattr(module, f"{name}_reference")
    reason = unavailable_reason(name, device)
    if reason is None:
        return getattr(module, name)
    if impl == "triton":
        raise PluginUnavailable(f"plugin op {name!r} cannot run: {reason}",
                                "run without plugins (the torch reference path), or where Triton can run")
    if (name, reason) not in _warned:
        _warned.add((name, reason))
        _LOG.warning("plugin op %s falls back to its torch reference: %s", name, reason)
    return getattr(module, f"{name}_reference")


def implementations(impl: Impl = "auto", device: "torch.device | str | None" = None) -> SimpleNamespace:
    """Every op resolved at once (``ns.route``, ``ns.moe_fp8``, …); ``"triton"`` fails fast on the first op that
    cannot run, so a caller that asked for plugins never silently gets the reference."""
    return SimpleNamespace(**{name: get(name, impl, device) for name in OPS})


def status(device: "torch.device | str | None" = None) -> dict[str, str | None]:
    """``{op: None if its Triton kernel can run on device else the reason}`` — for a doctor/--json report."""
    return {name: unavailable_reason(name, device) for name in OPS}
