"""Convert a K2 checkpoint, streaming, resumable and atomic: for TensorRT-LLM, to BF16, or to block FP8.

Targets:
- ``trtllm``: the directory to point ``trtllm-serve`` at. Shards are hard-linked (same filesystem) or copied, the
  tokenizer and other side files carried, config.json's ``model_type`` made loadable (see ``_config_for``), and an
  optional ``hf_quant_config.json`` written for an FP8 KV cache. TensorRT-LLM loads *every* ``*.safetensors`` in the
  directory, so only the shards of the (validated) source index are written.
- ``bf16``: every FP8 weight dequantised with the exact 128×128 block math, bit-identical to ``fp8.dequantize``
  (partial edge blocks use their own scale) through a per-block lookup table (``dequant_chunked``), scales dropped,
  ``quantization_config`` removed, the index rewritten with its total_size recomputed.
- ``fp8-block``: the linear weights K2 stores in FP8 (the spec's inventory says which) quantised to e4m3 with one
  amax/448 scale per 128×128 block; fp8 → bf16 → fp8 gives back the original bytes.

How: the source is validated from headers first (``inspect``: truncation, header JSON, index ↔ files, every tensor's
shape/dtype against config.json, every FP8 weight's scale), then every scale is read and checked for NaN/Inf/zero.
Each output shard is one source shard, written tensor by tensor in file order under a temporary name and renamed
when complete. Tensor data is read with ``os.pread`` — not through safetensors' mmap, whose touched pages count as
resident memory and would grow with the shard size — in row chunks of 128-row blocks, so peak memory is a few
output tensors whatever the checkpoint size. A thread pool converts the next tensors (torch releases the GIL) while
the main thread writes and hashes in order, so the output bytes never depend on scheduling. After each shard the
manifest (``manifest.py``) is saved; a killed run resumes from it and ends byte-identical. config.json is written
last, so an unfinished directory never looks like a loadable model.

Length: ~700 lines, over the 600 soft cap, because planning (validation, config and side files) and the run share
the Plan and TensorOp types; the file-level IO, manifest and verification already live in ``manifest.py``.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from k2trt import __version__
from k2trt.checkpoint import files, names
from k2trt.checkpoint.fp8 import BLOCK
from k2trt.checkpoint.manifest import (MANIFEST_FILE, FileRecord, HashingShardWriter, Manifest, SourceReader,
                                       copy_file, digest, file_matches, link_file, ordered, require_empty_or_ours,
                                       sha256_file, single_threaded_torch, stream_copy, write_error)
from k2trt.errors import CheckpointError
from k2trt.spec import ModelSpec, Quantization

if TYPE_CHECKING:
    import torch

TARGETS = ("trtllm", "bf16", "fp8-block")
KV_CACHE_DTYPES = ("auto", "fp8")
MODEL_TYPES = ("auto", "kimi_k2", "deepseek_v3")
HF_QUANT_CONFIG = "hf_quant_config.json"
# Weight formats that must not ride along as "side files": a loader could pick them up instead of the shards.
_NOT_CARRIED = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".h5", ".msgpack", ".partial")
_ROW_BYTES = 32 * 2**20  # fp32-equivalent working set per row chunk of a converted tensor


@dataclass(frozen=True)
class ConvertOptions:
    """Everything that decides what ``convert`` writes. The CLI takes its defaults from here."""

    target: str = "trtllm"
    """``trtllm`` (serve as-is), ``bf16`` (dequantise) or ``fp8-block`` (quantise BF16 to 128×128 block FP8)."""
    kv_cache_dtype: str = "auto"
    """``fp8`` writes hf_quant_config.json asking TensorRT-LLM for an FP8 KV cache; ``auto`` leaves KV as BF16."""
    model_type: str = "auto"
    """config.json model_type: ``auto`` keeps ``kimi_k2`` when its remote-code files are there (trtllm target),
    else ``deepseek_v3``; or force one."""
    copy: bool = False
    """Copy shards for ``trtllm`` even where a hard link is possible (an independent copy of the weights)."""
    hash: bool = True
    """Record sha256 of every output file (reads linked shards once more; resume re-checks finished shards)."""
    workers: int = 2
    """Threads converting tensors (trtllm: shards linked/copied/hashed at once)."""
    force: bool = False
    """Replace a non-empty DST that does not hold this same (resumable) conversion."""


@dataclass(slots=True)
class TensorOp:
    """One source tensor and what becomes of it: ``copy`` (bytes as-is), ``dequant`` (FP8 → BF16, with
    ``scale``), ``quant`` (BF16 → FP8 + a new ``…_scale_inv``) or ``drop`` (a scale of a dequantised weight)."""

    kind: str
    src: files.TensorEntry
    scale: files.TensorEntry | None = None

    def outputs(self) -> list[tuple[str, str, tuple[int, ...]]]:
        s = self.src
        if self.kind == "copy":
            return [(s.name, s.dtype, s.shape)]
        if self.kind == "dequant":
            return [(s.name, "BF16", s.shape)]
        if self.kind == "quant":
            return [(s.name, "F8_E4M3", s.shape),
                    (names.scale_name(s.name), "F32", tuple(-(-d // BLOCK) for d in s.shape))]
        return []


@dataclass
class ShardPlan:
    """One output shard: same name as its source shard; ``whole`` (linked/copied as a file) or ``rewrite``."""

    name: str
    action: str
    src_size: int
    ops: list[TensorOp] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)
    out_size: int = 0
    data_size: int = 0

    @property
    def out_tensors(self) -> list[tuple[str, str, tuple[int, ...]]]:
        return [o for op in self.ops for o in op.outputs()]

    def counts(self) -> dict[str, int]:
        c: dict[str, int] = {}
        for op in self.ops:
            c[op.kind] = c.get(op.kind, 0) + 1
        return c


@dataclass
class Plan:
    """What a conversion will do, computed from headers only (the ``--dry-run`` output)."""

    src: Path
    dst: Path
    options: ConvertOptions
    spec: ModelSpec
    shards: list[ShardPlan]
    config: dict[str, Any] | None
    """The new config.json, or None to copy the source's byte for byte."""
    side_files: list[str]
    hf_quant_config: dict[str, Any] | None
    notes: list[str]
    weight_map: dict[str, str]
    link_possible: bool
    scales: list[files.TensorEntry] = field(default_factory=list)
    """The scale of every FP8 weight in the source (checked for NaN/Inf/zero before anything is written)."""

    @property
    def src_bytes(self) -> int:
        return sum(s.src_size for s in self.shards)

    @property
    def out_bytes(self) -> int:
        return sum(s.out_size for s in self.shards)

    def digest(self) -> str:
        """Everything that decides the output bytes; a resume must match it."""
        stats = {f: _stat(self.src / f) for f in [s.name for s in self.shards] + self.side_files + ["config.json"]}
        return digest({"version": __version__, "target": self.options.target, "hash": self.options.hash,
                       "kv": self.options.kv_cache_dtype, "config": self.config, "hf_quant": self.hf_quant_config,
                       "shards": [(s.name, s.action) for s in self.shards], "src": str(self.src), "stats": stats})

    def to_dict(self) -> dict[str, Any]:
        return {"src": str(self.src), "dst": str(self.dst), "target": self.options.target,
                "shards": [{"name": s.name, "action": s.action if s.action == "rewrite" else
                            ("link" if self.link_possible and not self.options.copy else "copy"),
                            "ops": s.counts(), "src_bytes": s.src_size, "out_bytes": s.out_size}
                           for s in self.shards],
                "src_bytes": self.src_bytes, "out_bytes": self.out_bytes,
                "bytes_to_write": 0 if self.links else self.out_bytes,
                "config_json": "rewritten" if self.config is not None else "copied",
                "side_files": self.side_files, "hf_quant_config": self.hf_quant_config, "notes": self.notes}

    @property
    def links(self) -> bool:
        """Whether shards will be hard-linked rather than written."""
        return self.options.target == "trtllm" and self.link_possible and not self.options.copy


