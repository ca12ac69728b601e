"""Facts from TensorRT-LLM Python source, read with ``ast`` (the source is parsed, never imported).

``extract_models(text)`` walks one module: classes (pydantic models by their bases, ``model_config`` /
``class Config`` ``extra``), their annotated fields (type, default, aliases from ``AliasChoices`` /
``validation_alias`` / ``alias``, ``status``, numeric constraints), enums and their values, module-level type aliases,
``from_dict`` dispatch tables (``{"MTP": MTPDecodingConfig, …}``), and the keys each before-validator handles
(``k2trt.trtllm.facts.handled_keys``). Names the module imports resolve to ``ext`` types unless another module read
in the same run defines them.
"""

from __future__ import annotations

import ast
from typing import Any

from k2trt.trtllm.facts import coerced_fields, handled_keys, removed_args, t_scalar, t_union, validator_info

PYDANTIC_BASES = {"BaseModel", "StrictBaseModel", "BaseSettings"}
ENUM_BASES = {"Enum", "StrEnum", "IntEnum"}
_SCALAR_NAMES = {"int": "int", "float": "float", "bool": "bool", "str": "str", "bytes": "str", "Path": "str",
                 "PathLike": "str", "Any": "any", "object": "any", "None": "none", "NoneType": "none"}
_CONSTRAINED = {"PositiveInt": ("int", {"gt": 0}), "NonNegativeInt": ("int", {"ge": 0}),
                "NegativeInt": ("int", {"lt": 0}), "NonPositiveInt": ("int", {"le": 0}),
                "PositiveFloat": ("float", {"gt": 0}), "NonNegativeFloat": ("float", {"ge": 0}),
                "StrictInt": ("int", {"strict": True}), "StrictBool": ("bool", {"strict": True}),
                "StrictStr": ("str", {"strict": True}), "StrictFloat": ("float", {"strict": True})}
_LIST = {"List", "list", "Sequence", "Set", "set", "Tuple", "tuple", "FrozenSet", "frozenset", "Iterable"}
_DICT = {"Dict", "dict", "Mapping", "MutableMapping"}
_FIELD_FUNCS = {"Field", "PydanticField"}


def _name(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Subscript):
        return _name(node.value)
    return ""


def _literal(node: ast.AST) -> Any:
    try:
        return ast.literal_eval(node)
    except (ValueError, SyntaxError, TypeError):
        return {"expr": ast.unparse(node)}


class Module:
    """The raw declarations of one or more source modules, before types are resolved."""

    def __init__(self) -> None:
        self.classes: dict[str, ast.ClassDef] = {}
        self.aliases: dict[str, ast.AST] = {}
        self.module_of: dict[str, ast.Module] = {}
        """Class name → the parsed module that defines it (for module-level tables its validators use)."""

    def add(self, text: str) -> None:
        """Parse one module's text and record its classes and module-level type aliases."""
        tree = ast.parse(text)
        for node in tree.body:
            if isinstance(node, ast.ClassDef):
                self.module_of[node.name] = tree
            if isinstance(node, ast.ClassDef):
                self.classes[node.name] = node
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None \
                    and _name(node.annotation) == "TypeAlias":
                self.aliases[node.target.id] = node.value
            elif isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name) \
                    and isinstance(node.value, (ast.Subscript, ast.BinOp)) and _is_typing(node.value):
                self.aliases[node.targets[0].id] = node.value

    def kind(self, name: str, seen: tuple[str, ...] = ()) -> str | None:
        """``model``, ``enum`` or None for a class defined in the modules read."""
        c = self.classes.get(name)
        if c is None or name in seen:
            return None
        for b in c.bases:
            bn = _name(b)
            if bn in PYDANTIC_BASES or self.kind(bn, seen + (name,)) == "model":
                return "model"
            if bn in ENUM_BASES or self.kind(bn, seen + (name,)) == "enum":
                return "enum"
        if any(kw.arg == "metaclass" and "Enum" in _name(kw.value) for kw in c.keywords):
            return "enum"
        return None


