"""Judge a ``trtllm-serve disaggregated -c`` config the way one TensorRT-LLM release's ``disagg_utils.py`` reads it.

The facts are the profile's ``disagg`` block, extracted from that release's ``tensorrt_llm/llmapi/disagg_utils.py``
(``tools/trtllm_extract/disagg_source.py``); where a release's file could not be read (1.0.0, 1.2.1 and 1.3.0rc24:
no stored copy, and their documentation does not render it) the profile has none, and only the servers' LLM-API
keys are judged, with a warning that says so.

What ``parse_disagg_config_file`` does, and so what is checked (main, ``disagg_utils.py@0228a712``):

- ``extract_disagg_cfg(**yaml)``: its keyword parameters are the top-level keys (typed here); any other top-level
  key is an LLM-API argument copied into both server sections, and a section that sets the same key to another
  value is a ``ValueError``.
- each of ``context_servers`` / ``generation_servers``: ``router`` is popped (``type``, default ``round_robin``,
  other keys are router arguments), ``num_instances`` and ``urls`` are the section's own keys (``urls`` are
  ``host:port`` and their count must equal ``num_instances``), every other key is an LLM-API argument of the
  role's workers (TensorRT-LLM's own schema test validates them as LLM arguments).
- ``conditional_disagg_config``, ``otlp_config``, ``disagg_cluster``: dataclasses built from the mapping, so an
  unknown key raises.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import yaml

from k2trt.trtllm.lint import Issue, LintResult, _Linter, lint, lint_text, lint_with
from k2trt.trtllm.profiles import Profile, profile_for

SECTIONS = ("context_servers", "generation_servers")


def is_disagg(doc: Any) -> bool:
    """Whether a parsed YAML document is a disaggregated router config rather than an extra-llm-api file."""
    return isinstance(doc, dict) and any(k in doc for k in SECTIONS)


def _blocks_profile(prof: Profile) -> Profile:
    """``prof`` with the router config's dataclass models added (for typing the top-level blocks only)."""
    return dataclasses.replace(prof, models={**prof.models, **prof.disagg.get("models", {})})


def _prefixed(i: Issue, prefix: str) -> Issue:
    return Issue(i.severity, f"{prefix}.{i.path}" if i.path != "<file>" else prefix, i.message, i.fix)


def serve_arguments(prof: Profile) -> set[str]:
    """The ``trtllm-serve serve`` parameter names (an option's own spelling, dashes dropped) that a router config
    may carry next to LLM-API fields: the workers are built from them as from the command line. TensorRT-LLM's own
    generated schema for ``trtllm-serve disaggregated --config`` (1.4.0rc0,
    ``tensorrt_llm/schemas/trtllm-serve-disagg-config.schema.json@e6d268cd``) lists e.g. ``free_gpu_memory_fraction``
    at the top level, and its shipped ``examples/disaggregated/disagg_config.yaml`` sets it."""
    return {k.lstrip("-") for k in prof.serve_options if not k.startswith("--no-")}


