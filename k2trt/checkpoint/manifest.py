"""Conversion bookkeeping and file IO: the manifest, atomic copy/link, hashing, positional reads, in-order hashed
shard writes, the ordered worker pipeline, and ``verify_output``.

The manifest records what ``k2trt convert`` wrote, from what, and which files are finished.

``k2trt-manifest.json`` sits in the output directory. It records the k2trt version, the target, the source
directory, a digest of the whole conversion plan (target, options, resolved config, source file names, sizes and
mtimes) and, per finished file, its size, sha256 (unless hashing was turned off) and how it was made
(``link``/``copy``/``rewrite``/``write``). It is rewritten atomically after every finished shard, so a run that is
killed resumes where it stopped: a shard listed here whose size (and hash) still match is skipped, anything else is
redone. The manifest holds no timestamps, so an interrupted-and-resumed run ends byte-identical to an
uninterrupted one, manifest included.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

from k2trt.checkpoint.files import ShardWriter, TensorEntry, layout, write_json_atomic
from k2trt.errors import CheckpointError

if TYPE_CHECKING:
    import torch

    from k2trt.checkpoint.convert import Plan

MANIFEST_FILE = "k2trt-manifest.json"
FORMAT = "k2trt-convert-manifest/1"
CHUNK = 16 * 2**20  # read size for hashing and copying: large enough to stream at disk speed


@dataclass(frozen=True)
class FileRecord:
    """One finished output file."""

    size: int
    sha256: str | None = None
    how: str = "write"
    """``link`` (hard link to the source shard), ``copy``, ``rewrite`` (tensors converted) or ``write``."""
    source: str | None = None
    """The source file it came from, if any."""


@dataclass
class Manifest:
    """The state of one conversion into one output directory."""

    target: str
    source: str
    plan_digest: str
    k2trt_version: str
    options: dict[str, Any] = field(default_factory=dict)
    complete: bool = False
    files: dict[str, FileRecord] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "k2trt_version": self.k2trt_version, "target": self.target,
                "source": self.source, "options": dict(sorted(self.options.items())),
                "plan_digest": self.plan_digest, "complete": self.complete,
                "files": {k: {kk: vv for kk, vv in asdict(v).items() if vv is not None}
                          for k, v in sorted(self.files.items())}}

    def save(self, out_dir: str | Path) -> None:
        """Write atomically (temporary name, fsync, rename)."""
        write_json_atomic(Path(out_dir) / MANIFEST_FILE, self.to_dict())

    @classmethod
    def load(cls, out_dir: str | Path) -> "Manifest | None":
        """The manifest in ``out_dir``, or None when there is none or it is not one of ours."""
        p = Path(out_dir) / MANIFEST_FILE
        try:
            d = json.loads(p.read_text())
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, UnicodeDecodeError, OSError):
            return None
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            return None
        try:
            recs = {k: FileRecord(**v) for k, v in d.get("files", {}).items()}
            return cls(d["target"], d["source"], d["plan_digest"], d["k2trt_version"], d.get("options", {}),
                       bool(d.get("complete")), recs)
        except (KeyError, TypeError):
            return None


def write_error(path: Path, err: OSError, what: str = "") -> CheckpointError:
    """One line for a failed write: the file (and tensor), the OS reason, and what to do."""
    import errno

    full = err.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
    fix = ("free space on DST's filesystem (or raise the file-size limit) and run the same command again: finished "
           "shards are kept and the conversion resumes" if full else "fix the cause and run the same command again "
           "to resume")
    return CheckpointError(f"{path}: writing {what + ' ' if what else ''}failed: {err.strerror or err}", fix)


def digest(obj: Any) -> str:
    """A stable sha256 of a JSON-able object (sorted keys)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def sha256_file(path: str | Path, chunk: int = CHUNK) -> str:
    """sha256 of a file, read in chunks (hashlib releases the GIL, so several files hash in parallel)."""
    h = hashlib.sha256()
    buf = bytearray(chunk)
    mv = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(mv[:n])
    return h.hexdigest()


