"""The Triton kernels compiled for a real GPU, against their torch references, at K2's full serving shapes (too big
for the CPU interpreter) and with the same tolerances as the CPU tests (k2trt_plugins.testing.TOLERANCES).

Each case checks (1) kernel on GPU vs reference on GPU and (2) reference on GPU vs reference on CPU for the same
inputs, so "correct on GPU" means the same numbers the CPU tests accept. Runs only where a CUDA device exists.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import sys
from pathlib import Path

import pytest
import torch

if importlib.util.find_spec("k2trt_plugins") is None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "plugins"))

import k2trt_plugins as kp  # noqa: E402
from k2trt_plugins.testing import (assert_close, assert_fp8_codes_close, assert_route_close, fp8_weights,  # noqa: E402
                                   paged_cache, poison_outputs, randn)

from k2trt.spec import preset  # noqa: E402

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

K2 = preset("k2-instruct")
BF16, F32 = torch.bfloat16, torch.float32
CUDA = torch.device("cuda")


@pytest.fixture
def gen() -> torch.Generator:
    seed = int(os.environ.get("K2TRT_TEST_SEED") or secrets.randbits(31))
    print(f"seed {seed} (K2TRT_TEST_SEED={seed} replays this run)")
    return torch.Generator().manual_seed(seed)


def _need(op: str) -> None:
    reason = kp.unavailable_reason(op, CUDA)
    if reason:
        pytest.skip(reason)


@pytest.mark.parametrize("tokens", [1, 256, 8192])
@pytest.mark.parametrize("grouped", [False, True])
def test_route_gpu(gen: torch.Generator, tokens: int, grouped: bool) -> None:
    _need("route")
    e, k = K2.n_routed_experts, K2.num_experts_per_tok
    g, tg = (8, 4) if grouped else (K2.n_group, K2.topk_group)
    logits, bias = randn(gen, tokens, e, scale=2.0), randn(gen, e, scale=0.5)
    args = (k, g, tg, K2.routed_scaling_factor, True)
    with poison_outputs():
        ids, w = kp.router.route(logits.to(CUDA), bias.to(CUDA), *args)
    rids, rw = kp.router.route_reference(logits.to(CUDA), bias.to(CUDA), *args)
    assert_route_close(ids.cpu(), w.cpu(), rids.cpu(), rw.cpu(), logits, bias)
    cids, cw = kp.router.route_reference(logits, bias, *args)
    assert_route_close(rids.cpu(), rw.cpu(), cids, cw, logits, bias)


@pytest.mark.parametrize("m, n, k", [(1, 576, 7168), (64, 2048, 7168), (4096, 7168, 2048), (300, 1536, 7168)])
def test_fp8_linear_gpu(gen: torch.Generator, m: int, n: int, k: int) -> None:
    _need("fp8_gemm")
    x = randn(gen, m, k, dtype=BF16)
    w, ws = (t.squeeze(0) for t in fp8_weights(gen, 1, n, k))
    with poison_outputs():
        q, s = kp.fp8.act_quant(x.to(CUDA))
        c = kp.fp8.fp8_gemm(q, s, w.to(CUDA), ws.to(CUDA), F32)
    rq, rs = kp.fp8.act_quant_reference(x.to(CUDA))
    assert_close("act_quant_scale", s, rs, "scales")
    assert_fp8_codes_close(q, rq, "codes")
    ref = kp.fp8.fp8_gemm_reference(rq, rs, w.to(CUDA), ws.to(CUDA), F32)
    assert_close("fp8_gemm", c, ref, f"{m}x{n}x{k}")
    cpu = kp.fp8.fp8_gemm_reference(rq.cpu(), rs.cpu(), w, ws, F32)
    assert_close("fp8_gemm", ref.cpu(), cpu, "reference GPU vs CPU")


@pytest.mark.parametrize("tokens, experts, ffn", [(8, 48, 1024), (256, 48, 1024), (64, 24, 128)])
def test_moe_fp8_gpu(gen: torch.Generator, tokens: int, experts: int, ffn: int) -> None:
    """K2 hidden 7168 with the per-rank expert shapes of TP16/EP8 (48 local experts, FFN 1024) and MoE-TP16 (128)."""
    _need("moe_fp8")
    h, k = K2.hidden_size, K2.num_experts_per_tok
    x = randn(gen, tokens, h, dtype=BF16)
    ids, w = kp.router.route_reference(randn(gen, tokens, experts), None, k, routed_scaling_factor=2.827)
    ws = [*fp8_weights(gen, experts, ffn, h), *fp8_weights(gen, experts, ffn, h), *fp8_weights(gen, experts, h, ffn)]
    args = [a.to(CUDA) for a in (x, ids, w, *ws)]
    with poison_outputs():
        y = kp.moe.moe_fp8(*args)
    ref = kp.moe.moe_fp8_reference(*args)
    assert_close("moe_fp8", y, ref, "kernel vs reference")
    if tokens <= 8:  # the CPU reference at 48 experts × 7168 is slow; one small case crosses devices
        assert_close("moe_fp8", ref.cpu(), kp.moe.moe_fp8_reference(x, ids, w, *ws), "reference GPU vs CPU")


@pytest.mark.parametrize("heads, lens, page", [(4, [1, 4097, 32768], 64), (16, [1000, 65], 32), (8, [131072], 64),
                                               (64, [2048], 64)])
def test_mla_decode_gpu(gen: torch.Generator, heads: int, lens: list[int], page: int) -> None:
    """K2's latent (512 + 64) at 4 (TP16), 8, 16 and 64 (attention DP) heads, up to a 128K context."""
    _need("mla_decode")
    c, r, dn, dv = K2.kv_lora_rank, K2.qk_rope_head_dim, K2.qk_nope_head_dim, K2.v_head_dim
    cache, table, seq = paged_cache(gen, lens, page, c + r, BF16, device=CUDA)
    qn, qp = randn(gen, len(lens), heads, dn, dtype=BF16), randn(gen, len(lens), heads, r, dtype=BF16)
    kv_b = randn(gen, heads, dn + dv, c, scale=c ** -0.5)
    args = [qn.to(CUDA), qp.to(CUDA), cache, table, seq, kv_b[:, :dn].to(CUDA), kv_b[:, dn:].to(CUDA)]
    with poison_outputs():
        out = kp.mla.mla_decode(*args, K2.softmax_scale)
    ref = kp.mla.mla_decode_reference(*args, K2.softmax_scale)
    assert_close("mla_decode", out, ref, "kernel vs reference")
    if max(lens) <= 4097:
        cpu = kp.mla.mla_decode_reference(*[a.cpu() for a in args], K2.softmax_scale)
        assert_close("mla_decode", ref.cpu(), cpu, "reference GPU vs CPU")
