"""``k2trt doctor``: what TensorRT-LLM is here, and does a config pass its own validation.

Where ``tensorrt_llm`` imports (a serving node or its container), the YAML is validated by TensorRT-LLM's own
``TorchLlmArgs`` (``tensorrt_llm.llmapi.llm_args``) and the installed version picks the k2trt profile. Elsewhere the
report says plainly that it is not installed, and the k2trt linter still runs against the pinned profile.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass, field
from typing import Any

from k2trt.trtllm import PINNED_RELEASE
from k2trt.trtllm.lint import LintResult, lint


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
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return (self.lint is None or self.lint.ok) and self.native_ok is not False

    def to_dict(self) -> dict[str, Any]:
        return {"installed": self.installed, "version": self.version, "pinned": self.pinned, "ok": self.ok,
                "message": self.message, "lint": self.lint.to_dict() if self.lint else None,
                "native_ok": self.native_ok, "native_error": self.native_error, "notes": self.notes}


def installed_version() -> str | None:
    """``tensorrt_llm.__version__`` if the package can be found and imported, else None."""
    if importlib.util.find_spec("tensorrt_llm") is None:
        return None
    mod = importlib.import_module("tensorrt_llm")
    return str(getattr(mod, "__version__", "unknown"))


def doctor(doc: dict[str, Any] | None = None, model: str | None = None, version: str | None = None) -> DoctorReport:
    """Check the TensorRT-LLM installation and, if given, a parsed extra-llm-api ``doc``.

    Args:
        doc: the YAML as a dict (None: only report the installation).
        model: model directory for TorchLlmArgs (its loader checks the path); a placeholder when None.
        version: profile to lint against when TensorRT-LLM is not installed (default: pinned).
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
    if doc is None:
        return rep
    rep.lint = lint(doc, ver or version)
    if rep.installed:
        try:
            from tensorrt_llm.llmapi.llm_args import TorchLlmArgs  # type: ignore[import-not-found]

            kwargs = dict(doc)
            kwargs.setdefault("skip_tokenizer_init", True)
            TorchLlmArgs(model=model or "/nonexistent/k2trt-doctor-model", **kwargs)
            rep.native_ok = True
        except Exception as e:  # TorchLlmArgs raises pydantic.ValidationError, ValueError, …: all are findings
            rep.native_ok = False
            rep.native_error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return rep