def file_matches(path: Path, rec: FileRecord, check_hash: bool) -> bool:
    """Whether a finished file still is what the manifest says (size, and sha256 when recorded and asked)."""
    try:
        if path.stat().st_size != rec.size:
            return False
    except FileNotFoundError:
        return False
    if check_hash and rec.sha256 is not None:
        return sha256_file(path) == rec.sha256
    return True


def copy_file(src: Path, dst: Path, *, hashing: bool, on_bytes: Any = None) -> str | None:
    """Copy ``src`` to ``dst`` in chunks under a temporary name, fsync, rename; return the sha256 (or None).

    ``on_bytes(n)`` is called as bytes are copied (progress). On any error the temporary file is removed and
    nothing appears under ``dst``.
    """
    tmp = dst.with_name(f".{dst.name}.partial")
    h = hashlib.sha256() if hashing else None
    buf = bytearray(CHUNK)
    mv = memoryview(buf)
    try:
        with open(src, "rb", buffering=0) as fi, open(tmp, "wb", buffering=0) as fo:
            while n := fi.readinto(buf):
                view = mv[:n]
                while view:  # a raw write may be short
                    w = fo.write(view)
                    view = view[w:]
                if h is not None:
                    h.update(mv[:n])
                if on_bytes is not None:
                    on_bytes(n)
            os.fsync(fo.fileno())
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return h.hexdigest() if h is not None else None


def link_file(src: Path, dst: Path) -> bool:
    """Hard-link ``src`` as ``dst`` (atomically, via a temporary name). False when the filesystem cannot."""
    tmp = dst.with_name(f".{dst.name}.partial")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        return False  # EXDEV (another filesystem), EPERM (no hard links here): the caller copies instead
    try:
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return True


def require_empty_or_ours(out_dir: Path, plan_digest: str) -> Manifest | None:
    """The resumable manifest of ``out_dir`` if it holds this same conversion, None if the directory is empty or
    absent; CheckpointError if it holds anything else."""
    if not out_dir.exists():
        return None
    if not out_dir.is_dir():
        raise CheckpointError(f"{out_dir} exists and is not a directory", "choose another DST")
    man = Manifest.load(out_dir)
    if man is not None and man.plan_digest == plan_digest:
        return man
    if any(out_dir.iterdir()):
        what = ("a different conversion (other source, target, options or k2trt version)" if man is not None
                else "files that k2trt did not write")
        raise CheckpointError(f"{out_dir} is not empty: it holds {what}",
                              "pass --force to replace its contents, or choose an empty DST")
    return None


# ---- reading source tensors and writing hashed shards ---------------------------------------------------------

_TORCH_DTYPES = {"F8_E4M3": "float8_e4m3fn", "BF16": "bfloat16", "F16": "float16", "F32": "float32"}


