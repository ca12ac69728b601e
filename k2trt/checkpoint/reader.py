"""The one reader of checkpoints: whole tensors, row ranges, one rank's slice, dequantised from any storage format.

``CheckpointReader`` reads the safetensors shards of one directory with ``os.pread`` — positional, thread-safe and
mapping nothing into memory, so neither the converter's worker threads nor a 1 TB checkpoint make resident memory
grow (safetensors' mmap would count every touched page). Three levels:

- bytes: ``raw`` / ``rows`` (numpy views of a tensor's bytes, for the converter's streaming ops) and ``fd``
  (for kernel-side copies);
- stored tensors: ``tensor`` (a row range, in its own dtype) and ``slice`` (rows × columns; the columns are cut
  from bounded row chunks, so a column-split rank never holds the full tensor);
- weights by role: ``get(role, layer, expert, rows=, cols=)``. A linear weight's storage format comes from
  ``formats.stored`` (block FP8, BF16, NVFP4, W4A8/INT4 — any row of ``formats.FORMATS``); the request is widened
  to whole scale blocks/groups, each stored part is sliced to match, the row's ``decode`` dequantises, and the
  result is cropped back to the request.

Every ``slice`` is recorded in ``reads`` (name, shape read) and ``bytes_read``, which is how the tests prove that
no rank of a sharded job reads a full copy of a sharded tensor.
"""

from __future__ import annotations

import math
import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from k2trt.checkpoint import files, formats, names
from k2trt.errors import CheckpointError

if TYPE_CHECKING:
    import numpy as np
    import torch

Span = tuple[int, int]  # [start, stop) along one axis
TORCH_DTYPES = {"F8_E4M3": "float8_e4m3fn", "BF16": "bfloat16", "F16": "float16", "F32": "float32",
                "F64": "float64", "U8": "uint8", "I8": "int8", "I16": "int16", "I32": "int32", "I64": "int64",
                "BOOL": "bool"}
_SLICE_CHUNK = 16 * 2**20  # bytes of whole rows read at once when cutting a column slice


