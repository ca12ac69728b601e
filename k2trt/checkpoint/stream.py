"""How each op's output bytes are produced, as a stream of bounded pieces the driver writes in order.

An op becomes a sequence of work items:

- ``Chunk``: a function run in the worker pool that returns buffers (the next bytes of the shard). FP8 → BF16
  dequantisation and quantisation to block FP8 (from BF16 bits, or from any format decoded a chunk of rows at a
  time) go in 128-row chunks of about ``CHUNK`` output bytes through compiled loops (``kernels.py``), so memory
  is a few chunks whatever the tensor or checkpoint size, and neither needs torch for a BF16/FP8 source;
- ``Copy``: bytes of a source tensor appended as they are — by the kernel (``copy_file_range``) when no hash is
  kept, else read ahead in the pool in ``CHUNK`` pieces and hashed by the writer;
- ``Tail``: a function the writer runs after the op's chunks (the scale grid a chunked quantisation filled in).

Every other re-encode (to a 4-bit format, or to BF16 from a format other than FP8) is one chunk:
decode the whole source weight to float32 (``reader.decode``), encode it with the output format's row. The routed
experts' NVFP4/W4A8 encodings need per-expert statistics (``Experts``): the ``weight_scale_2`` shared by gate and
up (TensorRT-LLM fuses them) and the activation amax (calibrated, or the weight-only bound of
``quant4.activation_bounds``).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator

from k2trt.checkpoint import formats, names
from k2trt.checkpoint.files import CHUNK, TensorEntry
from k2trt.checkpoint.plan import Op
from k2trt.checkpoint.reader import CheckpointReader
from k2trt.errors import CheckpointError
from k2trt.spec import BLOCK, EXPERT_ROLES, ModelSpec

if TYPE_CHECKING:
    import numpy as np
    import torch

OUT_CHUNK = 8 * 2**20
"""Output bytes per chunk of a streamed (row-chunked) op."""


@dataclass(slots=True)
class Chunk:
    """Computed in the pool; ``src_bytes`` of source consumed (progress)."""

    fn: Callable[[], list[Any]]
    src_bytes: int = 0


@dataclass(slots=True)
class Copy:
    """Append ``n`` bytes of ``entry`` from ``offset`` as they are (the writer copies)."""

    entry: TensorEntry
    offset: int
    n: int


@dataclass(slots=True)
class Tail:
    """Computed by the writer after the op's earlier items."""

    fn: Callable[[], list[Any]]
    src_bytes: int = 0


Item = Chunk | Copy | Tail


class Meter:
    """The most decoded float32 weight data (plus its source bytes) held at once: the bounded-memory evidence."""

    def __init__(self) -> None:
        self.live = self.peak = 0
        self._lock = threading.Lock()

    def add(self, n: int) -> None:
        with self._lock:
            self.live += n
            self.peak = max(self.peak, self.live)

    def sub(self, n: int) -> None:
        with self._lock:
            self.live -= n


@dataclass
class Context:
    """What the items of one conversion share."""

    reader: CheckpointReader
    out_spec: ModelSpec
    hashing: bool
    calib: dict[str, float] = field(default_factory=dict)
    meter: Meter = field(default_factory=Meter)
    experts: "Experts" = field(init=False)

    def __post_init__(self) -> None:
        self.experts = Experts(self)


def items(op: Op, ctx: Context) -> Iterator[Item]:
    """The work items of one op, in output order."""
    if op.kind == "drop":
        return
    if op.kind == "copy":
        yield from _copy(op.src, ctx)
        return
    st = op.stored
    assert st is not None and op.out_fmt is not None
    if op.out_fmt == "bf16" and st.fmt.name == "fp8":
        yield from _dequant_fp8(st, ctx)
    elif op.out_fmt == "fp8":
        yield from _quant_rows(st, ctx)
    else:
        yield Chunk(lambda: _reencode(op, ctx), sum(e.nbytes for e in st.parts.values()))


def _copy(e: TensorEntry, ctx: Context) -> Iterator[Item]:
    if not ctx.hashing:
        yield Copy(e, 0, e.nbytes)
        return
    for off in range(0, e.nbytes, CHUNK):
        n = min(CHUNK, e.nbytes - off)
        yield Chunk(lambda off=off, n=n: [ctx.reader.raw(e, off, n)], n)
    if e.nbytes == 0:
        yield Chunk(lambda: [], 0)


