"""The facts extraction over live pydantic models (an installed ``tensorrt_llm``), for ``k2trt doctor``.

It writes the same facts document as the maintainer tool's ``ast`` extraction (``k2trt.trtllm.facts``), from the
objects instead of the text: ``model_fields`` (annotation, default, aliases, constraints, ``status``), ``model_config``
``extra``, ``Enum`` members, and each before-validator's source (``inspect.getsource``) read by the same
``handled_keys`` / ``removed_args`` heuristics (the latter over the defining module's source), and the mappings an
after-validator rebuilds into a model (``coerced_fields``). Nothing here imports ``tensorrt_llm``; the caller passes the root class in.
"""

from __future__ import annotations

import ast
import enum
import inspect
import sys
import textwrap
import types
import typing
from pathlib import PurePath
from typing import Any

from k2trt.trtllm.facts import (EXTRACTOR, FORMAT, coerced_fields, handled_keys, removed_args, t_scalar, t_union,
                               validator_info)

_NUMERIC = {"Ge": "ge", "Gt": "gt", "Le": "le", "Lt": "lt"}


def _constraints(metadata: list[Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for m in metadata:
        for attr in ("ge", "gt", "le", "lt"):
            v = getattr(m, attr, None)
            if v is not None and type(m).__name__ in _NUMERIC:
                out[attr] = v
        if type(m).__name__ == "Strict":
            out["strict"] = True
    return out


class _Walker:
    def __init__(self) -> None:
        self.models: dict[str, Any] = {}
        self.enums: dict[str, list[Any]] = {}
        self.todo: list[type] = []
        self.external: dict[str, str] = {}

    def type_of(self, ann: Any, meta: list[Any] | None = None) -> dict[str, Any]:
        cons = _constraints(meta or [])
        origin = typing.get_origin(ann)
        args = typing.get_args(ann)
        if origin is typing.Annotated:
            t = self.type_of(args[0], list(meta or []) + list(ann.__metadata__))
            disc = next((m.discriminator for m in ann.__metadata__
                         if isinstance(getattr(m, "discriminator", None), str)), None)
            return dict(t, disc=disc) if disc and t.get("k") == "union" else t
        if origin in (typing.Union, getattr(types, "UnionType", None)):
            return t_union([self.type_of(a, meta) for a in args])
        if origin is typing.Literal:
            return {"k": "lit", "vals": list(args)}
        if origin in (list, set, tuple, frozenset) or str(origin) in ("collections.abc.Sequence",):
            return {"k": "list", "of": self.type_of(args[0]) if args else {"k": "any"}}
        if origin in (dict,) or str(origin) == "collections.abc.Mapping":
            return {"k": "dict", "val": self.type_of(args[1]) if len(args) == 2 else {"k": "any"}}
        if ann is type(None) or ann is None:
            return {"k": "none"}
        if ann is typing.Any or ann is object:
            return {"k": "any"}
        if isinstance(ann, type):
            if issubclass(ann, bool):
                return t_scalar("bool", **cons)
            if issubclass(ann, enum.Enum):
                self.enums.setdefault(ann.__name__, [m.value for m in ann])
                return {"k": "enum", "name": ann.__name__}
            if issubclass(ann, int):
                return t_scalar("int", **cons)
            if issubclass(ann, float):
                return t_scalar("float", **cons)
            if issubclass(ann, (str, PurePath)):
                return t_scalar("str", **cons)
            if hasattr(ann, "model_fields"):
                if ann.__name__ not in self.models:
                    self.todo.append(ann)
                return {"k": "model", "name": ann.__name__}
            if ann in (list, tuple, set):
                return {"k": "list", "of": {"k": "any"}}
            if ann is dict:
                return {"k": "dict", "val": {"k": "any"}}
        return {"k": "ext", "name": getattr(ann, "__name__", str(ann))}

    def model(self, cls: type) -> None:
        fields: dict[str, Any] = {}
        for name, fi in cls.model_fields.items():  # type: ignore[attr-defined]
            t = self.type_of(fi.annotation, list(fi.metadata))
            if fi.discriminator and t.get("k") == "union":
                t["disc"] = fi.discriminator
            f: dict[str, Any] = {"type": t}
            if fi.is_required():
                f["required"] = True
            elif fi.default_factory is not None:
                f["default"] = {"factory": getattr(fi.default_factory, "__name__", "factory")}
            else:
                f["default"] = _jsonable(fi.default)
            aliases = _aliases(fi)
            if aliases:
                f["aliases"] = aliases
            extra = fi.json_schema_extra if isinstance(fi.json_schema_extra, dict) else {}
            if extra.get("status"):
                f["status"] = extra["status"]
            fields[name] = f
        handled: dict[str, Any] = {}
        for dec in _before_validators(cls):
            handled.update(handled_keys(dec, set(cls.model_fields)))  # type: ignore[attr-defined]
            module = _module_tree(cls)
            if module is not None:  # main's table of removed-but-accepted arguments (sampler_type)
                handled.update(removed_args(dec, module))
        coerce: dict[str, str] = {}
        for dec in _before_validators(cls, modes=("after",)):
            for path, name in coerced_fields(dec).items():
                target = getattr(sys.modules.get(cls.__module__), name, None)
                if isinstance(target, type) and hasattr(target, "model_fields"):
                    coerce[path] = name
                    self.todo.append(target)
        pre = _pre_validated(cls)
        self.models[cls.__name__] = {"bases": [], "extra": cls.model_config.get("extra") or "ignore",  # type: ignore[attr-defined]
                                     "fields": fields, **({"handled": handled} if handled else {}),
                                     **({"pre": pre} if pre else {}), **({"coerce": coerce} if coerce else {})}


def _aliases(fi: Any) -> list[str]:
    out: list[str] = []
    va = fi.validation_alias
    for c in getattr(va, "choices", None) or ([va] if isinstance(va, str) else []):
        if isinstance(c, str):
            out.append(c)
    if isinstance(fi.alias, str) and fi.alias not in out:
        out.append(fi.alias)
    return out


def _pre_validated(cls: type) -> list[str]:
    """Fields a ``mode="before"``/``"plain"``/``"wrap"`` field validator converts before type checking."""
    decs = getattr(cls, "__pydantic_decorators__", None)
    out: set[str] = set()
    for d in getattr(decs, "field_validators", {}).values():
        if getattr(d.info, "mode", None) in ("before", "plain", "wrap"):
            out |= {f for f in getattr(d.info, "fields", ()) if isinstance(f, str)}
    return sorted(out)


_TREES: dict[tuple[str, int], ast.Module | None] = {}


def _module_tree(cls: type) -> ast.Module | None:
    """The parsed source of the module that defines ``cls`` (None when it cannot be read); parsed once per module."""
    key = (cls.__module__, id(sys.modules.get(cls.__module__)))
    if key not in _TREES:
        try:
            _TREES[key] = ast.parse(inspect.getsource(sys.modules[cls.__module__]))
        except (OSError, TypeError, KeyError, SyntaxError):
            _TREES[key] = None
    return _TREES[key]


def _before_validators(cls: type, modes: tuple[str, ...] = ("before", "wrap")) -> list[ast.FunctionDef]:
    """The parsed model validators of ``cls`` whose mode is one of ``modes``."""
    out: list[ast.FunctionDef] = []
    decs = getattr(cls, "__pydantic_decorators__", None)
    for group in (getattr(decs, "model_validators", {}),):
        for d in group.values():
            if getattr(d.info, "mode", None) not in modes:
                continue
            try:
                src = textwrap.dedent(inspect.getsource(d.func))
            except (OSError, TypeError):
                continue
            node = ast.parse(src).body[0]
            if isinstance(node, ast.FunctionDef) and validator_info(node) is not None:
                out.append(node)
    return out


def _jsonable(v: Any) -> Any:
    if isinstance(v, enum.Enum):
        return v.value
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    return {"expr": type(v).__name__}


def facts_from_models(root: type, release: str, where: str = "installed") -> dict[str, Any]:
    """The facts document for ``root`` (``TorchLlmArgs``) and every pydantic model reachable from it.

    Args:
        root: the root pydantic class.
        release: its version string (``tensorrt_llm.__version__``).
        where: recorded as the source (e.g. the package path).
    Returns:
        A facts dict in ``k2trt.trtllm.facts`` format; ``build_profile`` makes it comparable with a packaged profile.
    Example:
        >>> build_profile(facts_from_models(TorchLlmArgs, "1.3.0rc24"))["counts"]["models"]
    """
    w = _Walker()
    w.todo.append(root)
    while w.todo:
        cls = w.todo.pop()
        if cls.__name__ not in w.models:
            w.model(cls)
    return {"format": FORMAT, "release": release, "extractor": EXTRACTOR + " (live)",
            "sources": [{"role": "installed", "path": where}], "root": root.__name__,
            "models": w.models, "enums": w.enums, "external_bases": {}}
