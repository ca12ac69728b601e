"""Time each k2trt plugin kernel against its torch reference and against the card's roofline, at K2 serving shapes.

Usage (on a CUDA machine):  python bench/bench_plugins.py [--quick] [--json] [--hbm-tbps X --fp8-tflops Y]

For every case the kernel's output is first checked against the reference with the tolerances of the tests
(k2trt_plugins.testing), then both are timed in the same run (``triton.testing.do_bench``, median). The table shows
the kernel's time, the reference's, their ratio, the bytes and FP8 FLOPs the op must move/do at minimum, and the
roofline time ``max(bytes / HBM bandwidth, FP8 FLOPs / FP8 peak)`` with the share of it reached. Card numbers are
the dense datasheet figures of reference/k2_numbers.md §E1; other cards need --hbm-tbps/--fp8-tflops.
Without a CUDA device it exits with status 1 and says so (the CPU check is tests/unit/test_plugins.py).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

if importlib.util.find_spec("k2trt_plugins") is None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins"))

# name substring -> (HBM bytes/s, dense FP8 FLOP/s); order matters ("H200" before "H20")
CARDS: list[tuple[str, float, float]] = [
    ("GB200", 8.0e12, 5000e12), ("B200", 8.0e12, 4500e12), ("H200", 4.8e12, 1979e12), ("H100", 3.35e12, 1979e12),
    ("H20", 4.0e12, 296e12),
]


@dataclass
class Case:
    op: str
    shape: str
    kernel: Callable[[], Any]
    reference: Callable[[], Any]
    check: Callable[[Any, Any], None]
    bytes: float
    fp8_flops: float = 0.0


def _cases(quick: bool, device: str = "cuda") -> list[Case]:
    import k2trt_plugins as kp
    from k2trt_plugins.testing import assert_close, assert_route_close, fp8_weights, paged_cache, randn

    from k2trt.spec import preset

    k2 = preset("k2-instruct")
    dev = torch.device(device)
    gen = torch.Generator().manual_seed(0)
    bf16, f32 = torch.bfloat16, torch.float32
    cases: list[Case] = []
    e, k, h = k2.n_routed_experts, k2.num_experts_per_tok, k2.hidden_size

    for t in ([256] if quick else [64, 4096]):
        logits, bias = randn(gen, t, e, device=dev), randn(gen, e, scale=0.5, device=dev)
        args = (logits, bias, k, k2.n_group, k2.topk_group, k2.routed_scaling_factor, True)
        cases.append(Case("route", f"T={t} E={e} k={k}", lambda a=args: kp.router.route(*a),
                          lambda a=args: kp.router.route_reference(*a),
                          lambda o, r, lg=logits, b=bias: assert_route_close(*o, *r, lg, b),
                          bytes=t * e * 4 + e * 4 + t * k * 8))

    for m in ([64] if quick else [64, 4096]):
        x = randn(gen, m, h, dtype=bf16, device=dev)
        cases.append(Case("act_quant", f"M={m} K={h}", lambda x=x: kp.fp8.act_quant(x),
                          lambda x=x: kp.fp8.act_quant_reference(x),
                          lambda o, r: assert_close("act_quant_scale", o[1], r[1], "scales"),
                          bytes=m * h * 3 + m * (h // 128) * 4))

    # kv_a_proj_with_mqa (576 × 7168, a partial 128-row block), a routed expert's gate at TP16/EP8, o_proj at TP16
    gemms = [(64, k2.kv_a_out, h)] if quick else [(64, k2.kv_a_out, h), (4096, k2.kv_a_out, h),
                                                   (64, k2.moe_intermediate_size // 2, h), (4096, h, 512)]
    for m, n, kk in gemms:
        q, s = kp.fp8.act_quant_reference(randn(gen, m, kk, device=dev))
        w, ws = (x.squeeze(0) for x in fp8_weights(gen, 1, n, kk, device=dev))
        args = (q, s, w, ws, bf16)
        cases.append(Case("fp8_gemm", f"M={m} N={n} K={kk}", lambda a=args: kp.fp8.fp8_gemm(*a),
                          lambda a=args: kp.fp8.fp8_gemm_reference(*a),
                          lambda o, r: assert_close("fp8_gemm_bf16", o, r, "gemm"),
                          bytes=m * kk + n * kk + m * (kk // 128) * 4 + m * n * 2, fp8_flops=2.0 * m * n * kk))

    # routed experts of one rank at TP16/EP8: 48 local experts, FFN 2048 / MoE-TP2 = 1024
    el, f = e // 8, k2.moe_intermediate_size // 2
    for t in ([64] if quick else [16, 256]):
        x = randn(gen, t, h, dtype=bf16, device=dev)
        ids, w = kp.router.route_reference(randn(gen, t, el, device=dev), None, k, routed_scaling_factor=2.827)
        ws = [*fp8_weights(gen, el, f, h, device=dev), *fp8_weights(gen, el, f, h, device=dev),
              *fp8_weights(gen, el, h, f, device=dev)]
        args = (x, ids, w, *ws)
        touched = ids.unique().numel()
        cases.append(Case("moe_fp8", f"T={t} k={k} E={el} F={f} H={h}", lambda a=args: kp.moe.moe_fp8(*a),
                          lambda a=args: kp.moe.moe_fp8_reference(*a),
                          lambda o, r: assert_close("moe_fp8", o, r, "moe"),
                          bytes=touched * 3 * f * h + t * h * 4, fp8_flops=2.0 * t * k * 3 * f * h))

    c, r, dn, dv = k2.kv_lora_rank, k2.qk_rope_head_dim, k2.qk_nope_head_dim, k2.v_head_dim
    mlas = [(4, [8192] * 16)] if quick else [(4, [32768] * 16), (4, [131072]), (16, [8192] * 64)]
    for heads, lens in mlas:
        cache, table, seq = paged_cache(gen, lens, 64, c + r, bf16, device=dev)
        kv_b = randn(gen, heads, dn + dv, c, scale=c ** -0.5, device=dev)
        qn = randn(gen, len(lens), heads, dn, dtype=bf16, device=dev)
        qp = randn(gen, len(lens), heads, r, dtype=bf16, device=dev)
        args = (qn, qp, cache, table, seq, kv_b[:, :dn], kv_b[:, dn:], k2.softmax_scale)
        cases.append(Case("mla_decode", f"B={len(lens)} H={heads} L={lens[0]}", lambda a=args: kp.mla.mla_decode(*a),
                          lambda a=args: kp.mla.mla_decode_reference(*a),
                          lambda o, r_: assert_close("mla_decode", o, r_, "mla"),
                          bytes=sum(lens) * (c + r) * 2 + kv_b.numel() * 4))
    return cases


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="one shape per op")
    ap.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    ap.add_argument("--hbm-tbps", type=float, help="HBM bandwidth in TB/s (default: from the card's name)")
    ap.add_argument("--fp8-tflops", type=float, help="dense FP8 peak in TFLOP/s (default: from the card's name)")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_plugins: no CUDA device here — this benchmark times the Triton kernels on a GPU. "
              "On CPU, check correctness instead: TRITON_INTERPRET=1 pytest tests/unit/test_plugins.py",
              file=sys.stderr)
        return 1
    import k2trt_plugins as kp
    from triton.testing import do_bench

    name = torch.cuda.get_device_name()
    card = next(((bw, fl) for key, bw, fl in CARDS if key in name), None)
    hbm = args.hbm_tbps * 1e12 if args.hbm_tbps else (card[0] if card else None)
    peak = args.fp8_tflops * 1e12 if args.fp8_tflops else (card[1] if card else None)
    problems = {op: kp.unavailable_reason(op, "cuda") for op in kp.OPS}  # e.g. FP8 dots before sm_89
    rows, failed = [], 0
    cases = _cases(args.quick)
    for i, case in enumerate(cases, 1):
        print(f"[{i}/{len(cases)}] {case.op} {case.shape}", file=sys.stderr)
        row: dict[str, Any] = {"op": case.op, "shape": case.shape}
        if problems.get(case.op):
            row["status"] = f"skipped: {problems[case.op]}"
            rows.append(row)
            continue
        try:
            case.check(case.kernel(), case.reference())
            row["status"] = "ok"
        except AssertionError as e:
            row["status"] = f"MISMATCH: {str(e).splitlines()[0][:80]}"
            failed += 1
        t_k = do_bench(case.kernel, warmup=25, rep=100, return_mode="median")  # ms
        t_r = do_bench(case.reference, warmup=5, rep=50, return_mode="median")
        roof = max(case.bytes / hbm if hbm else 0.0, case.fp8_flops / peak if peak else 0.0) * 1e3
        row.update(kernel_ms=t_k, reference_ms=t_r, speedup=t_r / t_k, gbps=case.bytes / t_k / 1e6,
                   tflops=case.fp8_flops / t_k / 1e9 if case.fp8_flops else None,
                   roofline_ms=roof or None, roofline_pct=100 * roof / t_k if roof else None)
        rows.append(row)
    if args.json:
        print(json.dumps({"device": name, "hbm_bytes_per_s": hbm, "fp8_flops_per_s": peak, "rows": rows}, indent=1))
        return 1 if failed else 0
    bw = f"{hbm / 1e12:.2f} TB/s" if hbm else "HBM n/a"
    fl = f"{peak / 1e12:.0f} FP8 TFLOP/s" if peak else "FP8 peak n/a"
    print(f"{name}: roofline from {bw}, {fl}")
    head = (f"{'op':<11}{'shape':<28}{'kernel ms':>10}{'torch ms':>10}{'x ref':>7}{'GB/s':>8}{'TFLOP/s':>9}"
            f"{'roof ms':>9}{'% roof':>8}  status")
    print(head + "\n" + "-" * len(head))

    def fmt(v: Any, spec: str) -> str:
        return format(v, spec) if isinstance(v, (int, float)) else "-".rjust(int(spec.split(".")[0]))

    for r in rows:
        print(f"{r['op']:<11}{r['shape']:<28}{fmt(r.get('kernel_ms'), '10.4f')}{fmt(r.get('reference_ms'), '10.3f')}"
              f"{fmt(r.get('speedup'), '7.1f')}{fmt(r.get('gbps'), '8.0f')}{fmt(r.get('tflops'), '9.1f')}"
              f"{fmt(r.get('roofline_ms'), '9.4f')}{fmt(r.get('roofline_pct'), '8.0f')}  {r['status']}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
