"""Streaming requantization of a K2 checkpoint to NVFP4 or W4A8: plan (headers only), per-tensor ops, driver.

``plan_requant`` validates the source from its headers (``inspect``) and maps every source tensor to its outputs
(``requant_layout``): one output shard per source shard, same name. ``requantize`` then writes each shard tensor
by tensor through ``files.ShardWriter`` (temporary name, rename when complete), so memory is one source tensor in
float32 plus, for the routed experts, the gate/up pair of the current expert (their shared ``weight_scale_2`` and
the activation bound need both). After each shard ``k2trt-requant.json`` records it; a killed run resumes there and
ends with the same bytes. config.json is written last, so an unfinished directory never looks like a model.

``TensorOp`` / ``compute`` are the per-tensor transform a generic streaming converter can call (see the module
docstring of ``requant.py`` for the math). Activation scales: ``requant.calibrate`` (GPU only) or the weight-only
bounds. ``verify_output`` is ``--verify``: every output tensor against its source, within its format's bound.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from k2trt import __version__
from k2trt.checkpoint import files, names
from k2trt.checkpoint import requant as R
from k2trt.checkpoint import requant_layout as rq
from k2trt.errors import CheckpointError
from k2trt.spec import ModelSpec, Quantization, TensorInfo

if TYPE_CHECKING:
    import torch

STATE_FILE = "k2trt-requant.json"
_STATE_FORMAT = "k2trt-requant/1"
_SKIP_SIDE = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".partial")
_OWN_FILES = {names.INDEX_FILE, "config.json", rq.HF_QUANT_CONFIG, rq.QUANT_CFG_FILE, STATE_FILE,
              "k2trt-manifest.json"}


@dataclass(frozen=True)
class RequantOptions:
    """What ``k2trt convert --to nvfp4|w4a8`` writes."""

    target: str = "nvfp4"
    """``nvfp4`` (Blackwell: NVFP4 routed experts, rest BF16) or ``w4a8`` (Hopper: INT4 experts, rest block FP8)."""
    calib_amax: tuple[tuple[str, float], ...] = ()
    """Calibrated activation amax per module (from ``requant.calibrate``); empty: the weight-only bounds."""
    kv_cache_dtype: str = "auto"
    """``fp8`` records ``kv_cache_quant_algo: FP8`` in hf_quant_config.json."""
    force: bool = False
    """Replace a non-empty DST that does not hold this same (resumable) requantization."""


@dataclass(frozen=True)
class TensorOp:
    """One source tensor and its outputs. ``kind``: ``copy``, ``bf16`` (FP8 → BF16), ``fp8-keep`` (weight and its
    128×128 scale copied), ``fp8-quant`` (BF16 → block FP8), ``nvfp4`` or ``int4`` (routed experts)."""

    kind: str
    src: files.TensorEntry
    outputs: tuple[tuple[str, str, tuple[int, ...]], ...]
    role: str | None = None
    layer: int | None = None
    expert: int | None = None


@dataclass
class ShardJob:
    """One output shard (same file name as its source shard)."""

    name: str
    ops: list[TensorOp] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def out_tensors(self) -> list[tuple[str, str, tuple[int, ...]]]:
        return [o for op in self.ops for o in op.outputs]

    @property
    def out_bytes(self) -> int:
        header, offsets = files.layout(self.out_tensors, self.metadata)
        return len(header) + sum(e - b for b, e in offsets.values())


@dataclass
class RequantPlan:
    """Everything ``requantize`` will write, from headers only (the ``--dry-run`` answer)."""

    src: Path
    dst: Path
    options: RequantOptions
    spec: ModelSpec
    out_spec: ModelSpec
    shards: list[ShardJob]
    entries: dict[str, files.TensorEntry]
    hf_quant_config: dict[str, Any]
    side_files: list[str]

    def digest(self) -> str:
        st = {s.name: [(self.src / s.name).stat().st_size, (self.src / s.name).stat().st_mtime_ns]
              for s in self.shards}
        blob = json.dumps({"v": __version__, "opts": [self.options.target, list(self.options.calib_amax),
                                                      self.options.kv_cache_dtype],
                           "src": str(self.src), "stat": st, "hq": self.hf_quant_config}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        """The same keys as ``convert.Plan.to_dict`` (so one renderer serves every target), plus the quantization."""
        shards = []
        for j in self.shards:
            kinds: dict[str, int] = {}
            for op in j.ops:
                kinds[op.kind] = kinds.get(op.kind, 0) + 1
            shards.append({"name": j.name, "action": "rewrite", "ops": kinds,
                           "src_bytes": (self.src / j.name).stat().st_size, "out_bytes": j.out_bytes})
        out = sum(s["out_bytes"] for s in shards)
        calibrated = bool(self.options.calib_amax)
        notes = [f"quantization: {self.out_spec.quantization.describe() if self.out_spec.quantization else '-'}",
                 "activation scales: " + ("calibrated (--calib-data)" if calibrated else
                                          "weight-only bounds (no clipping; --calib-data on a GPU node is tighter)")]
        return {"src": str(self.src), "dst": str(self.dst), "target": self.options.target, "shards": shards,
                "src_bytes": sum(s["src_bytes"] for s in shards), "out_bytes": out, "bytes_to_write": out,
                "config_json": "rewritten", "side_files": self.side_files,
                "hf_quant_config": self.hf_quant_config, "notes": notes,
                "activation_scales": "calibrated" if calibrated else "weight-only bounds"}


# ---- planning --------------------------------------------------------------------------------------------------

def plan_requant(src: str | Path, dst: str | Path, options: RequantOptions = RequantOptions()) -> RequantPlan:
    """Validate ``src`` (headers only) and plan its requantization into ``dst``; reads no tensor data.

    Raises CheckpointError naming the tensor/file and the fix for a defective or already-requantized source.
    Example: ``plan_requant("/models/K2", "/models/K2-nvfp4").to_dict()["out_bytes"]`` → ≈ 594e9.
    """
    from k2trt.checkpoint.inspect import inspect_checkpoint

    if options.target not in rq.TARGETS:
        raise CheckpointError(f"unknown requant target {options.target!r}", f"choose one of {', '.join(rq.TARGETS)}")
    s, d = Path(src).resolve(), Path(dst).resolve()
    if not s.is_dir():
        raise CheckpointError(f"{src} is not a directory", "point SRC at a K2 checkpoint directory")
    if d == s or s in d.parents or d in s.parents:
        raise CheckpointError(f"DST {dst} and SRC {src} overlap", "choose a DST outside the source checkpoint")
    rep = inspect_checkpoint(s)
    errs = [p for p in rep.problems if p.severity == "error"]
    if errs:
        raise CheckpointError(f"{errs[0].where}: {errs[0].message}", errs[0].fix or f"run `k2trt inspect {src}`")
    spec = ModelSpec.from_config(s)
    if spec.quantization is not None and spec.quantization.target is not None:
        raise CheckpointError(f"{src} is already a {spec.quantization.describe()} checkpoint",
                              "requantize from K2's block-FP8 (or a BF16) checkpoint")
    kv = "FP8" if options.kv_cache_dtype == "fp8" else None
    out_spec = spec.with_quantization(Quantization.requant(options.target, kv))
    groups: dict[str, list[TensorInfo]] = {}
    for t in out_spec.tensors():
        groups.setdefault(t.scale_of or t.name, []).append(t)
    headers = [files.read_header(f) for f in files.shard_files(s)]
    entries = {n: e for h in headers for n, e in h.tensors.items()}
    shards = []
    for h in headers:
        job = ShardJob(h.path.name, metadata=dict(h.metadata) or {"format": "pt"})
        for e in sorted(h.tensors.values(), key=lambda e: e.begin):
            op = _op_for(e, entries, groups, spec)
            if op is not None:
                job.ops.append(op)
        shards.append(job)
    hq = _hf_quant(out_spec, options.target, kv)
    side = sorted(p.name for p in s.iterdir() if p.is_file() and p.name not in _OWN_FILES
                  and not p.name.startswith(".") and not p.name.endswith(_SKIP_SIDE))
    return RequantPlan(s, d, options, spec, out_spec, shards, entries, hq, side)


def _op_for(e: files.TensorEntry, entries: dict[str, files.TensorEntry], groups: dict[str, list[TensorInfo]],
            spec: ModelSpec) -> TensorOp | None:
    if e.name.endswith(names.SCALE_SUFFIX):
        w = entries.get(e.name[: -len(names.SCALE_SUFFIX)])
        if w is not None and w.dtype == "F8_E4M3":
            return None  # re-emitted (or dropped) with its weight
    outs = groups.get(e.name)
    p = names.parse(e.name)
    if outs is None or p is None or len(outs) == 1 and outs[0].dtype == e.dtype:
        return TensorOp("copy", e, ((e.name, e.dtype, e.shape),))
    lead = outs[0]
    if lead.dtype == "BF16":
        kind = "bf16"
    elif lead.dtype == "F8_E4M3":
        kind = "fp8-keep" if e.dtype == "F8_E4M3" else "fp8-quant"
    else:
        kind = "nvfp4" if lead.dtype == "U8" else "int4"
    if tuple(e.shape) != tuple(lead.shape) and kind in ("bf16", "fp8-keep", "fp8-quant"):
        raise CheckpointError(f"{e.name} in {e.file} has shape {list(e.shape)}, expected {list(lead.shape)}",
                              "check config.json against the weights")
    return TensorOp(kind, e, tuple((t.name, t.dtype, t.shape) for t in outs), p.role, p.layer, p.expert)


def linear_module_names(spec: ModelSpec) -> tuple[list[str], set[str]]:
    """Every linear module and router of ``spec`` (HF names), and the set of routed-expert modules."""
    mods: list[str] = []
    quantized: set[str] = set()
    from k2trt.spec import LINEAR_ROLES

    for t in spec.tensors():
        if t.scale_of is not None:
            continue
        if t.role in LINEAR_ROLES or t.role in ("router", "lm_head"):
            m = rq.module_name(t.name)
            mods.append(m)
            if t.role in rq.EXPERT_ROLES:
                quantized.add(m)
    return mods, quantized


def write_quant_configs(d: Path, spec: ModelSpec, hq: dict[str, Any] | None = None) -> None:
    """hf_quant_config.json (+ quant_cfg.json for W4A8), then config.json with the inline quantization_config —
    the files TensorRT-LLM reads for a ModelOpt checkpoint of ``spec`` (``synth`` uses it for 4-bit presets)."""
    q = spec.quantization
    assert q is not None and q.target is not None, "a ModelOpt (nvfp4/w4a8) spec"
    hq = hq or _hf_quant(spec, q.target, q.kv_cache_quant_algo)
    files.write_json_atomic(d / rq.HF_QUANT_CONFIG, hq, indent=4)
    if q.target == "w4a8":
        files.write_json_atomic(d / rq.QUANT_CFG_FILE, hq["quantization"], indent=4)
    cfg = spec.to_config()
    cfg["quantization_config"] = R.inline_quantization_config(hq)
    files.write_json_atomic(d / "config.json", cfg)


def _hf_quant(out_spec: ModelSpec, target: str, kv: str | None) -> dict[str, Any]:
    if target == "nvfp4":
        mods, quantized = linear_module_names(out_spec)
        return R.hf_quant_config(target, R.exclude_modules(mods, quantized), None, kv)
    layers = rq.w4a8_quantized_layers(out_spec.num_hidden_layers, out_spec.moe_layers, bool(out_spec.q_lora_rank),
                                      out_spec.n_shared_experts > 0)
    return R.hf_quant_config(target, [], layers, kv)


# ---- per-tensor compute ----------------------------------------------------------------------------------------

class Source:
    """Reads source tensors as float32 (FP8 dequantised with its block scale) with ``os.pread``; keeps a small
    LRU of the routed experts' gate/up weights and per-expert statistics. ``peak_bytes`` is the most tensor data
    it held at once (the bounded-memory evidence)."""

    def __init__(self, root: Path, entries: dict[str, files.TensorEntry], spec: ModelSpec,
                 calib: dict[str, float], keep: int = 2) -> None:
        from k2trt.checkpoint.manifest import SourceReader

        self.io = SourceReader(root)
        self.entries, self.spec, self.calib, self.keep = entries, spec, calib, keep
        self._lru: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._stats: dict[tuple[int, int], dict[str, Any]] = {}
        self._norm_max: dict[int, torch.Tensor] = {}
        self.peak_bytes = 0
        self._live = 0

    def close(self) -> None:
        self.io.close()

    def raw(self, e: files.TensorEntry) -> bytes:
        return bytes(self.io.read(e.file, e.begin, e.nbytes))

    def _track(self, extra: int) -> None:
        cached = sum(t.numel() * t.element_size() for t in self._lru.values())
        self.peak_bytes = max(self.peak_bytes, cached + extra)

    def weight(self, name: str) -> "torch.Tensor":
        """The float32 value of a source weight (from the LRU when it holds it)."""
        import torch

        from k2trt.checkpoint.fp8 import dequantize

        if name in self._lru:
            self._lru.move_to_end(name)
            return self._lru[name]
        e = self.entries[name]
        if e.dtype == "F8_E4M3":
            sc = self.entries.get(names.scale_name(name))
            if sc is None:
                raise CheckpointError(f"{name} in {e.file} is FP8 but has no {names.scale_name(name)}",
                                      "re-download the shard holding it")
            w = dequantize(self.io.tensor(e), self.io.tensor(sc), torch.float32)
        else:
            w = self.io.tensor(e).to(torch.float32)
        if not torch.isfinite(w).all():
            raise CheckpointError(f"{name} in {e.file} has NaN/Inf values", "repair or re-download the shard")
        self._track(w.numel() * 4 + e.nbytes)
        return w

    def _cached(self, name: str) -> "torch.Tensor":
        w = self.weight(name)
        self._lru[name] = w
        self._lru.move_to_end(name)
        while len(self._lru) > self.keep:
            self._lru.popitem(last=False)
        self._track(0)
        return w

    def expert_stats(self, layer: int, expert: int) -> dict[str, Any]:
        """``scale_2`` (shared by gate and up) and activation amax for gate/up and down of one expert."""
        key = (layer, expert)
        if key in self._stats:
            return self._stats[key]
        gate = self._cached(names.name_of("expert_gate", layer, expert))
        up = self._cached(names.name_of("expert_up", layer, expert))
        if layer not in self._norm_max:
            self._norm_max[layer] = self.weight(names.name_of("post_norm", layer))
        x_amax, down_amax = R.activation_bounds(self._norm_max[layer], gate, up, self.spec.hidden_size)
        mods = {r: rq.module_name(names.name_of(r, layer, expert)) for r in rq.EXPERT_ROLES}
        x_amax = self.calib.get(mods["expert_gate"], self.calib.get(mods["expert_up"], x_amax))
        down_amax = self.calib.get(mods["expert_down"], down_amax)
        st = {"scale_2": R.nvfp4_scale_2(gate, up), "x_amax": x_amax, "down_amax": down_amax}
        if len(self._stats) > 4 * self.keep:  # experts are visited in order; old entries are never needed again
            self._stats.pop(next(iter(self._stats)))
        self._stats[key] = st
        return st


def compute(op: TensorOp, src: Source, target: str) -> list[bytes | memoryview]:
    """The output bytes of one op, in ``op.outputs`` order."""
    def tb(x: "torch.Tensor") -> memoryview:  # raw little-endian bytes (0-dim scales included)
        import torch

        return memoryview(x.contiguous().reshape(-1).view(torch.uint8).numpy()).cast("B")

    if op.kind == "copy":
        return [src.raw(op.src)]
    if op.kind == "fp8-keep":
        return [src.raw(op.src), src.raw(src.entries[names.scale_name(op.src.name)])]
    if op.kind == "bf16":
        import torch

        return [tb(src.weight(op.src.name).to(torch.bfloat16))]
    if op.kind == "fp8-quant":
        from k2trt.checkpoint.fp8 import quantize

        q, s = quantize(src.weight(op.src.name))
        return [tb(q), tb(s)]
    assert op.layer is not None and op.expert is not None and op.role is not None  # set for expert ops by _op_for
    st = src.expert_stats(op.layer, op.expert)
    w = src.weight(op.src.name)
    amax = st["down_amax"] if op.role == "expert_down" else st["x_amax"]
    if op.kind == "nvfp4":
        q, s, s2 = R.quantize_nvfp4(w, None if op.role == "expert_down" else st["scale_2"])
        return [tb(q), tb(s), tb(s2), tb(R.input_scale(amax, target))]
    q4, s4 = R.quantize_w4a8(w)
    return [tb(q4), tb(s4), tb(R.input_scale(amax, target))]


# ---- the run ---------------------------------------------------------------------------------------------------

@dataclass
class RequantResult:
    """What a run did (the ``--json`` summary)."""

    plan: RequantPlan
    state: str
    """``converted``, ``resumed`` or ``up-to-date``."""
    shards_written: int = 0
    shards_skipped: int = 0
    peak_tensor_bytes: int = 0
    """Most source-tensor data held at once (float32 values + the expert pair cache)."""
    bytes_written: int = 0
    seconds: float = 0.0
    verified: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The same keys as ``convert.ConvertResult.to_dict``, plus ``peak_tensor_bytes``."""
        d = self.plan.to_dict()
        d.update(state=self.state, shards_written=self.shards_written, shards_skipped=self.shards_skipped,
                 bytes_written=self.bytes_written, seconds=round(self.seconds, 3), verified=self.verified,
                 manifest=str(self.plan.dst / STATE_FILE), peak_tensor_bytes=self.peak_tensor_bytes)
        return d


