"""Lint an extra-llm-api YAML the way TensorRT-LLM would reject it, plus k2trt's own warnings.

Errors (TensorRT-LLM refuses to start): unknown keys (top-level ``LLM got invalid argument``, nested pydantic
"Extra inputs are not permitted") with a difflib did-you-mean, stale keys with their current spelling, wrong types,
enum values outside the release's ``Literal``, out-of-range numbers, and the cross-field checks its validators do
(CUDA-graph sizes). Warnings (it starts, but not as you meant): a ``kv_cache_config`` block that replaces the CLI's
memory fraction on releases that merge shallowly (≤1.2, trtllm.md §2.4), ``trust_remote_code: false`` (the YAML
wins over ``--trust_remote_code`` and K2 needs it), deprecated spellings, ``moe_config.backend: TRTLLM`` with K2
(issue #9930), ``enable_lm_head_tp_in_adp`` without attention-DP.
"""

from __future__ import annotations

import difflib
from dataclasses import asdict, dataclass
from typing import Any

import yaml

from k2trt.trtllm.profiles import Profile, profile_for


@dataclass(frozen=True)
class Issue:
    """One lint finding."""

    severity: str
    """``error`` or ``warning``."""
    path: str
    """Dotted key path (``cuda_graph_config.padding_enabled``), or ``<file>`` for the whole document."""
    message: str
    fix: str = ""

    def __str__(self) -> str:
        return f"{self.severity}: {self.path}: {self.message}" + (f" — {self.fix}" if self.fix else "")


@dataclass
class LintResult:
    """All findings for one document."""

    profile: str
    version: str
    issues: list[Issue]

    @property
    def errors(self) -> list[Issue]:
        return [i for i in self.issues if i.severity == "error"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict[str, Any]:
        return {"profile": self.profile, "version": self.version, "ok": self.ok,
                "issues": [asdict(i) for i in self.issues]}


_PY_TYPES = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,), "dict": (dict,)}


def _type_ok(spec: dict[str, Any], v: Any) -> bool:
    t = spec.get("type", "any")
    if t == "any":
        return True
    if t in ("int", "float") and isinstance(v, bool):
        return False
    if t == "list[int]":
        return isinstance(v, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in v)
    if t == "list[str]":
        return isinstance(v, list) and all(isinstance(x, str) for x in v)
    if t == "enum":
        return isinstance(v, str)
    if t == "object":
        return isinstance(v, dict)
    return isinstance(v, _PY_TYPES.get(t, (object,)))


