"""k2trt.mapping: TensorRT-LLM's rank formulas and shard placement.

Expected values are written out from trtllm.md §4's worked example and from K2's dimensions by hand arithmetic,
not recomputed with the module's own helpers; the tiling tests check the invariant every loader relies on: for
each tensor the distinct shards held across a rank group cover it exactly once."""

from __future__ import annotations

import functools
import math
from collections import defaultdict

import pytest

from k2trt.errors import PlanError
from k2trt.mapping import Mapping, ShardSlice
from k2trt.spec import preset

K2 = preset("k2-instruct")
TINY = preset("tiny")


@functools.lru_cache(maxsize=4)
def _index(spec):
    return {(t.role, t.layer, t.expert, t.scale_of is not None): t for t in spec.tensors()}


def _by_role(spec, role, layer=None, scale=False, expert=None):
    return _index(spec)[(role, layer, expert, scale)]


# ---- the worked example: world 16, tp 16, ep 8, 2 nodes of 8 --------------------------------------------------

def test_worked_example_rank_by_rank() -> None:
    m = Mapping(16, 16, moe_ep=8, spec=K2)
    assert (m.ep, m.mtp, m.attn_tp, m.nodes) == (8, 2, 16, 2)
    for r in range(16):
        info = m.rank_info(r)
        assert info.tp_rank == r
        assert info.pp_rank == 0
        assert info.moe_ep_rank == r % 8
        assert info.moe_tp_rank == r // 8
        assert info.node_rank == (0 if r < 8 else 1)
        assert info.local_rank == r - 8 * info.node_rank
        assert info.experts == range(48 * (r % 8), 48 * (r % 8) + 48)
        assert info.heads == range(4 * r, 4 * r + 4)
        assert info.layers == range(0, 61)
    assert m.groups("moe_ep") == [list(range(8)), list(range(8, 16))]
    assert m.groups("moe_tp") == [[i, i + 8] for i in range(8)]  # span the two hosts
    assert m.groups("tp") == [list(range(16))]


def test_worked_example_shards() -> None:
    m = Mapping(16, 16, moe_ep=8, spec=K2)
    # q_b: 64 heads × 192 = 12288 rows, 768 per rank; its scale 96 rows, 6 per rank
    assert m.shard(_by_role(K2, "q_b", 3), 7).ranges == ((7 * 768, 8 * 768), (0, 1536))
    assert m.shard(_by_role(K2, "q_b", 3, scale=True), 7).ranges == ((42, 48), (0, 12))
    # o_proj: input 8192 columns, 512 per rank (row-parallel)
    o = m.shard(_by_role(K2, "o", 3), 9)
    assert (o.kind, o.ranges) == ("row", ((0, 7168), (9 * 512, 10 * 512)))
    assert m.shard(_by_role(K2, "o", 3, scale=True), 9).ranges == ((0, 56), (36, 40))
    # kv_b: 4 heads × (128 nope + 128 v) = 1024 rows; scale 2 rows per head → 8
    assert m.shard(_by_role(K2, "kv_b", 3), 2).ranges == ((2048, 3072), (0, 512))
    assert m.shard(_by_role(K2, "kv_b", 3, scale=True), 2).ranges == ((16, 24), (0, 4))
    # experts: rank 9 is EP rank 1 (experts 48..95) and MoE-TP rank 1 (columns 1024..2047 of 2048)
    up = _by_role(K2, "expert_up", 5, expert=50)
    assert m.shard(up, 9).ranges == ((1024, 2048), (0, 7168)) and m.shard(up, 9).kind == "expert_column"
    assert m.shard(up, 1).ranges == ((0, 1024), (0, 7168))
    assert not m.shard(up, 0).held and not m.shard(up, 10).held
    down = _by_role(K2, "expert_down", 5, expert=50)
    assert m.shard(down, 9).ranges == ((0, 7168), (1024, 2048))
    assert m.shard(_by_role(K2, "expert_down", 5, scale=True, expert=50), 9).ranges == ((0, 56), (8, 16))
    # dense FFN: gcd(18432/128, 16) = 16 > 8 GPUs per node → TP8, 2304 columns; rank 13 holds part 5
    g = m.shard(_by_role(K2, "dense_gate", 0), 13)
    assert (g.parts, g.part, g.ranges) == (8, 5, ((5 * 2304, 6 * 2304), (0, 7168)))
    # shared expert: gcd(2048/128, 16) = 16 → 128 columns each
    assert m.shard(_by_role(K2, "shared_up", 1), 15).ranges == ((1920, 2048), (0, 7168))
    # lm_head: 163840 / 16 = 10240 vocab rows; embedding, norms, fused a-projections and router replicated
    assert m.shard(_by_role(K2, "lm_head"), 3).ranges == ((30720, 40960), (0, 7168))
    for role in ("embed", "q_a", "kv_a", "kv_a_norm", "router", "router_bias", "final_norm", "input_norm"):
        layer = None if role in ("embed", "final_norm") else 1
        assert m.shard(_by_role(K2, role, layer), 11).kind == "replicated", role
    assert not m.shard(_by_role(K2, "inv_freq", 0), 0).held


