"""Safetensors shards and the index, read from headers only, and written one tensor at a time.

A safetensors file is ``u64 little-endian header length N`` + ``N bytes of JSON`` + the data region; the JSON maps
each tensor name to ``{"dtype", "shape", "data_offsets": [begin, end]}`` relative to the data region, plus an optional
``__metadata__`` of strings. Reading only the header lets inspect and plan handle the 1 TB K2 in seconds.

Writing uses ``ShardWriter``: the header is laid out up front from the tensor list, the file is created under a
temporary name, each tensor's bytes are written at its offset as it is produced (so a converter never holds a
whole shard in memory), and ``commit()`` fsyncs and renames into place. ``commit(sparse=True)`` leaves the data
region as a file hole — a faithful 1 TB layout that costs almost no disk. No torch here.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from k2trt.checkpoint.names import INDEX_FILE
from k2trt.errors import CheckpointError

DTYPE_SIZE = {"F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1, "U8": 1, "I8": 1, "BOOL": 1, "BF16": 2, "F16": 2,
              "I16": 2, "U16": 2, "F32": 4, "I32": 4, "U32": 4, "F64": 8, "I64": 8, "U64": 8, "F4": 0.5}
MAX_HEADER = 100 * 2**20  # safetensors itself refuses headers over 100 MB
ALIGN = 8


@dataclass(frozen=True)
class TensorEntry:
    """One tensor as a shard header describes it. ``begin``/``end`` are absolute file offsets."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int
    file: str

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


@dataclass(frozen=True)
class ShardHeader:
    """The parsed header of one shard: its tensors, metadata and sizes."""

    path: Path
    tensors: dict[str, TensorEntry]
    metadata: dict[str, str]
    data_start: int
    file_size: int


def read_header(path: str | Path) -> ShardHeader:
    """Parse and validate a safetensors header without touching tensor data.

    Raises CheckpointError (one line naming the file and the fix) for: a file shorter than its header, a header
    length past the end of the file, invalid JSON, unknown dtypes, offsets that do not match shape × dtype, overlapping
    tensors, and data that runs past the end of the file (a truncated download).
    """
    p = Path(path)
    fix = "re-download or re-convert this shard"
    try:
        size = p.stat().st_size
        with open(p, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{p}: {size} bytes is too short for a safetensors file", fix)
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER or 8 + n > size:
                raise CheckpointError(f"{p}: header length {n} runs past the end of the {size}-byte file "
                                      "(truncated or not a safetensors file)", fix)
            raw = f.read(n)
    except OSError as e:
        raise CheckpointError(f"{p}: cannot read ({e.strerror})") from None
    try:
        header = json.loads(raw.decode("utf-8").rstrip(" \x00"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{p}: header is not valid JSON ({e})", fix) from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{p}: header is not a JSON object", fix)
    data_start = 8 + n
    meta = header.pop("__metadata__", None) or {}
    entries: dict[str, TensorEntry] = {}
    spans: list[tuple[int, int, str]] = []
    for name, info in header.items():
        try:
            dtype, shape, (b, e) = info["dtype"], tuple(int(d) for d in info["shape"]), info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"{p}: tensor {name!r} has a malformed header entry", fix) from None
        if dtype not in DTYPE_SIZE:
            raise CheckpointError(f"{p}: tensor {name!r} has unknown dtype {dtype!r}", fix)
        numel = 1
        for d in shape:
            numel *= d
        want = int(numel * DTYPE_SIZE[dtype])
        if e - b != want or b < 0:
            raise CheckpointError(f"{p}: tensor {name!r} {dtype}{list(shape)} needs {want} bytes but its offsets "
                                  f"span {e - b}", fix)
        if data_start + e > size:
            raise CheckpointError(f"{p}: tensor {name!r} ends at byte {data_start + e} but the file has {size} "
                                  "(truncated)", fix)
        entries[name] = TensorEntry(name, dtype, shape, data_start + b, data_start + e, p.name)
        spans.append((b, e, name))
    spans.sort()
    for (b0, e0, n0), (b1, _e1, n1) in zip(spans, spans[1:]):
        if b1 < e0:
            raise CheckpointError(f"{p}: tensors {n0!r} and {n1!r} overlap", fix)
    return ShardHeader(p, entries, {str(k): str(v) for k, v in meta.items()}, data_start, size)


def read_index(model_dir: str | Path) -> dict[str, Any] | None:
    """The parsed ``model.safetensors.index.json``, or None when the directory has none (a single-file model)."""
    p = Path(model_dir) / INDEX_FILE
    if not p.exists():
        return None
    try:
        idx = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{p}: invalid JSON at line {e.lineno}: {e.msg}", "regenerate the index") from None
    if not isinstance(idx, dict) or not isinstance(idx.get("weight_map"), dict):
        raise CheckpointError(f"{p}: no 'weight_map' object", "regenerate the index")
    return idx


def shard_files(model_dir: str | Path) -> list[Path]:
    """Every ``*.safetensors`` file in the directory (TensorRT-LLM loads all of them, indexed or not)."""
    return sorted(Path(model_dir).glob("*.safetensors"), key=_natural_key)


def _natural_key(p: Path) -> tuple[Any, ...]:
    import re

    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", p.name))


def tensor_locations(model_dir: str | Path) -> dict[str, TensorEntry]:
    """name → TensorEntry for every tensor in every shard of the directory (headers only).

    Duplicate names across shards raise CheckpointError: a loader would pick one at random.
    """
    out: dict[str, TensorEntry] = {}
    for f in shard_files(model_dir):
        for name, entry in read_header(f).tensors.items():
            if name in out:
                raise CheckpointError(f"tensor {name!r} is in both {out[name].file} and {f.name}",
                                      "remove the stray shard")
            out[name] = entry
    return out


def layout(tensors: Iterable[tuple[str, str, tuple[int, ...]]], metadata: dict[str, str] | None = None
           ) -> tuple[bytes, dict[str, tuple[int, int]]]:
    """Header bytes (length prefix included) and name → absolute (begin, end) for tensors laid out in order."""
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    offset = 0
    rel: dict[str, tuple[int, int]] = {}
    for name, dtype, shape in tensors:
        numel = 1
        for d in shape:
            numel *= d
        nbytes = int(numel * DTYPE_SIZE[dtype])
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        rel[name] = (offset, offset + nbytes)
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % ALIGN)  # the data region starts 8-byte aligned, as safetensors writes it
    start = 8 + len(blob)
    return struct.pack("<Q", len(blob)) + blob, {n: (start + b, start + e) for n, (b, e) in rel.items()}