def requantize(src: str | Path, dst: str | Path, options: RequantOptions = RequantOptions(), *,
               progress: bool = False, stop_after: int | None = None) -> RequantResult:
    """Requantize the K2 checkpoint in ``src`` into ``dst`` (NVFP4 or W4A8), streaming and resumable.

    Args:
        src: a K2 block-FP8 (or BF16) checkpoint directory.
        dst: absent, empty, or an interrupted run of this same requantization (resumed).
        options: target, calibrated activation amax, KV-cache dtype, force.
        progress: byte progress bar on stderr.
        stop_after: stop after this many shards (tests of resumption; the directory is left resumable).
    Returns:
        A RequantResult. CheckpointError (one line: what, and the fix) on bad input or a failed write.
    Example:
        ``requantize("/models/K2", "/models/K2-nvfp4", RequantOptions("nvfp4"))``
    """
    import time

    from tqdm import tqdm

    t0 = time.monotonic()
    plan = plan_requant(src, dst, options)
    digest = plan.digest()
    state = _prepare(plan, digest)
    done = {n for n, size in state["files"].items() if (plan.dst / n).is_file()
            and (plan.dst / n).stat().st_size == size}
    if state["complete"] and len(done) == len(plan.shards):
        return RequantResult(plan, "up-to-date", shards_skipped=len(done))
    res = RequantResult(plan, "resumed" if done else "converted", shards_skipped=len(done))
    state["files"] = {k: v for k, v in state["files"].items() if k in done}
    state["complete"] = False
    plan.dst.mkdir(parents=True, exist_ok=True)
    files.write_json_atomic(plan.dst / STATE_FILE, state)
    todo = [j for j in plan.shards if j.name not in done]
    source = Source(plan.src, plan.entries, plan.spec, dict(options.calib_amax))
    bar = tqdm(total=sum(op.src.nbytes for j in todo for op in j.ops), unit="B", unit_scale=True,
               desc=f"requant → {options.target}", disable=not progress)
    try:
        for i, job in enumerate(todo):
            if stop_after is not None and i >= stop_after:
                return res
            _write_shard(plan, job, source, bar)
            state["files"][job.name] = (plan.dst / job.name).stat().st_size
            files.write_json_atomic(plan.dst / STATE_FILE, state)
            res.shards_written += 1
            res.bytes_written += state["files"][job.name]
    except OSError as e:
        raise CheckpointError(f"{plan.dst}: writing failed: {e.strerror or e}",
                              "free space on DST's filesystem and run the same command again to resume") from None
    finally:
        bar.close()
        source.close()
        res.peak_tensor_bytes = source.peak_bytes
        res.seconds = time.monotonic() - t0
    _finish(plan, state)
    res.seconds = time.monotonic() - t0
    return res


