"""Inspect a K2 checkpoint from its headers alone: config ↔ tensors ↔ index ↔ files, plus tokenizer files.

Never reads tensor data, so the 1 TB K2 inspects in seconds. Every finding is a Problem with a severity:
``error`` (a loader would fail or load wrong weights), ``warning`` (works, but not what you want), ``info``.
Checks, in the order a user hits them:
- config.json parses into a ModelSpec;
- every ``*.safetensors`` header is valid (truncation, bad JSON, offsets);
- the index names only files that exist and tensors that are in those files; no tensor is in two files; no file
  sits outside the index (TensorRT-LLM loads *every* ``*.safetensors`` in the directory);
- every tensor the spec expects is present with its shape and dtype, every FP8 weight has a ``weight_scale_inv`` of
  the block-grid shape, and unknown tensors are reported (``rotary_emb.inv_freq`` as ignored extras);
- NVFP4 / W4A8 checkpoints (``hf_quant_config.json``, ``formats.py``): the packed 4-bit experts with their
  ``weight_scale`` / ``weight_scale_2`` / ``input_scale`` (or W4A8 ``weight_scale_inv`` / ``input_scale``), the
  precision of every other module, and the config files TensorRT-LLM reads;
- Moonshot's INT4 (K2-Thinking / K2.5 / K2.6, compressed-tensors ``pack-quantized``): ``int4`` reports the packed
  vs declared expert shape, the group size and scale shape, the ignore list (checked against the layout: every
  linear but the routed experts stays BF16), and the ``k2trt convert`` commands that make it servable — TensorRT-LLM's
  compressed-tensors loader takes FP8, NVFP4 and MXFP4 groups, not INT4 (docs/reference/k2_int4.md §4);
- the tokenizer and chat template files are there.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from k2trt.checkpoint import files, formats, names
from k2trt.checkpoint.quantcfg import QUANT_CFG_FILE
from k2trt.errors import CheckpointError, ConfigError
from k2trt.spec import EXPERT_ROLES, HF_QUANT_CONFIG, LINEAR_ROLES, ModelSpec, TensorInfo

TOKENIZER_FILES = ("tiktoken.model", "tokenizer_config.json")
INT4_CONVERSIONS = {
    "hopper": ("fp8-block", "H100 / H200 / H20: 128×128 block FP8, K2-Instruct's layout (~1.03 TB; 2×8 H200)"),
    "blackwell": ("nvfp4", "B200 / GB200: NVFP4 routed experts, the rest BF16 (~594 GB)"),
}
"""GPU family → the ``k2trt convert --to`` that makes an INT4 checkpoint servable by TensorRT-LLM, and why."""


@dataclass(frozen=True)
class Problem:
    """One finding: severity (error/warning/info), where (file or tensor), what, and how to fix it."""

    severity: str
    where: str
    message: str
    fix: str = ""


@dataclass
class LayerSummary:
    """Per-layer totals."""

    layer: int
    kind: str
    tensors: int = 0
    params: int = 0
    bytes: int = 0


@dataclass
class Report:
    """What inspect found. ``ok`` is True when there is no error or warning."""

    model_dir: str
    model_type: str | None = None
    quantization: str | None = None
    shards: int = 0
    tensors: int = 0
    params: int = 0
    bytes_by_dtype: dict[str, int] = field(default_factory=dict)
    fp8_coverage: float = 0.0
    coverage: dict[str, float] = field(default_factory=dict)
    """Share of linear-weight parameters per storage format: ``fp8``, ``bf16``, ``nvfp4``, ``int4``."""
    layers: list[LayerSummary] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    int4: dict[str, Any] | None = None
    """For Moonshot's INT4 checkpoints: group size, packed vs declared expert shape, scale shape, ignore list,
    whether TensorRT-LLM loads it (no) and the conversions that make it servable (``INT4_CONVERSIONS``)."""

    @property
    def ok(self) -> bool:
        return not any(p.severity in ("error", "warning") for p in self.problems)

    def count(self, severity: str) -> int:
        return sum(p.severity == severity for p in self.problems)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ok"] = self.ok
        d["total_bytes"] = sum(self.bytes_by_dtype.values())
        return d


def inspect_checkpoint(model_dir: str | Path) -> Report:
    """Inspect ``model_dir`` (headers only) and return a Report; never raises for checkpoint defects.

    Example: ``r = inspect_checkpoint("/models/Kimi-K2-Instruct"); r.ok, r.params``.
    """
    d = Path(model_dir)
    rep = Report(str(d))
    if not d.is_dir():
        rep.problems.append(Problem("error", str(d), "is not a directory", "point at the checkpoint directory"))
        return rep
    spec = _spec(d, rep)
    present = _read_shards(d, rep)
    _check_index(d, rep, present)
    text, vision = names.strip_text_prefix(present)
    if vision:
        gib = sum(e.nbytes for e in vision.values()) / 2**30
        rep.problems.append(Problem("info", "vision_tower", f"K2.5 vision tower and projector: {len(vision)} tensors "
                                    f"({gib:.2f} GiB) carried in the checkpoint; k2trt serves the text model only — "
                                    "images are not served"))
    if spec is not None:
        _check_tensors(spec, rep, text)
    _check_side_files(d, rep)
    rep.tensors = len(present)
    for e in present.values():
        rep.bytes_by_dtype[e.dtype] = rep.bytes_by_dtype.get(e.dtype, 0) + e.nbytes
    return rep


def _spec(d: Path, rep: Report) -> ModelSpec | None:
    try:
        spec = ModelSpec.from_config(d)
    except ConfigError as e:
        rep.problems.append(Problem("error", "config.json", str(e)))
        return None
    rep.model_type = spec.model_type
    q = spec.quantization
    rep.quantization = q.describe() if q else "none (bf16)"
    if q is not None and q.is_int4_source:
        _int4(d, spec, rep)
    if q is not None and q.target is not None:
        if not (d / HF_QUANT_CONFIG).exists():
            rep.problems.append(Problem("warning", HF_QUANT_CONFIG, f"missing for a {q.quant_algo} checkpoint "
                                        "(TensorRT-LLM reads it before config.json's quantization_config)",
                                        "re-run k2trt convert --to " + q.target))
        if q.target == "w4a8" and not (d / QUANT_CFG_FILE).exists():
            rep.problems.append(Problem("info", QUANT_CFG_FILE, "missing; the per-layer W4A8/FP8 split comes "
                                        "from hf_quant_config.json's quantized_layers"))
    return spec


def _int4(d: Path, spec: ModelSpec, rep: Report) -> None:
    """The INT4 section: shapes of one routed expert, the ignore list checked against the layout, the conversions."""
    qc = spec.raw.get("quantization_config") or {}
    ignore = [str(x) for x in qc.get("ignore") or []]
    layer = spec.moe_layers[0] if spec.moe_layers else 0
    gate = {t.part: (formats.tensor_name(t), t) for t in spec.tensors()
            if t.role == "expert_gate" and t.layer == layer and t.expert == 0}
    cmds = {k: f"k2trt convert {d} DST --to {to}" for k, (to, _why) in INT4_CONVERSIONS.items()}
    rep.int4 = {"group_size": spec.quantization.group_size if spec.quantization else None,
                "declared_shape": [spec.moe_intermediate_size, spec.hidden_size],
                "stored": {p: {"name": n, "dtype": t.dtype, "shape": list(t.shape)} for p, (n, t) in gate.items()},
                "ignore": ignore, "trtllm_loads": False, "convert": cmds}
    for role in sorted(LINEAR_ROLES):  # the ignore list must leave exactly the routed experts quantized
        dense = role.startswith("dense")
        if (role in ("q_a", "q_b") and not spec.q_lora_rank) or (role == "q" and spec.q_lora_rank) \
                or (dense and spec.first_k_dense_replace == 0) or (not dense and not spec.moe_layers):
            continue
        module = names.module_name(names.name_of(role, 0 if dense else layer, 0 if role in EXPERT_ROLES else None))
        ignored = any(re.match(x[3:], module) if x.startswith("re:") else x == module for x in ignore)
        if ignored == (role in EXPERT_ROLES):
            what = "leaves it BF16" if ignored else "quantizes it to INT4"
            rep.problems.append(Problem("warning", "config.json", f"quantization_config.ignore {what} ({module}), "
                                        "but K2-Thinking's layout has INT4 exactly on the routed experts",
                                        "check the ignore list against the weights"))
    rep.problems.append(Problem("info", "quantization_config", "compressed-tensors INT4 experts: TensorRT-LLM "
                                "cannot load them (its compressed-tensors loader takes FP8, NVFP4 and MXFP4)",
                                "convert first: " + "; ".join(f"{k}: {c}" for k, c in cmds.items())))


def _read_shards(d: Path, rep: Report) -> dict[str, files.TensorEntry]:
    present: dict[str, files.TensorEntry] = {}
    shard_list = files.shard_files(d)
    rep.shards = len(shard_list)
    if not shard_list:
        rep.problems.append(Problem("error", str(d), "no *.safetensors files", "download the weights"))
    for f in shard_list:
        try:
            header = files.read_header(f)
        except CheckpointError as e:
            rep.problems.append(Problem("error", f.name, str(e)))
            continue
        for name, entry in header.tensors.items():
            if name in present:
                rep.problems.append(Problem("error", name, f"is in both {present[name].file} and {f.name}",
                                            "remove the duplicate shard: a loader would pick either copy"))
                continue
            present[name] = entry
    return present


def _check_index(d: Path, rep: Report, present: dict[str, files.TensorEntry]) -> None:
    try:
        idx = files.read_index(d)
    except CheckpointError as e:
        rep.problems.append(Problem("error", names.INDEX_FILE, str(e)))
        return
    on_disk = {f.name for f in files.shard_files(d)}
    if idx is None:
        if len(on_disk) > 1:
            rep.problems.append(Problem("warning", names.INDEX_FILE, "missing for a multi-shard checkpoint",
                                        "k2trt convert --to trtllm writes one"))
        return
    wm: dict[str, str] = idx["weight_map"]
    missing_files: set[str] = set()
    for name, fname in wm.items():
        if fname not in on_disk:
            missing_files.add(fname)
        elif name not in present or present[name].file != fname:
            where = f"in {present[name].file}" if name in present else "in no shard"
            rep.problems.append(Problem("error", name, f"index puts it in {fname} but it is {where}",
                                        "regenerate the index or re-download the shard"))
    for fname in sorted(missing_files):
        n = sum(1 for v in wm.values() if v == fname)
        rep.problems.append(Problem("error", fname, f"named by the index for {n} tensors but not on disk",
                                    "download the missing shard"))
    for fname in sorted(on_disk - set(wm.values())):
        rep.problems.append(Problem("error", fname, "is not in the index, but TensorRT-LLM loads every "
                                    "*.safetensors in the directory", "move the stray file out of the directory"))
    unindexed = [n for n, e in present.items() if n not in wm and e.file in set(wm.values())]
    for name in unindexed[:20]:
        rep.problems.append(Problem("warning", name, f"is in {present[name].file} but not in the index",
                                    "regenerate the index"))
    total = idx.get("metadata", {}).get("total_size")
    actual = sum(e.nbytes for e in present.values())
    if isinstance(total, int) and total != actual and not missing_files:
        rep.problems.append(Problem("info", names.INDEX_FILE, f"metadata.total_size {total} ≠ {actual} bytes "
                                    "of tensors on disk"))


def _check_tensors(spec: ModelSpec, rep: Report, present: dict[str, files.TensorEntry]) -> None:
    expected = {n: t for n, t in formats.inventory(spec).items() if t.role not in names.IGNORED_ROLES}
    by_name: dict[str, TensorInfo] = {}  # spec name → tensor, built only if a scale's shape is wrong
    fp8_params = lin_params = 0
    by_fmt: dict[str, int] = {}
    fmt_of: dict[str, str] = {}  # stored dtype → storage format name
    layers: dict[int, LayerSummary] = {}
    for name, t in expected.items():
        e = present.get(name)
        is_scale = t.part != "weight"
        if e is None:
            fix = ("the quantized weight cannot be used without it; re-download or re-convert the shard"
                   if is_scale else "re-download the checkpoint")
            rep.problems.append(Problem("error", name, f"missing ({t.dtype}{list(t.shape)} expected)", fix))
            continue
        if e.shape != t.shape or e.dtype != t.dtype:
            if is_scale and not by_name:
                by_name.update((x.name, x) for x in expected.values())
            _compare(name, t, e, rep, by_name.get(t.scale_of or "") if is_scale else None)
        params = 0 if is_scale else t.params
        if not is_scale:
            rep.params += params
            if t.role in LINEAR_ROLES:
                lin_params += params
                fp8_params += params if e.dtype == "F8_E4M3" else 0
                fmt = fmt_of.get(e.dtype) or fmt_of.setdefault(e.dtype, next(
                    (f.name for f in formats.FORMATS.values() if f.identifies(e.dtype)), e.dtype.lower()))
                by_fmt[fmt] = by_fmt.get(fmt, 0) + params
        if t.layer is not None:
            s = layers.get(t.layer)
            if s is None:
                s = layers[t.layer] = LayerSummary(t.layer, "moe" if spec.is_moe_layer(t.layer) else "dense")
            s.tensors += 1
            s.params += params
            s.bytes += e.nbytes
    rep.layers = [layers[k] for k in sorted(layers)]
    rep.fp8_coverage = fp8_params / lin_params if lin_params else 0.0
    rep.coverage = {k: v / lin_params for k, v in sorted(by_fmt.items())} if lin_params else {}
    extras = [n for n in present if n not in expected]
    ignored = [n for n in extras if (p := names.parse(n)) is not None and p.role in names.IGNORED_ROLES]
    if ignored:
        rep.problems.append(Problem("info", ignored[0], f"{len(ignored)} rotary_emb.inv_freq-style tensors are "
                                    "present; they are ignored (RoPE is recomputed)"))
    for n in [n for n in extras if n not in set(ignored)]:
        e = present[n]
        p = names.parse(n)
        if p is not None and p.is_scale and spec.quantization is None:
            msg = "is a block scale, but config.json has no quantization_config"
            fix = "restore quantization_config or re-convert to bf16 with k2trt convert"
        else:
            msg = f"is not part of this model ({e.dtype}{list(e.shape)} in {e.file})"
            fix = "check config.json matches the weights"
        rep.problems.append(Problem("warning", n, msg, fix))


def _compare(name: str, t: TensorInfo, e: files.TensorEntry, rep: Report, weight: TensorInfo | None = None) -> None:
    if tuple(e.shape) != t.shape:
        if t.scale_of and weight is not None and weight.dtype == "F8_E4M3":
            msg = (f"scale has shape {list(e.shape)}, expected {list(t.shape)} "
                   "(one per 128×128 block, partial blocks included)")
        elif t.scale_of:
            msg = (f"scale has shape {list(e.shape)}, expected {list(t.shape)} for the {weight.dtype if weight else ''}"
                   f"{list(weight.shape) if weight else ''} weight (a transposed or mis-blocked scale)")
        else:
            msg = f"has shape {list(e.shape)}, config.json implies {list(t.shape)}"
        rep.problems.append(Problem("error", name, msg + f" in {e.file}", "check config.json against the weights"))
    if e.dtype != t.dtype:
        rep.problems.append(Problem("error", name, f"is {e.dtype}, expected {t.dtype} in {e.file}",
                                    "check quantization_config in config.json against the weights"))


def _check_side_files(d: Path, rep: Report) -> None:
    for f in TOKENIZER_FILES:
        if not (d / f).exists():
            rep.problems.append(Problem("warning", f, "missing", "copy K2's tokenizer files next to the weights"))
    has_template = (d / "chat_template.jinja").exists()
    if not has_template and (d / "tokenizer_config.json").exists():
        import json

        try:
            has_template = "chat_template" in json.loads((d / "tokenizer_config.json").read_text())
        except json.JSONDecodeError:
            rep.problems.append(Problem("error", "tokenizer_config.json", "invalid JSON"))
    if not has_template:
        rep.problems.append(Problem("warning", "chat_template.jinja", "no chat template (neither the file nor "
                                    "tokenizer_config.json's chat_template)", "copy K2's chat_template.jinja"))
    if not (d / "generation_config.json").exists():
        rep.problems.append(Problem("info", "generation_config.json", "missing; stop tokens come from the "
                                    "chat template (<|im_end|>) and config.json ([EOS])"))
