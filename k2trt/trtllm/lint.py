"""Judge an extra-llm-api YAML the way one TensorRT-LLM release judges it, plus k2trt's own warnings.

The schema is the release's extracted profile (``k2trt.trtllm.profiles``): each mapping is checked against its
model's fields and ``extra`` policy (``forbid``: an unknown key is an error, as pydantic's "Extra inputs are not
permitted" and ``LLM got invalid argument`` are), each value against its field's type with pydantic's lax rules
(``"128"`` is a valid int, ``yes`` a valid bool: TensorRT-LLM accepts them, so they are warnings, not errors),
``Literal``/enum values exactly, numeric bounds, discriminated unions by their discriminator. Keys a release's
validators handle are judged as the validator does (renamed with a warning, accepted, or rejected). Old spellings
from ``known.RENAMES`` that the release does not know are errors naming the replacement; a key that is a field of
the release is never called stale. k2trt warnings (TensorRT-LLM starts, but not as meant): a ``kv_cache_config``
block that replaces the CLI's memory fraction where the release merges shallowly, and ``known.ADVISORIES``.
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import asdict, dataclass
from typing import Any

import yaml

from k2trt.trtllm import known
from k2trt.trtllm.facts import describe, refs, t_union
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


_BOOL_WORDS = {"0", "1", "true", "false", "yes", "no", "on", "off", "t", "f", "y", "n"}
_RENAMES = {r.old: r for r in known.RENAMES}
_VALUE_RENAMES = {(r.path, r.old): r for r in known.VALUE_RENAMES}


def _suggest(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    if not close:
        low = {o.lower(): o for o in options}
        close = [low[word.lower()]] if word.lower() in low else []
    return f"did you mean {close[0]!r}?" if close else ""


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _scalar(v: Any, t: dict[str, Any]) -> tuple[str | None, str | None, Any]:
    """(error, coercion note, value as pydantic reads it) for a scalar type in lax mode."""
    k, strict = t["k"], t.get("strict", False)
    if k in ("any", "ext"):
        return None, None, v
    if k == "none":
        return (None, None, v) if v is None else (f"expected null, got {v!r}", None, v)
    if k == "str":
        return (None, None, v) if isinstance(v, str) else (f"expected str, got {type(v).__name__} {v!r}", None, v)
    if k == "bool":
        if isinstance(v, bool):
            return None, None, v
        if not strict and ((_is_num(v) and v in (0, 1)) or (isinstance(v, str) and v.lower() in _BOOL_WORDS)):
            return None, f"expected bool, got {type(v).__name__} {v!r} (TensorRT-LLM reads it as a bool)", v
        return f"expected bool, got {type(v).__name__} {v!r}", None, v
    # int / float
    if _is_num(v) and (k == "float" or isinstance(v, int) or float(v).is_integer()):
        num = v
        note = None if isinstance(v, int) or k == "float" else f"expected int, got float {v!r}"
    elif not strict and isinstance(v, bool):
        num, note = int(v), f"expected {k}, got bool {v!r} (TensorRT-LLM reads it as {int(v)})"
    elif not strict and isinstance(v, str):
        try:
            num = int(v) if k == "int" else float(v)
        except ValueError:
            return f"expected {k}, got str {v!r}", None, v
        note = f"expected {k}, got str {v!r} (TensorRT-LLM reads it as {num}; write the number)"
    else:
        return f"expected {k}, got {type(v).__name__} {v!r}", None, v
    for key, ok, word in (("ge", lambda a, b: a >= b, "below the minimum"), ("gt", lambda a, b: a > b, "not above"),
                          ("le", lambda a, b: a <= b, "above the maximum"), ("lt", lambda a, b: a < b, "not below")):
        if key in t and not ok(num, t[key]):
            return f"{num} is {word} {t[key]}", None, num
    return None, note, num


class _Linter:
    def __init__(self, profile: Profile) -> None:
        self.p = profile
        self.issues: list[Issue] = []

    def err(self, path: str, msg: str, fix: str = "") -> None:
        self.issues.append(Issue("error", path, msg, fix))

    def warn(self, path: str, msg: str, fix: str = "") -> None:
        self.issues.append(Issue("warning", path, msg, fix))

    def model(self, doc: dict[str, Any], name: str, prefix: str = "") -> None:
        m = self.p.models[name]
        fields = m["fields"]
        alias = {a: f for f, spec in fields.items() for a in spec.get("aliases", [])}
        rel = f"TensorRT-LLM {self.p.name}"
        for k, v in doc.items():
            key = str(k)
            path = f"{prefix}.{key}" if prefix else key
            handled = m.get("handled", {}).get(key)
            rename = _RENAMES.get(path)
            if key in fields or key in alias:
                if handled and handled["action"] == "rename" and handled["warn"]:
                    to = f"{prefix}.{handled['to']}" if prefix else handled["to"]
                    self.warn(path, f"deprecated spelling: {rel} moves it to {to} with a warning", f"use {to}")
                self.field(path, fields[alias.get(key, key)], v)
                continue
            merged_to = self.p.merge.get("renames", {}).get(key) if not prefix else None
            if merged_to:
                self.warn(path, f"trtllm-serve on {rel} reads it as {merged_to} (the LLM API itself rejects it)",
                          f"use {merged_to}")
                continue
            if handled and handled["action"] == "removed":
                self.removed(path, key, handled, v)
                continue
            if handled and handled["action"] != "reject":
                if handled["warn"]:
                    to = handled.get("to") or (rename.new if rename else None)
                    self.warn(path, f"deprecated spelling: {rel} accepts it with a warning",
                              f"use {prefix + '.' if prefix and to else ''}{to}" if to else "remove it")
                continue
            gone = self.removed_here(rename.new) if rename and rename.new else None
            if rename and gone is not None:
                # the later spelling is itself an argument this release removed (main's sampler_type)
                kept = gone.get("values") or []
                self.err(path, f"stale key: {rel} rejects it (renamed in {rename.since} to {rename.new}, which {rel} "
                               "removed as well)", f"remove it; {rename.new} is gone too"
                         + (f" (only {', '.join(map(repr, kept))} still accepted there, and ignored)" if kept else ""))
            elif rename and rename.new and not (to := self.replacement(rename)):
                self.err(path, f"unknown key: {rel} has neither it nor its later spelling {rename.new} "
                               f"({rename.source})", f"remove it; {rel} has no equivalent")
            elif rename:
                fix = f"use {to}" if rename.new else "remove it"
                why = "a trtllm-serve option name, not an LLM-API field" if rename.cli else \
                    f"{'renamed' if rename.new else 'removed'} in {rename.since}"
                note = rename.note
                if rename.flag and not self.p.option(rename.flag):
                    note = f"trtllm-serve {self.p.name} has no {rename.flag} either" + \
                        (f"; {rename.without_flag}" if rename.without_flag else "")
                self.err(path, f"stale key: {rel} rejects it ({why})", fix + (f"; {note}" if note else ""))
            elif handled:
                self.err(path, f"{rel} rejects this key in a validator")
            elif m["extra"] == "forbid":
                where = "top-level key" if not prefix else f"key in {prefix}"
                self.err(path, f"unknown {where} ({rel} rejects it)",
                         _suggest(key, sorted(fields)) or f"valid keys: {', '.join(sorted(fields))}")
            elif m["extra"] == "ignore":
                self.warn(path, f"unknown key: {rel} ignores it", _suggest(key, sorted(fields)))

    def removed(self, path: str, key: str, handled: dict[str, Any], v: Any) -> None:
        """An argument the release removed but still takes on input: some values with a warning, the rest refused."""
        rel = f"TensorRT-LLM {self.p.name}"
        ok = handled.get("values") or []
        if v in ok:
            self.warn(path, f"{rel} removed {key}; {v!r} is accepted with a warning and ignored", "remove it")
            return
        vr = _VALUE_RENAMES.get((_unindexed(path), v)) if isinstance(v, str) else None
        also = f" (only {', '.join(map(repr, ok))} are still accepted, and ignored)" if ok else ""
        self.err(path, f"{rel} removed {key} and rejects {v!r}{also}",
                 "remove it" + (f"; {vr.source}" if vr else ""))

    def removed_here(self, path: str) -> dict[str, Any] | None:
        """The handled facts of a top-level key this release removed but still takes on input; None otherwise."""
        h = self.p.models[self.p.root].get("handled", {}).get(path) if "." not in path else None
        return h if h and h.get("action") == "removed" else None

    def replacement(self, rename: known.Rename) -> str | None:
        """The spelling of ``rename.new``'s setting that this release takes as a current field: an older spelling of
        the same setting when it is still a plain field here (1.2.1's speculative_config.num_nextn_predict_layers,
        not max_draft_len, which that release overwrites), else ``rename.new`` itself even if deprecated here; None
        when the release has neither."""
        spellings = [r.old for r in known.RENAMES if r.new == rename.new and r.old != rename.old] + [rename.new]
        specs = {p: self.p.field_at(p) for p in spellings if p}
        plain = [p for p, s in specs.items() if s and "handled" not in s and s.get("status") != "deprecated"]
        if plain:
            return plain[0]
        return rename.new if specs.get(rename.new) else None

    def field(self, path: str, spec: dict[str, Any], v: Any) -> None:
        if spec.get("status") == "deprecated":
            self.warn(path, f"deprecated in TensorRT-LLM {self.p.name}")
        t = spec["type"]
        if spec.get("pre") and isinstance(v, dict):
            t = _without_missing_disc(t, v)
        errors, notes = self.value(path, t, v)
        if errors and spec.get("pre") and not (isinstance(v, dict) and refs(t)[0]):
            # A before/plain field validator rewrites this value first; its declared type alone cannot reject it.
            notes = [Issue("warning", e.path, f"{e.message} (TensorRT-LLM {self.p.name} converts this field in a "
                           "validator first, so it may still accept it)", e.fix) for e in errors] + notes
            errors = []
        for e in errors:
            self.issues.append(e)
        for n in notes:
            self.issues.append(n)

    def value(self, path: str, t: dict[str, Any], v: Any) -> tuple[list[Issue], list[Issue]]:
        """(errors, warnings) for one value; nested mappings are checked in full."""
        k = t["k"]
        if k == "union":
            return self.union(path, t, v)
        if v is None and k not in ("none", "any", "ext"):
            return [Issue("error", path, "may not be null")], []
        if k == "lit":
            vr = _VALUE_RENAMES.get((_unindexed(path), v)) if isinstance(v, str) else None
            if v in t["vals"]:
                if vr and self.p.name in vr.warned_in:
                    return [], [Issue("warning", path, f"{v!r} is deprecated on TensorRT-LLM {self.p.name} "
                                      f"({vr.source})", f"use {vr.new}")]
                return [], []
            vals = [str(x) for x in t["vals"]]
            return [Issue("error", path, f"{v!r} is not one of {', '.join(vals)} on TensorRT-LLM {self.p.name}",
                          f"use {vr.new}" if vr else _suggest(str(v), vals))], []
        if k == "enum":
            vals = self.p.enums.get(t["name"], [])
            if v in vals:
                return [], []
            return [Issue("error", path, f"{v!r} is not one of {', '.join(map(str, vals))} on TensorRT-LLM "
                          f"{self.p.name}", _suggest(str(v), [str(x) for x in vals]))], []
        if k == "model":
            if not isinstance(v, dict):
                return [Issue("error", path, f"expected a mapping ({t['name']}), got {type(v).__name__}")], []
            sub = _Linter(self.p)
            sub.model(v, t["name"], path)
            return [i for i in sub.issues if i.severity == "error"], [i for i in sub.issues if i.severity != "error"]
        if k == "list":
            if not isinstance(v, list):
                return [Issue("error", path, f"expected {describe(t)}, got {type(v).__name__} {v!r}")], []
            errs, warns = [], []
            for i, x in enumerate(v):
                e, w = self.value(f"{path}[{i}]", t["of"], x)
                errs += e
                warns += w
            if errs:
                return [Issue("error", path, f"expected {describe(t)}: {errs[0].message}")], []
            return [], warns
        if k == "dict":
            if not isinstance(v, dict):
                return [Issue("error", path, f"expected a mapping, got {type(v).__name__}")], []
            errs, warns = [], []
            for key, x in v.items():
                e, w = self.value(f"{path}.{key}", t["val"], x)
                errs += e
                warns += w
            return errs, warns
        error, note, _ = _scalar(v, t)
        return ([Issue("error", path, error)] if error else []), ([Issue("warning", path, note)] if note else [])

    def union(self, path: str, t: dict[str, Any], v: Any) -> tuple[list[Issue], list[Issue]]:
        opts = t["of"]
        chosen = self._discriminated(path, t, v)
        if isinstance(chosen, Issue):
            return [chosen], []
        if chosen is not None:
            member, disc = chosen
            if disc not in self.p.models[member["name"]]["fields"]:  # a from_dict dispatch key is consumed there
                v = {k: x for k, x in v.items() if k != disc}
            return self.value(path, member, v)
        real = [o for o in opts if o.get("k") != "none"]
        if len(real) == 1 and v is not None:  # Optional[X]: X's own message (a bound, a key) is the useful one
            return self.value(path, real[0], v)
        best: tuple[list[Issue], list[Issue]] | None = None
        for o in opts:
            errs, warns = self.value(path, o, v)
            if not errs:
                if not warns:
                    return [], []
                best = best if best and not best[0] else ([], warns)
            elif best is None or (o.get("k") == "model" and isinstance(v, dict)):
                best = (errs, warns)
        assert best is not None
        if best[0] and not (isinstance(v, dict) and any(o.get("k") == "model" for o in opts)):
            return [Issue("error", path, f"expected {describe(t)}, got {type(v).__name__} {v!r}")], []
        return best

    def _discriminated(self, path: str, t: dict[str, Any], v: Any) -> tuple[dict[str, Any], str] | Issue | None:
        """(the union member, the key) a discriminator (``disc`` or a model's ``from_dict`` dispatch) selects."""
        if not isinstance(v, dict):
            return None
        members = [o for o in t["of"] if o.get("k") == "model"]
        disc = t.get("disc") or next((self.p.models[o["name"]].get("dispatch", {}).get("key") for o in members
                                      if self.p.models[o["name"]].get("dispatch")), None)
        if not disc:
            return None
        table: dict[str, str] = {}
        for o in members:
            f = self.p.models[o["name"]]["fields"].get(disc)
            if f and f["type"].get("k") == "lit":
                table.update({str(x): o["name"] for x in f["type"]["vals"]})
            table.update(self.p.models[o["name"]].get("dispatch", {}).get("map", {}))
        table = {k: n for k, n in table.items() if any(o["name"] == n for o in members)}
        if disc not in v or str(v[disc]) not in table:
            vr = _VALUE_RENAMES.get((_unindexed(f"{path}.{disc}"), v.get(disc)))
            return Issue("error", f"{path}.{disc}", f"{v.get(disc)!r} is not one of {', '.join(sorted(table))} on "
                         f"TensorRT-LLM {self.p.name}", f"use {vr.new}" if vr and vr.new in table
                         else _suggest(str(v.get(disc)), sorted(table)))
        return {"k": "model", "name": table[str(v[disc])]}, disc

    def cross(self, doc: dict[str, Any]) -> None:
        kv = doc.get("kv_cache_config")
        if isinstance(kv, dict) and self.p.serve.get("yaml_merge") == "shallow" and "free_gpu_memory_fraction" not in kv:
            default = (self.p.field_at("kv_cache_config.free_gpu_memory_fraction") or {}).get("default")
            self.warn("kv_cache_config", f"on TensorRT-LLM {self.p.name} this block replaces the CLI-built one: "
                      "--kv_cache_free_gpu_memory_fraction is silently lost and the fraction falls back to "
                      + (str(default) if default is not None else "the executor's default"),
                      "set kv_cache_config.free_gpu_memory_fraction in the YAML")
        for a in known.ADVISORIES:
            head, _, tail = a.path.partition(".")
            node = doc.get(head) if tail else doc
            if isinstance(node, dict) and (tail or head) in node and node[tail or head] == a.value \
                    and type(node[tail or head]) is type(a.value):
                self.warn(a.path, f"{a.message} ({a.source})", a.fix)
        if "enable_lm_head_tp_in_adp" in self.p.fields and doc.get("enable_lm_head_tp_in_adp") \
                and not doc.get("enable_attention_dp"):
            self.warn("enable_lm_head_tp_in_adp", "only has an effect with enable_attention_dp: true")
        spec = doc.get("speculative_config")
        if known.check(self.p.name, "mtp_draft_len_from_nextn") and isinstance(spec, dict) \
                and spec.get("decoding_type") == "MTP" and "max_draft_len" in spec \
                and "num_nextn_predict_layers" not in spec:
            self.warn("speculative_config.max_draft_len", f"TensorRT-LLM {self.p.name} replaces max_draft_len with "
                      "num_nextn_predict_layers (default 1) for MTP", "set num_nextn_predict_layers instead")
        self.coerced(doc)
        if known.check(self.p.name, "prefill_cuda_graph_legacy"):
            self.prefill_legacy(doc)
        adp = doc.get("attention_dp_config")
        if known.check(self.p.name, "attention_dp_balance_iters") and isinstance(adp, dict) \
                and adp.get("enable_balance") is True:
            for k in ("batching_wait_iters", "timeout_iters"):
                if _is_num(adp.get(k)) and adp[k] < 0:
                    self.err(f"attention_dp_config.{k}", f"TensorRT-LLM {self.p.name} requires {k} >= 0 when "
                             "enable_balance is true (AttentionDpConfig validator)", f"set {k} to 0 or more")
        cg = doc.get("cuda_graph_config")
        if isinstance(cg, dict) and isinstance(cg.get("batch_sizes"), list) and cg["batch_sizes"] \
                and all(_is_num(x) for x in cg["batch_sizes"]) and _is_num(cg.get("max_batch_size")) \
                and cg["max_batch_size"]:
            bs, mx = sorted(cg["batch_sizes"]), cg["max_batch_size"]
            rule = known.check(self.p.name, "cuda_graph_both_sizes")
            if rule == "max" and mx != bs[-1]:
                self.err("cuda_graph_config.max_batch_size", f"{mx} != max(batch_sizes) {bs[-1]}",
                         "set only one of batch_sizes and max_batch_size")
            elif rule in ("generated_ceil", "generated_floor") and bs != generated_batch_sizes(
                    mx, bool(cg.get("enable_padding")), rule.removeprefix("generated_")):
                self.err("cuda_graph_config", f"TensorRT-LLM {self.p.name} rejects batch_sizes together with a "
                         "max_batch_size unless the list equals the one it would generate",
                         "set only one of batch_sizes and max_batch_size")


    def coerced(self, doc: dict[str, Any]) -> None:
        """Mappings an after-validator of the release builds into a model (``coerce`` in the profile): judged by that
        model's fields and ``extra`` policy, as the validator's constructor call judges them."""
        for path, name in self.p.models[self.p.root].get("coerce", {}).items():
            node: Any = doc
            for part in path.split("."):
                node = node.get(part) if isinstance(node, dict) else None
            if isinstance(node, dict) and name in self.p.models:
                sub = _Linter(self.p)
                sub.model(node, name, path)
                for i in sub.issues:
                    self.issues.append(Issue(i.severity, i.path, f"{i.message} (TensorRT-LLM {self.p.name} builds "
                                             f"{name} from {path} in a validator)" if i.severity == "error"
                                             else i.message, i.fix))

    def prefill_legacy(self, doc: dict[str, Any]) -> None:
        """main's ``normalize_prefill_cuda_graph_config``: piecewise CUDA graphs moved out of torch_compile_config."""
        rel = f"TensorRT-LLM {self.p.name}"
        tc = doc.get("torch_compile_config")
        backend = doc.get("prefill_cuda_graph_backend")
        if isinstance(tc, dict) and tc.get("enable_piecewise_cuda_graph") is True:
            if "prefill_cuda_graph_backend" in doc and backend != "piecewise":
                self.err("torch_compile_config.enable_piecewise_cuda_graph", f"{rel} rejects it together with "
                         f"prefill_cuda_graph_backend: {backend!r} (they conflict)",
                         "use prefill_cuda_graph_backend alone")
            else:
                self.warn("torch_compile_config.enable_piecewise_cuda_graph", f"deprecated on {rel}: it is moved to "
                          "prefill_cuda_graph_backend: piecewise with a warning",
                          "use prefill_cuda_graph_backend: piecewise")
        if isinstance(tc, dict) and "capture_num_tokens" in tc:
            old, new = tc["capture_num_tokens"], doc.get("prefill_capture_num_tokens")
            if isinstance(old, list) and isinstance(new, list) and sorted(set(map(str, old))) != \
                    sorted(set(map(str, new))):
                self.err("torch_compile_config.capture_num_tokens", f"{rel} rejects it: it differs from "
                         "prefill_capture_num_tokens", "use prefill_capture_num_tokens alone")
            else:
                self.warn("torch_compile_config.capture_num_tokens", f"deprecated on {rel}: it is moved to "
                          "prefill_capture_num_tokens with a warning", "use prefill_capture_num_tokens")
        if backend == "breakable":
            if tc is not None and "torch_compile_config" in doc:
                self.err("torch_compile_config", f"{rel}: a breakable prefill CUDA graph does not support "
                         "torch_compile_config", "remove torch_compile_config, or use prefill_cuda_graph_backend: "
                         "piecewise")
            if doc.get("enable_lora") is True or doc.get("lora_config") is not None:
                self.err("prefill_cuda_graph_backend", f"{rel}: a breakable prefill CUDA graph does not support LoRA",
                         "use prefill_cuda_graph_backend: piecewise or disabled")


def _unindexed(path: str) -> str:
    return re.sub(r"\[\d+\]", "", path)


def _without_missing_disc(t: dict[str, Any], v: dict[str, Any]) -> dict[str, Any]:
    """``t`` with any discriminator ``v`` lacks dropped (a before-validator fills it in; the members are tried)."""
    if t.get("k") != "union":
        return t
    of = [_without_missing_disc(o, v) for o in t["of"]]
    disc = t.get("disc")
    return t_union(of, disc if disc in v else None)


def generated_batch_sizes(max_batch_size: int, padding: bool, rounding: str = "ceil") -> list[int]:
    """The CUDA-graph batch sizes ``CudaGraphConfig._generate_cuda_graph_batch_sizes`` makes from max_batch_size.

    padding: 1, 2, 4 and 8…128 in steps of 8; otherwise 1…31, 32, 64, 128. Then the powers of two from 256 up to
    ``2**(rounding(log2(max_batch_size)) - 1)`` (``ceil`` in 1.2.1, ``floor`` in 1.0.0), those above the maximum
    dropped, and the maximum itself appended.

    Example: ``generated_batch_sizes(1000, True)[-3:]`` → ``[256, 512, 1000]`` (``floor`` gives ``[128, 256, 1000]``).
    """
    sizes = [1, 2, 4] + [8 * i for i in range(1, 17)] if padding else list(range(1, 32)) + [32, 64, 128]
    if max_batch_size > 1:
        top = math.log(max_batch_size, 2)
        sizes += [2**i for i in range(8, math.ceil(top) if rounding == "ceil" else math.floor(top))]
    sizes = sorted(s for s in sizes if s <= max_batch_size)
    return sizes + [max_batch_size] if not sizes or sizes[-1] != max_batch_size else sizes


def lint_with(doc: Any, prof: Profile) -> LintResult:
    """Lint a parsed document against a given profile (a packaged one, or one built from an installed release)."""
    li = _Linter(prof)
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        li.err("<file>", f"the top level must be a mapping of options, got {type(doc).__name__}")
        return LintResult(prof.name, prof.version, li.issues)
    li.model(doc, prof.root)
    li.cross(doc)
    return LintResult(prof.name, prof.version, li.issues)


def lint(doc: Any, version: str | None = None) -> LintResult:
    """Lint a parsed extra-llm-api document against a release (default: the pinned one).

    Example: ``lint({"cuda_graph_config": {"padding_enabled": True}}).errors[0].fix`` →
    ``"use cuda_graph_config.enable_padding"``.
    """
    return lint_with(doc, profile_for(version))


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
