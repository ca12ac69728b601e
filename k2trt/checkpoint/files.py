"""Safetensors shards and the index, read from headers only; shards written one tensor at a time; whole files
copied, linked and hashed.

A safetensors file is ``u64 little-endian header length N`` + ``N bytes of JSON`` + the data region; the JSON maps
each tensor name to ``{"dtype", "shape", "data_offsets": [begin, end]}`` relative to the data region, plus an optional
``__metadata__`` of strings. Reading only the header lets inspect and plan handle the 1 TB K2 in seconds.

Writing uses ``ShardWriter``: the header is laid out up front from the tensor list, the file is created under a
temporary name (``fsio.partial_name``), the tensors' bytes are appended in layout order as they are produced (so a
converter never holds a whole shard in memory), hashed on the way when asked (``FILE_HASH``), and ``commit()`` fsyncs
and renames into place with the guarantees of ``k2trt.fsio``. ``commit(sparse=True)`` leaves the data region as a
file hole — a faithful 1 TB layout that costs almost no disk. ``copy_file`` moves whole files with
``copy_file_range`` (the kernel copies; what ``cp`` does) unless the bytes must pass through for a hash. No torch
here.

Every source file is opened through ``open_regular``: links are followed (a Hugging Face cache snapshot is relative
symlinks into ``../../blobs/``) and anything but a regular file (a FIFO, a device, a directory named like a shard) is
refused in one line instead of blocking the reader.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import functools
import json
import os
import queue
import stat
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import blake3

from k2trt.checkpoint.names import INDEX_FILE
from k2trt.errors import CheckpointError
from k2trt.fsio import fsync_dir, partial_name
from k2trt.spec import DTYPE_BYTES as DTYPE_SIZE

FILE_HASH = "blake3"
"""The hash the manifest records per output file (``b3sum FILE`` prints the same hex). BLAKE3 rather than sha256:
as strong, and 4.6× faster on one core here (5.5 against 1.2 GB/s, 256 MiB in 8 MiB updates; AVX-512), which a
re-encoding stream feels — it hashes every output byte while both cores compute (``bench_convert.py --repeat 3``,
2 cores, small/large: FP8 → W4A8 0.45/0.53 → 0.64/0.60× cp, FP8 → NVFP4 0.41/0.48 → 0.61/0.49× cp)."""
_new_hash = blake3.blake3
"""A fresh ``FILE_HASH`` state: every hash the manifest records starts here."""
CHUNK = 16 * 2**20
"""Read size for copying through user space: large enough to stream at disk speed."""
HASH_CHUNK = 2**20
"""Read size for hashing a file: a buffer that stays in cache while the hash reads it, reused for the whole file.
Against 16 MiB: 5 % less CPU per file hashed, and no 16 MiB of fresh pages to fault in per file — a new process's
first hashes paid that (65 MB file: 0.10 s of CPU against 0.06), which made a hashed copy of a 247 MB checkpoint
take 0.33 s of streaming in a fresh process against 0.25 s later in the same one."""
WRITEBACK = 8 * 2**20
"""Bytes a writer appends before it asks the kernel to start writing them to disk (``start_writeback``)."""
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


def open_regular(path: str | Path) -> int:
    """A read-only descriptor of ``path`` (links followed) that is certainly a regular file.

    The open itself never blocks: ``O_NONBLOCK`` makes a FIFO open at once (a plain open waits for a writer
    forever), and ``fstat`` of what was opened — not a ``stat`` before, which a rename could outrun — decides.

    Args:
        path: the file to read.
    Returns:
        An open descriptor (blocking mode restored); the caller closes it. CheckpointError (one line) when the file
        is missing or unreadable or is not a regular file.
    Example: ``fd = open_regular(d / "model-1-of-4.safetensors")``
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror})",
                              "check the file exists and is readable; a dangling link points at a missing blob"
                              ) from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise CheckpointError(f"{path}: is {_file_kind(mode)}, not a regular file",
                              "replace it with the real file (k2trt never reads pipes or devices as shards)")
    os.set_blocking(fd, True)
    return fd


def _file_kind(mode: int) -> str:
    for test, kind in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return "a special file"