def _suggest(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    if not close:
        low = {o.lower(): o for o in options}
        close = [low[word.lower()]] if word.lower() in low else []
    return f"did you mean {close[0]!r}?" if close else ""


def _walk(doc: Any, prefix: str = ""):  # type: ignore[no-untyped-def]
    if isinstance(doc, dict):
        for k, v in doc.items():
            p = f"{prefix}.{k}" if prefix else str(k)
            yield p, v
            yield from _walk(v, p)


class _Linter:
    def __init__(self, profile: Profile) -> None:
        self.p = profile
        self.issues: list[Issue] = []
        self.stale_paths: set[str] = set()

    def err(self, path: str, msg: str, fix: str = "") -> None:
        self.issues.append(Issue("error", path, msg, fix))

    def warn(self, path: str, msg: str, fix: str = "") -> None:
        self.issues.append(Issue("warning", path, msg, fix))

    def stale(self, doc: dict[str, Any]) -> None:
        for path, v in _walk(doc):
            for table, sev in ((self.p.renamed, "error"), (self.p.deprecated, "warning")):
                new = table.get(path)
                if new is None and isinstance(v, str):
                    new = table.get(f"{path}={v}")
                if new is None:
                    continue
                self.stale_paths.add(path)
                if sev == "error":
                    self.err(path, f"stale key: TensorRT-LLM {self.p.version} rejects it", f"use {new}")
                else:
                    self.warn(path, f"deprecated spelling on TensorRT-LLM {self.p.version}", f"use {new}")

    def check(self, doc: dict[str, Any], fields: dict[str, Any], prefix: str = "", open_: bool = False) -> None:
        for k, v in doc.items():
            path = f"{prefix}.{k}" if prefix else str(k)
            if path in self.stale_paths:
                continue
            spec = fields.get(k)
            if spec is None:
                if open_:
                    continue
                where = "top-level key" if not prefix else f"key in {prefix}"
                self.err(path, f"unknown {where} (TensorRT-LLM {self.p.version} rejects it)",
                         _suggest(str(k), list(fields)) or f"valid keys: {', '.join(sorted(fields))}")
                continue
            self.value(path, spec, v)

    def value(self, path: str, spec: dict[str, Any], v: Any) -> None:
        if v is None:
            if not spec.get("nullable", False):
                self.err(path, "may not be null")
            return
        if not _type_ok(spec, v):
            self.err(path, f"expected {spec.get('type')}, got {type(v).__name__} {v!r}")
            return
        t = spec.get("type")
        if t == "enum":
            vals = list(spec.get("values", []))
            ok = v in vals or (spec.get("case_insensitive") and v.lower() in [x.lower() for x in vals])
            if not ok:
                self.err(path, f"{v!r} is not one of {', '.join(vals)} on TensorRT-LLM {self.p.version}",
                         _suggest(v, vals))
        if t == "str" and spec.get("suggest") and v not in spec["suggest"]:
            self.warn(path, f"{v!r} is not a value k2trt knows ({', '.join(spec['suggest'])})")
        if t in ("int", "float"):
            if "min" in spec and v < spec["min"]:
                self.err(path, f"{v} is below the minimum {spec['min']}")
            if "max" in spec and v > spec["max"]:
                self.err(path, f"{v} is above the maximum {spec['max']}")
        if t == "object":
            self.check(v, spec.get("fields", {}), path, bool(spec.get("open")))

    def cross(self, doc: dict[str, Any]) -> None:
        serve = self.p.serve
        kv = doc.get("kv_cache_config")
        if isinstance(kv, dict) and serve.get("yaml_merge") == "shallow" and "free_gpu_memory_fraction" not in kv:
            self.warn("kv_cache_config", f"on TensorRT-LLM {self.p.version} this block replaces the CLI-built one: "
                      "--kv_cache_free_gpu_memory_fraction is silently lost and the fraction falls back to 0.9",
                      "set kv_cache_config.free_gpu_memory_fraction in the YAML")
        if doc.get("trust_remote_code") is False:
            self.warn("trust_remote_code", "false here overrides --trust_remote_code (the YAML wins), and K2's "
                      "config and tokenizer need remote code", "remove the key or set it true")
        moe = doc.get("moe_config")
        if isinstance(moe, dict) and moe.get("backend") == "TRTLLM":
            self.warn("moe_config.backend", "TRTLLM (trtllm-gen) MoE gave gibberish with K2 NVFP4 on B200 "
                      "(NVIDIA/TensorRT-LLM issue #9930, open)", "prefer CUTLASS (Hopper) or CUTEDSL/DEEPGEMM")
        if doc.get("enable_lm_head_tp_in_adp") and not doc.get("enable_attention_dp"):
            self.warn("enable_lm_head_tp_in_adp", "only has an effect with enable_attention_dp: true")
        cg = doc.get("cuda_graph_config")
        if isinstance(cg, dict) and isinstance(cg.get("batch_sizes"), list) and cg.get("batch_sizes") \
                and isinstance(cg.get("max_batch_size"), int) and cg.get("max_batch_size"):
            bs, mx = sorted(cg["batch_sizes"]), cg["max_batch_size"]
            if serve.get("cuda_graph_both_sizes") == "max" and mx != bs[-1]:
                self.err("cuda_graph_config.max_batch_size", f"{mx} != max(batch_sizes) {bs[-1]}",
                         "set only one of batch_sizes and max_batch_size")
            elif serve.get("cuda_graph_both_sizes") == "generated" and bs != generated_batch_sizes(
                    mx, bool(cg.get("enable_padding"))):
                self.err("cuda_graph_config", f"TensorRT-LLM {self.p.version} rejects batch_sizes together with a "
                         "max_batch_size unless the list equals the one it would generate",
                         "set only one of batch_sizes and max_batch_size")


def generated_batch_sizes(max_batch_size: int, padding: bool) -> list[int]:
    """The CUDA-graph batch sizes TensorRT-LLM generates from max_batch_size (CudaGraphConfig, trtllm.md §2.3)."""
    if padding:
        sizes = [1, 2, 4] + [8 * i for i in range(1, 17)]
        while sizes[-1] + 64 <= max_batch_size:
            sizes.append(sizes[-1] + 64)
    else:
        sizes = list(range(1, 32)) + [32, 64, 128]
        p = 256
        while p < max_batch_size:
            sizes.append(p)
            p *= 2
    sizes = sorted(s for s in sizes if s <= max_batch_size)
    if not sizes or sizes[-1] != max_batch_size:
        sizes.append(max_batch_size)
    return sizes


def lint(doc: Any, version: str | None = None) -> LintResult:
    """Lint a parsed extra-llm-api document against a release (default: the pinned one).

    Example: ``lint({"cuda_graph_config": {"padding_enabled": True}}).errors[0].fix`` →
    ``"use cuda_graph_config.enable_padding"``.
    """
    prof = profile_for(version)
    li = _Linter(prof)
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        li.err("<file>", f"the top level must be a mapping of options, got {type(doc).__name__}")
        return LintResult(prof.name, prof.version, li.issues)
    li.stale(doc)
    li.check(doc, prof.fields)
    li.cross(doc)
    return LintResult(prof.name, prof.version, li.issues)


def lint_text(text: str, version: str | None = None, where: str = "<yaml>") -> LintResult:
    """Parse YAML text and lint it; a YAML syntax error is one error naming the line."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        prof = profile_for(version)
        return LintResult(prof.name, prof.version,
                          [Issue("error", where, f"not valid YAML at{line}: {getattr(e, 'problem', e)}")])
    return lint(doc, version)