class SourceReader:
    """Positional reads of the source shards (``os.pread`` is thread-safe and maps nothing into memory)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._fds: dict[str, int] = {}
        self._lock = threading.Lock()

    def read(self, fname: str, offset: int, n: int) -> bytearray:
        with self._lock:
            fd = self._fds.get(fname)
            if fd is None:
                fd = self._fds[fname] = os.open(self.root / fname, os.O_RDONLY)
        buf = bytearray(n)
        mv, got = memoryview(buf), 0
        while got < n:
            k = os.preadv(fd, [mv[got:]], offset + got)
            if k == 0:
                raise CheckpointError(f"{self.root / fname}: ends at byte {offset + got}, expected {offset + n} "
                                      "(truncated while converting)", "re-download this shard")
            got += k
        return buf

    def tensor(self, e: TensorEntry, r0: int = 0, r1: int | None = None) -> "torch.Tensor":
        """Rows ``r0:r1`` of a tensor (all of it by default) as a torch tensor of its dtype."""
        import torch

        rows = e.shape[0] if e.shape else 1
        r1 = rows if r1 is None else r1
        row_bytes = e.nbytes // rows if rows else 0
        buf = self.read(e.file, e.begin + r0 * row_bytes, (r1 - r0) * row_bytes)
        t = torch.frombuffer(buf, dtype=torch.uint8) if buf else torch.empty(0, dtype=torch.uint8)
        return t.view(getattr(torch, _TORCH_DTYPES[e.dtype])).reshape((r1 - r0, *e.shape[1:]) if e.shape else ())

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()




class HashingShardWriter(ShardWriter):
    """A ShardWriter fed strictly in layout order, hashing the file bytes as they are written."""

    def __init__(self, path: Path, tensors: list[tuple[str, str, tuple[int, ...]]], metadata: dict[str, str],
                 hashing: bool) -> None:
        header, _ = layout(tensors, metadata)
        super().__init__(path, tensors, metadata)
        self._pos = len(header)
        self.sha = hashlib.sha256(header) if hashing else None

    def put(self, name: str, data: bytes | memoryview) -> None:
        b, e = self.offsets[name]
        if not b <= self._pos <= e - len(data):
            raise RuntimeError(f"{name}: out-of-order write at {self._pos} (tensor spans {b}..{e})")
        try:
            self._f.write(data)
        except OSError as err:
            raise write_error(self.path, err, f"tensor {name}") from None
        if self.sha is not None:
            self.sha.update(data)
        self._pos += len(data)
        if self._pos == e:
            self.pending.discard(name)

    def abort(self) -> None:
        try:
            super().abort()
        except OSError:  # closing flushes the buffer, which fails again on a full disk
            pass
        self.tmp.unlink(missing_ok=True)




@contextmanager
def single_threaded_torch() -> Iterator[None]:
    """One torch intra-op thread while our pool runs (restored afterwards): the pool's ``--workers`` threads are the
    parallelism. torch's intra-op threads on top cost far more than they give on these element-wise ops (measured
    on 2 busy cores: a 256×256 dequantisation takes 20 ms with 2 intra-op threads, 2 ms with 1; bench_convert.py
    shows the end-to-end effect)."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def stream_copy(io: SourceReader, e: TensorEntry, w: HashingShardWriter, tick: Callable[[int], None]) -> None:
    for off in range(0, e.nbytes, CHUNK):
        n = min(CHUNK, e.nbytes - off)
        w.put(e.name, io.read(e.file, e.begin + off, n))
        tick(n)
    if e.nbytes == 0:
        w.put(e.name, b"")


def ordered(pool: ThreadPoolExecutor, items: Iterable[Any], fn: Callable[[Any], Any] | None,
             needs: Callable[[Any], bool], window: int) -> Iterator[tuple[Any, Any]]:
    """Yield ``(item, fn(item) or None)`` in input order while up to ``window`` items compute in the pool."""
    q: deque[tuple[Any, Future[Any] | None]] = deque()
    try:
        for it in items:
            q.append((it, pool.submit(fn, it) if fn is not None and needs(it) else None))
            while len(q) > window:
                it0, fut = q.popleft()
                yield it0, fut.result() if fut is not None else None
        while q:
            it0, fut = q.popleft()
            yield it0, fut.result() if fut is not None else None
    finally:
        for _it, fut in q:
            if fut is not None:
                fut.cancel()


# ---- verification -----------------------------------------------------------------------------------------------