def _stat(p: Path) -> list[int]:
    st = p.stat()
    return [st.st_size, st.st_mtime_ns]


# ---- planning (headers only) ------------------------------------------------------------------------------------

def plan_conversion(src: str | Path, dst: str | Path, options: ConvertOptions = ConvertOptions()) -> Plan:
    """Validate ``src`` from its headers and plan the conversion into ``dst``. Reads no tensor data.

    Raises CheckpointError (one line: the file or tensor, and the fix) for any defect a loader would trip on.
    Example: ``plan_conversion("/models/K2", "/models/K2-bf16", ConvertOptions(target="bf16")).out_bytes``.
    """
    if options.target not in TARGETS:
        raise CheckpointError(f"unknown target {options.target!r}", f"choose one of {', '.join(TARGETS)}")
    s, d = _check_paths(Path(src), Path(dst))
    spec = _validated_spec(s)
    headers = [_read_validated_header(s / f) for f in _source_shards(s)]
    entries = {n: e for h in headers for n, e in h.tensors.items()}
    scales = _check_fp8_scales_present(entries)
    target_inv = ({t.name: t for t in spec.with_quantization(Quantization()).tensors()}
                  if options.target == "fp8-block" else {})
    shards: list[ShardPlan] = []
    notes: list[str] = []
    for h in headers:
        sp = ShardPlan(h.path.name, "whole" if options.target == "trtllm" else "rewrite", h.file_size,
                       metadata=h.metadata or {"format": "pt"})
        for e in sorted(h.tensors.values(), key=lambda e: e.begin):
            sp.ops.append(_op_for(e, entries, options.target, target_inv))
        if sp.action == "whole":
            sp.data_size, sp.out_size = sum(e.nbytes for e in h.tensors.values()), h.file_size
        else:
            header, offsets = files.layout(sp.out_tensors, sp.metadata)
            sp.data_size = sum(e - b for b, e in offsets.values())
            sp.out_size = len(header) + sp.data_size
        shards.append(sp)
    weight_map = {n: sp.name for sp in shards for n, _d, _s in sp.out_tensors}
    if options.target == "fp8-block" and spec.quantization is not None:
        notes.append("source is already block FP8: tensors are copied unchanged")
    config = _config_for(s, spec, options, notes)
    side, skipped = _side_files(s)
    notes += [f"not carried: {n}" for n in skipped]
    hq = _hf_quant(s, spec, options, notes)
    return Plan(s, d, options, spec, shards, config, side, hq, notes, weight_map, _same_fs(s, d), scales)