def test_attention_dp_replicates_attention_dense_shared_and_lm_head() -> None:
    m = Mapping(16, 16, moe_ep=16, enable_attention_dp=True, spec=K2)
    assert m.rank_info(5).heads == range(0, 64) and m.rank_info(5).experts == range(120, 144)
    for role in ("q_b", "kv_b", "o", "dense_gate", "dense_down", "shared_gate", "shared_down", "lm_head", "embed"):
        t = _by_role(K2, role, 0 if role.startswith("dense") else (None if role in ("lm_head", "embed") else 1))
        s = m.shard(t, 5)
        assert s.kind == "replicated" and s.shape == t.shape, role
    e = m.shard(_by_role(K2, "expert_gate", 1, expert=130), 5)
    assert e.kind == "expert" and e.shape == (2048, 7168)


def test_shard_index_is_a_slice_tuple() -> None:
    s = ShardSlice("column", ((4, 8), (0, 3)), 0, 2, 1)
    assert s.index == (slice(4, 8), slice(0, 3)) and s.shape == (4, 3) and s.numel == 12
    with pytest.raises(ValueError):
        _ = ShardSlice("not_held").index


# ---- tiny preset: every tensor's shards tile it exactly --------------------------------------------------------

def _volume(ranges) -> int:
    return math.prod(b - a for a, b in ranges)


def _disjoint(r1, r2) -> bool:
    return any(b1 <= a2 or b2 <= a1 for (a1, b1), (a2, b2) in zip(r1, r2))


