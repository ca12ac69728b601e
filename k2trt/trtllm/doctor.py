"""``k2trt doctor`` and ``k2trt config check --trtllm installed``: judge a config by the installed TensorRT-LLM.

Where ``tensorrt_llm`` imports (a serving node or its container), three things happen:

1. the same extraction that made the packaged profiles runs over the *live* pydantic models
   (``k2trt.trtllm.live.facts_from_models`` on ``TorchLlmArgs``), giving the installed release's own profile;
2. that profile is compared with the packaged one for the same release (or the pinned one when k2trt has none for
   it): every model, field, type, default and ``extra`` policy that differs is one drift line;
3. the YAML is linted against the live profile and validated by ``TorchLlmArgs`` itself.

Elsewhere the report says plainly that TensorRT-LLM is not installed, and the k2trt linter runs against the packaged
profile asked for (default: the pinned release).
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass, field
from typing import Any

from k2trt.errors import ConfigError
from k2trt.trtllm import PINNED_RELEASE
from k2trt.trtllm.facts import build_profile, diff_profiles
from k2trt.trtllm.lint import LintResult, lint, lint_with
from k2trt.trtllm.live import facts_from_models
from k2trt.trtllm.profiles import Profile, from_dict, profile_document, resolve


@dataclass
class DoctorReport:
    """What doctor found."""

    installed: bool
    version: str | None = None
    pinned: str = PINNED_RELEASE
    message: str = ""
    lint: LintResult | None = None
    native_ok: bool | None = None
    """TorchLlmArgs accepted the YAML (None when not checked)."""
    native_error: str | None = None
    compared_with: str | None = None
    """The packaged profile the installed schema was compared with."""
    drift: list[str] = field(default_factory=list)
    """Schema differences between the installed release and ``compared_with`` (empty: none)."""
    drift_count: int = 0
    """``len(drift)`` (kept in the JSON view for scripts)."""
    live_counts: dict[str, int] = field(default_factory=dict)
    """Models, fields, enum values extracted from the installed release."""
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (self.lint is None or self.lint.ok) and self.native_ok is not False

    def to_dict(self) -> dict[str, Any]:
        return {"installed": self.installed, "version": self.version, "pinned": self.pinned, "ok": self.ok,
                "message": self.message, "lint": self.lint.to_dict() if self.lint else None,
                "native_ok": self.native_ok, "native_error": self.native_error,
                "compared_with": self.compared_with, "drift_count": self.drift_count, "drift": self.drift,
                "live_counts": self.live_counts, "notes": self.notes}


def installed_version() -> str | None:
    """``tensorrt_llm.__version__`` if the package can be found and imported, else None."""
    if importlib.util.find_spec("tensorrt_llm") is None:
        return None
    mod = importlib.import_module("tensorrt_llm")
    return str(getattr(mod, "__version__", "unknown"))


def _torch_llm_args() -> type:
    from tensorrt_llm.llmapi.llm_args import TorchLlmArgs  # type: ignore[import-not-found]

    return TorchLlmArgs  # type: ignore[no-any-return]


def installed_profile() -> tuple[str, Profile]:
    """(version, profile) extracted from the installed ``tensorrt_llm``'s live models.

    Raises ConfigError when TensorRT-LLM is not installed here.
    Example: ``installed_profile()[1].counts["models"]`` → the number of models reachable from TorchLlmArgs.
    """
    ver = installed_version()
    if ver is None:
        raise ConfigError("TensorRT-LLM is not installed here (no module tensorrt_llm), so there is no installed "
                          "release to check against", "run this on a serving node or inside the release container, "
                          "or name a release with --trtllm")
    facts = facts_from_models(_torch_llm_args(), ver, where=str(importlib.import_module("tensorrt_llm").__file__))
    return ver, from_dict(build_profile(facts), ver)


def _packaged_for(ver: str) -> str:
    try:
        return resolve(ver)
    except ConfigError:
        return resolve(PINNED_RELEASE)


def doctor(doc: dict[str, Any] | None = None, model: str | None = None, version: str | None = None) -> DoctorReport:
    """Check the TensorRT-LLM installation and, if given, a parsed extra-llm-api ``doc``.

    Args:
        doc: the YAML as a dict (None: only report the installation and its drift).
        model: model directory for TorchLlmArgs (its loader checks the path); a placeholder when None.
        version: packaged profile to lint against when TensorRT-LLM is not installed (default: pinned).
    Returns:
        A DoctorReport; ``ok`` is False when the linter or TorchLlmArgs rejects ``doc``.
    Example:
        >>> doctor({"max_batch_size": 8}).installed
        False
    """
    try:
        ver = installed_version()
    except Exception as e:  # a broken install (missing CUDA libs …) is a finding, not a crash
        rep = DoctorReport(False, message=f"tensorrt_llm is present but does not import: {type(e).__name__}: {e}")
        ver = None
    else:
        if ver is None:
            rep = DoctorReport(False, message=f"TensorRT-LLM is not installed here (no module tensorrt_llm); "
                                              f"checked with k2trt's profile for {version or PINNED_RELEASE} only")
        else:
            rep = DoctorReport(True, ver, message=f"TensorRT-LLM {ver} is installed (k2trt pins {PINNED_RELEASE})")
            if ver != PINNED_RELEASE:
                rep.notes.append(f"installed {ver} differs from the pinned {PINNED_RELEASE}")
    live: Profile | None = None
    if rep.installed and ver is not None:
        live = _drift(rep, ver)
    if doc is None:
        return rep
    rep.lint = lint_with(doc, live) if live is not None else lint(doc, version)
    if rep.installed:
        try:
            kwargs = dict(doc)
            kwargs.setdefault("skip_tokenizer_init", True)
            _torch_llm_args()(model=model or "/nonexistent/k2trt-doctor-model", **kwargs)
            rep.native_ok = True
        except Exception as e:  # TorchLlmArgs raises pydantic.ValidationError, ValueError, …: all are findings
            rep.native_ok = False
            detail = "; ".join(line.strip() for line in str(e).splitlines() if line.strip())
            rep.native_error = f"{type(e).__name__}: {detail[:600]}"
    return rep


def _drift(rep: DoctorReport, ver: str) -> Profile | None:
    """Extract the installed schema, record its drift from the packaged profile; None if extraction failed."""
    try:
        facts = facts_from_models(_torch_llm_args(), ver)
    except Exception as e:  # an import error deep in tensorrt_llm is a finding
        rep.notes.append(f"could not read TorchLlmArgs from the installed package: {type(e).__name__}: {e}")
        return None
    built = build_profile(facts)
    rep.compared_with = _packaged_for(ver)
    lines = diff_profiles(profile_document(rep.compared_with), built)
    rep.drift_count, rep.drift = len(lines), lines
    rep.live_counts = dict(built["counts"])
    if lines:
        rep.notes.append(f"the installed schema differs from k2trt's {rep.compared_with} profile in {len(lines)} "
                         f"place(s); the YAML is judged by the installed schema")
    return from_dict(built, ver)