def _check_paths(src: Path, dst: Path) -> tuple[Path, Path]:
    s, d = src.resolve(), dst.resolve()
    if not s.is_dir():
        raise CheckpointError(f"{src} is not a directory", "point SRC at a Hugging Face checkpoint directory")
    if d == s or s in d.parents:
        raise CheckpointError(f"DST {dst} is inside SRC {src}", "choose a DST outside the source checkpoint")
    if d in s.parents:
        raise CheckpointError(f"SRC {src} is inside DST {dst}", "choose a DST that does not contain the source")
    return s, d


def _validated_spec(src: Path) -> ModelSpec:
    from k2trt.checkpoint.inspect import inspect_checkpoint

    rep = inspect_checkpoint(src)
    errs = [p for p in rep.problems if p.severity == "error"]
    if errs:
        p = errs[0]
        msg = p.message if p.where in p.message else f"{p.where}: {p.message}"
        more = f"; {len(errs) - 1} more problems (run `k2trt inspect {src}`)" if len(errs) > 1 else ""
        raise CheckpointError(msg + more, p.fix or None)
    return ModelSpec.from_config(src)


def _read_validated_header(path: Path) -> files.ShardHeader:
    """A header that ``inspect`` has just validated, parsed without re-validating (half the cost on 1 TB K2)."""
    import json
    import struct

    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    meta = header.pop("__metadata__", None) or {}
    start, fname = 8 + n, path.name
    entries = {k: files.TensorEntry(k, v["dtype"], tuple(v["shape"]), start + v["data_offsets"][0],
                                    start + v["data_offsets"][1], fname) for k, v in header.items()}
    return files.ShardHeader(path, entries, {str(k): str(v) for k, v in meta.items()}, start, path.stat().st_size)


def _source_shards(src: Path) -> list[str]:
    idx = files.read_index(src)
    if idx is None:
        return [p.name for p in files.shard_files(src)]
    # inspect has checked index ↔ files both ways; keep the natural order of the files on disk
    listed = set(idx["weight_map"].values())
    return [p.name for p in files.shard_files(src) if p.name in listed]


