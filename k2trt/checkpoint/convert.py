"""Convert a K2 checkpoint — the one driver for every target: streaming, worker threads, resumable, atomic, verified.

The target table is ``targets.py``; the plan (validation from headers, one op per source tensor, the output layout)
is ``plan.py``; the bytes of each op come from ``stream.py``. This module runs a plan:

- the source is validated from headers first (``inspect``: truncation, header JSON, index ↔ files, every tensor's
  shape/dtype against config.json, every quantized weight's parts), then every F32 scale the output depends on is
  read (numpy) and checked for NaN/Inf/zero, and the destination's free space against the bytes to write;
- each output shard is one source shard, written in file order through ``files.ShardWriter`` (temporary name,
  writeback started as it goes, fsync on the shard's own thread, rename in file order; three shards are written at
  once). A thread pool computes the next
  pieces ahead (numpy, torch and the compiled loops release the GIL) while each shard's thread writes and hashes
  them in order, so the output bytes never depend on scheduling and memory is a bounded window of pieces whatever the
  checkpoint size. ``trtllm`` moves whole files instead (hard links,
  or kernel-side copies, several at once);
- after each shard the manifest (``manifest.py``) is saved: a killed run resumes from it and ends byte-identical.
  The index, side files and metadata files follow; config.json is written last, so an unfinished directory never
  looks like a loadable model.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from k2trt import __version__
from k2trt.checkpoint import files, names
from k2trt.checkpoint.manifest import MANIFEST_FILE, FileRecord, Manifest, file_matches, require_empty_or_ours
from k2trt.checkpoint.plan import ConvertOptions, Plan, ShardPlan, plan_conversion
from k2trt.checkpoint.quantcfg import FILES as META_FILES
from k2trt.errors import CheckpointError
from k2trt.fsio import atomic_write_json

__all__ = ["ConvertOptions", "ConvertResult", "Plan", "convert", "plan_conversion"]


@dataclass
class ConvertResult:
    """What a conversion did (the ``--json`` summary)."""

    plan: Plan
    state: str
    """``converted``, ``resumed`` (some shards were already finished) or ``up-to-date``."""
    shards_written: int = 0
    shards_skipped: int = 0
    bytes_written: int = 0
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)
    """``validate`` (headers, scales, torch import) and ``stream`` (shards, metadata) seconds."""
    peak_tensor_bytes: int = 0
    """Most weight data the computing chunks held at once (``stream.Meter``: the bounded-memory evidence)."""
    verified: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        d = self.plan.to_dict()
        d.update(state=self.state, shards_written=self.shards_written, shards_skipped=self.shards_skipped,
                 bytes_written=self.bytes_written, seconds=round(self.seconds, 3),
                 timings={k: round(v, 3) for k, v in self.timings.items()}, verified=self.verified,
                 peak_tensor_bytes=self.peak_tensor_bytes, manifest=str(self.plan.dst / MANIFEST_FILE))
        return d


def convert(src: str | Path, dst: str | Path, options: ConvertOptions = ConvertOptions(), *,
            verify: bool = False, progress: bool = False, stop_after: int | None = None) -> ConvertResult:
    """Convert the checkpoint in ``src`` into ``dst`` (see ``targets.py`` for what each target writes).

    Args:
        src: a Hugging Face K2 checkpoint directory (validated from its headers first).
        dst: output directory: absent, empty, or holding an interrupted run of this same conversion (resumed).
        options: target and knobs (``ConvertOptions``).
        verify: re-read every output tensor and check it against the source afterwards (``verify.py``).
        progress: show byte progress bars on stderr.
        stop_after: stop after writing this many shards, leaving DST resumable (tests of resumption).
    Returns:
        A ConvertResult. Raises CheckpointError (one line naming the file or tensor, and the fix) on bad input or
        a failed write; a failed run leaves only finished shards under final names, and rerunning resumes.
    Example:
        ``convert("/models/Kimi-K2-Instruct", "/models/K2-trtllm", ConvertOptions(kv_cache_dtype="fp8"))``
    """
    t0 = time.monotonic()
    plan = plan_conversion(src, dst, options)
    _load_libraries(plan)
    man = _prepare_dst(plan)
    done = {sp.name for sp in plan.shards if man is not None and sp.name in man.files
            and file_matches(plan.dst / sp.name, man.files[sp.name], options.hash)}
    state = "up-to-date" if man is not None and man.complete and len(done) == len(plan.shards) else \
        ("resumed" if done else "converted")
    res = ConvertResult(plan, state, shards_skipped=len(done))
    todo = [sp for sp in plan.shards if sp.name not in done]
    if todo:
        _check_scale_values(plan)
        _check_space(plan, done)
    res.timings["validate"] = time.monotonic() - t0
    t1 = time.monotonic()
    if man is None:
        man = Manifest(options.target, str(plan.src), plan.digest(), __version__,
                       {"kv_cache_dtype": options.kv_cache_dtype, "model_type": options.model_type,
                        "hash": options.hash})
    if todo:
        man.complete = False
        man.files = {k: v for k, v in man.files.items() if k in done}
        plan.dst.mkdir(parents=True, exist_ok=True)
        man.save(plan.dst)
        if stop_after is not None:
            todo = todo[:stop_after]
        res.peak_tensor_bytes = _run_shards(plan, todo, man, progress)
        res.shards_written = len(todo)
        res.bytes_written = sum(sp.out_size for sp in todo if man.files[sp.name].how != "link")
    if stop_after is None or len(done) + res.shards_written == len(plan.shards):
        _finish(plan, man)  # cheap and idempotent: also repairs deleted side files of an up-to-date output
    res.timings["stream"] = time.monotonic() - t1
    res.seconds = time.monotonic() - t0
    if verify:
        from k2trt.checkpoint.verify import verify_output

        res.verified = verify_output(plan, progress=progress)
    return res


def _prepare_dst(plan: Plan) -> Manifest | None:
    if plan.options.force:
        man = Manifest.load(plan.dst)
        if man is not None and man.plan_digest == plan.digest():
            return man
        if plan.dst.is_dir():
            for p in plan.dst.iterdir():
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        return None
    return require_empty_or_ours(plan.dst, plan.digest())


def _check_scale_values(plan: Plan) -> None:
    """Read every F32 scale the output depends on; NaN, Inf, zero or negative entries are fatal (numpy: the
    passthrough never imports torch, which costs seconds and runs on login nodes)."""
    from k2trt.checkpoint.fp8 import scale_problems
    from k2trt.checkpoint.reader import CheckpointReader

    with CheckpointReader(plan.src, plan.entries) as rd:
        for e in plan.scales:
            why = scale_problems(rd.raw(e).view("<f4"))
            if why is not None:
                w = e.name.removesuffix(names.SCALE_SUFFIX).rsplit(".", 1)[0]
                raise CheckpointError(f"{e.name} in {e.file} {why}", f"the weight {w} is unusable without a valid "
                                      "scale; re-download that shard")


def _check_space(plan: Plan, done: set[str]) -> None:
    if plan.links:
        return
    need = sum(sp.out_size for sp in plan.shards if sp.name not in done)
    d = plan.dst
    while not d.exists():
        d = d.parent
    free = shutil.disk_usage(d).free
    if need > free:
        raise CheckpointError(f"{plan.dst}: needs {need / 2**30:.1f} GiB but its filesystem has "
                              f"{free / 2**30:.1f} GiB free", "free space or choose a DST on a larger disk")


# ---- the run -----------------------------------------------------------------------------------------------------

def _load_libraries(plan: Plan) -> None:
    """Import what the ops compute with before the stream starts: seconds of one-off start-up on a busy machine
    (torch ~1 s, compressed-tensors ~2 s, the compiled loops ~0.3 s) that would otherwise stall the first chunks
    and count as streaming time."""
    import tqdm  # noqa: F401  (and the stream's own modules, ~12 ms together)

    from k2trt.checkpoint import reader, stream  # noqa: F401
    if plan.needs_torch:
        import torch  # noqa: F401
    if plan.needs_compressed_tensors:
        from k2trt.checkpoint.quant4 import load_compressed_tensors

        load_compressed_tensors()
    if plan.needs_kernels:
        from k2trt.checkpoint import kernels

        kernels.warm()
    if plan.needs_kernels4:
        from k2trt.checkpoint import kernels4

        kernels4.warm()


def _run_shards(plan: Plan, todo: list[ShardPlan], man: Manifest, progress: bool) -> int:
    """Write the shards in ``todo``, recording each in the manifest as it finishes; returns the meter's peak."""
    from tqdm import tqdm

    from k2trt.checkpoint.reader import CheckpointReader
    from k2trt.checkpoint.stream import Context

    lock = threading.Lock()
    bar = tqdm(total=sum(sp.src_size for sp in todo), unit="B", unit_scale=True, unit_divisor=1024,
               desc=f"convert → {plan.options.target}", disable=not progress)

    def tick(n: int) -> None:
        with lock:
            bar.update(n)

    def finished(sp: ShardPlan, rec: FileRecord) -> None:
        with lock:
            man.files[sp.name] = rec
            man.save(plan.dst)

    workers = max(1, plan.options.workers)
    try:
        with ThreadPoolExecutor(workers, thread_name_prefix="k2trt-convert") as pool:
            if plan.target.whole_files:  # link/copy/hash several files at once
                futs = [pool.submit(_guard, sp, plan, lambda sp=sp: finished(sp, _whole_shard(sp, plan, tick)))
                        for sp in todo]
                for f in futs:
                    f.result()
                return 0
            with CheckpointReader(plan.src, plan.entries) as rd, _torch_threads(plan.needs_torch), \
                    ThreadPoolExecutor(_SHARDS_IN_FLIGHT, thread_name_prefix="k2trt-shard") as writers:
                ctx = Context(rd, plan.out_spec, plan.options.hash, dict(plan.options.calib_amax))
                inflight: deque[tuple[ShardPlan, Future[files.ShardWriter]]] = deque()
                stop = threading.Event()
                try:
                    for sp in todo:
                        inflight.append((sp, writers.submit(_guard, sp, plan, lambda sp=sp: _rewrite_shard(
                            sp, plan, ctx, pool, tick, stop))))
                        if len(inflight) >= _SHARDS_IN_FLIGHT:
                            _commit_oldest(inflight, plan, finished)
                    while inflight:
                        _commit_oldest(inflight, plan, finished)
                except BaseException:
                    stop.set()
                    _abandon(inflight)
                    raise
                return ctx.meter.peak
    finally:
        bar.close()


