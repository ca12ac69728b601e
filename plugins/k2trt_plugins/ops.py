"""torch.library registration: every kernel as ``torch.ops.k2trt.<op>`` and its reference as
``torch.ops.k2trt.<op>_reference``, each with a fake (meta) implementation so torch.compile and CUDA-graph capture
can trace them.

Registration happens when the package is imported — that import is all ``trtllm-serve --custom_module_dirs`` does —
and is idempotent: if the ops already exist (the same files imported under a second module name) they are kept.
Schemas are spelled out rather than inferred, so they do not depend on how annotations are evaluated.
"""

from __future__ import annotations

from typing import Any, Callable

NAMESPACE = "k2trt"

# op name -> (schema, "module:function" of the Triton wrapper; the reference is the same name + "_reference")
SCHEMAS: dict[str, tuple[str, str]] = {
    "route": ("(Tensor logits, Tensor? bias, int top_k, int n_group=1, int topk_group=1, "
              "float routed_scaling_factor=1.0, bool renormalize=True) -> (Tensor, Tensor)", "router:route"),
    "act_quant": ("(Tensor x) -> (Tensor, Tensor)", "fp8:act_quant"),
    "fp8_gemm": ("(Tensor a, Tensor a_scale, Tensor w, Tensor w_scale, ScalarType? out_dtype=None) -> Tensor",
                 "fp8:fp8_gemm"),
    "fp8_linear": ("(Tensor x, Tensor w, Tensor w_scale, ScalarType? out_dtype=None) -> Tensor", "fp8:fp8_linear"),
    "moe_fp8": ("(Tensor x, Tensor topk_ids, Tensor topk_weights, Tensor w1, Tensor s1, Tensor w3, Tensor s3, "
                "Tensor w2, Tensor s2) -> Tensor", "moe:moe_fp8"),
    "mla_decode": ("(Tensor q_nope, Tensor q_pe, Tensor kv_cache, Tensor block_table, Tensor seq_lens, "
                   "Tensor w_uk, Tensor w_uv, float softmax_scale, int? num_splits=None) -> Tensor",
                   "mla:mla_decode"),
}


def _fake_route(logits: Any, bias: Any, top_k: int, *args: Any) -> Any:
    import torch

    t = logits.shape[0]
    return (logits.new_empty(t, top_k, dtype=torch.int32), logits.new_empty(t, top_k, dtype=torch.float32))


def _fake_act_quant(x: Any) -> Any:
    import torch

    return (x.new_empty(x.shape, dtype=torch.float8_e4m3fn),
            x.new_empty(x.shape[0], -(-x.shape[1] // 128), dtype=torch.float32))


def _fake_fp8_gemm(a: Any, a_scale: Any, w: Any, w_scale: Any, out_dtype: Any = None) -> Any:
    import torch

    return a.new_empty(a.shape[0], w.shape[0], dtype=out_dtype or torch.bfloat16)


def _fake_fp8_linear(x: Any, w: Any, w_scale: Any, out_dtype: Any = None) -> Any:
    return x.new_empty(x.shape[0], w.shape[0], dtype=out_dtype or x.dtype)


def _fake_moe_fp8(x: Any, *args: Any) -> Any:
    return x.new_empty(x.shape)


def _fake_mla_decode(q_nope: Any, q_pe: Any, kv_cache: Any, block_table: Any, seq_lens: Any, w_uk: Any, w_uv: Any,
                     *args: Any) -> Any:
    return q_nope.new_empty(q_nope.shape[0], q_nope.shape[1], w_uv.shape[1])


FAKES: dict[str, Callable[..., Any]] = {
    "route": _fake_route, "act_quant": _fake_act_quant, "fp8_gemm": _fake_fp8_gemm, "fp8_linear": _fake_fp8_linear,
    "moe_fp8": _fake_moe_fp8, "mla_decode": _fake_mla_decode,
}


def _resolve(target: str) -> Callable[..., Any]:
    import importlib

    module, fn = target.split(":")
    return getattr(importlib.import_module(f"{__package__}.{module}"), fn)


def _exists(name: str) -> bool:
    import torch

    try:
        getattr(getattr(torch.ops, NAMESPACE), name)
    except AttributeError:
        return False
    return True


def register() -> list[str]:
    """Register ``torch.ops.k2trt.<op>`` and ``<op>_reference`` for every op; returns the qualified names."""
    import torch

    names = []
    for op, (schema, target) in SCHEMAS.items():
        for name, fn in ((op, _resolve(target)), (f"{op}_reference", _resolve(target + "_reference"))):
            names.append(f"{NAMESPACE}::{name}")
            if _exists(name):
                continue
            defined = torch.library.custom_op(f"{NAMESPACE}::{name}", fn, mutates_args=(), schema=schema)
            defined.register_fake(FAKES[op])
    return names