def read_header(path: str | Path) -> ShardHeader:
    """Parse and validate a safetensors header without touching tensor data.

    Raises CheckpointError (one line naming the file and the fix) for: a path that is not a regular file (links are
    followed), a file shorter than its header, a header length past the end of the file, invalid JSON, entries of
    the wrong JSON types (the format's: ``dtype`` a string, ``shape`` and ``data_offsets`` lists of non-negative
    integers, ``__metadata__`` an object of strings), unknown dtypes, offsets that do not match shape × dtype,
    overlapping tensors, and data that runs past the end of the file (a truncated download).
    """
    p = Path(path)
    fix = "re-download or re-convert this shard"
    fd = open_regular(p)
    try:
        with os.fdopen(fd, "rb") as f:
            size = os.fstat(f.fileno()).st_size
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
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise CheckpointError(f"{p}: header is not valid JSON ({str(e).splitlines()[0]})", fix) from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{p}: header is not a JSON object", fix)
    data_start = 8 + n
    meta = header.pop("__metadata__", None)
    meta = {} if meta is None else meta
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise CheckpointError(f"{p}: __metadata__ is {_json_type(meta)}, not an object of strings", fix)
    entries: dict[str, TensorEntry] = {}
    spans: list[tuple[int, int, str]] = []
    for name, info in header.items():
        dtype, shape, (b, e) = _entry_fields(p, name, info, fix)
        numel = 1
        for d in shape:
            numel *= d
        want = int(numel * DTYPE_SIZE[dtype])
        if e - b != want:
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
    return ShardHeader(p, entries, dict(meta), data_start, size)


def _entry_fields(p: Path, name: str, info: Any, fix: str) -> tuple[str, tuple[int, ...], tuple[int, int]]:
    """``(dtype, shape, (begin, end))`` of one header entry, each of the JSON type the format prescribes."""
    def bad(what: str) -> CheckpointError:
        return CheckpointError(f"{p}: tensor {name!r} has a malformed header entry ({what})", fix)

    if not isinstance(info, dict):
        raise bad(f"{_json_type(info)} instead of an object")
    if not {"dtype", "shape", "data_offsets"} <= info.keys():
        raise bad("needs dtype, shape and data_offsets")
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(dtype, str):
        raise bad(f"dtype is {_json_type(dtype)}, not a string")
    if dtype not in DTYPE_SIZE:
        raise CheckpointError(f"{p}: tensor {name!r} has unknown dtype {dtype[:40]!r}", fix)
    if not _naturals(shape):
        raise bad("shape is not a list of non-negative integers")
    if not _naturals(offsets) or len(offsets) != 2 or offsets[0] > offsets[1]:
        raise bad("data_offsets is not two non-negative integers begin <= end")
    return dtype, tuple(shape), (offsets[0], offsets[1])


def _naturals(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in v)


def _json_type(v: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "a number",
            float: "a number", type(None): "null"}.get(type(v), type(v).__name__)