_SHARDS_IN_FLIGHT = 3
"""Shards written at once (their chunks share the pool): each file's hash is one sequential chain, so several
chains let hashing use every core, and a shard's final fsync (on its own thread) overlaps the others' writes. Shards
still finish (and enter the manifest) in order. On 2 cores three measured 5–10 % faster than two while fsync still
blocked (INT4 → FP8, both bench checkpoints), and two, three and four are even since the shards start their writeback
early; each adds one window of chunks to the memory bound, not a size that grows with the checkpoint."""


def _commit_oldest(inflight: "deque[tuple[ShardPlan, Future[files.ShardWriter]]]", plan: Plan,
                   finished: Callable[[ShardPlan, FileRecord], None]) -> None:
    sp, fut = inflight.popleft()
    w = fut.result()
    finished(sp, _guard(sp, plan, lambda: _commit(sp, w)))


def _abandon(inflight: "deque[tuple[ShardPlan, Future[files.ShardWriter]]]") -> None:
    """After an error or an interrupt: stop the shards not yet committed and remove their temporary files."""
    for _sp, fut in inflight:
        fut.cancel()
    for _sp, fut in inflight:
        if not fut.cancelled():
            try:
                fut.result().abort()
            except BaseException:  # it failed on its own and removed its file already
                pass