def lint_disagg_with(doc: Any, prof: Profile) -> LintResult:
    """Lint a parsed router config against a profile.

    Example: ``lint_disagg_with(disagg_config(ctx, gen), profile_for("main")).ok`` → True.
    """
    issues: list[Issue] = []
    rel = f"TensorRT-LLM {prof.name}"
    if not isinstance(doc, dict):
        return LintResult(prof.name, prof.version, [Issue("error", "<file>", "the top level must be a mapping, got "
                                                          f"{type(doc).__name__}")])
    facts = prof.disagg
    if not facts:
        issues.append(Issue("warning", "<file>", f"{rel}'s disaggregated config schema is not established (its "
                            "disagg_utils.py could not be read): only the servers' LLM-API keys are checked",
                            "k2trt config profiles lists the profiles that have it"))
    top = facts.get("top", {})
    blocks = _Linter(_blocks_profile(prof)) if facts else None
    inherited: dict[str, Any] = {}
    unjudged: list[str] = []
    for k, v in doc.items():
        key = str(k)
        if key in SECTIONS:
            continue
        if blocks is not None and key in top:
            errs, warns = blocks.value(key, top[key]["type"], v)
            issues += errs + warns
        elif facts.get("inherit") or (not facts and key in prof.fields):
            inherited[key] = v
        elif not facts:
            unjudged.append(key)  # a router key of that release, or a mistake: its schema is unknown
        else:
            issues.append(Issue("error", key, f"unknown top-level key ({rel} rejects it)"))
    if unjudged:
        issues[0] = Issue("warning", "<file>", f"{issues[0].message}; top-level {', '.join(unjudged)} not judged",
                          issues[0].fix)
    cli = serve_arguments(prof) - set(prof.fields)
    if inherited:
        # copied into both sections, so judged once as the workers' LLM-API arguments
        issues += [i for i in lint_with({k: v for k, v in inherited.items() if k not in cli}, prof).issues]
    section_spec = facts.get("section", {})
    for name in SECTIONS:
        sec = doc.get(name)
        if sec is None:
            if not doc.get("disagg_cluster"):
                issues.append(Issue("warning", name, "missing: without it or a disagg_cluster block the router "
                                    "has no servers for this role"))
            continue
        if not isinstance(sec, dict):
            issues.append(Issue("error", name, f"expected a mapping, got {type(sec).__name__}"))
            continue
        llm: dict[str, Any] = {}
        for k, v in sec.items():
            key, path = str(k), f"{name}.{k}"
            if key == "router":
                if not isinstance(v, dict):
                    issues.append(Issue("error", path, f"expected a mapping, got {type(v).__name__}"))
                elif "type" in v and not isinstance(v["type"], str):
                    issues.append(Issue("error", f"{path}.type", f"expected str, got {type(v['type']).__name__}"))
            elif blocks is not None and key in section_spec:
                errs, warns = blocks.value(path, section_spec[key]["type"], v)
                issues += errs + warns
            elif not facts and key in ("num_instances", "urls"):
                continue
            else:
                llm[key] = v
                if key in inherited and inherited[key] != v and facts.get("inherit"):
                    issues.append(Issue("error", path, f"{rel} rejects it: the top level sets {key} to "
                                        f"{inherited[key]!r} and this section to {v!r}",
                                        "set it in one place, or to the same value"))
        llm = {k: v for k, v in llm.items() if k not in cli}
        if llm:
            issues += [_prefixed(i, name) for i in lint_with(llm, prof).issues]
        issues += _urls(name, sec)
    return LintResult(prof.name, prof.version, issues)


def _urls(name: str, sec: dict[str, Any]) -> list[Issue]:
    """``extract_ctx_gen_cfgs``: each URL splits on ':' into host and an int port; one URL per instance."""
    urls, n = sec.get("urls"), sec.get("num_instances", 1)
    if not isinstance(urls, list) or not urls:
        return []
    out = []
    for i, u in enumerate(urls):
        parts = str(u).split(":")
        if len(parts) != 2 or not parts[0] or not parts[1].isdigit():
            out.append(Issue("error", f"{name}.urls[{i}]", f"{u!r} is not host:port (TensorRT-LLM splits it on ':' "
                             "into a host and an integer port)"))
    if isinstance(n, int) and not isinstance(n, bool) and len(urls) != n:
        out.append(Issue("error", f"{name}.urls", f"{len(urls)} URL(s) for num_instances {n}: TensorRT-LLM requires "
                         "one per instance", f"set num_instances: {len(urls)}"))
    return out


def lint_disagg(doc: Any, version: str | None = None) -> LintResult:
    """Lint a parsed router config for a TensorRT-LLM version (default: the pinned release)."""
    return lint_disagg_with(doc, profile_for(version))


def lint_config_text(text: str, version: str | None = None, where: str = "<yaml>") -> LintResult:
    """Lint YAML text as whichever file it is: a router config (``context_servers``/``generation_servers``) or an
    extra-llm-api file. What ``k2trt config check`` runs.

    Example: ``lint_config_text(Path("disagg.yml").read_text(), "main").ok``.
    """
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError:
        return lint_text(text, version, where)  # reports the syntax error with its line
    return lint_disagg(doc, version) if is_disagg(doc) else lint(doc, version)
