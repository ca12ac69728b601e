"""k2trt.plan: exact per-GPU bytes, KV capacity, roofline, rules, layouts and the `k2trt plan` command.

The K2 per-GPU figure is checked against a hand-written sum over K2's dimensions (an oracle independent of the
folded inventory and of Mapping.shard), and the summary figures against k2_numbers.md E2/E3."""

from __future__ import annotations

import json
import random

import pytest
from click.testing import CliRunner

from k2trt.cli import cli
from k2trt.errors import PlanError
from k2trt.layout import Layout
from k2trt.mapping import Mapping
from k2trt.plan.gpus import CATALOG, GiB, gpu
from k2trt.plan.memory import extreme_ranks, inventory, kv_bytes_per_token, memory_plan, rank_bytes
from k2trt.plan.planner import (Cluster, PlanRequest, candidate_layouts, plan, plan_layout, resolve_spec,
                                to_markdown)
from k2trt.plan.roofline import active_params, expected_max_experts, roofline
from k2trt.spec import preset
from k2trt.trtllm import known
from k2trt.trtllm.render import serve_argv

K2 = preset("k2-instruct")
TINY = preset("tiny")


def _k2_tp16_ep8_rank0_bytes() -> int:
    """Hand sum for rank 0 of K2 FP8 at TP16/EP8 on 8-GPU nodes (scales are fp32 per 128×128 block)."""
    h, v, L = 7168, 163840, 61
    blk = lambda r, c: (-(-r // 128)) * (-(-c // 128)) * 4  # noqa: E731
    fp8 = lambda r, c: r * c + blk(r, c)  # noqa: E731
    glob = v * h * 2 + (v // 16) * h * 2 + h * 2           # embed (replicated), lm_head 1/16, final norm
    attn = (2 * h * 2 + fp8(1536, h) + 1536 * 2 + fp8(64 * 192 // 16, 1536) + fp8(576, h) + 512 * 2
            + fp8(4 * 256, 512) + fp8(h, 8192 // 16))       # norms, q_a, q_a_norm, q_b/16, kv_a, kv_a_norm, kv_b, o
    dense = 3 * fp8(18432 // 8, h)                          # dense FFN at TP8 (gcd(144, 16) = 16 > 8 per node)
    moe = (384 * h * 2 + 384 * 4                            # router (bf16) + e_score_correction_bias (fp32)
           + 48 * 3 * fp8(1024, h)                          # 48 experts, half of each (MoE-TP2)
           + 3 * fp8(2048 // 16, h))                        # shared expert at TP16
    return glob + L * attn + dense + 60 * moe


def test_k2_tp16_ep8_weights_per_gpu_exact() -> None:
    m = Mapping(16, 16, moe_ep=8, spec=K2)
    got = rank_bytes(m, 0)
    assert got.total == _k2_tp16_ep8_rank0_bytes()
    # k2_numbers E2 says ~60.2 GiB assuming the embedding and a-projections are sharded; TensorRT-LLM replicates
    # them, which is what this plan counts: 63.08 GiB (the "~60-63 GiB" band).
    assert 60 * GiB < got.total < 63.5 * GiB
    assert round(got.total / GiB, 2) == 63.08
    assert round(got.by_category["routed_experts"] / GiB, 2) == round(384 * 60 * 3 * (2048 * 7168 + 16 * 56 * 4)
                                                                       / 16 / GiB, 2)


@pytest.mark.parametrize("layout", ["tp16ep8", "tp16ep16adp", "tp8pp2ep4", "tp4pp4"])
def test_extreme_ranks_bound_every_rank(layout: str) -> None:
    m = Layout.parse(layout).mapping(8, K2)
    every = [rank_bytes(m, r).total for r in range(m.world_size)]
    ext = [rank_bytes(m, r).total for r in extreme_ranks(m)]
    assert max(ext) == max(every) and min(ext) == min(every)


def test_sharded_bytes_add_up_to_the_checkpoint() -> None:
    # Without replication (no ADP; embedding and fused a-projections aside) the ranks together hold every byte
    # exactly once per replica of its split: check on routed experts, whose split is complete at any layout.
    m = Mapping(8, 8, moe_ep=4, spec=TINY)
    total = sum(rank_bytes(m, r).by_category["routed_experts"] for r in range(8))
    expert = sum(t.nbytes for t in TINY.tensors() if t.expert is not None)
    assert total == expert


def test_kv_bytes_per_token_matches_mla_latent() -> None:
    assert kv_bytes_per_token(K2, "bf16") == 61 * (512 + 64) * 2 == 70272
    assert kv_bytes_per_token(K2, "fp8") == 35136


def test_e2_16x_h200_kv_capacity() -> None:
    m = Mapping(16, 16, moe_ep=8, spec=K2)
    mp = memory_plan(K2, m, gpu("h200"), 131072, "fp8", kv_fraction=0.95, reserve_gib=8)
    budget = (139.7 * GiB - _k2_tp16_ep8_rank0_bytes() - 8 * GiB) * 0.95
    assert mp.kv_budget == pytest.approx(budget)
    assert mp.kv_tokens_per_gpu == int(budget // 35136) // 32 * 32
    assert 1.9e6 < mp.kv_tokens_per_gpu < 2.1e6  # E2: ~2.08 M
    assert mp.max_sequences == mp.kv_tokens_per_gpu // 131072 and mp.pools == 1
    adp = memory_plan(K2, Mapping(16, 16, moe_ep=8, enable_attention_dp=True, spec=K2), gpu("h200"), 131072,
                      "fp8", kv_fraction=0.95)
    assert adp.pools == 16 and adp.weights_max > mp.weights_max + 9 * GiB  # attention, dense, shared, lm_head replicated
    assert adp.max_sequences == 16 * (adp.kv_tokens_per_gpu // 131072)


def _findings(req: PlanRequest, layout: str) -> tuple[object, set[str]]:
    lp = plan_layout(req, Layout.parse(layout))
    return lp, {f.rule for f in lp.findings}


def test_8x_h200_cannot_serve_128k_well() -> None:
    req = PlanRequest(K2, Cluster(gpu("h200"), 1, 8), 131072, "fp8", kv_fraction=0.95)
    lp, rules = _findings(req, "tp8ep8")
    assert lp.memory.weights_max > 120 * GiB and lp.memory.max_sequences < 4  # type: ignore[attr-defined]
    assert "context-not-viable" in rules and lp.ok  # type: ignore[attr-defined]
    lp, rules = _findings(req, "tp8ep8adp")
    assert "context-does-not-fit" in rules and not lp.ok  # type: ignore[attr-defined]


def test_16x_h100_is_marginal_and_16x_h200_is_not() -> None:
    _, rules = _findings(PlanRequest(K2, Cluster(gpu("h100"), 2, 8), 32768), "tp16ep8")
    assert "marginal-memory" in rules
    _, rules = _findings(PlanRequest(K2, Cluster(gpu("h200"), 2, 8), 32768), "tp16ep8")
    assert "marginal-memory" not in rules and {"few-heads-per-rank", "moe-tp-spans-nodes"} <= rules
    _, rules = _findings(PlanRequest(K2, Cluster(gpu("h200"), 2, 8), 32768), "tp16ep16adp")
    assert not rules & {"few-heads-per-rank", "moe-tp-spans-nodes"}


def test_release_and_feature_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    req = PlanRequest(K2, Cluster(gpu("h200"), 2, 8), 32768, release="1.3.0rc24", eplb_online=True,
                      tool_parser=True)
    lp, rules = _findings(req, "tp16ep16")
    assert {"eplb-needs-shm", "tool-parser-multinode"} <= rules
    # the warning names the flags as the engine's command line spells them
    (msg,) = [f.message for f in lp.findings if f.rule == "tool-parser-multinode"]  # type: ignore[attr-defined]
    argv = serve_argv("/m", config_path="c.yml", tp=16, ep=16, tool_parser=True, version="1.3.0rc24")
    flags = argv[argv.index("--trust_remote_code"):argv.index("--trust_remote_code") + 1] + argv[-2:]
    assert f"with {' '.join(flags)} hung" in msg, (msg, argv)
    # nobody has read 1.3.0rc24's routing code: the routing rules say nothing rather than borrow another release's
    assert not rules & {"routing-unfused", "routing-over-fused-limit"}
    # a release-facts row (what a reading of that release's routing.py would add) drives them
    monkeypatch.setitem(known.RELEASE_FACTS, "9.9.9", {"routing_unfused_k2": True, "fused_routing_limit": (256, 8)})
    lp, rules = _findings(PlanRequest(K2, Cluster(gpu("h200"), 2, 8), 32768, release="9.9.9"), "tp16ep16")
    assert {"routing-unfused", "routing-over-fused-limit"} <= rules
    assert any("≤256" in f.message for f in lp.findings)  # type: ignore[attr-defined]


def test_w4a8_is_refused_where_loading_it_is_not_established(monkeypatch: pytest.MonkeyPatch) -> None:
    w4a8, _ = resolve_spec(None, "k2-instruct", "w4a8")
    lp, rules = _findings(PlanRequest(w4a8, Cluster(gpu("h200"), 1, 8), 32768, release="1.3.0rc24"), "tp8ep8adp")
    msg = next(f.message for f in lp.findings if f.rule == "w4a8-not-loadable")  # type: ignore[attr-defined]
    assert not lp.ok and "MIXED_PRECISION is ambiguous" in msg and "modeling_deepseekv3.py@" in msg  # type: ignore[attr-defined]
    _, rules = _findings(PlanRequest(w4a8, Cluster(gpu("h200"), 1, 8), 32768), "tp8ep8adp")
    assert "w4a8-not-loadable" not in rules  # no release named: not release-specific
    monkeypatch.setitem(known.RELEASE_FACTS, "9.9.9", {"w4a8_mixed_precision": True})
    _, rules = _findings(PlanRequest(w4a8, Cluster(gpu("h200"), 1, 8), 32768, release="9.9.9"), "tp8ep8adp")
    assert "w4a8-not-loadable" not in rules
    _, rules = _findings(PlanRequest(K2, Cluster(gpu("h200"), 2, 8), 32768, release="1.3.0rc24"), "tp16ep16")
    assert "w4a8-not-loadable" not in rules


def test_no_fp8_on_a100_and_no_fp4_on_hopper() -> None:
    _, rules = _findings(PlanRequest(K2, Cluster(gpu("a100"), 4, 8), 8192), "tp32ep32adp")
    assert "no-fp8" in rules
    nv, _ = resolve_spec(None, "k2-instruct", "nvfp4")
    _, rules = _findings(PlanRequest(nv, Cluster(gpu("h200"), 1, 8), 8192), "tp8ep8adp")
    assert "no-fp4" in rules
    lp, rules = _findings(PlanRequest(nv, Cluster(gpu("b200"), 1, 8), 131072), "tp8ep8adp")
    assert lp.ok and "no-fp4" not in rules  # type: ignore[attr-defined]


def test_nvfp4_checkpoint_bytes() -> None:
    nv, _ = resolve_spec(None, "k2-instruct", "nvfp4")
    assert inventory(nv).total_bytes == pytest.approx(594e9, rel=0.005)  # nvidia/Kimi-K2-Thinking-NVFP4 ≈ 594 GB


def test_expected_max_experts_is_exact() -> None:
    assert expected_max_experts(384, 8, 1) == pytest.approx(8)
    assert expected_max_experts(384, 8, 384) == pytest.approx(1)
    rng = random.Random(0)
    for ep in (8, 16):
        g = 384 // ep
        mc = sum(max(_counts(rng.sample(range(384), 8), g).values()) for _ in range(20000)) / 20000
        assert expected_max_experts(384, 8, ep) == pytest.approx(mc, abs=0.03)
    assert expected_max_experts(384, 8, 8) == pytest.approx(2.57, abs=0.01)  # k2_numbers E3 (simulated)


def _counts(sample: list[int], g: int) -> dict[int, int]:
    out: dict[int, int] = {}
    for e in sample:
        out[e // g] = out.get(e // g, 0) + 1
    return out


def test_roofline_is_bytes_over_bandwidth_and_flops_over_peak() -> None:
    m = Mapping(16, 16, moe_ep=8, spec=K2)
    r = roofline(K2, m, gpu("h200"), 1, "fp8")
    assert r.decode_ms_hbm == pytest.approx(r.busiest_rank_bytes / 4.8e12 * 1e3)
    assert r.decode_tps_bound <= r.decode_tps_hbm
    assert active_params(K2) == pytest.approx(31.7e9, rel=0.005)
    assert r.flops_per_token == 2 * active_params(K2, include_embedding=True)
    assert r.prefill_tps == pytest.approx(16 * 1979e12 / r.flops_per_token)
    long = roofline(K2, m, gpu("h200"), 131072, "fp8")
    assert long.busiest_rank_bytes - r.busiest_rank_bytes == 35136 * (131072 - 1)


def test_enumeration_ranks_and_explains_invalid_layouts() -> None:
    p = plan(PlanRequest(K2, Cluster(gpu("h200"), 4, 8), 131072))
    names = [str(lp.layout) for lp in p.layouts]
    assert len(names) == len(candidate_layouts(32, K2))
    invalid = {str(lp.layout): lp.invalid for lp in p.layouts if lp.invalid}
    assert "64 is not a multiple of 128" in invalid["tp32"]  # MoE-TP32 cuts the expert FFN's FP8 blocks
    assert p.best is not None and p.best.layout.pp == 1
    ok = [lp for lp in p.layouts if lp.ok]
    assert [lp.sort_key() for lp in ok] == sorted(lp.sort_key() for lp in ok)
    md = to_markdown(p)
    assert "invalid tp32" in md and str(p.best.layout) in md


def test_wrong_world_size_is_invalid() -> None:
    lp = plan_layout(PlanRequest(K2, Cluster(gpu("h200"), 1, 8)), Layout.parse("tp16ep8"))
    assert lp.invalid and "16 GPUs" in lp.invalid


def test_catalog_has_sources() -> None:
    for key in ("h100", "h200", "h20", "h20-141", "b200", "gb200", "a100"):
        g = CATALOG[key]
        assert g.source and g.usable_gib < g.memory_gb + 1 and g.hbm_tbps > 0
    assert gpu("H20-96") is CATALOG["h20"]
    with pytest.raises(PlanError, match="unknown GPU"):
        gpu("v100")


def test_plan_command_json_and_exit_codes() -> None:
    run = CliRunner().invoke(cli, ["plan", "--nodes", "2", "--layout", "tp16ep8", "--json", "--kv-fraction", "0.95"])
    assert run.exit_code == 0, run.output
    d = json.loads(run.output)
    assert d["tensors"] == 139644 and round(d["layouts"][0]["memory"]["weights_gib_max"], 2) == 63.08
    run = CliRunner().invoke(cli, ["plan", "--layout", "tp16ep8"])  # 16 ranks on one 8-GPU node
    assert run.exit_code == 1 and "uses 16 GPUs" in run.output
    run = CliRunner().invoke(cli, ["plan", "--layout", "tp16xx"])
    assert run.exit_code == 2 and "tp<N>" in run.output
    run = CliRunner().invoke(cli, ["plan", "--preset", "tiny", "--gpu", "cpu", "--gpus-per-node", "2",
                                   "--context", "2048", "--layout", "tp2"])
    assert run.exit_code == 0 and "tp2" in run.output


def test_eplb_host_copy_is_every_routed_expert() -> None:
    """Online EPLB's /dev/shm copy is every routed expert of every MoE layer (TensorRT-LLM's HostMoeTensorSharer):
    for K2 FP8 a hand sum over K2's dimensions; for NVFP4 it stays under the 640 GB /dev/shm TensorRT-LLM's
    K2-Thinking guide gives 8×B200 for its 594 GB checkpoint."""
    from k2trt.plan.memory import routed_expert_bytes
    from k2trt.spec import Quantization

    h, i = 7168, 2048
    fp8 = h * i + (-(-h // 128)) * (-(-i // 128)) * 4   # one FP8 expert matrix and its fp32 128×128 block scales
    assert routed_expert_bytes(K2) == 60 * 384 * 3 * fp8  # 60 MoE layers (61 minus one dense) × 384 × gate/up/down
    nvfp4 = routed_expert_bytes(K2.with_quantization(Quantization.requant("nvfp4")))
    assert 0.5e12 < nvfp4 < 640e9
    req = PlanRequest(K2, Cluster(gpu("h200"), 2, 8), 32768, eplb_online=True)
    lp = plan_layout(req, Layout.parse("tp16ep16"))
    assert lp.memory is not None and lp.memory.eplb_shm_bytes == routed_expert_bytes(K2)
    assert "945 GiB" in next(f.message for f in lp.findings if f.rule == "eplb-needs-shm")
    assert plan_layout(PlanRequest(K2, Cluster(gpu("h200"), 2, 8), 32768), Layout.parse("tp16ep16")
                       ).memory.eplb_shm_bytes == 0  # type: ignore[union-attr]


def test_load_estimate_is_the_largest_shard_over_the_storage_bandwidth() -> None:
    from k2trt.plan.memory import ENGINE_START_S, LOAD_GBPS, REFERENCE_START_S

    for gbps in (LOAD_GBPS, 2.0):
        req = PlanRequest(K2, Cluster(gpu("h200"), 2, 8), 32768, load_gbps=gbps)
        m = plan_layout(req, Layout.parse("tp16ep8")).memory
        assert m is not None and m.load_s == pytest.approx(m.weights_max / (gbps * 1e9) + ENGINE_START_S)
        assert m.to_dict()["load_s"] == round(m.load_s, 1)
    p = plan(PlanRequest(K2, Cluster(gpu("h200"), 2, 8), 32768), [Layout.parse("tp16ep8")])
    assert "Estimated load: 12 min (63.1 GiB per GPU at 0.5 GB/s per GPU" in to_markdown(p)
    tiny = plan_layout(PlanRequest(TINY, Cluster(gpu("cpu"), 1, 2), 2048), Layout.parse("tp2")).memory
    assert tiny is not None and REFERENCE_START_S <= tiny.load_s < REFERENCE_START_S + 1
    with pytest.raises(PlanError, match="bandwidth"):
        plan_layout(PlanRequest(K2, Cluster(gpu("h200"), 2, 8), 32768, load_gbps=0), Layout.parse("tp16ep8"))
