"""The facts extraction over live pydantic models (an installed ``tensorrt_llm``), for ``k2trt doctor``.

It writes the same facts document as the maintainer tool's ``ast`` extraction (``k2trt.trtllm.facts``), from the
objects instead of the text: ``model_fields`` (annotation, default, aliases, constraints, ``status``), ``model_config``
``extra``, ``Enum`` members, and each before-validator's source (``inspect.getsource``) read by the same
``handled_keys`` heuristic. Nothing here imports ``tensorrt_llm``; the caller passes the root class in.
"""

from __future__ import annotations

import ast
import enum
import inspect
import textwrap
import types
import typing
from pathlib import PurePath
from typing import Any

from k2trt.trtllm.facts import EXTRACTOR, FORMAT, handled_keys, t_scalar, t_union, validator_info

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
        pre = _pre_validated(cls)
        self.models[cls.__name__] = {"bases": [], "extra": cls.model_config.get("extra") or "ignore",  # type: ignore[attr-defined]
                                     "fields": fields, **({"handled": handled} if handled else {}),
                                     **({"pre": pre} if pre else {})}


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


def _before_validators(cls: type) -> list[ast.FunctionDef]:
    out: list[ast.FunctionDef] = []
    decs = getattr(cls, "__pydantic_decorators__", None)
    for group in (getattr(decs, "model_validators", {}),):
        for d in group.values():
            if getattr(d.info, "mode", None) not in ("before", "wrap"):
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
