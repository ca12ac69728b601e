"""``trtllm-serve`` options and the YAML merge rule, read from TensorRT-LLM source with ``ast``.

``click_options_from_source(serve_py)`` reads the ``@click.option`` decorators of each command function in
``tensorrt_llm/commands/serve.py`` (the same shape ``pages.click_options`` reads from the rendered page).
``merge_rule(llm_args_py)`` reads ``update_llm_args_with_extra_dict``: the blocks it merges key by key instead of
replacing, and the top-level keys it renames.
"""

from __future__ import annotations

import ast
from typing import Any


def _const(node: ast.AST) -> Any:
    try:
        return ast.literal_eval(node)
    except (ValueError, SyntaxError, TypeError):
        return ast.unparse(node)


def _option(call: ast.Call) -> tuple[str, dict[str, Any]] | None:
    names = [a.value for a in call.args if isinstance(a, ast.Constant) and isinstance(a.value, str)
             and a.value.startswith("-")]
    if not names:
        return None
    kw = {k.arg: k.value for k in call.keywords if k.arg}
    if "/" in names[0]:  # click's "--x/--no-x" boolean pair: a flag with its negative spelling
        names = names[0].split("/") + names[1:]
        kw["is_flag"] = ast.Constant(True)
    choices = None
    t = kw.get("type")
    if isinstance(t, ast.Call) and ast.unparse(t.func).split(".")[-1] in ("Choice", "ChoiceWithAlias"):
        c = _const(t.args[0]) if t.args else None
        choices = list(c) if isinstance(c, (list, tuple)) else [f"<{c}>"] if c else None
    flag = isinstance(kw.get("is_flag"), ast.Constant) and bool(kw["is_flag"].value)  # type: ignore[union-attr]
    default = _const(kw["default"]) if "default" in kw else (False if flag else None)
    help_text = _const(kw["help"]) if "help" in kw else ""
    deprecated = "deprecat" in str(help_text).lower() or ("hidden" in kw and _const(kw["hidden"]) is True)
    return names[0], {"aliases": names[1:], "flag": flag, "default": default, "choices": choices,
                      "deprecated": bool(deprecated)}


def click_options_from_source(text: str) -> dict[str, dict[str, Any]]:
    """``{command: {option: facts}}`` for every function decorated with ``@click.option`` in ``text``."""
    out: dict[str, dict[str, Any]] = {}
    for node in ast.walk(ast.parse(text)):
        if not isinstance(node, ast.FunctionDef):
            continue
        opts: dict[str, Any] = {}
        for d in node.decorator_list:
            if isinstance(d, ast.Call) and ast.unparse(d.func).endswith("option"):
                o = _option(d)
                if o:
                    opts[o[0]] = o[1]
        if opts:
            out[node.name.replace("_", "-")] = opts
    return out


def _tests_yaml_key(test: ast.AST) -> str | None:
    """The ``"x_config"`` of a test ``"x_config" in llm_args_dict`` (the YAML side alone), else None."""
    if isinstance(test, ast.Compare) and isinstance(test.left, ast.Constant) and isinstance(test.left.value, str) \
            and test.left.value.endswith("_config") and isinstance(test.ops[0], ast.In) \
            and isinstance(test.comparators[0], ast.Name) and test.comparators[0].id == "llm_args_dict":
        return test.left.value
    return None


def merge_rule(text: str) -> dict[str, Any]:
    """How ``update_llm_args_with_extra_dict`` merges the YAML into the CLI-built arguments.

    ``deep``: the ``*_config`` blocks it merges key by key instead of replacing (a block it tests with
    ``"x_config" in llm_args and "x_config" in llm_args_dict``); ``renames``: top-level keys it moves to another key
    (``d.setdefault("new", d.pop("old"))``). Both empty when the function is absent (older releases replace blocks).
    """
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.FunctionDef) and node.name == "update_llm_args_with_extra_dict":
            deep: set[str] = set()
            renames: dict[str, str] = {}
            for n in ast.walk(node):
                if isinstance(n, ast.If) and _tests_yaml_key(n.test) and \
                        any(isinstance(b, ast.BinOp) and isinstance(b.op, ast.BitOr) for s in n.body for b in ast.walk(s)):
                    # ``if "x_config" in llm_args_dict: … merged = base | yaml`` (main's multimodal_config)
                    deep.add(str(_tests_yaml_key(n.test)))
                if isinstance(n, ast.BoolOp) and isinstance(n.op, ast.And):
                    tested = [c.left.value for c in n.values if isinstance(c, ast.Compare)
                              and isinstance(c.left, ast.Constant) and isinstance(c.left.value, str)
                              and isinstance(c.ops[0], ast.In) and isinstance(c.comparators[0], ast.Name)
                              and c.comparators[0].id == "llm_args"]
                    deep |= {t for t in tested if t.endswith("_config")}
                elif isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "setdefault" \
                        and len(n.args) == 2 and isinstance(n.args[0], ast.Constant) \
                        and isinstance(n.args[1], ast.Call) and isinstance(n.args[1].func, ast.Attribute) \
                        and n.args[1].func.attr == "pop" and n.args[1].args \
                        and isinstance(n.args[1].args[0], ast.Constant):
                    renames[str(n.args[1].args[0].value)] = str(n.args[0].value)
            return {"deep": sorted(deep), "renames": dict(sorted(renames.items()))}
    return {"deep": [], "renames": {}}


def deep_merged_keys(text: str) -> list[str]:
    """Fields ``update_llm_args_with_extra_dict`` merges key by key (empty: it replaces whole blocks)."""
    return list(merge_rule(text)["deep"])


def click_options_from_reference(text: str) -> dict[str, dict[str, Any]]:
    """``{command: {option: facts}}`` from TensorRT-LLM's checked-in CLI stability reference
    (``tests/unittest/api_stability/references/trtllm_serve_cli.yaml``).

    That file is TensorRT-LLM's own record of every ``trtllm-serve`` option (its CI diffs the live click group
    against it), keyed by the parameter name with the option's ``flags`` sorted. The primary spelling is the flag
    named after the parameter (``--tensor_parallel_size`` for ``tensor_parallel_size``), else the first long flag
    that is not a ``--no-`` negation; the other flags are aliases. ``type: Choice([...])`` gives the choices;
    ``status: deprecated`` marks the option deprecated.
    """
    import yaml

    doc = yaml.safe_load(text) or {}
    out: dict[str, dict[str, Any]] = {}
    for command, body in (doc.get("commands") or {}).items():
        opts: dict[str, Any] = {}
        for name, spec in ((body or {}).get("options") or {}).items():
            flags = [str(f) for f in spec.get("flags") or []]
            longs = [f for f in flags if f.startswith("--")]
            primary = next((f for f in (f"--{name}",) if f in flags), None) or \
                next((f for f in longs if not f.startswith("--no-")), flags[0] if flags else f"--{name}")
            t = str(spec.get("type", ""))
            choices = None
            if t.startswith("Choice(") and t.endswith(")"):
                choices = [str(c) for c in ast.literal_eval(t[len("Choice("):-1])]
            opts[primary] = {"aliases": [f for f in flags if f != primary], "flag": bool(spec.get("is_flag")),
                             "default": spec.get("default"), "choices": choices,
                             "deprecated": spec.get("status") == "deprecated"}
        out[str(command)] = opts
    return out