def _is_typing(node: ast.AST) -> bool:
    heads = {"Optional", "Union", "Literal", "List", "Dict", "Annotated"}
    return any(isinstance(n, ast.Name) and n.id in heads for n in ast.walk(node)) or isinstance(node, ast.BinOp)


class Extractor:
    """Resolves annotations against a ``Module`` and builds the facts' ``models`` and ``enums``."""

    def __init__(self, mod: Module) -> None:
        self.mod = mod
        self.enums: dict[str, list[Any]] = {}

    def type_of(self, node: ast.AST | None, depth: int = 0) -> dict[str, Any]:
        """The type descriptor of an annotation node."""
        if node is None or depth > 20:
            return {"k": "any"}
        if isinstance(node, ast.Constant):
            if node.value is None:
                return {"k": "none"}
            if isinstance(node.value, str):  # a forward reference
                return self.type_of(ast.parse(node.value, mode="eval").body, depth + 1)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
            return t_union([self.type_of(node.left, depth + 1), self.type_of(node.right, depth + 1)])
        if isinstance(node, ast.Subscript):
            return self._subscript(node, depth)
        n = _name(node)
        if n in _SCALAR_NAMES:
            return {"k": _SCALAR_NAMES[n]}
        if n in _CONSTRAINED:
            kind, cons = _CONSTRAINED[n]
            return t_scalar(kind, **cons)
        if n in _LIST:
            return {"k": "list", "of": {"k": "any"}}
        if n in _DICT:
            return {"k": "dict", "val": {"k": "any"}}
        if n in self.mod.aliases:
            return self.type_of(self.mod.aliases[n], depth + 1)
        kind = self.mod.kind(n)
        if kind == "enum":
            self.enums.setdefault(n, self.enum_values(n))
            return {"k": "enum", "name": n}
        if kind == "model":
            return {"k": "model", "name": n}
        return {"k": "ext", "name": ast.unparse(node)}

    def _subscript(self, node: ast.Subscript, depth: int) -> dict[str, Any]:
        head = _name(node.value)
        args = list(node.slice.elts) if isinstance(node.slice, ast.Tuple) else [node.slice]
        if head == "Optional":
            return t_union([self.type_of(args[0], depth + 1), {"k": "none"}])
        if head == "Union":
            return t_union([self.type_of(a, depth + 1) for a in args])
        if head == "Literal":
            return {"k": "lit", "vals": [_literal(a) for a in args]}
        if head == "Annotated":
            t = self.type_of(args[0], depth + 1)
            for meta in args[1:]:
                cons = _field_kwargs(meta) if isinstance(meta, ast.Call) else {}
                t = _constrain(t, {k: v for k, v in cons.items() if k in ("ge", "gt", "le", "lt")})
                if isinstance(meta, ast.Call) and _name(meta.func) in ("Discriminator",) and meta.args:
                    t = dict(t, disc=_literal(meta.args[0]))
                elif "discriminator" in cons and t.get("k") == "union":
                    t = dict(t, disc=cons["discriminator"])
            return t
        if head in _LIST:
            return {"k": "list", "of": self.type_of(args[0], depth + 1)}
        if head in _DICT:
            return {"k": "dict", "val": self.type_of(args[-1], depth + 1)}
        return self.type_of(node.value, depth + 1)

    def enum_values(self, name: str) -> list[Any]:
        """Member values of an enum class (``NAME = value`` lines; ``auto()`` gives the member name)."""
        out: list[Any] = []
        for stmt in self.mod.classes[name].body:
            if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
                member = stmt.targets[0].id
                if member.startswith("_"):
                    continue
                v = _literal(stmt.value)
                out.append(member if isinstance(v, dict) else v)
        return out

    def default(self, node: ast.AST) -> Any:
        """A field default as JSON: a literal, an enum member's value, or ``{"expr": source}``."""
        if isinstance(node, ast.Attribute) and self.mod.kind(_name(node.value)) == "enum":
            members = {s.targets[0].id: _literal(s.value) for s in self.mod.classes[_name(node.value)].body
                       if isinstance(s, ast.Assign) and isinstance(s.targets[0], ast.Name)}
            return members.get(node.attr, {"expr": ast.unparse(node)})
        return _literal(node)

    def field(self, stmt: ast.AnnAssign) -> dict[str, Any] | None:
        """One annotated class attribute as a field fact (None for ``ClassVar`` / private attributes)."""
        if _name(stmt.annotation) == "ClassVar" or not isinstance(stmt.target, ast.Name) \
                or stmt.target.id.startswith("_"):
            return None
        t = self.type_of(stmt.annotation)
        f: dict[str, Any] = {}
        v = stmt.value
        if isinstance(v, ast.Call) and _name(v.func) == "PrivateAttr":
            return None
        if isinstance(v, ast.Call) and _name(v.func) in _FIELD_FUNCS:
            kw = _field_kwargs(v)
            if v.args and not (isinstance(v.args[0], ast.Constant) and v.args[0].value is Ellipsis):
                f["default"] = self.default(v.args[0])
            elif "default" in kw:
                f["default"] = self.default(next(k.value for k in v.keywords if k.arg == "default"))
            elif "default_factory" in kw:
                f["default"] = {"factory": ast.unparse(next(k.value for k in v.keywords if k.arg == "default_factory"))}
            else:
                f["required"] = True
            t = _constrain(t, {k: kw[k] for k in ("ge", "gt", "le", "lt") if k in kw})
            if isinstance(kw.get("discriminator"), str) and t.get("k") == "union":
                t = dict(t, disc=kw["discriminator"])
            if aliases := kw.get("aliases"):
                f["aliases"] = aliases
            if kw.get("status"):
                f["status"] = kw["status"]
            if kw.get("deprecated"):
                f["status"] = "deprecated"
        elif v is None:
            f["required"] = True
        else:
            f["default"] = self.default(v)
        return {"type": t, **f}

    def model(self, name: str) -> dict[str, Any]:
        """The facts of one pydantic model class."""
        c = self.mod.classes[name]
        fields: dict[str, Any] = {}
        extra = None
        handled: dict[str, Any] = {}
        dispatch = None
        for stmt in c.body:
            if isinstance(stmt, ast.AnnAssign):
                f = self.field(stmt)
                if f is not None:
                    fields[stmt.target.id] = f  # type: ignore[union-attr]
            elif isinstance(stmt, ast.Assign) and any(_name(t) == "model_config" for t in stmt.targets):
                extra = _config_extra(stmt.value) or extra
            elif isinstance(stmt, ast.ClassDef) and stmt.name == "Config":
                for s in stmt.body:
                    if isinstance(s, ast.Assign) and any(_name(t) == "extra" for t in s.targets):
                        extra = str(_literal(s.value)).split(".")[-1].lower()
        own_and_inherited = set(fields) | self._inherited(name)
        pre: list[str] = []
        coerce: dict[str, str] = {}
        for stmt in c.body:
            if isinstance(stmt, ast.FunctionDef):
                info = validator_info(stmt)
                if info and info[0] in ("model_validator", "root_validator") and info[1] in ("before", "wrap"):
                    handled.update(handled_keys(stmt, own_and_inherited))
                    handled.update(removed_args(stmt, self.mod.module_of[name]))
                elif info and info[0] == "model_validator" and info[1] == "after":
                    coerce.update({p: m for p, m in coerced_fields(stmt).items() if self.mod.kind(m) == "model"})
                elif info and info[0] in ("field_validator", "validator") and info[1] in ("before", "plain", "wrap"):
                    pre += [a for a in (_field_validator_names(stmt)) if a not in pre]
                if stmt.name == "from_dict":
                    dispatch = _dispatch(stmt, self.mod) or dispatch
        out: dict[str, Any] = {"bases": [_name(b) for b in c.bases if _name(b)], "fields": fields}
        if extra:
            out["extra"] = extra
        if handled:
            out["handled"] = handled
        if pre:
            out["pre"] = sorted(pre)
        if dispatch:
            out["dispatch"] = dispatch
        if coerce:
            out["coerce"] = coerce
        return out

    def _inherited(self, name: str, seen: tuple[str, ...] = ()) -> set[str]:
        out: set[str] = set()
        c = self.mod.classes.get(name)
        if c is None or name in seen:
            return out
        for b in c.bases:
            bn = _name(b)
            bc = self.mod.classes.get(bn)
            if bc is not None:
                out |= {s.target.id for s in bc.body if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)}
                out |= self._inherited(bn, seen + (name,))
        return out


