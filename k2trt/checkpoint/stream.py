"""How each op's output bytes are produced, as a stream of bounded pieces the driver writes in order.

An op becomes a sequence of work items:

- ``Chunk``: a function run in the worker pool that returns buffers (the next bytes of the shard). FP8 → BF16
  dequantisation and quantisation to block FP8 (from BF16 bits, or from any format decoded a chunk of rows at a
  time) go in 128-row chunks of about ``CHUNK`` output bytes through compiled loops (``kernels.py``), so memory
  is a few chunks whatever the tensor or checkpoint size, and neither needs torch for a BF16/FP8 source;
- ``Copy``: bytes of a source tensor appended as they are — by the kernel (``copy_file_range``) when no hash is
  kept, else read ahead in the pool in ``CHUNK`` pieces and hashed by the writer;
- ``Tail``: a function the writer runs after the op's chunks (the scale grid a chunked quantisation filled in,
  with a 4-bit format's per-tensor scales).

The routed experts' NVFP4/W4A8 encodings stream the same way (``kernels4.py``; both formats group each row's
inputs, so rows encode on their own), from FP8 bytes or BF16 bits directly. They need per-expert statistics first
(``Experts``): the ``weight_scale_2`` shared by gate and up (TensorRT-LLM fuses them) and the activation amax
(calibrated, or the weight-only bound of ``quant4.activation_bounds``), computed by the compiled loops in one
bounded pass over gate and up. Every other re-encode (to BF16 from a format other than FP8) is one chunk: decode
the whole source weight to float32 (``reader.decode``), encode it with the output format's row.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator

from k2trt.checkpoint import formats, names
from k2trt.checkpoint.files import CHUNK, TensorEntry
from k2trt.checkpoint.plan import Op
from k2trt.checkpoint.reader import CheckpointReader
from k2trt.errors import CheckpointError
from k2trt.spec import BLOCK, EXPERT_ROLES, NVFP4_GROUP, W4A8_GROUP, ModelSpec

if TYPE_CHECKING:
    import numpy as np

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
    """The most weight data the chunks being computed hold at once (decoded float32 plus its source bytes, or the
    source bytes a compiled loop reads directly): the bounded-memory evidence."""

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
    elif op.out_fmt in ("nvfp4", "int4"):
        yield from _quant4_rows(op, ctx)
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
        packed = st.fmt.nibbles is not None
        size = round((r1 - r0) * src_per_row) if packed else (r1 - r0) * n * 4  # what the loop reads / decodes to
        ctx.meter.add(size)
        try:
            if packed:   # INT4: unpacked, × group scale, quantised in one pass
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


def _quant4_rows(op: Op, ctx: Context) -> Iterator[Item]:
    """A routed expert → NVFP4 or W4A8 in row chunks (``kernels4``, bit-identical to ``quant4.quantize_nvfp4`` /
    ``quantize_w4a8`` on the whole weight: both encode each row on its own). The packed rows stream out, each chunk
    fills its rows of the group-scale grid, and the tail writes the grid and the per-tensor scales. The expert's
    statistics (``Experts``) come first: its first op queues their reads as pool items. FP8 rows are encoded from
    their bytes and block scales, BF16 from its bits; any other format is decoded to float32 a chunk of rows at a
    time."""
    import numpy as np

    from k2trt.checkpoint import kernels4

    st = op.stored
    assert st is not None and op.out_fmt is not None
    if op.role not in EXPERT_ROLES or op.layer is None or op.expert is None:
        raise CheckpointError(f"{st.name}: only routed experts are stored as {op.out_fmt}",
                              "the target table maps this role to a 4-bit format; report it")
    m, n = st.shape
    nvfp4 = op.out_fmt == "nvfp4"
    grid = np.empty((m, n // (NVFP4_GROUP if nvfp4 else W4A8_GROUP)), dtype=np.uint8 if nvfp4 else np.float32)
    rows = _source_rows(st, ctx)
    step = _rows_per_chunk(rows.row_bytes)  # by the working set, not the (smaller) output
    src_per_row = sum(e.nbytes for e in st.parts.values()) / max(1, m)

    def chunk(r0: int, r1: int) -> list[Any]:
        extra = ctx.experts.extra(op)
        q = np.empty((r1 - r0, n // 2), dtype=np.uint8 if nvfp4 else np.int8)
        size = (r1 - r0) * rows.row_bytes
        ctx.meter.add(size)
        try:
            src, scales = rows.read(r0, r1)
            ok = kernels4.nvfp4_rows(src, extra["scale_2"], q, grid[r0:r1], scales, r0) if nvfp4 else \
                kernels4.w4a8_rows(src, q, grid[r0:r1], scales, r0)
        finally:
            ctx.meter.sub(size)
        if not ok:
            raise _non_finite(st)
        return [q]

    def tail() -> list[Any]:
        extra = ctx.experts.extra(op)
        scale_2 = [np.array(extra["scale_2"], dtype=np.float32)] if nvfp4 else []
        return [grid, *scale_2, extra["input_scale"]]

    for piece in ctx.experts.pieces(op.layer, op.expert):
        yield Chunk(piece)
    for r0 in range(0, m, step):
        r1 = min(m, r0 + step)
        yield Chunk(lambda r0=r0, r1=r1: chunk(r0, r1), round((r1 - r0) * src_per_row))
    yield Tail(tail)


@dataclass(frozen=True)
class _Rows:
    """How a 4-bit encoding reads a weight's rows: ``read(r0, r1)`` → (rows for ``kernels4``, the FP8 block-scale
    grid or None), holding ``row_bytes`` per row while they are encoded (the stored bytes of FP8 or BF16 rows, a
    float32 decoding plus its source for any other format)."""

    read: Callable[[int, int], "tuple[np.ndarray, np.ndarray | None]"]
    row_bytes: int


def _source_rows(st: formats.Stored, ctx: Context) -> _Rows:
    import numpy as np

    from k2trt.checkpoint.fp8 import check_scale_shape

    w, rd = st.weight, ctx.reader
    m, n = st.shape
    if st.fmt.name == "fp8":
        s = st.parts["scale"]
        check_scale_shape(w.name, st.shape, s.shape)
        scale = rd.raw(s).view(np.float32).reshape(s.shape)  # [Mb, Nb], a few KB
        return _Rows(lambda r0, r1: (rd.rows(w, r0, r1), scale), n)
    if st.fmt.name == "bf16" and w.dtype == "BF16":
        return _Rows(lambda r0, r1: (rd.rows(w, r0, r1).view(np.int16), None), 2 * n)
    return _Rows(lambda r0, r1: (rd.decode(st, (r0, r1)).numpy(), None), 4 * n + -(-w.nbytes // m))


def _non_finite(st: formats.Stored) -> CheckpointError:
    return CheckpointError(f"{st.weight.name} in {st.weight.file} has NaN/Inf values",
                           "repair or re-download the shard")


def _reencode(op: Op, ctx: Context) -> list[Any]:
    """Decode the whole source weight to float32, encode it in the output format (one chunk)."""
    st = op.stored
    assert st is not None and op.out_fmt is not None
    import torch

    size = _float_bytes(st)
    ctx.meter.add(size)
    try:
        w = ctx.reader.decode(st)
        if not torch.isfinite(w.abs().amax()):
            raise _non_finite(st)
        return [_bytes(p) for p in formats.FORMATS[op.out_fmt].encode(w, {})]
    finally:
        ctx.meter.sub(size)


class Experts:
    """Per-expert statistics for the 4-bit encodings, computed once per (layer, expert): the ``weight_scale_2``
    shared by gate and up (NVFP4; TensorRT-LLM fuses them) and down's own, and the activation amax (calibrated, or
    ``quant4.activation_bounds`` from the gate/up row norms and the layer's norm weight).

    The first op of an expert to reach the stream claims them (``pieces``): one pool item per weight read (gate and
    up row statistics, down's amax), in row chunks through ``kernels4`` (from the bytes for FP8), so the reads run
    in parallel and no float32 copy of a weight is made. ``stats`` waits for the pieces (queued before any chunk
    that asks, so always started), or computes them itself when nothing claimed them (an evicted entry).
    """

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._lock = threading.Lock()
        self._pending: dict[tuple[int, int], _Pieces] = {}
        self._stats: dict[tuple[int, int], dict[str, Any]] = {}
        self._norm: dict[int, float] = {}

    def extra(self, op: Op) -> dict[str, Any]:
        """``scale_2`` (NVFP4: float32, gate/up share the pair's) and ``input_scale`` for an expert op."""
        from k2trt.checkpoint.quant4 import input_scale

        assert op.layer is not None and op.expert is not None
        st = self.stats(op.layer, op.expert)
        q = self.ctx.out_spec.quantization
        target = str(q.target if q is not None else None)
        if op.role == "expert_down":
            return {"scale_2": st["down_scale_2"], "input_scale": input_scale(st["down_amax"], target)}
        return {"scale_2": st["scale_2"], "input_scale": input_scale(st["x_amax"], target)}

    def pieces(self, layer: int, expert: int) -> list[Callable[[], list[Any]]]:
        """The reads behind (layer, expert)'s statistics as pool items (returning no bytes), if nobody claimed
        them yet; else none."""
        key = (layer, expert)
        with self._lock:
            if key in self._stats or key in self._pending:
                return []
            p = self._pending[key] = _Pieces(self._reads(layer, expert))
        return [lambda role=role: p.run(role) for role in p.reads]

    def stats(self, layer: int, expert: int) -> dict[str, Any]:
        key = (layer, expert)
        with self._lock:
            st = self._stats.get(key)
            p = self._pending.get(key)
        if st is not None:
            return st
        if p is None:  # not claimed (or evicted): read here
            p = _Pieces(self._reads(layer, expert))
        st = self._combine(layer, expert, p.results())
        with self._lock:
            self._stats[key] = st
            if self._pending.get(key) is p:
                del self._pending[key]
            if len(self._stats) > 64:  # experts are visited in order; old entries are never needed again
                self._stats.pop(next(iter(self._stats)))
        return st

    def _reads(self, layer: int, expert: int) -> dict[str, Callable[[], Any]]:
        rd, q = self.ctx.reader, self.ctx.out_spec.quantization
        out: dict[str, Callable[[], Any]] = {}
        for role in ("expert_gate", "expert_up"):
            st = rd.stored(role, layer, expert)
            if st is None:
                raise CheckpointError(f"{names.name_of(role, layer, expert)} is missing",
                                      "the checkpoint is incomplete; re-download it")
            out[role] = lambda st=st: _row_stats(st, self.ctx)
        down = rd.stored("expert_down", layer, expert)
        if q is not None and q.target == "nvfp4" and down is not None:
            out["expert_down"] = lambda: _row_stats(down, self.ctx, sums=False)[0]
        return out

    def _combine(self, layer: int, expert: int, r: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        from k2trt.checkpoint.quant4 import activation_bounds, weight_scale_2

        (g_amax, g_ss), (u_amax, u_ss) = r["expert_gate"], r["expert_up"]
        mods = {role: names.module_name(names.name_of(role, layer, expert)) for role in EXPERT_ROLES}
        calib = self.ctx.calib
        x_amax = calib.get(mods["expert_gate"], calib.get(mods["expert_up"]))
        down_amax = calib.get(mods["expert_down"])
        if x_amax is None or down_amax is None:
            rows = float((np.sqrt(g_ss) * np.sqrt(u_ss)).max(initial=0.0))
            bx, bd = activation_bounds(self._norm_max(layer), rows, self.ctx.out_spec.hidden_size)
            x_amax = bx if x_amax is None else x_amax
            down_amax = bd if down_amax is None else down_amax
        nvfp4 = "expert_down" in r
        return {"scale_2": weight_scale_2(g_amax, u_amax) if nvfp4 else None,
                "down_scale_2": weight_scale_2(r["expert_down"]) if nvfp4 else None,
                "x_amax": x_amax, "down_amax": down_amax}

    def _norm_max(self, layer: int) -> float:
        """The largest |w| of the layer's post-attention norm weight (the FFN input's scale)."""
        with self._lock:
            v = self._norm.get(layer)
        if v is None:
            rd = self.ctx.reader
            v = float(abs(rd.float_rows(rd.entry(names.name_of("post_norm", layer)), 0, 1)).max())
            with self._lock:
                self._norm[layer] = v
        return v


class _Pieces:
    """The reads of one expert's statistics: each run once, by its pool item or by the first chunk that needs the
    results before the item has started (so a chunk never waits on queued work: with two shards in flight, the
    items a chunk waits for may sit behind that very chunk in the pool's queue); results kept by name."""

    def __init__(self, reads: dict[str, Callable[[], Any]]) -> None:
        self.reads = reads
        self._done = {r: threading.Event() for r in reads}
        self._started: set[str] = set()
        self._lock = threading.Lock()
        self._out: dict[str, Any] = {}
        self._err: BaseException | None = None

    def run(self, role: str) -> list[Any]:
        with self._lock:
            if role in self._started:
                return []
            self._started.add(role)
        try:
            self._out[role] = self.reads[role]()
        except BaseException as e:
            self._err = e
            raise
        finally:
            self._done[role].set()
        return []

    def results(self) -> dict[str, Any]:
        for role in self.reads:
            self.run(role)  # whatever nobody has started yet runs here
        for ev in self._done.values():
            ev.wait()
        if self._err is not None:
            raise self._err
        return self._out


def _row_stats(st: formats.Stored, ctx: Context, sums: bool = True) -> "tuple[float, np.ndarray | None]":
    """(largest magnitude, each row's sum of squares or None) of a stored weight, read in bounded row chunks through
    ``kernels4``; NaN/Inf refused."""
    import numpy as np

    from k2trt.checkpoint import kernels4

    m, n = st.shape
    rows = _source_rows(st, ctx)
    ss = np.empty(m, dtype=np.float64) if sums else None
    top = 0.0
    step = _rows_per_chunk(rows.row_bytes)
    for r0 in range(0, m, step):
        r1 = min(m, r0 + step)
        src, grid = rows.read(r0, r1)
        a = float(kernels4.row_stats(src, ss[r0:r1], grid, r0) if ss is not None else kernels4.amax(src, grid, r0))
        if not math.isfinite(a):
            raise _non_finite(st)
        top = max(top, a)
    return top, ss


def _float_bytes(st: formats.Stored) -> int:
    return st.shape[0] * st.shape[1] * 4 + st.weight.nbytes


def _bytes(x: Any) -> "np.ndarray":
    """The raw little-endian bytes of a torch tensor or numpy array (0-dim scales included), without a copy."""
    import numpy as np

    if isinstance(x, np.ndarray):
        return np.ascontiguousarray(x).reshape(-1).view(np.uint8)
    import torch

    return x.contiguous().reshape(-1).view(torch.uint8).numpy()