def read_index(model_dir: str | Path) -> dict[str, Any] | None:
    """The parsed ``model.safetensors.index.json``, or None when the directory has none (a single-file model)."""
    p = Path(model_dir) / INDEX_FILE
    if not p.exists():
        return None
    try:
        with os.fdopen(open_regular(p), "rb") as f:
            idx = json.loads(f.read())
    except OSError as e:
        raise CheckpointError(f"{p}: cannot read ({e.strerror})") from None
    except (UnicodeDecodeError, RecursionError):
        raise CheckpointError(f"{p}: not valid JSON", "regenerate the index") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{p}: invalid JSON at line {e.lineno}: {e.msg}", "regenerate the index") from None
    if not isinstance(idx, dict) or not isinstance(idx.get("weight_map"), dict):
        raise CheckpointError(f"{p}: no 'weight_map' object", "regenerate the index")
    if not all(isinstance(v, str) for v in idx["weight_map"].values()):
        raise CheckpointError(f"{p}: 'weight_map' maps a tensor to something other than a file name",
                              "regenerate the index")
    if not isinstance(idx.get("metadata", {}), dict):
        raise CheckpointError(f"{p}: 'metadata' is not an object", "regenerate the index")
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
    """Write one safetensors shard tensor by tensor, in layout order, under a temporary name; ``commit`` renames it.

    Example::

        with ShardWriter(out / "model-1-of-2.safetensors", [(name, "BF16", (4, 4))], hashing=True) as w:
            w.write(name, tensor_bytes)
        w.digest  # FILE_HASH of the whole file, when hashing
        # the file exists under its final name only if every tensor was written and the block exited cleanly

    A failed write (disk full, file too large) raises CheckpointError naming the file and the tensor; the temporary
    file is removed and nothing appears under the final name. ``preallocate`` reserves the file's extent first
    (off for sparse files, whose data region stays a hole).
    """

    def __init__(self, path: str | Path, tensors: list[tuple[str, str, tuple[int, ...]]],
                 metadata: dict[str, str] | None = None, *, hashing: bool = False, preallocate: bool = True) -> None:
        self.path = Path(path)
        header, self.offsets = layout(tensors, metadata if metadata is not None else {"format": "pt"})
        self.size = max((e for _b, e in self.offsets.values()), default=len(header))
        self._hasher = _Hasher() if hashing else None
        self._digest: str | None = None
        self._pending = set(self.offsets)
        self._ends = sorted((e, n) for n, (_b, e) in self.offsets.items())
        self._next = 0  # first entry of _ends not yet complete
        self.tmp = partial_name(self.path)
        self._flushed = False
        self._written = 0  # bytes handed to start_writeback
        self._fd: int | None = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        if preallocate and self.size:
            try:  # one extent up front: appends then skip the filesystem's per-write allocation (measured ~2×)
                os.posix_fallocate(self._fd, 0, self.size)
            except OSError:
                pass  # not supported, or no room: the writes report it, naming the tensor
        self.pos = 0
        self.append(header)

    @property
    def digest(self) -> str | None:
        """The file's ``FILE_HASH`` (hex), if hashing, once committed."""
        return self._digest

    def append(self, data: bytes | bytearray | memoryview) -> None:
        """Append bytes at the current position (the next bytes of the layout)."""
        mv = memoryview(data).cast("B")
        try:
            done = 0
            while done < len(mv):  # a write to a file may be short
                done += os.write(self._fd, mv[done:])  # type: ignore[arg-type]
        except OSError as err:
            raise write_error(self.path, err, self._tensor_at(self.pos + done)) from None
        if self._hasher is not None:
            self._hasher.update(mv)
        self.pos += len(mv)
        self._advance()
        self._writeback()

    def _writeback(self) -> None:
        if self.pos - self._written >= WRITEBACK:
            start_writeback(self._fd, self._written, self.pos - self._written)  # type: ignore[arg-type]
            self._written = self.pos

    def copy_range(self, src_fd: int, offset: int, n: int) -> None:
        """Append ``n`` bytes of another file from ``offset``: copied by the kernel unless hashing needs them."""
        if self._hasher is None and n:
            try:
                _kernel_copy(src_fd, self._fd, offset, n)  # type: ignore[arg-type]
            except OSError as err:
                raise write_error(self.path, err, self._tensor_at(self.pos)) from None
            self.pos += n
            os.lseek(self._fd, self.pos, os.SEEK_SET)  # type: ignore[arg-type]
            self._advance()
            self._writeback()
            return
        buf = bytearray(min(CHUNK, n))
        mv = memoryview(buf)
        done = 0
        while done < n:
            k = os.preadv(src_fd, [mv[: min(CHUNK, n - done)]], offset + done)
            if k == 0:
                raise CheckpointError(f"source ended {n - done} bytes early while copying "
                                      f"{self._tensor_at(self.pos)}",
                                      "the source changed during the conversion; run it again")
            self.append(mv[:k])
            done += k

    def _advance(self) -> None:
        """Mark the tensors that appended bytes have completed."""
        while self._next < len(self._ends) and self._ends[self._next][0] <= self.pos:
            self._pending.discard(self._ends[self._next][1])
            self._next += 1

    def _tensor_at(self, pos: int) -> str:
        name = next((n for n, (b, e) in self.offsets.items() if b <= pos < e), None)
        return f"tensor {name}" if name else "the header"

    def write(self, name: str, data: bytes | bytearray | memoryview) -> None:
        """Write tensor ``name``: appended when it is the next one in the layout, else at its offset (without a
        hash, which needs the bytes in order)."""
        b, e = self.offsets[name]
        mv = memoryview(data).cast("B")
        if len(mv) != e - b:
            raise CheckpointError(f"{self.path.name}: tensor {name!r} got {len(mv)} bytes, expected {e - b}")
        if b == self.pos:
            self.append(mv)
            return
        if self._hasher is not None:
            raise CheckpointError(f"{self.path.name}: tensor {name!r} written out of order while hashing")
        try:
            done = 0
            while done < len(mv):
                done += os.pwrite(self._fd, mv[done:], b + done)  # type: ignore[arg-type]
        except OSError as err:
            raise write_error(self.path, err, f"tensor {name}") from None
        self._pending.discard(name)

    def flush(self, sparse: bool = False) -> None:
        """Finish the temporary file: check every tensor was written (``sparse`` allows holes), take the hash, and
        put the bytes on disk. ``commit`` does this itself when it was not called; calling it first, on the thread
        that wrote, keeps the wait for the disk off a caller that commits files in order."""
        if self._flushed:
            return
        if self._pending and not sparse:
            first = min(self._pending, key=lambda n: self.offsets[n][0])
            raise CheckpointError(f"{self.path.name}: {len(self._pending)} tensors were never written "
                                  f"(first: {first})")
        assert self._fd is not None
        if self._hasher is not None:
            self._digest = self._hasher.hexdigest()
        try:
            os.ftruncate(self._fd, self.size)
            os.fsync(self._fd)
        except OSError as err:
            self.abort()
            raise write_error(self.path, err) from None
        self._flushed = True

    def commit(self, sparse: bool = False) -> Path:
        """Finish the file (``flush``) and rename it into place. ``sparse`` allows unwritten tensors (left as
        holes)."""
        self.flush(sparse)
        fd, self._fd = self._fd, None
        assert fd is not None
        os.close(fd)
        os.replace(self.tmp, self.path)
        fsync_dir(self.path.parent)
        return self.path

    def abort(self) -> None:
        """Remove the temporary file (after an error)."""
        if self._hasher is not None:
            self._hasher.hexdigest()  # stops its thread
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None:
            self.abort()
        elif self._fd is not None:
            self.commit()