def _field_validator_names(func: ast.FunctionDef) -> list[str]:
    """The field names a ``@field_validator("a", "b", mode=…)`` decorator names."""
    for d in func.decorator_list:
        if isinstance(d, ast.Call) and _name(d.func) in ("field_validator", "validator"):
            return [a.value for a in d.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
    return []


def _constrain(t: dict[str, Any], cons: dict[str, Any]) -> dict[str, Any]:
    if not cons:
        return t
    if t.get("k") == "union":
        return dict(t, of=[_constrain(o, cons) if o.get("k") in ("int", "float") else o for o in t["of"]])
    return {**t, **cons} if t.get("k") in ("int", "float") else t


def _field_kwargs(call: ast.Call) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kw in call.keywords:
        if kw.arg in ("ge", "gt", "le", "lt", "status", "discriminator", "deprecated", "default_factory", "default"):
            out[kw.arg] = _literal(kw.value) if kw.arg not in ("default_factory", "default") else True
        elif kw.arg in ("validation_alias", "alias"):
            v = kw.value
            names = [_literal(a) for a in v.args] if isinstance(v, ast.Call) else [_literal(v)]
            out.setdefault("aliases", [])
            out["aliases"] += [n for n in names if isinstance(n, str) and n not in out["aliases"]]
    return out


def _config_extra(node: ast.AST) -> str | None:
    if isinstance(node, ast.Call):
        for kw in node.keywords:
            if kw.arg == "extra":
                return str(_literal(kw.value)).split(".")[-1].lower()
    if isinstance(node, ast.Dict):
        for k, v in zip(node.keys, node.values):
            if k is not None and _literal(k) == "extra":
                return str(_literal(v)).split(".")[-1].lower()
    return None


def _dispatch(func: ast.FunctionDef, mod: Module) -> dict[str, Any] | None:
    key = None
    for node in ast.walk(func):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get" \
                and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
            key = key or node.args[0].value
    for node in ast.walk(func):
        if isinstance(node, ast.Dict) and node.keys and all(isinstance(k, ast.Constant) for k in node.keys) \
                and all(mod.kind(_name(v)) == "model" for v in node.values):
            return {"key": key, "map": {str(k.value): _name(v) for k, v in zip(node.keys, node.values)}}  # type: ignore[union-attr]
    return None


def extract_models(texts: list[str]) -> tuple[dict[str, Any], dict[str, list[Any]]]:
    """(models, enums) facts from the text of one or more modules read together.

    Example:
        >>> models, enums = extract_models([Path("llm_args.py").read_text()])
        >>> models["MoeConfig"]["fields"]["backend"]["type"]["k"]
        'lit'
    """
    mod = Module()
    for t in texts:
        mod.add(t)
    ex = Extractor(mod)
    models = {n: ex.model(n) for n in sorted(mod.classes) if mod.kind(n) == "model"}
    return models, dict(sorted(ex.enums.items()))