def _check_fp8_scales_present(entries: dict[str, files.TensorEntry]) -> list[files.TensorEntry]:
    """Every FP8 weight has a scale of its block-grid shape; returns those scales."""
    from k2trt.checkpoint.fp8 import check_scale_shape

    scales: list[files.TensorEntry] = []
    for name, e in entries.items():
        if e.dtype != "F8_E4M3" or name.endswith(names.SCALE_SUFFIX):
            continue
        sc = entries.get(names.scale_name(name))
        if sc is None:
            raise CheckpointError(f"{name} in {e.file} is FP8 but has no {names.scale_name(name)}",
                                  "an FP8 weight is unusable without its scale; re-download the shards")
        if len(e.shape) != 2:
            raise CheckpointError(f"{name} in {e.file} is an FP8 tensor of shape {list(e.shape)}, not 2-D",
                                  "K2's block scales apply to 2-D linear weights only; check the checkpoint")
        if sc.shape != tuple(-(-d // BLOCK) for d in e.shape):
            check_scale_shape(f"{name} in {e.file}", e.shape, sc.shape)  # raises, naming both shapes
        scales.append(sc)
    return scales


def _op_for(e: files.TensorEntry, entries: dict[str, files.TensorEntry], target: str,
            target_inv: dict[str, Any]) -> TensorOp:
    if target == "bf16":
        if e.name.endswith(names.SCALE_SUFFIX):
            w = entries.get(e.name[: -len(names.SCALE_SUFFIX)])
            if w is not None and w.dtype == "F8_E4M3":
                return TensorOp("drop", e)
        if e.dtype == "F8_E4M3":
            return TensorOp("dequant", e, entries[names.scale_name(e.name)])
    if target == "fp8-block":
        t = target_inv.get(e.name)
        if t is not None and t.is_fp8 and e.dtype in ("BF16", "F16", "F32") and len(e.shape) == 2:
            return TensorOp("quant", e)
    return TensorOp("copy", e)


def _config_for(src: Path, spec: ModelSpec, options: ConvertOptions, notes: list[str]) -> dict[str, Any] | None:
    """The new config.json (None: copy the source's verbatim).

    TensorRT-LLM picks the model class from ``architectures`` (DeepseekV3ForCausalLM) but loads the config with
    transformers, which does not know ``kimi_k2``: K2 ships ``configuration_deepseek.py`` through ``auto_map`` and
    needs ``trust_remote_code``. When those files are not in SRC, ``auto`` writes ``deepseek_v3`` (built into
    transformers) and drops the dangling ``auto_map`` (Moonshot's own advice for engines that lack kimi_k2).
    """
    import json

    raw = json.loads((src / "config.json").read_text())
    if options.target == "bf16":
        cfg: dict[str, Any] = spec.with_quantization(None).to_config()
        notes.append("config.json: quantization_config removed")
    elif options.target == "fp8-block":
        cfg = spec.with_quantization(Quantization()).to_config()
        if spec.quantization is None:
            notes.append("config.json: quantization_config fp8/e4m3/[128, 128]/dynamic added")
    else:
        cfg = dict(raw)
    mt = options.model_type
    missing = _missing_remote_code(src, cfg)
    if mt == "auto":
        mt = "deepseek_v3" if (options.target == "trtllm" and cfg.get("model_type") == "kimi_k2" and missing) \
            else str(cfg.get("model_type"))
    if mt != cfg.get("model_type"):
        notes.append(f"config.json: model_type {cfg.get('model_type')} → {mt}"
                     + (f" ({', '.join(missing)} not in SRC)" if missing else ""))
        cfg["model_type"] = mt
    if missing and cfg.get("model_type") != "kimi_k2" and "auto_map" in cfg:
        cfg.pop("auto_map")
        notes.append("config.json: auto_map removed (its remote-code files are not in SRC)")
    return None if cfg == raw and options.target == "trtllm" else cfg


def _missing_remote_code(src: Path, cfg: dict[str, Any]) -> list[str]:
    mods: set[str] = set()
    for v in (cfg.get("auto_map") or {}).values():
        for ref in (v if isinstance(v, list) else [v]):
            if isinstance(ref, str) and "." in ref:
                mods.add(ref.split("--")[-1].rsplit(".", 1)[0] + ".py")
    return sorted(m for m in mods if not (src / m).is_file())


def hf_quant_config(fp8_weights: bool, kv_fp8: bool) -> dict[str, Any]:
    """The ModelOpt-style ``hf_quant_config.json`` TensorRT-LLM reads before config.json (trtllm.md §5).

    ``exclude_modules`` is what TensorRT-LLM itself derives from K2's block-FP8 config.json (kv_b_proj dequantised
    at load time; ``tensorrt_llm/_torch/model_config.py``), so adding this file changes only the KV cache dtype.
    """
    q: dict[str, Any] = {}
    if fp8_weights:
        q.update(quant_algo="FP8_BLOCK_SCALES", group_size=BLOCK,
                 exclude_modules=["*kv_b_proj*", "*k_b_proj*", "*eh_proj"])
    if kv_fp8:
        q["kv_cache_quant_algo"] = "FP8"
    return {"producer": {"name": "k2trt", "version": __version__}, "quantization": q}


def _hf_quant(src: Path, spec: ModelSpec, options: ConvertOptions, notes: list[str]) -> dict[str, Any] | None:
    fp8 = options.target == "fp8-block" or (options.target == "trtllm" and spec.quantization is not None)
    if options.kv_cache_dtype == "fp8":
        return hf_quant_config(fp8, True)
    if (src / HF_QUANT_CONFIG).exists():
        if options.target == "trtllm":
            import json

            return dict(json.loads((src / HF_QUANT_CONFIG).read_text()))
        notes.append(f"not carried: {HF_QUANT_CONFIG} (it describes the source's quantization)")
    return None


def _side_files(src: Path) -> tuple[list[str], list[str]]:
    keep, skipped = [], []
    for p in sorted(src.iterdir()):
        n = p.name
        if n in (names.INDEX_FILE, "config.json", HF_QUANT_CONFIG, MANIFEST_FILE) or n.startswith("."):
            continue
        if p.is_dir() or n.endswith(_NOT_CARRIED):
            if not n.endswith(".safetensors"):
                skipped.append(n + ("/" if p.is_dir() else ""))
            continue
        keep.append(n)
    return keep, skipped


def _same_fs(src: Path, dst: Path) -> bool:
    d = dst
    while not d.exists():
        d = d.parent
    return os.stat(src).st_dev == os.stat(d).st_dev


# ---- reading tensors -------------------------------------------------------------------------------------------

def _as_bytes(t: "torch.Tensor") -> memoryview:
    from k2trt.checkpoint.synth import tensor_bytes

    return tensor_bytes(t)


def _chunk_rows(cols: int) -> int:
    return max(BLOCK, _ROW_BYTES // max(1, 4 * cols) // BLOCK * BLOCK)


def dequant_chunked(io: SourceReader, w: files.TensorEntry, s: files.TensorEntry) -> "torch.Tensor":
    """FP8 ``w`` → BF16, bit-identical to ``fp8.dequantize(w, s, bfloat16)`` and ~6× faster, in row chunks.

    An e4m3 byte has 256 values, so each 128×128 block has only 256 possible outputs: ``bf16(f32(v) × scale)``,
    computed once per block with the same fp32 product and single rounding, then gathered per element (torch's
    fp8 → fp32 cast alone costs more than the whole gather). Partial edge blocks index their own scale.
    """
    import numpy as np
    import torch

    m, n = w.shape
    scale = io.tensor(s)  # [Mb, Nb] f32
    values = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).to(torch.float32)  # [256]
    table = (values[None, None, :] * scale[:, :, None]).to(torch.bfloat16).view(torch.int16).numpy()  # [Mb,Nb,256]
    nb = table.shape[1]
    idx_t = np.uint16 if nb * 256 <= 2**16 else np.uint32
    col = ((np.arange(n) // BLOCK) * 256).astype(idx_t)  # [N]: where each column's block starts in a table row
    out = np.empty((m, n), dtype=np.int16)
    step = _chunk_rows(n)
    for r0 in range(0, m, step):
        r1 = min(m, r0 + step)
        u8 = np.frombuffer(io.read(w.file, w.begin + r0 * n, (r1 - r0) * n), dtype=np.uint8).reshape(r1 - r0, n)
        for b0 in range(r0, r1, BLOCK):  # one 128-row block (r0 is a multiple of 128)
            b1 = min(r1, b0 + BLOCK)
            idx = u8[b0 - r0: b1 - r0].astype(idx_t)
            idx += col
            out[b0:b1] = table[b0 // BLOCK].reshape(-1).take(idx)
    return torch.from_numpy(out).view(torch.bfloat16)


def quant_chunked(io: SourceReader, w: files.TensorEntry) -> "tuple[torch.Tensor, torch.Tensor]":
    """BF16 ``w`` → (FP8, F32 block scales) in 128-row blocks (identical to ``fp8.quantize`` on the whole)."""
    import torch

    from k2trt.checkpoint.fp8 import quantize, scale_problems

    m, n = w.shape
    q = torch.empty((m, n), dtype=torch.float8_e4m3fn)
    s = torch.empty((-(-m // BLOCK), -(-n // BLOCK)), dtype=torch.float32)
    step = _chunk_rows(n)
    for r0 in range(0, m, step):
        r1 = min(m, r0 + step)
        q[r0:r1], s[r0 // BLOCK: -(-r1 // BLOCK)] = quantize(io.tensor(w, r0, r1))
    why = scale_problems(s)
    if why is not None:
        raise CheckpointError(f"{w.name} in {w.file}: its block scales would contain NaN/Inf/zero ({why}); the "
                              "weight has non-finite values", "repair or re-download the source shard")
    return q, s


def _compute(io: SourceReader, op: TensorOp) -> list[memoryview]:
    if op.kind == "dequant":
        assert op.scale is not None
        return [_as_bytes(dequant_chunked(io, op.src, op.scale))]
    q, s = quant_chunked(io, op.src)
    return [_as_bytes(q), _as_bytes(s)]


# ---- writing ---------------------------------------------------------------------------------------------------

def _rewrite_shard(sp: ShardPlan, plan: Plan, io: SourceReader, pool: ThreadPoolExecutor, hashing: bool,
                   tick: Callable[[int], None]) -> FileRecord:
    path = plan.dst / sp.name
    with HashingShardWriter(path, sp.out_tensors, sp.metadata, hashing) as w:
        live = [op for op in sp.ops if op.kind != "drop"]
        for op, out in ordered(pool, live, lambda o: _compute(io, o), lambda o: o.kind != "copy",
                                window=2 * max(1, plan.options.workers)):
            if op.kind == "copy":
                stream_copy(io, op.src, w, tick)
                continue
            for (name, _d, _s), data in zip(op.outputs(), out):
                w.put(name, data)
            tick(op.src.nbytes)
        tick(sum(op.src.nbytes for op in sp.ops if op.kind == "drop"))
        w.commit()
    return FileRecord(sp.out_size, w.sha.hexdigest() if w.sha else None, "rewrite", sp.name)


def _whole_shard(sp: ShardPlan, plan: Plan, hashing: bool, tick: Callable[[int], None]) -> FileRecord:
    src, dst = plan.src / sp.name, plan.dst / sp.name
    if plan.link_possible and not plan.options.copy and link_file(src, dst):
        sha = sha256_file(dst) if hashing else None
        tick(sp.src_size)
        return FileRecord(sp.out_size, sha, "link", sp.name)
    sha = copy_file(src, dst, hashing=hashing, on_bytes=tick)
    return FileRecord(sp.out_size, sha, "copy", sp.name)


# ---- the run ---------------------------------------------------------------------------------------------------

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
    verified: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        d = self.plan.to_dict()
        d.update(state=self.state, shards_written=self.shards_written, shards_skipped=self.shards_skipped,
                 bytes_written=self.bytes_written, seconds=round(self.seconds, 3),
                 timings={k: round(v, 3) for k, v in self.timings.items()}, verified=self.verified,
                 manifest=str(self.plan.dst / MANIFEST_FILE))
        return d


def convert(src: str | Path, dst: str | Path, options: ConvertOptions = ConvertOptions(), *,
            verify: bool = False, progress: bool = False) -> ConvertResult:
    """Convert the checkpoint in ``src`` into ``dst`` (see the module docstring for the targets).

    Args:
        src: a Hugging Face K2 checkpoint directory (validated from its headers first).
        dst: output directory: absent, empty, or holding an interrupted run of this same conversion (resumed).
        options: target and knobs (``ConvertOptions``).
        verify: re-read every output tensor and check it against the source afterwards.
        progress: show byte progress bars on stderr.
    Returns:
        A ConvertResult. Raises CheckpointError (one line naming the file or tensor, and the fix) on bad input or
        a failed write; a failed run leaves only finished shards under final names, and rerunning resumes.
    Example:
        ``convert("/models/Kimi-K2-Instruct", "/models/K2-trtllm", ConvertOptions(kv_cache_dtype="fp8"))``
    """
    t0 = time.monotonic()
    plan = plan_conversion(src, dst, options)
    if options.target != "trtllm":
        import torch  # noqa: F401  (seconds on a busy machine: kept out of the "stream" timing)
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
        _run_shards(plan, todo, man, progress)
        res.shards_written = len(todo)
        res.bytes_written = sum(sp.out_size for sp in todo if man.files[sp.name].how != "link")
    _finish(plan, man)  # cheap and idempotent: also repairs deleted side files of an up-to-date output
    res.timings["stream"] = time.monotonic() - t1
    res.seconds = time.monotonic() - t0
    if verify:
        from k2trt.checkpoint.manifest import verify_output

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
    """Read every FP8 scale the output depends on; NaN, Inf, zero or negative entries are fatal.

    numpy, not torch: ``--to trtllm`` then never imports torch (it runs on login nodes, and the import costs
    seconds); the rules are ``fp8.scale_problems``'s.
    """
    import numpy as np

    io = SourceReader(plan.src)
    try:
        for e in plan.scales:
            s = np.frombuffer(io.read(e.file, e.begin, e.nbytes), dtype="<f4")
            why = ("contains NaN" if np.isnan(s).any() else "contains Inf" if np.isinf(s).any() else
                   f"has {int((s <= 0).sum())} zero or negative entries" if (s <= 0).any() else None)
            if why is not None:
                raise CheckpointError(f"{e.name} in {e.file} {why}",
                                      f"the FP8 weight {e.name[: -len(names.SCALE_SUFFIX)]} is unusable without "
                                      "a valid scale; re-download that shard")
    finally:
        io.close()


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


def _run_shards(plan: Plan, todo: list[ShardPlan], man: Manifest, progress: bool) -> None:
    from tqdm import tqdm

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

    try:
        with ThreadPoolExecutor(max(1, plan.options.workers), thread_name_prefix="k2trt-convert") as pool:
            if plan.options.target == "trtllm":  # whole files: link/copy/hash several at once
                futs = [pool.submit(_guard, sp, plan, lambda sp=sp: finished(
                    sp, _whole_shard(sp, plan, plan.options.hash, tick))) for sp in todo]
                for f in futs:
                    f.result()
            else:
                io = SourceReader(plan.src)
                try:
                    with single_threaded_torch():
                        for sp in todo:
                            finished(sp, _guard(sp, plan, lambda sp=sp: _rewrite_shard(
                                sp, plan, io, pool, plan.options.hash, tick)))
                finally:
                    io.close()
    finally:
        bar.close()


def _guard(sp: ShardPlan, plan: Plan, fn: Callable[[], Any]) -> Any:
    """Run one shard's work; an OS error (disk full, file too large, permission) becomes a one-line error."""
    try:
        return fn()
    except OSError as e:
        raise write_error(plan.dst / sp.name, e) from None


def _finish(plan: Plan, man: Manifest) -> None:
    """Index, side files, hf_quant_config.json, then config.json last, then the manifest marked complete."""
    def record(name: str, how: str, source: str | None = None) -> None:
        p = plan.dst / name
        man.files[name] = FileRecord(p.stat().st_size, sha256_file(p) if plan.options.hash else None, how, source)

    try:
        stale = [p for p in plan.dst.iterdir() if p.name.startswith(".") and p.name.endswith(".partial")]
        for p in stale:
            p.unlink()
        extra = sorted(p.name for p in files.shard_files(plan.dst) if p.name not in {s.name for s in plan.shards})
        if extra:
            raise CheckpointError(f"{plan.dst / extra[0]} is not part of this conversion, and TensorRT-LLM loads "
                                  "every *.safetensors in the directory", "remove it, or convert into an empty DST")
        total = sum(sp.data_size for sp in plan.shards)
        files.write_json_atomic(plan.dst / names.INDEX_FILE, {"metadata": {"total_size": total},
                                                              "weight_map": dict(sorted(plan.weight_map.items()))})
        record(names.INDEX_FILE, "write")
        for n in plan.side_files:
            copy_file(plan.src / n, plan.dst / n, hashing=False)
            record(n, "copy", n)
        if plan.hf_quant_config is not None:
            files.write_json_atomic(plan.dst / HF_QUANT_CONFIG, plan.hf_quant_config)
            record(HF_QUANT_CONFIG, "write")
        else:
            (plan.dst / HF_QUANT_CONFIG).unlink(missing_ok=True)
        if plan.config is None:
            copy_file(plan.src / "config.json", plan.dst / "config.json", hashing=False)
            record("config.json", "copy", "config.json")
        else:
            files.write_json_atomic(plan.dst / "config.json", plan.config)
            record("config.json", "write")
        man.complete = True
        man.save(plan.dst)
    except OSError as e:
        raise write_error(Path(e.filename or plan.dst), e) from None