class _Hasher:
    """``FILE_HASH`` of a byte stream on its own thread, so hashing overlaps the writes (blake3 releases the GIL; the
    writes wait on the disk). Buffers must not change after ``update``: the converter hands over fresh ones."""

    def __init__(self) -> None:
        self._hasher = _new_hash()
        self._q: queue.Queue[Any] = queue.Queue(maxsize=4)  # bounds the bytes waiting for the hash
        self._t = threading.Thread(target=self._run, name="k2trt-hash", daemon=True)
        self._t.start()
        self._hex: str | None = None

    def _run(self) -> None:
        while (b := self._q.get()) is not None:
            self._hasher.update(b)

    def update(self, data: memoryview) -> None:
        self._q.put(data)

    def hexdigest(self) -> str:
        if self._hex is None:
            self._q.put(None)
            self._t.join()
            self._hex = self._hasher.hexdigest()
        return self._hex


def write_error(path: Path, err: OSError, what: str = "") -> CheckpointError:
    """One line for a failed write: the file (and tensor), the OS reason, and what to do."""
    full = err.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
    fix = ("free space on DST's filesystem (or raise the file-size limit) and run the same command again: finished "
           "shards are kept and the conversion resumes" if full else "fix the cause and run the same command again "
           "to resume")
    return CheckpointError(f"{path}: writing {what + ' ' if what else ''}failed: {err.strerror or err}", fix)


def _kernel_copy(src_fd: int, dst_fd: int, offset: int, n: int) -> None:
    """Copy ``n`` bytes from ``src_fd`` at ``offset`` to ``dst_fd``'s position without passing through user space:
    ``copy_file_range`` (what ``cp`` uses), else ``sendfile``."""
    done = 0
    pos = os.lseek(dst_fd, 0, os.SEEK_CUR)
    while done < n:
        try:
            k = os.copy_file_range(src_fd, dst_fd, n - done, offset + done, pos + done)
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                raise
            os.lseek(dst_fd, pos + done, os.SEEK_SET)
            while done < n:
                k = os.sendfile(dst_fd, src_fd, offset + done, n - done)
                if k == 0:
                    raise OSError(errno.EIO, "source ended early") from None
                done += k
            return
        if k == 0:
            raise OSError(errno.EIO, "source ended early")
        done += k


@functools.cache
def libc() -> ctypes.CDLL | None:
    """The C library, for the calls Python's ``os`` lacks (None where it cannot be loaded)."""
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name, use_errno=True) if name else None
    except OSError:
        return None