def _rewrite_shard(sp: ShardPlan, plan: Plan, ctx: Any, pool: ThreadPoolExecutor,
                   tick: Callable[[int], None], stop: threading.Event) -> files.ShardWriter:
    """Write one shard's bytes under its temporary name; the caller commits it (``_commit``). On any error, or once
    ``stop`` is set, the temporary file is removed."""
    from k2trt.checkpoint.stream import Copy, Tail, items

    work = (it for op in sp.ops for it in items(op, ctx))
    trimmed = 0
    w = files.ShardWriter(plan.dst / sp.name, sp.out_tensors, sp.metadata, hashing=plan.options.hash)
    try:
        for it, out in _ordered(pool, work, window=2 * max(1, plan.options.workers) + 2):
            if stop.is_set():
                raise CheckpointError(f"{sp.name}: stopped before it was complete")
            if w.pos - trimmed >= _TRIM_BYTES:
                _release_free_memory()
                trimmed = w.pos
            if isinstance(it, Copy):
                w.copy_range(ctx.reader.fd(it.entry.file), it.entry.begin + it.offset, it.n)
                tick(it.n)
                continue
            for buf in (it.fn() if isinstance(it, Tail) else out):
                w.append(buf)
            tick(it.src_bytes)
        tick(sum(op.src.nbytes for op in sp.ops if op.kind == "drop"))
        w.flush()  # here, so the in-order commit waits on no disk while the next shard is being written
    except BaseException:
        w.abort()
        raise
    return w


def _commit(sp: ShardPlan, w: files.ShardWriter) -> FileRecord:
    try:
        w.commit()
    except BaseException:
        w.abort()
        raise
    return FileRecord(sp.out_size, w.digest, "rewrite", sp.name)