class ShardWriter:
    """Write one safetensors shard tensor by tensor, under a temporary name, then rename it into place.

    Example::

        with ShardWriter(out / "model-1-of-2.safetensors", [(name, "BF16", (4, 4))]) as w:
            w.write(name, tensor_bytes)
        # the file exists under its final name only if every tensor was written and the block exited cleanly
    """

    def __init__(self, path: str | Path, tensors: list[tuple[str, str, tuple[int, ...]]],
                 metadata: dict[str, str] | None = None) -> None:
        self.path = Path(path)
        self.tmp = self.path.with_name(f".{self.path.name}.partial")
        header, self.offsets = layout(tensors, metadata if metadata is not None else {"format": "pt"})
        self.size = max((e for _b, e in self.offsets.values()), default=len(header))
        self.pending = set(self.offsets)
        self._f = open(self.tmp, "wb")
        self._f.write(header)

    def write(self, name: str, data: bytes | memoryview) -> None:
        b, e = self.offsets[name]
        if len(data) != e - b:
            raise CheckpointError(f"{self.path.name}: tensor {name!r} got {len(data)} bytes, expected {e - b}")
        self._f.seek(b)
        self._f.write(data)
        self.pending.discard(name)

    def commit(self, sparse: bool = False) -> Path:
        """Finish the file and rename it into place. ``sparse`` allows unwritten tensors (left as holes)."""
        if self.pending and not sparse:
            raise CheckpointError(f"{self.path.name}: {len(self.pending)} tensors were never written "
                                  f"(first: {sorted(self.pending)[0]})")
        self._f.truncate(self.size)
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        if not self._f.closed:
            self._f.close()
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None:
            self.abort()
        elif not self._f.closed:
            self.commit()


def write_json_atomic(path: str | Path, obj: Any, indent: int | None = 2) -> None:
    """Write JSON to a temporary name, fsync, and rename into place."""
    p = Path(path)
    tmp = p.with_name(f".{p.name}.partial")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=indent)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, p)