@functools.cache
def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """libc's ``sync_file_range`` (Linux), or None."""
    fn = getattr(libc(), "sync_file_range", None)
    if fn is None:
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn  # type: ignore[no-any-return]


def start_writeback(fd: int, offset: int, n: int) -> None:
    """Ask the kernel to start writing ``n`` bytes of ``fd`` from ``offset`` to disk, without waiting
    (``SYNC_FILE_RANGE_WRITE``). A writer that does this as it goes finds little left for its final ``fsync``: the
    disk works while the converter computes (measured: the fsyncs of a 1 GiB INT4 → FP8 conversion waited 0.9 s in
    all without it). A hint only: where the call is missing or fails, ``fsync`` still writes everything."""
    fn = _sync_file_range()
    if fn is not None and n > 0:
        fn(fd, offset, n, 2)  # SYNC_FILE_RANGE_WRITE


def hash_file(path: str | Path, chunk: int = HASH_CHUNK) -> str:
    """``FILE_HASH`` of a file (hex), read in chunks (blake3 releases the GIL, so several files hash in parallel)."""
    h = _new_hash()
    buf = bytearray(chunk)
    mv = memoryview(buf)
    with os.fdopen(open_regular(path), "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(mv[:n])
    return h.hexdigest()


def copy_file(src: Path, dst: Path, *, hashing: bool, on_bytes: Callable[[int], None] | None = None) -> str | None:
    """Copy ``src`` to ``dst`` atomically (temporary name, fsync, rename, directory fsync); return its hash.

    The kernel copies the bytes (``copy_file_range``, what ``cp`` does: no pass through user space). With
    ``hashing``, a second thread reads ``src`` (from the page cache the copy fills) and hashes it meanwhile, so a
    hashed copy costs one read and the hash on top of ``cp``. ``on_bytes(n)`` reports progress. On any error the
    temporary file is removed and nothing appears under ``dst``; None is returned without ``hashing``.
    """
    tmp = partial_name(dst)
    result: list[Any] = []
    hasher = threading.Thread(target=lambda: result.append(_hash_or_error(src)), name="k2trt-hash",
                              daemon=True) if hashing else None
    try:
        with os.fdopen(open_regular(src), "rb", buffering=0) as fi, open(tmp, "xb", buffering=0) as fo:
            if hasher is not None:
                hasher.start()
            size = os.fstat(fi.fileno()).st_size
            for off in range(0, size, WRITEBACK):
                n = min(WRITEBACK, size - off)
                _kernel_copy(fi.fileno(), fo.fileno(), off, n)
                os.lseek(fo.fileno(), off + n, os.SEEK_SET)
                start_writeback(fo.fileno(), off, n)
                if on_bytes is not None:
                    on_bytes(n)
            os.fsync(fo.fileno())
        if hasher is not None:
            hasher.join()
            if isinstance(result[0], BaseException):
                raise result[0]
        os.replace(tmp, dst)
    except BaseException:
        if hasher is not None and hasher.ident is not None:
            hasher.join()
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(dst.parent)
    return result[0] if hashing else None


def _hash_or_error(path: Path) -> str | BaseException:
    try:
        return hash_file(path)
    except BaseException as e:  # re-raised by the copying thread
        return e


def link_file(src: Path, dst: Path) -> bool:
    """Hard-link the file ``src`` names as ``dst`` (atomically, via a temporary name). False when the filesystem
    cannot.

    ``src`` is resolved first (``os.path.realpath``): linking a symlink itself would copy the link, and a Hugging
    Face cache snapshot's relative link (``../../blobs/…``) dangles anywhere else. What appears under ``dst`` is
    checked to be a regular file before it gets its final name. CheckpointError when ``src`` is not a regular file.
    """
    real = Path(os.path.realpath(src))
    os.close(open_regular(real))  # refuses a dangling link, a FIFO, a directory
    tmp = partial_name(dst)
    try:
        os.link(real, tmp, follow_symlinks=False)
    except OSError:
        return False  # EXDEV (another filesystem), EPERM (no hard links here): the caller copies instead
    try:
        if not stat.S_ISREG(os.lstat(tmp).st_mode):  # swapped for something else since the check: never keep it
            raise CheckpointError(f"{src}: changed into {_file_kind(os.lstat(tmp).st_mode)} while being linked",
                                  "run the same command again")
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(dst.parent)
    return True