LAYOUTS = [
    dict(world_size=2, tp=2),
    dict(world_size=4, tp=4, moe_ep=2),
    dict(world_size=4, tp=4, moe_ep=4, enable_attention_dp=True),
    dict(world_size=8, tp=8, moe_ep=4),
    dict(world_size=4, tp=2, pp=2),
]


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda d: ",".join(f"{k}={v}" for k, v in d.items()))
def test_tiny_shards_tile_every_tensor(layout) -> None:
    m = Mapping(**layout, spec=TINY)
    m.check()
    tensors = TINY.tensors()
    by_name = {t.name: t for t in tensors}
    for t in tensors:
        if t.role == "inv_freq":
            continue
        for group in m.groups("tp") if m.pp == 1 else [list(range(m.world_size))]:
            holders: dict[tuple, list[int]] = defaultdict(list)
            for r in group:
                s = m.shard(t, r)
                if s.held:
                    assert len(s.ranges) == len(t.shape)
                    assert all(0 <= a < b <= d for (a, b), d in zip(s.ranges, t.shape)), (t.name, s)
                    holders[s.ranges].append(r)
            distinct = list(holders)
            assert sum(_volume(x) for x in distinct) == t.numel, (t.name, layout, distinct)
            assert all(_disjoint(x, y) for i, x in enumerate(distinct) for y in distinct[i + 1:]), t.name
            counts = {len(v) for v in holders.values()}
            assert len(counts) == 1, (t.name, dict(holders))  # every shard equally replicated
        if t.scale_of is not None:  # the scale covers exactly its weight's blocks on every rank
            w = by_name[t.scale_of]
            for r in range(m.world_size):
                ws, ss = m.shard(w, r), m.shard(t, r)
                assert ws.held == ss.held
                if ws.held:
                    assert ss.ranges == tuple((a // 128, -(-b // 128)) for a, b in ws.ranges), (t.name, r)


def test_tiny_tp8_ep4_expert_and_attention_placement() -> None:
    m = Mapping(8, 8, moe_ep=4, spec=TINY)
    assert m.mtp == 2
    # 16 experts / 4 → 4 per EP rank; rank 6: ep rank 2 (experts 8..11), moe_tp rank 1 (columns 128..255)
    assert m.rank_info(6).experts == range(8, 12)
    assert m.shard(_by_role(TINY, "expert_gate", 1, expert=9), 6).ranges == ((128, 256), (0, 256))
    # 16 heads / 8 = 2 heads → q_b 2 × 192 = 384 rows; dense gcd(1024/128, 8) = 8 → 128; shared gcd(2, 8) = 2
    assert m.shard(_by_role(TINY, "q_b", 0), 6).ranges == ((2304, 2688), (0, 256))
    assert m.shard(_by_role(TINY, "dense_up", 0), 6).ranges == ((768, 896), (0, 256))
    sh = m.shard(_by_role(TINY, "shared_gate", 1), 6)
    assert (sh.parts, sh.part, sh.ranges) == (2, 0, ((0, 128), (0, 256)))


def test_pipeline_stages_hold_their_layers_only() -> None:
    m = Mapping(4, 2, pp=2, spec=TINY)  # 3 layers → stage 0: [0, 1], stage 1: [2]
    assert m.rank_info(1).layers == range(0, 2) and m.rank_info(2).layers == range(2, 3)
    assert m.shard(_by_role(TINY, "embed"), 1).held and not m.shard(_by_role(TINY, "embed"), 2).held
    assert not m.shard(_by_role(TINY, "lm_head"), 0).held and m.shard(_by_role(TINY, "lm_head"), 3).held
    assert not m.shard(_by_role(TINY, "q_b", 2), 0).held and m.shard(_by_role(TINY, "q_b", 2), 3).held


def test_default_resolution() -> None:
    assert (Mapping(8, 8).ep, Mapping(8, 8).mtp) == (1, 8)
    assert (Mapping(8, 8, moe_tp=2).ep, Mapping(8, 8, moe_tp=2).mtp) == (4, 2)
    assert (Mapping(16, 16, moe_ep=16).mtp) == 1


# ---- errors name the numbers -----------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, spec, words", [
    (dict(world_size=16, tp=8), None, ["world size 16", "tp 8", "pp 1"]),
    (dict(world_size=8, tp=8, moe_ep=4, moe_tp=4), None, ["moe_tp 4", "moe_ep 4", "tp 8"]),
    (dict(world_size=8, tp=8, moe_ep=3), None, ["tp 8", "moe_ep 3"]),
    (dict(world_size=10, tp=10, moe_ep=5), K2, ["384 experts", "moe_ep 5"]),
    (dict(world_size=48, tp=48, moe_ep=48), K2, ["64 attention heads", "tp 48"]),
    (dict(world_size=32, tp=32), K2, ["2048", "cuts a 128×128 FP8 block", "64 is not a multiple of 128"]),
    (dict(world_size=8, tp=8), TINY, ["256", "FP8 block"]),
    (dict(world_size=8, tp=2, pp=4), TINY, ["3 layers", "pp 4"]),
])
def test_invalid_layouts_raise_plan_error_naming_numbers(kwargs, spec, words) -> None:
    with pytest.raises(PlanError) as e:
        Mapping(**kwargs, spec=spec).check()
    for w in words:
        assert w in str(e.value), (w, str(e.value))


def test_attention_dp_lifts_the_head_constraint() -> None:
    Mapping(48, 48, moe_ep=48, enable_attention_dp=True, spec=K2).check()


def test_shard_without_spec_says_what_is_missing() -> None:
    with pytest.raises(PlanError, match="spec=ModelSpec"):
        Mapping(16, 16, moe_ep=8).shard(_by_role(K2, "expert_up", 1, expert=0), 0)
    with pytest.raises(PlanError, match="rank 16"):
        Mapping(16, 16, spec=K2).shard(_by_role(K2, "embed"), 16)