def _whole_shard(sp: ShardPlan, plan: Plan, tick: Callable[[int], None]) -> FileRecord:
    src, dst = plan.src / sp.name, plan.dst / sp.name
    if plan.links and files.link_file(src, dst):
        digest = files.hash_file(dst) if plan.options.hash else None
        tick(sp.src_size)
        return FileRecord(sp.out_size, digest, "link", sp.name)
    digest = files.copy_file(src, dst, hashing=plan.options.hash, on_bytes=tick)
    return FileRecord(sp.out_size, digest, "copy", sp.name)


def _ordered(pool: ThreadPoolExecutor, items: Iterable[Any], window: int) -> Iterator[tuple[Any, Any]]:
    """Yield ``(item, result)`` in input order while up to ``window`` chunks compute in the pool (copies and tails
    pass through and run in the caller)."""
    from k2trt.checkpoint.stream import Chunk

    q: deque[tuple[Any, Future[Any] | None]] = deque()
    try:
        for it in items:
            q.append((it, pool.submit(it.fn) if isinstance(it, Chunk) else None))
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


@contextmanager
def _torch_threads(needed: bool) -> Iterator[None]:
    """One torch intra-op thread while our pool runs (restored afterwards): the pool's ``--workers`` threads are the
    parallelism. torch's intra-op threads on top cost far more than they give on these element-wise ops (measured
    on 2 busy cores: a 256×256 dequantisation takes 20 ms with 2 intra-op threads, 2 ms with 1)."""
    if not needed:
        yield
        return
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


_TRIM_BYTES = 64 * 2**20


def _release_free_memory() -> None:
    """Hand freed heap memory back to the OS (glibc's ``malloc_trim``; a no-op elsewhere), every ``_TRIM_BYTES``
    written.

    The workers' tensors are freed in other threads' arenas, and glibc keeps such memory mapped: without this,
    resident memory creeps up as a conversion goes (measured: NVFP4 of a 1 GiB checkpoint peaked 130 MiB above a
    250 MiB one)."""
    trim = getattr(files.libc(), "malloc_trim", None)
    if trim is not None:
        trim(0)


def _guard(sp: ShardPlan, plan: Plan, fn: Callable[[], Any]) -> Any:
    """Run one shard's work; an OS error (disk full, file too large, permission) becomes a one-line error."""
    try:
        return fn()
    except OSError as e:
        raise files.write_error(plan.dst / sp.name, e) from None


def _finish(plan: Plan, man: Manifest) -> None:
    """Index, side files, metadata files, then config.json last, then the manifest marked complete."""
    def record(name: str, how: str, source: str | None = None) -> None:
        p = plan.dst / name
        man.files[name] = FileRecord(p.stat().st_size, files.hash_file(p) if plan.options.hash else None, how,
                                     source)

    try:
        for p in plan.dst.iterdir():
            if p.name.startswith(".") and p.name.endswith(".partial"):
                p.unlink()
        extra = sorted(p.name for p in files.shard_files(plan.dst) if p.name not in {s.name for s in plan.shards})
        if extra:
            raise CheckpointError(f"{plan.dst / extra[0]} is not part of this conversion, and TensorRT-LLM loads "
                                  "every *.safetensors in the directory", "remove it, or convert into an empty DST")
        total = sum(sp.data_size for sp in plan.shards)
        atomic_write_json(plan.dst / names.INDEX_FILE, {"metadata": {"total_size": total},
                                                        "weight_map": dict(sorted(plan.weight_map.items()))})
        record(names.INDEX_FILE, "write")
        for n in plan.side_files:
            files.copy_file(plan.src / n, plan.dst / n, hashing=False)
            record(n, "copy", n)
        for n, obj in sorted(plan.meta.files.items()):
            if obj is None:
                files.copy_file(plan.src / n, plan.dst / n, hashing=False)
                record(n, "copy", n)
            else:
                atomic_write_json(plan.dst / n, obj)
                record(n, "write")
        for n in set(META_FILES) - set(plan.meta.files):
            (plan.dst / n).unlink(missing_ok=True)
        if plan.meta.config is None:
            files.copy_file(plan.src / "config.json", plan.dst / "config.json", hashing=False)
            record("config.json", "copy", "config.json")
        else:
            atomic_write_json(plan.dst / "config.json", plan.meta.config)
            record("config.json", "write")
        man.complete = True
        man.save(plan.dst)
    except OSError as e:
        raise files.write_error(Path(e.filename or plan.dst), e) from None

