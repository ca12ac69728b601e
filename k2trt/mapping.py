"""TensorRT-LLM's ``Mapping`` semantics for K2: which rank holds which slice of which tensor. No torch.

Shared by the planner (per-GPU bytes), checkpoint sharding and the reference engine (each rank reads only its
slice through ``checkpoint.reader``). Usage::

    m = Mapping(world_size=4, tp=4, moe_ep=2, spec=spec)    # moe_tp resolves to 2
    for t in spec.tensors():
        s = m.shard(t, rank)
        if s.held:
            x = weights[t.key][s.index]                     # exactly this rank's shard, shape s.shape

Facts relied on (NVIDIA/TensorRT-LLM, read 2025-2026; shared/reference/trtllm.md §4 for the formulas):

- Sizes (``tensorrt_llm/mapping.py``): ``world == tp*pp*cp`` else ValueError; unset MoE sizes resolve as
  neither → moe_tp=tp, moe_ep=1; only ep → moe_tp=tp//ep; only moe_tp → moe_ep=tp//moe_tp; then
  ``moe_tp*moe_ep*cluster == tp``. ``tp_rank = rank % tp``, ``pp_rank = rank // (tp*cp)``,
  ``moe_ep_rank = tp_rank % moe_ep``, ``moe_tp_rank = tp_rank // (moe_ep*cluster)``, ``node = rank // gpus_per_node``,
  ``local = rank % gpus_per_node``. moe_cluster and cp are always 1 here.
- Experts (``_torch/modules/fused_moe``): ``num_experts % ep == 0`` is asserted; EP rank e holds experts
  ``[e*n/ep, (e+1)*n/ep)``; w1/w3 (gate/up) are COLUMN-split and w2 (down) ROW-split over moe_tp by moe_tp_rank.
- Every split uses ``linear.load_weight_shard``: width ``ceil(dim/n)``, part p is ``[p*w, min((p+1)*w, dim))``,
  applied to a weight and, separately, to its ``weight_scale_inv`` with the scale's own shape — so a scale gets the
  block range of its weight's slice exactly when the weight's slice sits on 128-element block edges (checked here).
- MLA (``_torch/modules/attention.py: MLA``): q_b_proj (or q_proj) and kv_b_proj COLUMN over the attention TP,
  o_proj ROW; with ``enable_attention_dp`` the attention TP is 1 (all heads on every rank, replicated).
  ``modeling_deepseekv3.py`` splits kv_b per head (unflatten to [heads, nope+v], chunk heads) and its scale per head
  in 128-row units — the same contiguous rows as an even column split, needing qk_nope and v_head_dim % 128 == 0.
  q_a_proj and kv_a_proj_with_mqa are fused into one replicated ``DeepseekV3Linear`` (no mapping); the layernorms,
  the router ``gate.weight`` and ``e_score_correction_bias`` are replicated.
- Dense FFN (``DeepseekV3DecoderLayer._compute_mlp_tp_size``, since PR #3952): ``gcd(intermediate/block, tp)``,
  and if that exceeds ``gpus_per_node``, ``gcd(that, gpus_per_node)``; 1 under attention DP. ``block`` is the
  quant group size (128 block-FP8, 16 NVFP4, 1 unquantised). GatedMLP builds a Mapping with that tp, so the part
  is ``rank % dense_tp``. K2 at TP16 on 8-GPU nodes: dense TP8 (2,304 columns per rank), not 16.
- Shared experts (``Deepseekv3MoE._compute_shared_expert_tp_size``): ``gcd(shared_intermediate/block, tp)``, no
  node cap; 1 under attention DP; part ``rank % shared_tp``.
- Embedding: ``DeepseekV3Model`` builds ``Embedding(vocab, hidden)`` without a mapping: replicated on every rank.
  lm_head (``LMHead``, COLUMN): vocab rows ``ceil(V/tp)`` per tp rank (the last rank short); replicated under
  attention DP (``enable_lm_head_tp_in_adp`` slices at run time, the weight stays whole).
- PP (``DecoderModel.__pp_init__``, ``Mapping.pp_layers``): layers split like ``torch.tensor_split`` (the first
  ``L % pp`` stages get one extra); the embedding lives on the first stage, final norm and lm_head on the last.
- ``rotary_emb.inv_freq`` is never loaded: not held by any rank.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Iterable

from k2trt.errors import PlanError
from k2trt.spec import BLOCK, ModelSpec, TensorInfo

# Quant group size per weight dtype (TensorRT-LLM's quant_config.group_size): block-FP8 128, NVFP4 16 (packed U8).
_GROUP_BY_DTYPE = {"F8_E4M3": BLOCK, "U8": 16}

REPLICATED_ROLES = frozenset({"embed", "final_norm", "input_norm", "post_norm", "q_a", "q_a_norm", "kv_a",
                              "kv_a_norm", "router", "router_bias"})
ATTN_COLUMN_ROLES = frozenset({"q_b", "q", "kv_b"})
EXPERT_ROLES = frozenset({"expert_gate", "expert_up", "expert_down"})
FFN_ROLES = frozenset({"dense_gate", "dense_up", "dense_down", "shared_gate", "shared_up", "shared_down"})
COLUMN, ROW = 0, 1  # split axis of a [out, in] weight
GPUS_PER_NODE = 8  # TensorRT-LLM Mapping's gpus_per_node default, and an HGX/DGX node: the one default k2trt uses


@dataclass(frozen=True)
class ShardSlice:
    """The part of one tensor that one rank holds.

    ``kind`` is one of ``replicated``, ``column`` (axis 0 split), ``row`` (axis 1 split), ``vocab`` (lm_head rows),
    ``expert`` (a whole routed expert), ``expert_column``/``expert_row`` (an expert split by MoE-TP) or
    ``not_held``. ``ranges`` has one (start, stop) per axis (the full range on unsplit axes); ``parts`` is how many
    distinct shards the tensor is cut into along ``axis`` (1 when not split) and ``part`` is this rank's one.
    """

    kind: str
    ranges: tuple[tuple[int, int], ...] = ()
    axis: int | None = None
    parts: int = 1
    part: int = 0

    @property
    def held(self) -> bool:
        return self.kind != "not_held"

    @property
    def replicated(self) -> bool:
        return self.kind in ("replicated", "expert")

    @property
    def shape(self) -> tuple[int, ...]:
        """Local shape (empty when not held)."""
        return tuple(b - a for a, b in self.ranges)

    @property
    def index(self) -> tuple[slice, ...]:
        """Indexing tuple for ``safe_open(...).get_slice(name)[index]`` or ``tensor[index]``."""
        if not self.held:
            raise ValueError("this rank does not hold the tensor")
        return tuple(slice(a, b) for a, b in self.ranges)

    @property
    def numel(self) -> int:
        return math.prod(self.shape) if self.held else 0


NOT_HELD = ShardSlice("not_held")


@dataclass(frozen=True)
class RankInfo:
    """Everything about one rank: its coordinates in every group, its node/GPU, and what it owns."""

    rank: int
    tp_rank: int
    pp_rank: int
    moe_ep_rank: int
    moe_tp_rank: int
    node_rank: int
    local_rank: int
    experts: range
    heads: range
    layers: range


def split_range(dim: int, parts: int, part: int) -> tuple[int, int]:
    """TensorRT-LLM's ``load_weight_shard`` split: width ``ceil(dim/parts)``, the last part may be short."""
    w = -(-dim // parts)
    return min(part * w, dim), min((part + 1) * w, dim)


@dataclass(frozen=True)
class Mapping:
    """A TensorRT-LLM parallel layout: tp/pp sizes, MoE EP × TP split, attention-DP, GPUs per node.

    Args:
        world_size: total ranks; must equal ``tp * pp``.
        tp: tensor-parallel size (also the MoE world: moe_tp × moe_ep == tp).
        pp: pipeline stages.
        moe_ep / moe_tp: MoE expert- and tensor-parallel sizes; None resolves as TensorRT-LLM does.
        enable_attention_dp: attention (and dense FFN, shared expert, lm_head) replicated per rank.
        gpus_per_node: ranks per node (node = rank // gpus_per_node).
        spec: the ModelSpec whose tensors :meth:`shard` cuts (or pass it to each call).

    Raises PlanError naming the numbers when the sizes are inconsistent. Model-dependent checks (experts, heads,
    FP8 blocks) are in :meth:`check` and :meth:`shard`.

    Example: ``Mapping(16, tp=16, moe_ep=8, spec=k2).rank_info(9)`` → tp_rank 9, moe_ep_rank 1, moe_tp_rank 1, node 1.
    """

    world_size: int
    tp: int
    pp: int = 1
    moe_ep: int | None = None
    moe_tp: int | None = None
    enable_attention_dp: bool = False
    gpus_per_node: int = GPUS_PER_NODE
    spec: ModelSpec | None = field(default=None, repr=False, compare=False)
    """The model whose tensors are sharded (expert/head/layer counts); optional for pure layout questions."""
    _resolved: tuple[int, int] = field(default=(0, 0), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("world_size", "tp", "pp", "gpus_per_node"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise PlanError(f"{name} must be a positive integer, got {v!r}")
        for name in ("moe_ep", "moe_tp"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise PlanError(f"{name} must be a positive integer or unset, got {v!r}")
        if self.tp * self.pp != self.world_size:
            raise PlanError(f"world size {self.world_size} != tp {self.tp} × pp {self.pp}",
                            "choose tp and pp whose product is the number of GPUs")
        ep, mtp = self.moe_ep, self.moe_tp
        if ep is None and mtp is None:
            ep, mtp = 1, self.tp
        elif mtp is None:
            assert ep is not None
            if self.tp % ep:
                raise PlanError(f"tp {self.tp} is not divisible by moe_ep {ep}", "moe_ep must divide tp")
            mtp = self.tp // ep
        elif ep is None:
            if self.tp % mtp:
                raise PlanError(f"tp {self.tp} is not divisible by moe_tp {mtp}", "moe_tp must divide tp")
            ep = self.tp // mtp
        if ep * mtp != self.tp:
            raise PlanError(f"moe_tp {mtp} × moe_ep {ep} = {mtp * ep} != tp {self.tp}",
                            "the MoE split must use exactly the tp ranks")
        object.__setattr__(self, "_resolved", (ep, mtp))

    # ---- sizes ----------------------------------------------------------------------------------------------

    @property
    def ep(self) -> int:
        """Resolved MoE expert-parallel size."""
        return self._resolved[0]

    @property
    def mtp(self) -> int:
        """Resolved MoE tensor-parallel size."""
        return self._resolved[1]

    @property
    def attn_tp(self) -> int:
        """TP size of the attention weights: 1 under attention-DP."""
        return 1 if self.enable_attention_dp else self.tp

    @property
    def nodes(self) -> int:
        return -(-self.world_size // self.gpus_per_node)

    def dense_tp(self, intermediate: int, group: int = BLOCK) -> int:
        """TP size of a dense (first_k_dense_replace) FFN: gcd(intermediate/group, tp), capped to a node."""
        if self.enable_attention_dp:
            return 1
        t = math.gcd(intermediate // group, self.tp)
        return math.gcd(t, self.gpus_per_node) if t > self.gpus_per_node else t

    def shared_tp(self, intermediate: int, group: int = BLOCK) -> int:
        """TP size of the shared experts: gcd(shared_intermediate/group, tp); 1 under attention-DP."""
        return 1 if self.enable_attention_dp else math.gcd(intermediate // group, self.tp)

    # ---- ranks ----------------------------------------------------------------------------------------------

    def _check_rank(self, rank: int) -> None:
        if not 0 <= rank < self.world_size:
            raise PlanError(f"rank {rank} is outside 0..{self.world_size - 1}")

    def tp_rank(self, rank: int) -> int:
        return rank % self.tp

    def pp_rank(self, rank: int) -> int:
        return rank // self.tp

    def moe_ep_rank(self, rank: int) -> int:
        return self.tp_rank(rank) % self.ep

    def moe_tp_rank(self, rank: int) -> int:
        return self.tp_rank(rank) // self.ep

    def node_rank(self, rank: int) -> int:
        return rank // self.gpus_per_node

    def local_rank(self, rank: int) -> int:
        return rank % self.gpus_per_node

    def experts(self, rank: int, n_experts: int) -> range:
        """Routed experts held by ``rank`` (TensorRT-LLM ``ep_experts``)."""
        if n_experts % self.ep:
            raise PlanError(f"{n_experts} experts are not divisible by moe_ep {self.ep}",
                            f"choose an EP size that divides {n_experts}")
        per = n_experts // self.ep
        e = self.moe_ep_rank(rank)
        return range(e * per, (e + 1) * per)

    def heads(self, rank: int, n_heads: int) -> range:
        """Attention heads computed by ``rank`` (all of them under attention-DP)."""
        if n_heads % self.attn_tp:
            raise PlanError(f"{n_heads} attention heads are not divisible by tp {self.tp}",
                            "use a tp that divides the head count, or attention-DP")
        per = n_heads // self.attn_tp
        t = self.tp_rank(rank) % self.attn_tp
        return range(t * per, (t + 1) * per)

    def layers(self, rank: int, n_layers: int) -> range:
        """Decoder layers of ``rank``'s pipeline stage (torch.tensor_split: the first L % pp stages get one more)."""
        if n_layers < self.pp:
            raise PlanError(f"{n_layers} layers are not enough for pp {self.pp}")
        base, extra = divmod(n_layers, self.pp)
        p = self.pp_rank(rank)
        start = p * base + min(p, extra)
        return range(start, start + base + (1 if p < extra else 0))

    def groups(self, kind: str) -> list[list[int]]:
        """Rank groups: ``tp``, ``pp``, ``moe_ep`` (contiguous blocks) or ``moe_tp`` (stride moe_ep)."""
        out: list[list[int]] = []
        for p in range(self.pp):
            base = p * self.tp
            if kind == "tp":
                out.append(list(range(base, base + self.tp)))
            elif kind == "moe_ep":
                out += [list(range(base + j * self.ep, base + (j + 1) * self.ep)) for j in range(self.mtp)]
            elif kind == "moe_tp":
                out += [list(range(base + j, base + self.tp, self.ep)) for j in range(self.ep)]
        if kind == "pp":
            out = [list(range(i, self.world_size, self.tp)) for i in range(self.tp)]
        if not out:
            raise ValueError(f"unknown group kind {kind!r}")
        return out

    def rank_info(self, rank: int, spec: ModelSpec | None = None) -> RankInfo:
        """Every coordinate of ``rank``, and the experts, heads and layers it owns in the model."""
        self._check_rank(rank)
        m = _need(spec or self.spec, "rank_info")
        return RankInfo(rank, self.tp_rank(rank), self.pp_rank(rank), self.moe_ep_rank(rank),
                        self.moe_tp_rank(rank), self.node_rank(rank), self.local_rank(rank),
                        self.experts(rank, m.n_routed_experts), self.heads(rank, m.num_attention_heads),
                        self.layers(rank, m.num_hidden_layers))

    # ---- shards ---------------------------------------------------------------------------------------------

    def shard(self, t: TensorInfo, rank: int, spec: ModelSpec | None = None) -> ShardSlice:
        """The slice of tensor ``t`` that ``rank`` holds, as TensorRT-LLM's loader cuts it.

        Args:
            t: a tensor from ``spec.tensors()`` (or an inspected checkpoint); its ``role`` picks the rule.
            rank: global rank, 0 ≤ rank < world_size.
            spec: the model (expert, head and layer counts); defaults to the ``spec`` this Mapping was built with.

        Returns:
            A ShardSlice; ``not_held`` for an expert of another EP rank, a layer of another pipeline stage, or a
            tensor the loader never reads. A ``weight_scale_inv`` gets the block range of its weight's slice.

        Raises PlanError when the split cuts a 128×128 FP8 block or does not divide (experts by EP, heads by TP).

        Example: ``Mapping(16, tp=16, moe_ep=8, spec=k2).shard(t_q_b_layer0, 5).ranges`` → ((3840, 4608), (0, 1536)).
        """
        self._check_rank(rank)
        spec = spec or self.spec
        role = t.role
        if self.pp > 1 and not self._on_stage(t, rank, _need(spec, "pipeline stages").num_hidden_layers):
            return NOT_HELD
        if role == "inv_freq":
            return NOT_HELD
        if role in REPLICATED_ROLES:
            return self._full(t)
        if role == "lm_head":
            if self.enable_attention_dp:
                return self._full(t)
            return self._split(t, COLUMN, self.tp, self.tp_rank(rank), "vocab")
        if role in ATTN_COLUMN_ROLES or role == "o":
            if self.attn_tp > 1:
                self.heads(rank, _need(spec, "attention sharding").num_attention_heads)
            axis = ROW if role == "o" else COLUMN
            return self._split(t, axis, self.attn_tp, self.tp_rank(rank) % self.attn_tp)
        if role in FFN_ROLES:
            axis = ROW if role.endswith("_down") else COLUMN
            units, group = self._inter_units(t, axis)
            n = (self.dense_tp(units * group, group) if role.startswith("dense")
                 else self.shared_tp(units * group, group))
            return self._split(t, axis, n, rank % n)
        if role in EXPERT_ROLES:
            if t.expert is None:
                raise PlanError(f"{t.name}: a routed-expert tensor without an expert index")
            if t.expert not in self.experts(rank, _need(spec, "expert sharding").n_routed_experts):
                return NOT_HELD
            if self.mtp == 1:
                return self._full(t, "expert")
            axis = ROW if role == "expert_down" else COLUMN
            return self._split(t, axis, self.mtp, self.moe_tp_rank(rank), "expert_row" if axis else "expert_column")
        raise PlanError(f"{t.name}: tensor role {role!r} has no sharding rule", "is this a K2 checkpoint?")

    def check(self, spec: ModelSpec | None = None, samples: Iterable[TensorInfo] | None = None) -> None:
        """Raise PlanError if this layout cannot load the model: experts, heads, layers, and every tensor kind's
        split on every rank (one tensor per role and weight/scale: ``samples``, default :func:`role_samples`)."""
        spec = _need(spec or self.spec, "check")
        self.experts(0, spec.n_routed_experts)
        self.heads(0, spec.num_attention_heads)
        self.layers(0, spec.num_hidden_layers)
        for t in role_samples(spec) if samples is None else samples:
            for r in range(self.world_size):
                self.shard(t, r, spec)

    # ---- helpers --------------------------------------------------------------------------------------------

    def _on_stage(self, t: TensorInfo, rank: int, n_layers: int) -> bool:
        p = self.pp_rank(rank)
        if t.role == "embed":
            return p == 0
        if t.role in ("final_norm", "lm_head"):
            return p == self.pp - 1
        return t.layer is None or t.layer in self.layers(rank, n_layers)

    @staticmethod
    def _full(t: TensorInfo, kind: str = "replicated") -> ShardSlice:
        return ShardSlice(kind, tuple((0, d) for d in t.shape))

    @staticmethod
    def _inter_units(t: TensorInfo, axis: int) -> tuple[int, int]:
        """(FFN intermediate size in quant groups, group size) of a dense/shared FFN weight or its scale."""
        if t.scale_of is not None:
            return t.shape[axis], BLOCK  # a block-FP8 scale: one entry per 128 columns
        g = _GROUP_BY_DTYPE.get(t.dtype, 1)
        d = t.shape[axis] * (2 if t.dtype == "U8" else 1) if axis == ROW else t.shape[axis]  # U8 packs 2 FP4
        if d % g:
            raise PlanError(f"{t.name}: intermediate size {d} is not a multiple of the quant group {g}")
        return d // g, g

    @staticmethod
    def _split(t: TensorInfo, axis: int, parts: int, part: int, kind: str | None = None) -> ShardSlice:
        kind = kind or ("row" if axis == ROW else "column")
        if parts == 1:
            return Mapping._full(t)
        if len(t.shape) <= axis:
            raise PlanError(f"{t.name}: cannot split a {len(t.shape)}-D tensor on axis {axis}")
        dim = t.shape[axis]
        a, b = split_range(dim, parts, part)
        if t.dtype == "F8_E4M3" and t.scale_of is None and (a % BLOCK or (b % BLOCK and b != dim)):
            raise PlanError(
                f"{t.name}: a {parts}-way split of axis {axis} (size {dim}) gives [{a}, {b}), which cuts a "
                f"{BLOCK}×{BLOCK} FP8 block ({-(-dim // parts)} is not a multiple of {BLOCK})",
                "use a smaller tp/moe_tp for this tensor, or a BF16 checkpoint")
        ranges = tuple((a, b) if i == axis else (0, d) for i, d in enumerate(t.shape))
        return ShardSlice(kind, ranges, axis, parts, part)


def _need(spec: ModelSpec | None, what: str) -> ModelSpec:
    if spec is None:
        raise PlanError(f"{what} needs the model's dimensions", "build the Mapping with spec=ModelSpec")
    return spec


@functools.lru_cache(maxsize=16)
def role_samples(spec: ModelSpec) -> tuple[TensorInfo, ...]:
    """One tensor per (role, weight/scale) — from the first dense and first MoE layer, expert 0 — plus the
    globals: enough to check every sharding rule without walking K2's 139,644 tensors."""
    out: list[TensorInfo] = []
    seen: set[tuple[str, bool]] = set()
    for t in spec.tensors():
        key = (t.role, t.scale_of is not None)
        if key not in seen:
            seen.add(key)
            out.append(t)
    return tuple(out)
