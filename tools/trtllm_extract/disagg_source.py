"""Facts of ``trtllm-serve disaggregated``'s config file, read with ``ast`` from ``tensorrt_llm/llmapi/disagg_utils.py``.

The router config is not a pydantic model: ``parse_disagg_config_file`` calls ``extract_disagg_cfg(**yaml)``, so the
top-level keys are that function's parameters, and its ``**kwargs`` (any other key) are copied into both server
sections. Each section goes through ``extract_router_config`` (pops ``router``; ``router.type`` defaults to
``round_robin``, its other keys are router arguments) and ``extract_ctx_gen_cfgs(type=…, **section)``, whose
parameters (``num_instances``, ``urls``) are the section's own keys and whose ``**kwargs`` are the workers' LLM-API
arguments. The blocks built from dataclasses (``ConditionalDisaggConfig(**conditional_disagg_config)``,
``extract_disagg_cluster_config(disagg_cluster) -> DisaggClusterConfig``) reject unknown keys (a dataclass
constructor raises ``TypeError``; ``update_dataclass`` raises ``KeyError``), so their models are ``extra: forbid``.
"""

from __future__ import annotations

import ast
from typing import Any

from tools.trtllm_extract.source import Extractor, Module, _literal, _name

SECTIONS = ("context_servers", "generation_servers")
TOP_FUNCTION = "extract_disagg_cfg"
SECTION_FUNCTION = "extract_ctx_gen_cfgs"
ROUTER_FUNCTION = "extract_router_config"


class _DataclassModule(Module):
    """A ``Module`` that counts ``@dataclass`` classes as models (the router config's blocks are dataclasses)."""

    def kind(self, name: str, seen: tuple[str, ...] = ()) -> str | None:
        c = self.classes.get(name)
        if c is not None and any(_name(d) == "dataclass" for d in c.decorator_list):
            return "model"
        return super().kind(name, seen)


def _functions(tree: ast.Module) -> dict[str, ast.FunctionDef]:
    return {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}


def _params(ex: Extractor, func: ast.FunctionDef, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """``{name: {"type", "default" | "required"}}`` for a function's keyword parameters (``**kwargs`` excluded)."""
    args = func.args.args + func.args.kwonlyargs
    defaults = [None] * (len(func.args.args) - len(func.args.defaults)) + list(func.args.defaults) \
        + list(func.args.kw_defaults)
    out: dict[str, Any] = {}
    for a, d in zip(args, defaults):
        if a.arg in skip:
            continue
        spec: dict[str, Any] = {"type": ex.type_of(a.annotation)}
        if d is None:
            spec["required"] = True
        else:
            spec["default"] = ex.default(d)
        out[a.arg] = spec
    return out


def _dataclass_fields(ex: Extractor, cls: ast.ClassDef) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for stmt in cls.body:
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
            f: dict[str, Any] = {"type": ex.type_of(stmt.annotation)}
            if stmt.value is None:
                f["required"] = True
            else:
                f["default"] = _literal(stmt.value)
            fields[stmt.target.id] = f
    return fields


def _blocks(mod: _DataclassModule, top: ast.FunctionDef, funcs: dict[str, ast.FunctionDef]) -> dict[str, str]:
    """Top-level key → dataclass it is built into (``C(**key)``, or ``helper(key)`` returning ``C``)."""
    out: dict[str, str] = {}
    for node in ast.walk(top):
        if not isinstance(node, ast.Call):
            continue
        fname = _name(node.func)
        for kw in node.keywords:
            if kw.arg is None and isinstance(kw.value, ast.Name) and mod.kind(fname) == "model":
                out[kw.value.id] = fname
        helper = funcs.get(fname)
        if helper is not None and node.args and isinstance(node.args[0], ast.Name) and helper.returns is not None \
                and mod.kind(_name(helper.returns)) == "model":
            out[node.args[0].id] = _name(helper.returns)
    return out


def disagg_facts(text: str) -> dict[str, Any]:
    """The router config's facts from ``disagg_utils.py`` text.

    Returns:
        ``{"top", "inherit", "sections", "section", "section_extra", "router", "blocks", "models"}``: the top-level
        keys with types and defaults, whether other top-level keys are copied into the sections, the section keys,
        what the sections' other keys are (``llm_args``), the router keys, and the dataclass-backed blocks.
    Example:
        >>> disagg_facts(Path("disagg_utils.py").read_text())["section"]["num_instances"]["default"]
        1
    """
    tree = ast.parse(text)
    mod = _DataclassModule()
    mod.add(text)
    ex = Extractor(mod)
    funcs = _functions(tree)
    top_f, sec_f = funcs[TOP_FUNCTION], funcs[SECTION_FUNCTION]
    top = _params(ex, top_f)
    section = _params(ex, sec_f, skip=("type",))
    router_default = next((_literal(n.args[1]) for n in ast.walk(funcs[ROUTER_FUNCTION])
                           if isinstance(n, ast.Call) and _name(n.func) == "pop" and len(n.args) == 2
                           and _literal(n.args[0]) == "type"), "round_robin")
    section["router"] = {"type": {"k": "model", "name": "RouterSection"}, "default": {"type": router_default}}
    # The sections are read by extract_router_config/extract_ctx_gen_cfgs above, not built into one dataclass.
    blocks = {k: v for k, v in _blocks(mod, top_f, funcs).items() if k not in SECTIONS}
    models: dict[str, Any] = {"RouterSection": {"extra": "allow", "fields": {
        "type": {"type": {"k": "str"}, "default": router_default}}}}
    todo = sorted(set(blocks.values()))
    while todo:
        n = todo.pop()
        if n in models:
            continue
        fields = _dataclass_fields(ex, mod.classes[n])
        models[n] = {"extra": "forbid", "fields": fields}
        for f in fields.values():
            for sub in ([f["type"]] + f["type"].get("of", [])):
                if sub.get("k") == "model" and sub["name"] not in models:
                    todo.append(sub["name"])
    for key, cls in blocks.items():
        if key in top:
            top[key] = dict(top[key], type={"k": "union", "of": [{"k": "model", "name": cls}, {"k": "none"}]})
    return {"top": dict(sorted(top.items())), "inherit": top_f.args.kwarg is not None,
            "sections": list(SECTIONS), "section": dict(sorted(section.items())),
            "section_extra": "llm_args" if sec_f.args.kwarg is not None else "forbid",
            "blocks": dict(sorted(blocks.items())), "models": dict(sorted(models.items()))}