def _rows_per_chunk(out_row_bytes: int) -> int:
    return max(BLOCK, OUT_CHUNK // max(1, out_row_bytes) // BLOCK * BLOCK)


def _dequant_fp8(st: formats.Stored, ctx: Context) -> Iterator[Item]:
    """FP8 → BF16 in 128-row chunks through the per-block lookup table (numpy, bit-identical to fp8.dequantize)."""
    import numpy as np

    from k2trt.checkpoint.fp8 import dequantize_rows

    w, s = st.weight, st.parts["scale"]
    m, n = st.shape
    scale = ctx.reader.raw(s).view(np.float32).reshape(s.shape)  # [Mb, Nb], a few KB
    step = _rows_per_chunk(2 * n)

    def chunk(r0: int, r1: int) -> list[Any]:
        out = np.empty((r1 - r0, n), dtype=np.uint16)
        dequantize_rows(ctx.reader.rows(w, r0, r1), scale, r0, out)
        return [out]

    for r0 in range(0, m, step):
        r1 = min(m, r0 + step)
        yield Chunk(lambda r0=r0, r1=r1: chunk(r0, r1), (r1 - r0) * n + (s.nbytes if r0 == 0 else 0))


def _quant_rows(st: formats.Stored, ctx: Context) -> Iterator[Item]:
    """Any decodable weight → (FP8, F32 block scales) in 128-row chunks (``kernels.quantize_rows``, bit-identical
    to ``fp8.quantize`` on the whole weight): the FP8 rows stream out, each chunk fills its rows of the scale grid,
    and the grid follows as the tail. A BF16 weight is quantised from its bits, a 4-bit one (INT4) from its packed
    bytes and group scales; any other format is decoded to float32 one chunk of rows at a time (``reader.decode``)."""
    import numpy as np

    from k2trt.checkpoint.fp8 import scale_problems
    from k2trt.checkpoint.kernels import quantize_packed_rows, quantize_rows
    from k2trt.spec import scale_shape

    w = st.weight
    m, n = st.shape
    grid = np.empty(scale_shape((m, n)), dtype=np.float32)
    step = _rows_per_chunk(4 * n)  # by the float32 working set, not the (4× smaller) output
    raw_bits = st.fmt.name == "bf16" and w.dtype == "BF16"
    src_per_row = sum(e.nbytes for e in st.parts.values()) / max(1, m)

    def chunk(r0: int, r1: int) -> list[Any]:
        q = np.empty((r1 - r0, n), dtype=np.uint8)
        if raw_bits:
            quantize_rows(ctx.reader.rows(w, r0, r1).view(np.int16), q, grid[r0 // BLOCK:])
            return [q]
        size = (r1 - r0) * n * 4
        ctx.meter.add(size)
        try:
            if st.fmt.nibbles is not None:   # INT4: unpacked, × group scale, quantised in one pass
                quantize_packed_rows(ctx.reader.rows(w, r0, r1), ctx.reader.float_rows(st.parts["scale"], r0, r1),
                                     st.fmt.nibbles == "signed", q, grid[r0 // BLOCK:])
            else:
                quantize_rows(ctx.reader.decode(st, (r0, r1)).numpy(), q, grid[r0 // BLOCK:])
        finally:
            ctx.meter.sub(size)
        return [q]

    def tail() -> list[Any]:
        why = scale_problems(grid)
        if why is not None:
            raise CheckpointError(f"{w.name} in {w.file}: its block scales would contain NaN/Inf/zero ({why}); the "
                                  "weight has non-finite values", "repair or re-download the source shard")
        return [grid]

    for r0 in range(0, m, step):
        r1 = min(m, r0 + step)
        yield Chunk(lambda r0=r0, r1=r1: chunk(r0, r1), round((r1 - r0) * src_per_row))
    yield Tail(tail)


def _reencode(op: Op, ctx: Context) -> list[Any]:
    """Decode the whole source weight to float32, encode it in the output format (one chunk)."""
    st = op.stored
    assert st is not None and op.out_fmt is not None
    extra: dict[str, Any] = {}
    if op.out_fmt in ("nvfp4", "int4"):  # statistics first: they decode gate and up once, for their ops too
        if op.role not in EXPERT_ROLES or op.layer is None or op.expert is None:
            raise CheckpointError(f"{st.name}: only routed experts are stored as {op.out_fmt}",
                                  "the target table maps this role to a 4-bit format; report it")
        extra = ctx.experts.extra(op)
    size = _float_bytes(st)
    w = ctx.experts.weight(op)
    ctx.meter.add(size)
    try:
        return [_bytes(p) for p in formats.FORMATS[op.out_fmt].encode(w, extra)]
    finally:
        ctx.meter.sub(size)


class Experts:
    """Per-expert statistics for the 4-bit encodings, computed once per (layer, expert) by whichever op asks first.

    The gate and up weights decoded for the statistics are kept until their own ops take them (at most a few
    experts are in flight), so each is decoded once.
    """

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._lock = threading.Lock()
        self._keys: dict[tuple[int, int], threading.Lock] = {}
        self._stats: dict[tuple[int, int], dict[str, Any]] = {}
        self._cache: dict[str, "torch.Tensor"] = {}
        self._norm: dict[int, float] = {}

    def weight(self, op: Op) -> "torch.Tensor":
        """The op's source weight as float32 (decoded, or taken from the statistics' cache); NaN/Inf refused."""
        import torch

        st = op.stored
        assert st is not None
        with self._lock:
            w = self._cache.pop(st.name, None)
        if w is not None:
            self.ctx.meter.sub(_float_bytes(st))
            return w
        w = self.ctx.reader.decode(st)
        if not torch.isfinite(w.abs().amax()):
            raise CheckpointError(f"{st.weight.name} in {st.weight.file} has NaN/Inf values",
                                  "repair or re-download the shard")
        return w

    def extra(self, op: Op) -> dict[str, Any]:
        """``scale_2`` (gate/up of NVFP4 share the pair's) and ``input_scale`` for an expert op."""
        from k2trt.checkpoint.quant4 import input_scale

        assert op.layer is not None and op.expert is not None
        st = self.stats(op.layer, op.expert)
        q = self.ctx.out_spec.quantization
        target = q.target if q is not None else None
        amax = st["down_amax"] if op.role == "expert_down" else st["x_amax"]
        return {"scale_2": None if op.role == "expert_down" else st["scale_2"],
                "input_scale": input_scale(amax, str(target))}

    def stats(self, layer: int, expert: int) -> dict[str, Any]:
        key = (layer, expert)
        with self._lock:
            if key in self._stats:
                return self._stats[key]
            lock = self._keys.setdefault(key, threading.Lock())
        with lock:
            with self._lock:
                if key in self._stats:
                    return self._stats[key]
            st = self._compute(layer, expert)
            with self._lock:
                self._stats[key] = st
                self._keys.pop(key, None)
                if len(self._stats) > 64:  # experts are visited in order; old entries are never needed again
                    self._stats.pop(next(iter(self._stats)))
            return st

    def _compute(self, layer: int, expert: int) -> dict[str, Any]:
        import torch

        from k2trt.checkpoint.quant4 import activation_bounds, nvfp4_scale_2

        rd, spec = self.ctx.reader, self.ctx.out_spec
        pair = []
        for role in ("expert_gate", "expert_up"):
            st = rd.stored(role, layer, expert)
            if st is None:
                raise CheckpointError(f"{names.name_of(role, layer, expert)} is missing",
                                      "the checkpoint is incomplete; re-download it")
            w = rd.decode(st)
            if not torch.isfinite(w.abs().amax()):
                raise CheckpointError(f"{st.weight.name} in {st.weight.file} has NaN/Inf values",
                                      "repair or re-download the shard")
            with self._lock:
                self._cache[st.name] = w
            self.ctx.meter.add(_float_bytes(st))
            pair.append(w)
        with self._lock:
            norm = self._norm.get(layer)
        if norm is None:
            norm = rd.get("post_norm", layer)
            with self._lock:
                self._norm[layer] = norm
        x_amax, down_amax = activation_bounds(norm, pair[0], pair[1], spec.hidden_size)
        mods = {r: names.module_name(names.name_of(r, layer, expert)) for r in EXPERT_ROLES}
        calib = self.ctx.calib
        x_amax = calib.get(mods["expert_gate"], calib.get(mods["expert_up"], x_amax))
        down_amax = calib.get(mods["expert_down"], down_amax)
        q = spec.quantization
        s2 = nvfp4_scale_2(*pair) if q is not None and q.target == "nvfp4" else None
        return {"scale_2": s2, "x_amax": x_amax, "down_amax": down_amax}


def _float_bytes(st: formats.Stored) -> int:
    return st.shape[0] * st.shape[1] * 4 + st.weight.nbytes


def _bytes(x: Any) -> "np.ndarray":
    """The raw little-endian bytes of a torch tensor or numpy array (0-dim scales included), without a copy."""
    import numpy as np

    if isinstance(x, np.ndarray):
        return np.ascontiguousarray(x).reshape(-1).view(np.uint8)
    import torch

    return x.contiguous().reshape(-1).view(torch.uint8).numpy()