def verify_output(plan: "Plan", *, progress: bool = False) -> dict[str, Any]:
    """Re-read every output tensor of a finished conversion and check it against the source.

    Copied tensors (and every ``trtllm`` shard) must match byte for byte; ``bf16`` weights must equal
    ``fp8.dequantize(source weight, scale)`` and ``fp8-block`` weights and scales ``fp8.quantize(source)``, both
    computed on the whole tensor — a different path from the converter's 128-row chunks. Every file's sha256 is
    checked against the manifest, and the index against the plan. Raises CheckpointError on the first mismatch.
    Returns counts: tensors, bytes, files hashed.
    """
    import time

    from tqdm import tqdm

    t0 = time.monotonic()
    man = Manifest.load(plan.dst)
    if man is None or not man.complete or man.plan_digest != plan.digest():
        raise CheckpointError(f"{plan.dst}: holds no finished conversion of {plan.src} to {plan.options.target}",
                              "run the conversion (without --dry-run) first")
    for name, rec in sorted(man.files.items()):
        if not file_matches(plan.dst / name, rec, check_hash=False):
            raise CheckpointError(f"{plan.dst / name}: size differs from the manifest",
                                  "the output was changed after conversion; convert again with --force")
    from k2trt.checkpoint.files import read_index

    idx = read_index(plan.dst)
    if idx is None or idx["weight_map"] != plan.weight_map:
        raise CheckpointError(f"{plan.dst}: the index does not match the converted shards",
                              "convert again with --force")
    src, out = SourceReader(plan.src), SourceReader(plan.dst)
    bar = tqdm(total=plan.out_bytes, unit="B", unit_scale=True, unit_divisor=1024, desc="verify",
               disable=not progress)
    lock = threading.Lock()
    try:
        def one(sp: Any) -> int:
            n = _verify_shard(plan, man, sp, src, out)
            with lock:
                bar.update(sp.out_size)
            return n

        with ThreadPoolExecutor(max(1, plan.options.workers)) as pool, \
                single_threaded_torch():
            counts = list(pool.map(one, plan.shards))
        hashed = 0
        for name, rec in sorted(man.files.items()):  # the small files; shards were hashed above
            if rec.sha256 is not None and name not in {sp.name for sp in plan.shards}:
                if sha256_file(plan.dst / name) != rec.sha256:
                    raise CheckpointError(f"{plan.dst / name}: sha256 differs from the manifest",
                                          "convert again with --force")
                hashed += 1
    finally:
        bar.close()
        src.close()
        out.close()
    hashed += sum(1 for sp in plan.shards if man.files[sp.name].sha256)
    return {"tensors": sum(counts), "bytes": plan.out_bytes, "files_hashed": hashed,
            "seconds": round(time.monotonic() - t0, 3)}


def _verify_shard(plan: Any, man: Manifest, sp: Any, src: SourceReader, out: SourceReader) -> int:
    import torch

    from k2trt.checkpoint.files import read_header
    from k2trt.checkpoint.fp8 import dequantize, quantize

    path = plan.dst / sp.name
    hdr = read_header(path)
    got = [(e.name, e.dtype, e.shape) for e in sorted(hdr.tensors.values(), key=lambda e: e.begin)]
    if got != sp.out_tensors:
        raise CheckpointError(f"{path}: its tensors differ from what the conversion should have written",
                              "convert again with --force")
    rec = man.files[sp.name]
    if rec.sha256 is not None and sha256_file(path) != rec.sha256:
        raise CheckpointError(f"{path}: sha256 differs from the manifest", "convert again with --force")
    linked = os.path.samefile(plan.src / sp.name, path)
    n = 0
    for op in sp.ops:
        if op.kind == "drop":
            continue
        outs = [hdr.tensors[name] for name, _d, _s in op.outputs()]
        if op.kind == "copy":
            if not linked:
                _same_bytes(src, op.src, out, outs[0])
        elif op.kind == "dequant":
            want = dequantize(src.tensor(op.src), src.tensor(op.scale), torch.bfloat16)
            _same_tensor(want, out.tensor(outs[0]), outs[0])
        else:
            q, s = quantize(src.tensor(op.src))
            _same_tensor(q, out.tensor(outs[0]), outs[0])
            _same_tensor(s, out.tensor(outs[1]), outs[1])
        n += len(outs)
    return n


def _same_bytes(a: SourceReader, ea: TensorEntry, b: SourceReader, eb: TensorEntry) -> None:
    for off in range(0, ea.nbytes, CHUNK):
        k = min(CHUNK, ea.nbytes - off)
        if a.read(ea.file, ea.begin + off, k) != b.read(eb.file, eb.begin + off, k):
            raise CheckpointError(f"{eb.file}: tensor {eb.name} differs from the source near byte {off}",
                                  "the output is corrupt; convert again with --force")


def _same_tensor(want: "torch.Tensor", got: "torch.Tensor", e: TensorEntry) -> None:
    import torch

    if want.shape != got.shape or not torch.equal(want.contiguous().view(torch.uint8), got.view(torch.uint8)):
        diff = (want.float() - got.float()).abs().max().item() if want.shape == got.shape else float("nan")
        raise CheckpointError(f"{e.file}: tensor {e.name} differs from the source (max abs diff {diff:.3g})",
                              "the output is corrupt; convert again with --force")
