"""TensorRT-LLM's environment variables are spelled only under ``k2trt/trtllm/``: every other module reads them from
there (the launcher's default forwarding list, the plan's EPLB advice). Read with ``ast`` over the package's source:
string constants in code count, docstrings (which may cite TensorRT-LLM) do not."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import k2trt

ROOT = Path(k2trt.__file__).parent
ENV_NAME = re.compile(r"\b(TRTLLM|TLLM)_[A-Z*]")


def _code_strings(tree: ast.AST) -> list[ast.Constant]:
    docstrings = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)}
    return [n for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings]


def test_tensorrt_llm_environment_names_live_under_trtllm() -> None:
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        if path.relative_to(ROOT).parts[0] == "trtllm":
            continue
        for node in _code_strings(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if ENV_NAME.search(node.value):
                found.append(f"{path.relative_to(ROOT.parent)}:{node.lineno}: {node.value[:60]!r}")
    assert found == [], "TensorRT-LLM variable names outside k2trt/trtllm/:\n" + "\n".join(found)


def test_the_launcher_forwards_what_trtllm_names() -> None:
    from k2trt.launch.spec import DEFAULT_ENV_FORWARD
    from k2trt.trtllm.deploy import ENV_FORWARD

    assert DEFAULT_ENV_FORWARD == ENV_FORWARD and {"TRTLLM_*", "TLLM_*"} <= set(ENV_FORWARD)