class CheckpointReader:
    """Lazy reader of one checkpoint directory. Use as a context manager or call ``close()``.

    Example:
        ``with CheckpointReader(d) as r: w = r.get("q_b", layer=0, rows=(0, 384))``
    """

    def __init__(self, model_dir: str | Path, locations: dict[str, files.TensorEntry] | None = None) -> None:
        self.model_dir = Path(model_dir)
        # a K2.5 checkpoint's text model is read under its plain names; its vision tower is never read
        self.locations = locations if locations is not None else \
            names.strip_text_prefix(files.tensor_locations(self.model_dir))[0]
        if not self.locations:
            raise CheckpointError(f"{self.model_dir}: no tensors in any *.safetensors file",
                                  "point at a checkpoint directory")
        self.reads: list[tuple[str, tuple[int, ...]]] = []
        self.bytes_read = 0
        self._fds: dict[str, int] = {}
        self._lock = threading.Lock()

    def __enter__(self) -> "CheckpointReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()

    # ---- bytes -------------------------------------------------------------------------------------------------

    def fd(self, fname: str) -> int:
        """A read-only descriptor of shard ``fname`` (opened once, shared by all threads; links followed, anything
        but a regular file refused without blocking)."""
        with self._lock:
            fd = self._fds.get(fname)
            if fd is None:
                fd = self._fds[fname] = files.open_regular(self.model_dir / fname)
            return fd

    def read_into(self, e: files.TensorEntry, offset: int, out: Any) -> None:
        """Fill the writable buffer ``out`` with the bytes of ``e`` from ``offset`` (relative to the tensor)."""
        fd = self.fd(e.file)
        mv = memoryview(out).cast("B")
        got = 0
        while got < len(mv):
            k = os.preadv(fd, [mv[got:]], e.begin + offset + got)
            if k == 0:
                raise CheckpointError(f"{self.model_dir / e.file}: ends at byte {e.begin + offset + got}, expected "
                                      f"{e.begin + offset + len(mv)} (truncated while reading)",
                                      "re-download this shard")
            got += k

    def raw(self, e: files.TensorEntry, offset: int = 0, n: int | None = None) -> "np.ndarray":
        """``n`` bytes of ``e`` from ``offset`` (default: all of it) as a new uint8 array."""
        import numpy as np

        buf = np.empty(e.nbytes - offset if n is None else n, dtype=np.uint8)
        self.read_into(e, offset, buf)
        return buf

    def rows(self, e: files.TensorEntry, r0: int = 0, r1: int | None = None) -> "np.ndarray":
        """Rows ``r0:r1`` of a tensor's bytes as uint8 ``[rows, bytes per row]`` (a 0-/1-D tensor is one row)."""
        n_rows = e.shape[0] if len(e.shape) >= 2 else 1
        r1 = n_rows if r1 is None else r1
        row_bytes = e.nbytes // n_rows if n_rows else 0
        return self.raw(e, r0 * row_bytes, (r1 - r0) * row_bytes).reshape(r1 - r0, row_bytes)

    # ---- stored tensors ----------------------------------------------------------------------------------------

    def entry(self, name: str) -> files.TensorEntry:
        try:
            return self.locations[name]
        except KeyError:
            raise CheckpointError(f"{self.model_dir}: tensor {name!r} is missing",
                                  "the checkpoint is incomplete; re-download or re-convert it") from None

    def tensor(self, e: files.TensorEntry, r0: int = 0, r1: int | None = None) -> "torch.Tensor":
        """Rows ``r0:r1`` of a stored tensor (all of it by default) as a torch tensor of its own dtype."""
        import torch

        if not e.shape:
            return _as_torch(self.raw(e), e.dtype).reshape(())
        r1 = e.shape[0] if r1 is None else r1
        flat = self.rows(e, r0, r1).reshape(-1) if len(e.shape) >= 2 else \
            self.raw(e, r0 * e.nbytes // max(1, e.shape[0]), (r1 - r0) * e.nbytes // max(1, e.shape[0]))
        t = _as_torch(flat, e.dtype)
        return t.reshape((r1 - r0, *e.shape[1:])) if t.numel() else torch.empty((r1 - r0, *e.shape[1:]),
                                                                                dtype=t.dtype)

    def slice(self, name: str, rows: Span | None = None, cols: Span | None = None) -> "torch.Tensor":
        """``name[rows, cols]`` as stored (None: the whole axis); recorded in ``reads``."""
        import numpy as np

        e = self.entry(name)
        if len(e.shape) <= 1 or cols is None or cols == (0, e.shape[1]):
            r0, r1 = rows or (0, e.shape[0] if e.shape else 1)
            t = self.tensor(e, r0, r1) if e.shape else self.tensor(e)
        else:
            r0, r1 = rows or (0, e.shape[0])
            c0, c1 = cols
            esize = e.nbytes // math.prod(e.shape)
            row_bytes = e.nbytes // e.shape[0]
            out = np.empty((r1 - r0, (c1 - c0) * esize), dtype=np.uint8)
            step = max(1, _SLICE_CHUNK // max(1, row_bytes))
            for a in range(r0, r1, step):  # bounded chunks of whole rows, then the columns out of them
                b = min(r1, a + step)
                out[a - r0: b - r0] = self.rows(e, a, b)[:, c0 * esize: c1 * esize]
            t = _as_torch(out.reshape(-1), e.dtype).reshape(r1 - r0, c1 - c0)
        with self._lock:
            self.reads.append((name, tuple(t.shape)))
            self.bytes_read += t.numel() * t.element_size()
        return t

    # ---- weights by role ---------------------------------------------------------------------------------------

    def stored(self, role: str, layer: int | None = None, expert: int | None = None) -> formats.Stored | None:
        """How a linear role is stored (None for a non-linear role or an absent weight)."""
        if not formats.is_linear(role):
            return None
        return formats.stored(self.locations, names.name_of(role, layer, expert), required=False)

    def has(self, role: str, layer: int | None = None, expert: int | None = None) -> bool:
        return self.stored(role, layer, expert) is not None or names.name_of(role, layer, expert) in self.locations

    def shape(self, role: str, layer: int | None = None, expert: int | None = None) -> tuple[int, ...]:
        """The logical shape of a role's tensor (a packed 4-bit weight reports its unpacked ``[out, in]``)."""
        st = self.stored(role, layer, expert)
        return st.shape if st is not None else self.entry(names.name_of(role, layer, expert)).shape

    def get(self, role: str, layer: int | None = None, expert: int | None = None, *, rows: Span | None = None,
            cols: Span | None = None, dtype: "torch.dtype | None" = None) -> "torch.Tensor":
        """The tensor of ``role`` (rows/cols: half-open spans; None = all), dequantised from its storage format.

        Args:
            role: a role of ``k2trt.checkpoint.names`` ("q_b", "expert_down", ...).
            rows, cols: the slice to read along axis 0 / 1.
            dtype: result dtype (default float32).
        Returns:
            The (sliced) tensor in ``dtype``.
        """
        import torch

        dtype = dtype or torch.float32
        name = names.name_of(role, layer, expert)
        st = self.stored(role, layer, expert)
        if st is None:
            return self.slice(name, rows, cols).to(dtype)
        return self.decode(st, rows, cols).to(dtype)

    def decode(self, st: formats.Stored, rows: Span | None = None, cols: Span | None = None) -> "torch.Tensor":
        """float32 ``[rows, cols]`` of a stored linear weight: widened to whole blocks/groups, decoded, cropped."""
        m, n = st.shape
        r0, r1 = rows or (0, m)
        c0, c1 = cols or (0, n)
        geo = {p.part: p for p in st.fmt.parts}
        ra = math.lcm(*(p.per[0] for p in geo.values() if p.per)) if any(p.per for p in geo.values()) else 1
        ca = math.lcm(*(p.per[1] for p in geo.values() if p.per)) if any(p.per for p in geo.values()) else 1
        w0, w1 = r0 // ra * ra, min(-(-r1 // ra) * ra, m)   # widened rows
        v0, v1 = c0 // ca * ca, min(-(-c1 // ca) * ca, n)   # widened columns
        parts: dict[str, Any] = {}
        for part in st.fmt.needs:
            e, per = st.parts[part], geo[part].per
            if per is None:
                parts[part] = self.slice(e.name)
            else:
                parts[part] = self.slice(e.name, (w0 // per[0], -(-w1 // per[0])),
                                         (v0 // per[1], -(-v1 // per[1])))
        full = st.fmt.decode(parts)
        return full[r0 - w0: r1 - w0, c0 - v0: c1 - v0].contiguous()

    def float_rows(self, e: files.TensorEntry, r0: int, r1: int) -> "np.ndarray":
        """Rows ``r0:r1`` of a BF16 or F32 tensor as float32 numpy (BF16 widened exactly), without torch."""
        import numpy as np

        raw = self.rows(e, r0, r1)
        if e.dtype == "F32":
            return raw.view(np.float32)
        if e.dtype != "BF16":
            raise CheckpointError(f"{e.name} in {e.file} is {e.dtype}, expected BF16 or F32",
                                  "the checkpoint does not match its format; re-download or re-convert it")
        return (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)


def _as_torch(buf: "np.ndarray", dtype: str) -> "torch.Tensor":
    """A flat uint8 numpy buffer viewed as a torch tensor of safetensors ``dtype`` (little-endian; no copy)."""
    import torch

    t = torch.from_numpy(buf) if buf.size else torch.empty(0, dtype=torch.uint8)
    return t.view(getattr(torch, TORCH_DTYPES[dtype]))


def weight_fn(model_dir: str | Path, dtype: "torch.dtype | None" = None) -> Callable[..., "torch.Tensor"]:
    """``get(role, layer, expert)`` for ``reference.model.Transformer`` over any checkpoint format k2trt reads.

    Example: ``Transformer(spec, weight_fn("/tmp/k2-nvfp4"))``.
    """
    import torch

    rd = CheckpointReader(Path(model_dir))
    out_dtype = dtype or torch.float32
    return lambda role, layer, expert: rd.get(role, layer, expert, dtype=out_dtype)
