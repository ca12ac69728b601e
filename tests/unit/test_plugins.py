"""The Triton kernels against their torch references, on CPU in Triton's interpreter (on a GPU when there is one).

Every test draws fresh random inputs (seed printed; K2TRT_TEST_SEED=N replays one) and runs the kernel inside
``poison_outputs()``, so an element a kernel never writes is NaN/-1 and fails. Shapes mix K2's real dimensions
(384 experts top-8, hidden 7168, kv_lora 512 + rope 64, 4 heads per rank at TP16) with the tiny preset's and with
partial 128-blocks. Each op is also checked against an oracle that does not share its reference's code: k2trt's own
block dequantisation, a dense unquantised MoE, and non-absorbed attention.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import sys
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():  # must precede triton's first import: the kernels then run in its CPU interpreter
    os.environ.setdefault("TRITON_INTERPRET", "1")
if importlib.util.find_spec("k2trt_plugins") is None:  # not installed: import it the way --custom_module_dirs does
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "plugins"))

import k2trt_plugins as kp  # noqa: E402
from k2trt_plugins.fp8 import (act_quant, act_quant_reference, fp8_gemm, fp8_gemm_reference, fp8_linear,  # noqa: E402
                               fp8_linear_reference, quantize_weight)
from k2trt_plugins.mla import mla_decode, mla_decode_reference  # noqa: E402
from k2trt_plugins.moe import align_slots, moe_fp8, moe_fp8_reference  # noqa: E402
from k2trt_plugins.router import route, route_reference, router_logits  # noqa: E402
from k2trt_plugins.testing import (assert_close, assert_fp8_codes_close, assert_route_close, fp8_weights,  # noqa: E402
                                   paged_cache, poison_outputs, randn)

from k2trt.checkpoint.fp8 import dequantize  # noqa: E402
from k2trt.spec import preset  # noqa: E402

K2 = preset("k2-instruct")
TINY = preset("tiny")
DEV = torch.device("cuda" if torch.cuda.is_available() else "cpu")
BF16, F32 = torch.bfloat16, torch.float32


@pytest.fixture
def gen() -> torch.Generator:
    seed = int(os.environ.get("K2TRT_TEST_SEED") or secrets.randbits(31))
    print(f"seed {seed} (K2TRT_TEST_SEED={seed} replays this run)")
    return torch.Generator().manual_seed(seed)


def test_kernels_can_run_here() -> None:
    assert kp.status(DEV) == {name: None for name in kp.OPS}


# ---- router ----------------------------------------------------------------------------------------------------

ROUTES = {  # name: (tokens, experts, top_k, n_group, topk_group, scale, renormalize, with bias)
    "k2": (48, K2.n_routed_experts, K2.num_experts_per_tok, K2.n_group, K2.topk_group, K2.routed_scaling_factor,
           K2.norm_topk_prob, True),
    "grouped-8x32": (20, 256, 8, 8, 4, 2.5, True, True),
    "grouped-ragged": (9, 96, 6, 4, 2, 1.0, False, False),
    "tiny": (7, TINY.n_routed_experts, TINY.num_experts_per_tok, TINY.n_group, TINY.topk_group,
             TINY.routed_scaling_factor, True, True),
}


@pytest.mark.parametrize("case", sorted(ROUTES))
def test_route_matches_reference(gen: torch.Generator, case: str) -> None:
    t, e, k, g, tg, scale, renorm, has_bias = ROUTES[case]
    logits = randn(gen, t, e, scale=2.0, device=DEV)
    bias = randn(gen, e, scale=0.5, device=DEV) if has_bias else None
    args = (k, g, tg, scale, renorm)
    with poison_outputs():
        ids, w = route(logits, bias, *args)
    ref_ids, ref_w = route_reference(logits, bias, *args)
    assert_route_close(ids, w, ref_ids, ref_w, logits, bias)
    # Facts independent of the reference: distinct experts, unbiased weights, normalised sum, group limit.
    assert all(len(set(row)) == k for row in ids.tolist())
    raw = logits.float().sigmoid().gather(1, ids.long())
    expect = raw / raw.sum(1, keepdim=True) * scale if renorm else raw * scale
    torch.testing.assert_close(w, expect, rtol=1e-5, atol=1e-6)
    if g > 1:
        assert ((ids.long() // (e // g)).sort(1).values.diff(1) != 0).sum(1).max() < tg
    if has_bias:  # the bias must matter for the test to mean anything
        assert (route_reference(logits, None, *args)[0] != ref_ids).any()


def test_route_from_hidden_tiny_int64(gen: torch.Generator) -> None:
    h = randn(gen, 5, TINY.hidden_size, dtype=BF16, device=DEV)
    gate_w = randn(gen, TINY.n_routed_experts, TINY.hidden_size, dtype=BF16, scale=0.1, device=DEV)
    bias = randn(gen, TINY.n_routed_experts, scale=0.1, device=DEV)
    logits = router_logits(h, gate_w)
    assert logits.dtype == F32
    torch.testing.assert_close(logits, h.float() @ gate_w.float().T)
    with poison_outputs():
        ids, w = route(logits, bias, TINY.num_experts_per_tok, ids_dtype=torch.int64)
    ref_ids, ref_w = route_reference(logits, bias, TINY.num_experts_per_tok, ids_dtype=torch.int64)
    assert ids.dtype == torch.int64
    assert_route_close(ids, w, ref_ids, ref_w, logits, bias)


@pytest.mark.parametrize("kwargs, match", [
    ({"bias": "short"}, r"bias has shape \(383,\), expected \(384,\)"),
    ({"top_k": 385}, r"top_k=385 must be in 1\.\.384"),
    ({"n_group": 5}, r"n_group=5 must be ≥ 1 and divide the 384 experts"),
    ({"n_group": 4, "topk_group": 1, "top_k": 97}, r"top_k=97 must be in 1\.\.96"),
    ({"logits": "strided"}, r"logits must have stride 1 on its last dimension"),
    ({"logits": "int"}, r"logits has dtype torch.int32"),
])
def test_route_rejects_bad_input(gen: torch.Generator, kwargs: dict, match: str) -> None:
    logits = randn(gen, 4, 384, device=DEV)
    call = {"logits": logits, "bias": randn(gen, 384, device=DEV), "top_k": 8, "n_group": 1, "topk_group": 1}
    call.update(kwargs)
    if call["bias"] == "short":
        call["bias"] = randn(gen, 383, device=DEV)
    if call["logits"] == "strided":
        call["logits"] = randn(gen, 384, 4, device=DEV).T
    elif call["logits"] == "int":
        call["logits"] = logits.int()
    for fn in (route, route_reference):
        with pytest.raises(ValueError, match=match):
            fn(**call)


# ---- block FP8 ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("m, k, dtype", [(5, 300, BF16), (3, K2.hidden_size, BF16), (17, TINY.hidden_size, F32)])
def test_act_quant_matches_reference_and_rule(gen: torch.Generator, m: int, k: int, dtype: torch.dtype) -> None:
    x = randn(gen, m, k, scale=3.0)
    x[0, :128] *= 1e-7  # a near-silent block: its scale must clamp at 1e-4 / 448
    x = x.to(device=DEV, dtype=dtype)
    with poison_outputs():
        q, s = act_quant(x)
    rq, rs = act_quant_reference(x)
    assert_close("act_quant_scale", s, rs, "scales")
    assert_fp8_codes_close(q, rq, "codes")
    # DeepSeek's rule, straight from the input: s = max(amax, 1e-4) / 448 per token per 128 columns (last partial)
    xf = x.float().cpu()
    want = torch.stack([xf[:, i:i + 128].abs().amax(1) for i in range(0, k, 128)], 1).clamp_min(1e-4) / 448
    torch.testing.assert_close(s.cpu(), want, rtol=1e-6, atol=0)
    assert float(s[0, 0]) == pytest.approx(1e-4 / 448)
    deq = q.float().cpu() * s.cpu().repeat_interleave(128, 1)[:, :k]
    assert ((deq - xf).abs() <= xf.abs() / 16 + 2.0 ** -9 * s.cpu().repeat_interleave(128, 1)[:, :k]).all()


GEMMS = [  # (M, N, K, out dtype): partial blocks both ways; K2's hidden; tiny's ragged kv_a (320 × 256)
    (5, 200, 300, F32), (3, 256, K2.hidden_size, BF16), (4, TINY.kv_a_out, TINY.hidden_size, BF16), (33, 130, 128, F32),
]


@pytest.mark.parametrize("m, n, k, out", GEMMS)
def test_fp8_gemm_matches_reference_and_oracle(gen: torch.Generator, m: int, n: int, k: int,
                                               out: torch.dtype) -> None:
    w, ws = quantize_weight(randn(gen, n, k, scale=0.05))
    q, s = act_quant_reference(randn(gen, m, k))
    q, s, w, ws = (t.to(DEV) for t in (q, s, w, ws))
    with poison_outputs():
        c = fp8_gemm(q, s, w, ws, out)
    ref = fp8_gemm_reference(q, s, w, ws, out)
    assert_close("fp8_gemm" if out == F32 else "fp8_gemm_bf16", c, ref, f"{m}x{n}x{k}")
    # oracle: k2trt's checkpoint dequantisation (its own block expansion and cropping) for the weight
    oracle = (q.float() * s.repeat_interleave(128, 1)[:, :k]).cpu() @ dequantize(w.cpu(), ws.cpu()).T
    torch.testing.assert_close(ref.float().cpu(), oracle.to(out).float(), rtol=1e-2, atol=1e-3)


def test_fp8_linear_and_bad_scales(gen: torch.Generator) -> None:
    x = randn(gen, 6, 300, dtype=BF16, device=DEV)
    w, ws = (t.to(DEV) for t in quantize_weight(randn(gen, 140, 300, scale=0.05)))
    with poison_outputs():
        y = fp8_linear(x, w, ws)
    assert_close("fp8_gemm_bf16", y, fp8_linear_reference(x, w, ws), "fp8_linear")
    q, s = act_quant_reference(x)
    with pytest.raises(ValueError, match=r"w_scale has shape \(2, 2\), expected \(2, 3\)"):
        fp8_gemm(q, s, w, ws[:, :2].contiguous())
    with pytest.raises(ValueError, match=r"a has dtype torch.bfloat16"):
        fp8_gemm(x, s, w, ws)


# ---- grouped MoE -------------------------------------------------------------------------------------------------

MOES = {  # name: (tokens, hidden, ffn, experts, top_k)
    "tiny": (6, TINY.hidden_size, TINY.moe_intermediate_size, TINY.n_routed_experts, TINY.num_experts_per_tok),
    "partial-blocks": (7, 300, 200, 5, 3),
    "skewed": (40, 256, 128, 4, 2),
    # K2's hidden and its per-rank expert width at MoE-TP16 (2048 / 16 = 128)
    "k2-tp16": (2, K2.hidden_size, K2.moe_intermediate_size // 16, 3, 2),
}


def _dense_moe(x: torch.Tensor, ids: torch.Tensor, w: torch.Tensor, ws: tuple) -> torch.Tensor:
    # Oracle without any activation quantisation: dequantised weights, float32 math, token by token.
    (w1, s1), (w3, s3), (w2, s2) = ws
    out = torch.zeros(x.shape, dtype=F32)
    for t in range(x.shape[0]):
        for j, e in enumerate(ids[t].tolist()):
            xf = x[t].float()
            hh = torch.nn.functional.silu(dequantize(w1[e], s1[e]) @ xf) * (dequantize(w3[e], s3[e]) @ xf)
            out[t] += w[t, j] * (dequantize(w2[e], s2[e]) @ hh)
    return out


@pytest.mark.parametrize("case", sorted(MOES))
def test_moe_fp8_matches_reference_and_dense_oracle(gen: torch.Generator, case: str) -> None:
    t, h, f, e, k = MOES[case]
    x = randn(gen, t, h, dtype=BF16)
    logits = randn(gen, t, e)
    if case == "skewed":  # most slots on expert 0 (several BM tiles), none on the last expert
        logits[:, 0] += 8.0
        logits[:, -1] -= 30.0
    ids, w = route_reference(logits, None, k, routed_scaling_factor=2.827)
    ws = (fp8_weights(gen, e, f, h), fp8_weights(gen, e, f, h), fp8_weights(gen, e, h, f))
    args = [x, ids, w, *[a for pair in ws for a in pair]]
    dev_args = [a.to(DEV) for a in args]
    with poison_outputs():
        y = moe_fp8(*dev_args)
    ref = moe_fp8_reference(*dev_args)
    assert_close("moe_fp8", y, ref, case)
    dense = _dense_moe(x, ids, w, ws)
    # The reference quantises its activations to FP8 (per 128), the oracle does not: that leaves 4.3 % relative
    # error (median of 1,200 draws, at most 5.0 %), and one element in ~1,000 draws beyond 6 % of the largest output
    # (seed 1977600828). So the whole output gets 6 % and each element 10 %: a wrong scale, expert or routing
    # weight lands far outside both.
    err = float((ref.float().cpu() - dense).norm() / dense.norm())
    assert err <= 0.06, f"relative error {err:.4f} of the reference against the dense oracle"
    torch.testing.assert_close(ref.float().cpu(), dense, rtol=0.1, atol=0.1 * float(dense.abs().max()))


def test_align_slots_groups_by_expert(gen: torch.Generator) -> None:
    ids = torch.randint(0, 5, (23, 3), generator=gen)
    slots, block_expert = align_slots(ids, 6, 4)
    flat = ids.flatten()
    real = slots[slots < flat.numel()].long()
    assert sorted(real.tolist()) == list(range(flat.numel()))  # every slot exactly once
    for b, e in enumerate(block_expert.tolist()):
        blk = slots[b * 4:(b + 1) * 4].long()
        blk = blk[blk < flat.numel()]
        assert e <= 6 and (flat[blk] == e).all()


# ---- MLA decode --------------------------------------------------------------------------------------------------

MLAS = {  # name: (heads, kv_lora, rope, nope, v, seq_lens, page, splits)
    "k2-tp16": (K2.num_attention_heads // 16, K2.kv_lora_rank, K2.qk_rope_head_dim, K2.qk_nope_head_dim,
                K2.v_head_dim, [1, 77, 300], 64, 3),
    "tiny": (TINY.num_attention_heads, TINY.kv_lora_rank, TINY.qk_rope_head_dim, TINY.qk_nope_head_dim,
             TINY.v_head_dim, [50, 129], 16, None),
    "8-heads-contiguous": (8, 512, 64, 128, 128, [200], 200, 1),
    "20-heads": (20, 128, 32, 64, 64, [40, 65], 32, 2),
}


def _naive_attention(qn, qp, cache, table, lens, w_uk, w_uv, scale) -> torch.Tensor:
    # Oracle: per-head keys [W_UK c ‖ k_pe] and values W_UV c, ordinary softmax attention (no absorption).
    c = w_uk.shape[2]
    page = cache.shape[1]
    outs = []
    for b, n in enumerate(lens.tolist()):
        pos = torch.arange(n)
        rows = cache[table[b, pos // page].long(), pos % page].float()  # [L, C+R]
        k_nope = torch.einsum("lc,hdc->hld", rows[:, :c], w_uk)  # [H, L, Dn]
        v = torch.einsum("lc,hdc->hld", rows[:, :c], w_uv)  # [H, L, Dv]
        s = (torch.einsum("hd,hld->hl", qn[b].float(), k_nope) + qp[b].float() @ rows[:, c:].T) * scale
        outs.append(torch.einsum("hl,hld->hd", s.softmax(-1), v))
    return torch.stack(outs)


@pytest.mark.parametrize("case", sorted(MLAS))
def test_mla_decode_matches_reference_and_naive(gen: torch.Generator, case: str) -> None:
    h, c, r, dn, dv, lens, page, splits = MLAS[case]
    cache, table, seq = paged_cache(gen, lens, page, c + r, BF16)
    qn, qp = randn(gen, len(lens), h, dn, dtype=BF16), randn(gen, len(lens), h, r, dtype=BF16)
    kv_b = randn(gen, h, dn + dv, c, scale=c ** -0.5)  # kv_b_proj viewed per head
    w_uk, w_uv = kv_b[:, :dn], kv_b[:, dn:]
    scale = K2.softmax_scale
    args = [a.to(DEV) for a in (qn, qp, cache, table, seq, w_uk, w_uv)]
    with poison_outputs():
        out = mla_decode(*args, scale, splits)
    ref = mla_decode_reference(*args, scale, splits)
    assert_close("mla_decode", out, ref, case)
    naive = _naive_attention(qn, qp, cache, table, seq, w_uk, w_uv, scale)
    torch.testing.assert_close(ref.float().cpu(), naive.to(BF16).float(), rtol=2e-2, atol=2e-2)


def test_mla_decode_split_count_does_not_change_result(gen: torch.Generator) -> None:
    cache, table, seq = paged_cache(gen, [130, 31], 16, 256 + 64, BF16)
    qn, qp = randn(gen, 2, 4, 128, dtype=BF16), randn(gen, 2, 4, 64, dtype=BF16)
    w_uk, w_uv = randn(gen, 4, 128, 256, scale=1 / 16), randn(gen, 4, 128, 256, scale=1 / 16)
    args = [a.to(DEV) for a in (qn, qp, cache, table, seq, w_uk, w_uv)]
    one, many = mla_decode(*args, 0.1, 1), mla_decode(*args, 0.1, 5)
    assert_close("mla_decode", many, one, "5 splits vs 1")
    with pytest.raises(ValueError, match=r"kv_cache has shape \(.*\), expected \(\*, \*, 320\)"):
        mla_decode(qn, qp, cache[..., :300], table, seq, w_uk, w_uv, 0.1)
    with pytest.raises(ValueError, match=r"kv_cache must be contiguous \[pages, PAGE, 320\], got strides"):
        mla_decode(qn, qp, cache.transpose(0, 1), table, seq, w_uk, w_uv, 0.1)
    with pytest.raises(ValueError, match=r"block_table has dtype torch.int64"):
        mla_decode(qn, qp, cache, table.long(), seq, w_uk, w_uv, 0.1)


# ---- torch.library -----------------------------------------------------------------------------------------------

def test_torch_ops_call_the_kernels_and_trace(gen: torch.Generator) -> None:
    logits, bias = randn(gen, 6, 384, device=DEV), randn(gen, 384, device=DEV)
    ids, w = torch.ops.k2trt.route(logits, bias, 8, 1, 1, 2.827, True)
    rids, rw = torch.ops.k2trt.route_reference(logits, bias, 8, 1, 1, 2.827, True)
    assert_route_close(ids, w, rids, rw, logits, bias)
    x = randn(gen, 3, 300, dtype=BF16, device=DEV)
    q, s = torch.ops.k2trt.act_quant(x)
    assert_fp8_codes_close(q, act_quant_reference(x)[0])
    w, ws = (t.to(DEV) for t in quantize_weight(randn(gen, 136, 300, scale=0.05)))
    assert_close("fp8_gemm_bf16", torch.ops.k2trt.fp8_linear(x, w, ws, None),
                 torch.ops.k2trt.fp8_linear_reference(x, w, ws, None), "torch.ops.k2trt.fp8_linear")
    torch.library.opcheck(torch.ops.k2trt.route.default, (logits, bias, 8, 1, 1, 2.827, True),
                          test_utils=("test_schema", "test_faketensor"))
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        fq = torch.empty(2, 4, 128, device=DEV)
        fake = torch.ops.k2trt.mla_decode(fq, torch.empty(2, 4, 64), torch.empty(9, 16, 576),
                                          torch.empty(2, 3, dtype=torch.int32), torch.empty(2, dtype=torch.int32),
                                          torch.empty(4, 128, 512), torch.empty(4, 96, 512), 0.1, None)
        assert fake.shape == (2, 4, 96)
