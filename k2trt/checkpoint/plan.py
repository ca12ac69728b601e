"""Plan a conversion from headers alone: validate the source, map every source tensor to an op, lay out each
output shard (the ``--dry-run`` answer, and the input of the driver in ``convert.py``).

Every source tensor gets exactly one ``Op``, in file order, so each output shard is its source shard rewritten:

- ``copy``: the bytes as they are (every tensor of a ``trtllm`` shard, norms, embeddings, routers, and linears the
  target keeps in their format);
- a re-encode of a linear weight, named by its output format (``ENCODE_KIND``): ``dequant`` (→ BF16), ``quant``
  (→ block FP8), ``nvfp4``, ``int4`` (W4A8's), ``ct-int4`` (compressed-tensors). Its outputs are the output
  format's parts (``formats.FORMATS``), written where the source weight was; it reads the source weight's other
  parts (scales) wherever they are;
- ``drop``: a source part consumed by its weight's re-encode (the block scale of a dequantised weight).

A linear's output format is the output spec's (``ModelSpec.linear_format`` under the target's quantization, see
``targets.py``); its source format is what ``formats.stored`` finds. Equal formats copy; anything else re-encodes,
so a new source format or target needs no new op.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from k2trt import __version__
from k2trt.checkpoint import files, formats, names, quantcfg, targets
from k2trt.checkpoint.fp8 import check_scale_shape
from k2trt.checkpoint.manifest import MANIFEST_FILE, digest
from k2trt.errors import CheckpointError
from k2trt.spec import LINEAR_ROLES, ModelSpec

def _torch_free(op: "Op") -> bool:
    # the compiled loops (kernels.py, kernels4.py) read FP8 bytes and BF16 bits, and block FP8 is also encoded from
    # packed INT4 bytes; any other source decodes with torch
    st = op.stored
    if op.kind in ("copy", "drop"):
        return True
    if st is None:
        return False
    fp8, bf16_bits = st.fmt.name == "fp8", st.fmt.name == "bf16" and st.weight.dtype == "BF16"
    packed = st.fmt.nibbles is not None
    return {"dequant": fp8, "quant": bf16_bits or packed, "nvfp4": fp8 or bf16_bits,
            "int4": fp8 or bf16_bits}.get(op.kind, False)


ENCODE_KIND = {"bf16": "dequant", "fp8": "quant", "nvfp4": "nvfp4", "int4": "int4", "ct-int4": "ct-int4"}
"""Op kind of a re-encode, by output storage format."""
# Weight formats that must not ride along as "side files": a loader could pick them up instead of the shards.
_NOT_CARRIED = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".h5", ".msgpack", ".partial")
_OWN_FILES = (names.INDEX_FILE, "config.json", MANIFEST_FILE) + quantcfg.FILES


@dataclass(frozen=True)
class ConvertOptions:
    """Everything that decides what ``convert`` writes; every option means the same for every target.
    The CLI takes its defaults from here."""

    target: str = "trtllm"
    """A row of ``targets.TARGETS``: ``trtllm``, ``bf16``, ``fp8-block``, ``nvfp4``, ``w4a8`` or ``ct-int4``."""
    kv_cache_dtype: str = "auto"
    """``fp8`` asks TensorRT-LLM for an FP8 KV cache (hf_quant_config.json); ``auto`` leaves KV as BF16."""
    model_type: str = "auto"
    """config.json model_type: ``auto`` keeps ``kimi_k2`` when its remote-code files are there (trtllm target),
    else ``deepseek_v3``; or force one."""
    copy: bool = False
    """Never hard-link a shard (``trtllm`` links where the filesystem allows; other targets rewrite anyway)."""
    hash: bool = True
    """Record the BLAKE3 hash of every output file (reads linked shards once more; resume re-checks finished shards)."""
    workers: int = 2
    """Threads converting tensors (trtllm: shards linked/copied/hashed at once)."""
    force: bool = False
    """Replace a non-empty DST that does not hold this same (resumable) conversion."""
    calib_amax: tuple[tuple[str, float], ...] = ()
    """Calibrated activation amax per expert module (``reference.calibrate``), for targets that take
    calibration; empty: the weight-only bounds."""


@dataclass(slots=True)
class Op:
    """One source tensor and what becomes of it (see the module docstring)."""

    kind: str
    src: files.TensorEntry
    outputs: tuple[tuple[str, str, tuple[int, ...]], ...]
    stored: formats.Stored | None = None
    """For a re-encode: the source linear (its format and parts)."""
    out_fmt: str | None = None
    role: str | None = None
    layer: int | None = None
    expert: int | None = None


@dataclass
class ShardPlan:
    """One output shard: same name as its source shard; ``whole`` (linked/copied as a file) or ``rewrite``."""

    name: str
    action: str
    src_size: int
    ops: list[Op] = field(default_factory=list)
    metadata: dict[str, str] = field(default_factory=dict)
    out_size: int = 0
    data_size: int = 0

    @property
    def out_tensors(self) -> list[tuple[str, str, tuple[int, ...]]]:
        return [o for op in self.ops for o in op.outputs]

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
    target: targets.Target
    spec: ModelSpec
    out_spec: ModelSpec
    shards: list[ShardPlan]
    meta: targets.Metadata
    side_files: list[str]
    notes: list[str]
    weight_map: dict[str, str]
    link_possible: bool
    entries: dict[str, files.TensorEntry]
    scales: list[files.TensorEntry] = field(default_factory=list)
    """Every F32 scale the output depends on (checked for NaN/Inf/zero before anything is written)."""

    @property
    def src_bytes(self) -> int:
        return sum(s.src_size for s in self.shards)

    @property
    def out_bytes(self) -> int:
        return sum(s.out_size for s in self.shards)

    @property
    def links(self) -> bool:
        """Whether shards will be hard-linked rather than written."""
        return self.target.whole_files and self.link_possible and not self.options.copy

    @property
    def needs_torch(self) -> bool:
        """Whether any op computes with torch (copies, FP8 → BF16, BF16 → FP8 and FP8/BF16 → NVFP4/W4A8 run on
        numpy and compiled loops alone)."""
        return not all(_torch_free(op) for sp in self.shards for op in sp.ops)

    @property
    def needs_kernels(self) -> bool:
        """Whether any op re-encodes (FP8 decoding and block-FP8 encoding run through ``kernels.py``)."""
        return any(op.kind not in ("copy", "drop") for sp in self.shards for op in sp.ops)

    @property
    def needs_kernels4(self) -> bool:
        """Whether any op encodes NVFP4 or W4A8 (``kernels4.py``)."""
        return any(op.kind in ("nvfp4", "int4") for sp in self.shards for op in sp.ops)

    @property
    def needs_compressed_tensors(self) -> bool:
        """Whether any op decodes or encodes compressed-tensors INT4 with torch (``quant4`` unpacks and packs with
        the package; INT4 → block FP8 reads the packed bytes in a compiled loop instead)."""
        return any(not _torch_free(op) and "ct-int4" in (op.out_fmt, op.stored.fmt.name if op.stored else None)
                   for sp in self.shards for op in sp.ops)

    def digest(self) -> str:
        """Everything that decides the output bytes; a resume must match it."""
        stats = {f: _stat(self.src / f) for f in [s.name for s in self.shards] + self.side_files + ["config.json"]}
        o = self.options
        return digest({"version": __version__, "target": o.target, "hash": o.hash, "kv": o.kv_cache_dtype,
                       "calib": [list(x) for x in o.calib_amax], "config": self.meta.config,
                       "meta": self.meta.files, "shards": [(s.name, s.action) for s in self.shards],
                       "src": str(self.src), "stats": stats})

    def to_dict(self) -> dict[str, Any]:
        d = {"src": str(self.src), "dst": str(self.dst), "target": self.options.target,
             "shards": [{"name": s.name, "action": s.action if s.action == "rewrite" else
                         ("link" if self.links else "copy"), "ops": s.counts(), "src_bytes": s.src_size,
                         "out_bytes": s.out_size} for s in self.shards],
             "src_bytes": self.src_bytes, "out_bytes": self.out_bytes,
             "bytes_to_write": 0 if self.links else self.out_bytes,
             "config_json": "rewritten" if self.meta.config is not None else "copied",
             "side_files": self.side_files, "hf_quant_config": self.meta.hf_quant_config, "notes": self.notes}
        if self.target.calibrated:
            d["activation_scales"] = "calibrated" if self.options.calib_amax else "weight-only bounds"
        return d


def _stat(p: Path) -> list[int]:
    st = p.stat()
    return [st.st_size, st.st_mtime_ns]


# ---- planning ----------------------------------------------------------------------------------------------------

def plan_conversion(src: str | Path, dst: str | Path, options: ConvertOptions = ConvertOptions()) -> Plan:
    """Validate ``src`` from its headers and plan the conversion into ``dst``. Reads no tensor data.

    Raises CheckpointError (one line: the file or tensor, and the fix) for any defect a loader would trip on.
    Example: ``plan_conversion("/models/K2", "/models/K2-bf16", ConvertOptions(target="bf16")).out_bytes``.
    """
    t = targets.target(options.target)
    s, d = _check_paths(Path(src), Path(dst))
    spec = _validated_spec(s)
    if t.calibrated and spec.quantization is not None and spec.quantization.target is not None:
        raise CheckpointError(f"{src} is already a {spec.quantization.describe()} checkpoint",
                              f"convert to {t.name} from K2's block-FP8 (or a BF16) checkpoint")
    if t.whole_files and spec.quantization is not None and spec.quantization.is_int4_source:
        raise CheckpointError(f"{src} holds Moonshot's INT4 experts (compressed-tensors), which TensorRT-LLM cannot "
                              "load as they are", f"convert them: k2trt convert {src} {dst} --to fp8-block (Hopper) "
                              "or --to nvfp4 (Blackwell)")
    kv = options.kv_cache_dtype == "fp8"
    out = spec.with_quantization(t.quantization(spec, kv))
    if kv and out.quantization is not None and out.quantization.is_int4_source:
        raise CheckpointError(f"--kv-cache-dtype fp8 does not apply to --to {t.name}: TensorRT-LLM, which reads it "
                              "from hf_quant_config.json, cannot load that format", "leave --kv-cache-dtype at auto")
    headers = [_read_validated_header(s / f) for f in _source_shards(s)]
    entries, vision = names.strip_text_prefix({n: e for h in headers for n, e in h.tensors.items()})
    linears, part_of, scales = _linears(entries)
    notes: list[str] = []
    if spec.multimodal is not None:  # K2.5: a text-only DeepseekV3 checkpoint (docs/reference/k2_int4.md §4)
        notes.append(f"K2.5: text-only DeepseekV3ForCausalLM output; the vision tower ({len(vision)} tensors) is not "
                     "carried — images are not served")
    shards: list[ShardPlan] = []
    for h in headers:
        sp = ShardPlan(h.path.name, "whole" if t.whole_files else "rewrite", h.file_size,
                       metadata=h.metadata or {"format": "pt"})
        for e in sorted(h.tensors.values(), key=lambda e: e.begin):
            if e.name in vision:
                sp.ops.append(Op("drop", e, ()))
                continue
            e = entries[names.text_name(e.name) or e.name]
            sp.ops.append(_op_for(e, linears, part_of, out, t.whole_files))
        if sp.action == "whole":
            sp.data_size, sp.out_size = sum(e.nbytes for e in h.tensors.values()), h.file_size
        else:
            header, offsets = files.layout(sp.out_tensors, sp.metadata)
            sp.data_size = sum(e - b for b, e in offsets.values())
            sp.out_size = len(header) + sp.data_size
        shards.append(sp)
    weight_map = {n: sp.name for sp in shards for n, _d, _s in sp.out_tensors}
    if not t.whole_files and all(op.kind in ("copy", "drop") for sp in shards for op in sp.ops):
        notes.append(f"source is already {t.name}: tensors are copied unchanged")
    if t.calibrated:
        notes += [f"quantization: {out.quantization.describe() if out.quantization else '-'}",
                  "activation scales: " + ("calibrated (--calib-data)" if options.calib_amax else
                                           "weight-only bounds (no clipping; --calib-data on a GPU node is tighter)")]
    if spec.quantization is not None and spec.quantization.is_int4_source:
        notes.append(_int4_note(spec, out))
    meta = targets.metadata(t, s, spec, out, kv, options.model_type, notes)
    side, skipped = _side_files(s)
    notes += [f"not carried: {n}" for n in skipped]
    return Plan(s, d, options, t, spec, out, shards, meta, side, notes, weight_map, _same_fs(s, d), entries,
                scales)


def _int4_note(spec: ModelSpec, out: ModelSpec) -> str:
    """What happens to Moonshot's INT4 experts (group 32) under the output's format, and its error bound."""
    fmt = out.linear_format("expert_gate")
    what = {"bf16": "dequantised exactly (code × scale) and rounded once to BF16: |Δw| ≤ 2^-8 |w|",
            "fp8": "dequantised and re-quantised to 128×128 block FP8 (e4m3: |Δw| ≤ 2^-4 |w| + block scale / 2^10)",
            "int4": "re-grouped from 32 to 128 inputs per scale (lossy: --verify prints the worst ‖Δw‖/‖w‖)",
            "nvfp4": "re-quantised to NVFP4 (e2m1 per 16, lossy: --verify prints the worst ‖Δw‖/‖w‖)"}
    return f"INT4 routed experts (compressed-tensors, group {spec.quantization.group_size if spec.quantization else '?'})" \
        f": {what.get(fmt, fmt)}"


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
    with os.fdopen(files.open_regular(path), "rb") as f:  # the one way shards are opened (regular files only)
        size = os.fstat(f.fileno()).st_size
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    meta = header.pop("__metadata__", None) or {}
    start, fname = 8 + n, path.name
    entries = {k: files.TensorEntry(k, v["dtype"], tuple(v["shape"]), start + v["data_offsets"][0],
                                    start + v["data_offsets"][1], fname) for k, v in header.items()}
    return files.ShardHeader(path, entries, {str(k): str(v) for k, v in meta.items()}, start, size)


def _source_shards(src: Path) -> list[str]:
    idx = files.read_index(src)
    if idx is None:
        return [p.name for p in files.shard_files(src)]
    # inspect has checked index ↔ files both ways; keep the natural order of the files on disk
    listed = set(idx["weight_map"].values())
    return [p.name for p in files.shard_files(src) if p.name in listed]


Linear = tuple[formats.Stored, "names.ParsedName | None"]


def _linears(entries: dict[str, files.TensorEntry]
             ) -> tuple[dict[str, Linear], dict[str, str], list[files.TensorEntry]]:
    """Every linear weight of the source, checked part by part: stored weight entry name → (how it is stored, its
    role), each other part's name → its weight entry's name, and the F32 scales among the parts. Any FP8 weight
    counts, known role or not: an FP8 weight without its scale is unusable whatever its name."""
    out: dict[str, Linear] = {}
    part_of: dict[str, str] = {}
    scales: list[files.TensorEntry] = []
    for name, e in entries.items():
        wname = formats.weight_name_of(name)
        if wname is None:
            continue
        p = names.parse(wname)
        if not (e.dtype == "F8_E4M3" or (p is not None and p.role in LINEAR_ROLES)):
            continue
        st = formats.stored(entries, wname, required=False)
        if st is None or st.weight.name != name:
            continue
        for part in st.fmt.parts[1:]:
            pe = st.parts.get(part.part)
            if pe is None:
                continue
            want = part.shape_for(*st.shape)
            if pe.shape != want:
                if st.fmt.name == "fp8":
                    check_scale_shape(f"{name} in {e.file}", st.shape, pe.shape)  # raises, naming both shapes
                raise CheckpointError(f"{pe.name} in {pe.file} has shape {list(pe.shape)}, expected {list(want)} "
                                      f"for the {list(st.shape)} {st.fmt.name} weight",
                                      "the scale does not belong to this weight; re-download or re-convert")
            part_of[pe.name] = name
            if pe.dtype == "F32" and part.part in ("scale", "scale_2"):
                scales.append(pe)
        out[name] = (st, p)
    return out, part_of, scales


def _op_for(e: files.TensorEntry, linears: dict[str, Linear], part_of: dict[str, str], out: ModelSpec,
            whole: bool) -> Op:
    copy = Op("copy", e, ((e.name, e.dtype, e.shape),))
    if whole:
        return copy
    lin = linears.get(e.name)
    if lin is None:  # a part of a linear: dropped when its weight is re-encoded, else copied with it
        w = linears.get(part_of.get(e.name, ""))
        return Op("drop", e, ()) if w is not None and _out_fmt(*w, out) != w[0].fmt.name else copy
    st, p = lin
    fmt = _out_fmt(st, p, out)
    if fmt == st.fmt.name:
        return copy
    module = names.module_name(st.name)
    f = formats.FORMATS[fmt]
    outs = tuple((f.part_name(module, part.part), part.dtype, part.shape_for(*st.shape)) for part in f.parts)
    return Op(ENCODE_KIND[fmt], e, outs, st, fmt, p.role if p else None, p.layer if p else None,
              p.expert if p else None)


def _out_fmt(st: formats.Stored, p: "names.ParsedName | None", out: ModelSpec) -> str:
    if p is not None and p.role in LINEAR_ROLES:
        return out.linear_format(p.role)
    return "bf16" if out.quantization is None else st.fmt.name  # an unknown linear: dequantised for bf16 only


def _side_files(src: Path) -> tuple[list[str], list[str]]:
    keep, skipped = [], []
    for p in sorted(src.iterdir()):
        n = p.name
        if n in _OWN_FILES or n.startswith("."):
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
