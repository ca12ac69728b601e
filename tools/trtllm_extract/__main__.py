"""Maintainer tool: extract one TensorRT-LLM release's facts from its source, and generate packaged profiles.

Never imported by k2trt at run time. Two steps, both deterministic:

    # 1. facts from the release's files (plain .py, or the release documentation's rendered pages)
    python -m tools.trtllm_extract facts --release 1.3.0rc24 \
        --llm-args 1.3.0rc24/_modules/tensorrt_llm/llmapi/llm_args.html \
        --serve 1.3.0rc24/commands/trtllm-serve/trtllm-serve.html \
        --source "llm_args=NVIDIA/TensorRT-LLM:1.3.0rc24/_modules/tensorrt_llm/llmapi/llm_args.html@32b086cd…" \
        --source "serve=NVIDIA/TensorRT-LLM:1.3.0rc24/commands/trtllm-serve/trtllm-serve.html@32b086cd…" \
        --out tests/data/trtllm/facts/1.3.0rc24.json
    # 2. every packaged profile from the stored facts (what tests/unit/test_trtllm_profiles.py checks byte for byte)
    python -m tools.trtllm_extract profiles

A pinned checkout gives the files directly: ``git show v1.3.0rc24:tensorrt_llm/llmapi/llm_args.py``. The documentation
pages come from the ``gh-pages`` branch (``git show origin/gh-pages:1.3.0rc24/…``).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path
from typing import Any

from k2trt.trtllm.facts import EXTRACTOR, FORMAT, build_profile, dump
from tools.trtllm_extract.cli_source import click_options_from_reference, click_options_from_source, merge_rule
from tools.trtllm_extract.disagg_source import disagg_facts
from tools.trtllm_extract.pages import click_options, viewcode_source
from tools.trtllm_extract.source import extract_models

ROOT = Path(__file__).resolve().parents[2]
FACTS_DIR = ROOT / "tests" / "data" / "trtllm" / "facts"
PROFILE_DIR = ROOT / "k2trt" / "trtllm" / "profiles"
# Bases defined outside llm_args.py whose extra policy the models inherit; each row names where it is defined.
EXTERNAL_BASES = {
    "BaseModel": "ignore",  # pydantic's default
    "StrictBaseModel": "forbid",  # tensorrt_llm/llmapi/utils.py: model_config = ConfigDict(extra="forbid")
}


def _read_python(path: Path) -> str:
    text = path.read_text(encoding="utf-8")
    return viewcode_source(text) if path.suffix in (".html", ".htm") else text


def _source(spec: str, files: dict[str, Path], transcribed: bool = False, built_from: str | None = None,
            notes: dict[str, str] | None = None) -> dict[str, Any]:
    """One provenance row from ``ROLE=OWNER/REPO:PATH@COMMIT``.

    The file read for it is the one given for that role whose name ends with the row's path (a raw source file paged
    into a scratch directory keeps the repository's path under it); its sha256 is recorded. ``notes[path]`` (from
    ``--note PATH=TEXT``) is recorded with the row: how the commit was dated, how sure that is.
    """
    role, _, rest = spec.partition("=")
    where, _, commit = rest.rpartition("@")
    repo, _, path = where.partition(":")
    out: dict[str, Any] = {"role": role, "repo": repo, "path": path, "commit": commit}
    if built_from:
        out["built_from"] = built_from
    local = files.get(role) if role in ("llm_args", "serve") and transcribed else \
        next((f for f in files.values() if f.as_posix().endswith("/" + path) or f.as_posix() == path), files.get(role))
    if transcribed:
        # The file read was a transcript of the page's declaration lines (class/field/enum/validator heads), not the
        # page itself: its hash would identify nothing upstream, so none is recorded.
        out["form"] = "declarations transcribed from the rendered page"
    elif local is not None:
        out["sha256"] = hashlib.sha256(local.read_bytes()).hexdigest()
        out["form"] = {".html": "sphinx-page", ".htm": "sphinx-page", ".yaml": "yaml", ".yml": "yaml"}.get(
            local.suffix, "python")
    if notes and path in notes:
        out["note"] = notes[path]
    return out


def _serve_options(path: Path) -> dict[str, Any]:
    """``{"options", "commands"}`` of ``trtllm-serve serve`` from its page, ``serve.py``, or TensorRT-LLM's CLI
    stability reference YAML."""
    text = path.read_text(encoding="utf-8")
    cmds = click_options(text) if path.suffix in (".html", ".htm") else \
        click_options_from_reference(text) if path.suffix in (".yaml", ".yml") else click_options_from_source(text)
    serve_cmd = cmds.get("serve") or next(
        (v for k, v in cmds.items() if k.endswith("serve") or k.endswith("serve-serve")), {})
    return {"options": serve_cmd, "commands": sorted(cmds)}


def facts(args: argparse.Namespace) -> dict[str, Any]:
    """The facts document for one release from the files named on the command line."""
    texts = [_read_python(Path(p)) for p in args.llm_args]
    models, enums = extract_models(texts)
    serve: dict[str, Any] = _serve_options(Path(args.serve)) if args.serve else {}
    files = {"llm_args": Path(args.llm_args[0])} | ({"serve": Path(args.serve)} if args.serve else {}) \
        | {f"module{i}": Path(p) for i, p in enumerate(args.llm_args[1:], 1)} \
        | ({"disagg": Path(args.disagg)} if getattr(args, "disagg", None) else {})
    notes = dict(n.split("=", 1) for n in getattr(args, "note", None) or [])
    out = {"format": FORMAT, "release": args.release, "extractor": EXTRACTOR,
           "sources": [_source(s, files, args.transcribed, args.built_from, notes) for s in args.source],
           "root": "TorchLlmArgs",
           "models": models, "enums": enums, "external_bases": EXTERNAL_BASES, "serve": serve,
           "merge": merge_rule("\n".join(texts))}
    if getattr(args, "disagg", None):
        out["disagg"] = disagg_facts(Path(args.disagg).read_text(encoding="utf-8"))
    return out


def regenerate(facts_dir: Path = FACTS_DIR, out_dir: Path = PROFILE_DIR) -> list[Path]:
    """Write ``profiles/<release>.json`` for every stored facts file; returns the paths written."""
    import json

    from k2trt.fsio import atomic_write

    written = []
    for f in sorted(facts_dir.glob("*.json")):
        doc = json.loads(f.read_text())
        out = out_dir / f"{f.stem}.json"
        atomic_write(out, dump(build_profile(doc)))
        written.append(out)
    return written


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.trtllm_extract", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("facts", help="extract one release's facts from its files")
    f.add_argument("--release", required=True)
    f.add_argument("--llm-args", action="append", required=True, help="llm_args.py or its viewcode page (repeat "
                   "for the modules its config classes come from)")
    f.add_argument("--serve", help="tensorrt_llm/commands/serve.py, the trtllm-serve documentation page, or "
                   "tests/unittest/api_stability/references/trtllm_serve_cli.yaml")
    f.add_argument("--disagg", help="tensorrt_llm/llmapi/disagg_utils.py (the disaggregated router config)")
    f.add_argument("--source", action="append", default=[], help="ROLE=OWNER/REPO:PATH@COMMIT provenance row "
                   "(roles: llm_args, module, serve, disagg)")
    f.add_argument("--note", action="append", default=[], help="PATH=TEXT: how that source's commit was dated")
    f.add_argument("--transcribed", action="store_true", help="the files given are transcripts of the pages' "
                   "declaration lines (recorded as such in the provenance)")
    f.add_argument("--built-from", help="the TensorRT-LLM commit the documentation pages say they were built from")
    f.add_argument("--out", required=True)
    sub.add_parser("profiles", help="regenerate every packaged profile from tests/data/trtllm/facts")
    args = ap.parse_args(argv)
    if args.cmd == "facts":
        from k2trt.fsio import atomic_write

        atomic_write(Path(args.out), dump(facts(args)))
        print(f"wrote {args.out}")
    else:
        for p in regenerate():
            print(f"wrote {p.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