def _prepare(plan: RequantPlan, digest: str) -> dict[str, Any]:
    fresh: dict[str, Any] = {"format": _STATE_FORMAT, "target": plan.options.target, "source": str(plan.src),
                             "digest": digest, "k2trt_version": __version__, "complete": False, "files": {}}
    d = plan.dst
    if not d.exists():
        return fresh
    if not d.is_dir():
        raise CheckpointError(f"{d} exists and is not a directory", "choose another DST")
    try:
        old = json.loads((d / STATE_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        old = None
    if isinstance(old, dict) and old.get("format") == _STATE_FORMAT and old.get("digest") == digest:
        return old
    if any(d.iterdir()):
        if not plan.options.force:
            raise CheckpointError(f"{d} is not empty and does not hold this requantization",
                                  "pass --force to replace its contents, or choose an empty DST")
        for p in d.iterdir():
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
    return fresh


def _write_shard(plan: RequantPlan, job: ShardJob, source: Source, bar: Any) -> None:
    with files.ShardWriter(plan.dst / job.name, job.out_tensors, job.metadata) as w:
        for op in job.ops:
            for (name, _dt, _shape), data in zip(op.outputs, compute(op, source, plan.options.target)):
                w.write(name, data)
            bar.update(op.src.nbytes)


def _finish(plan: RequantPlan, state: dict[str, Any]) -> None:
    """Index, side files, hf_quant_config.json (+ quant_cfg.json), config.json last, state marked complete."""
    d = plan.dst
    for p in d.iterdir():
        if p.name.startswith(".") and p.name.endswith(".partial"):
            p.unlink()
    stray = [p.name for p in files.shard_files(d) if p.name not in {j.name for j in plan.shards}]
    if stray:
        raise CheckpointError(f"{d / stray[0]} is not part of this conversion, and TensorRT-LLM loads every "
                              "*.safetensors in the directory", "remove it, or convert into an empty DST")
    weight_map = {n: j.name for j in plan.shards for n, _d, _s in j.out_tensors}
    total = sum(e - b for j in plan.shards for b, e in files.layout(j.out_tensors, j.metadata)[1].values())
    files.write_json_atomic(d / names.INDEX_FILE, {"metadata": {"total_size": total},
                                                   "weight_map": dict(sorted(weight_map.items()))})
    for n in plan.side_files:
        tmp = d / f".{n}.partial"
        shutil.copyfile(plan.src / n, tmp)
        os.replace(tmp, d / n)
    write_quant_configs(d, plan.out_spec, plan.hf_quant_config)
    state["complete"] = True
    files.write_json_atomic(d / STATE_FILE, state)


# ---- --verify: every output tensor against its source, streaming ----------------------------------------------

def verify_output(plan: RequantPlan) -> dict[str, Any]:
    """Re-read every output tensor and check it against the source, one tensor at a time.

    4-bit experts must dequantise to within their format's rounding bound of the source weight (NVFP4: one e2m1
    unit, ``weight_scale · weight_scale_2``, per element; INT4: half a group scale), with gate/up sharing
    ``weight_scale_2``/``input_scale``; BF16 modules must equal the source's exact dequantisation; copied tensors
    must be byte-identical. A transposed or mis-blocked scale breaks the bound. Raises CheckpointError naming the
    first bad tensor; returns ``{"tensors": n, "max_rel_error": {...}}``.
    """
    import time

    import torch

    from k2trt.checkpoint.manifest import SourceReader

    t0 = time.monotonic()
    out_loc = files.tensor_locations(plan.dst)
    rd = R.weight_fn(plan.dst)
    src = Source(plan.src, plan.entries, plan.spec, {})
    out = SourceReader(plan.dst)
    worst: dict[str, float] = {}
    n = 0

    def bad(name: str, why: str) -> CheckpointError:
        return CheckpointError(f"{plan.dst}: {name} {why}", "re-run the conversion (delete DST or pass --force)")

    try:
        for job in plan.shards:
            for op in job.ops:
                n += 1
                name = op.src.name
                if op.kind in ("copy", "fp8-keep"):
                    for (o, _d, _s), want in zip(op.outputs, compute(op, src, plan.options.target)):
                        e = out_loc[o]
                        if bytes(out.read(e.file, e.begin, e.nbytes)) != bytes(want):
                            raise bad(o, "differs from the source bytes")
                    continue
                assert op.role is not None
                w = src.weight(name)
                got = rd(op.role, op.layer, op.expert)
                if op.kind in ("bf16", "fp8-quant"):
                    ref = w.to(torch.bfloat16).float() if op.kind == "bf16" else w
                    tol = 0.0 if op.kind == "bf16" else float(w.abs().max()) / 14  # e4m3: ≤ 1/16 relative
                    if (got - ref).abs().max() > tol:
                        raise bad(name, f"is not the {op.kind} value of the source")
                    continue
                mod = rq.module_name(name)

                def t(suffix: str) -> "torch.Tensor":
                    return out.tensor(out_loc[f"{mod}.{suffix}"])

                if op.kind == "nvfp4":
                    step = (t(rq.WEIGHT_SCALE).float() * t(rq.WEIGHT_SCALE_2)).repeat_interleave(rq.NVFP4_GROUP, 1)
                else:
                    step = 0.5 * t(rq.WEIGHT_SCALE_INV).repeat_interleave(rq.W4A8_GROUP, 1) * (1 + 2**-7)
                if ((got - w).abs() > step + 1e-7).any():
                    raise bad(name, f"is off its source by more than the {op.kind} rounding bound (scale layout?)")
                if op.role == "expert_up":
                    g = rq.module_name(names.name_of("expert_gate", op.layer, op.expert))
                    for sfx in ((rq.WEIGHT_SCALE_2, rq.INPUT_SCALE) if op.kind == "nvfp4" else (rq.INPUT_SCALE,)):
                        e = out_loc[f"{g}.{sfx}"]
                        if not torch.equal(t(sfx), out.tensor(e)):
                            raise bad(f"{mod}.{sfx}", "differs from the gate's (TensorRT-LLM fuses gate and up)")
                rel = float((got - w).norm() / max(float(w.norm()), 1e-30))
                worst[op.kind] = max(worst.get(op.kind, 0.0), rel)
    finally:
        src.close()
        out.close()
    return {"tensors": n, "max_rel_error": worst, "files_hashed": 0, "seconds": round(time.monotonic() - t0, 3)}
