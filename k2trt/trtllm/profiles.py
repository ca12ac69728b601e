"""Schema profiles per TensorRT-LLM release, loaded from ``profiles/*.yaml`` (data, with sources in comments).

A profile has the extra-llm-api YAML schema (``fields``: key → type/default/enum/min/max/nullable, nested
``object`` fields), stale keys with their replacement (``renamed``: rejected; ``deprecated``: accepted with a
warning; a ``path=value`` key matches a value), and the ``trtllm-serve`` surface (``serve``: config flag, parallel
flags, tool/reasoning parsers, how YAML merges with the CLI). ``based_on`` inherits a parent profile; ``remove``
deletes dotted paths (``fields.x``, ``renamed.y`` or a bare field path).
"""

from __future__ import annotations

import copy
import functools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from k2trt.errors import ConfigError
from k2trt.trtllm import PINNED_RELEASE

PROFILE_DIR = Path(__file__).parent / "profiles"
PROFILES = ("1.0", "1.2", "main")


@dataclass(frozen=True)
class Profile:
    """One release line's schema and CLI surface."""

    name: str
    covers: str
    fields: dict[str, Any]
    renamed: dict[str, str]
    deprecated: dict[str, str]
    serve: dict[str, Any]
    version: str
    """The concrete version asked for (e.g. ``1.3.0rc7``), or the profile name."""

    def has_tool_parser(self, name: str) -> bool:
        return name in self.serve.get("tool_parsers", [])


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _remove(doc: dict[str, Any], path: str) -> None:
    head, _, rest = path.partition(".")
    if head in ("renamed", "deprecated", "serve") and rest:
        doc.get(head, {}).pop(rest, None)
        return
    node: Any = doc.get("fields", {})
    parts = path.split(".")
    for p in parts[:-1]:
        node = node.get(p, {}).get("fields", {})
    node.pop(parts[-1], None)


@functools.lru_cache(maxsize=None)
def _raw(name: str) -> dict[str, Any]:
    path = PROFILE_DIR / f"{name}.yaml"
    doc = yaml.safe_load(path.read_text())
    parent = doc.pop("based_on", None)
    if parent:
        merged = _merge(_raw(parent), {k: v for k, v in doc.items() if k != "remove"})
    else:
        merged = doc
    for p in doc.get("remove", []) or []:
        _remove(merged, p)
    merged.pop("remove", None)
    return merged


def _profile_name(version: str) -> str:
    v = version.strip().lower()
    if v in PROFILES:
        return v
    if v in ("latest", "head"):
        return "main"
    m = re.match(r"v?(\d+)\.(\d+)", v)
    if not m:
        raise ConfigError(f"{version!r} is not a TensorRT-LLM version",
                          f"use a version like {PINNED_RELEASE} or one of {', '.join(PROFILES)}")
    major, minor = int(m.group(1)), int(m.group(2))
    if major < 1:
        raise ConfigError(f"TensorRT-LLM {version} predates the PyTorch-backend YAML k2trt supports",
                          f"use 1.0 or newer (pinned: {PINNED_RELEASE})")
    if (major, minor) < (1, 2):
        return "1.0"
    if (major, minor) == (1, 2):
        return "1.2"
    return "main"


def profile_for(version: str | None = None) -> Profile:
    """The schema profile for a TensorRT-LLM version (default: the pinned release).

    Example: ``profile_for("1.2.0").serve["config_flag"]`` → ``"--config"``; ``profile_for("1.1")`` → the 1.0 profile.
    """
    version = version or PINNED_RELEASE
    name = _profile_name(version)
    d = _raw(name)
    return Profile(d["name"], d.get("covers", ""), d.get("fields", {}), d.get("renamed", {}) or {},
                   d.get("deprecated", {}) or {}, d.get("serve", {}), version)
