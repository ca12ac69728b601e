"""K2.5+'s TypeScript tool declaration: the ``tools_ts_str`` Moonshot's K2.5 tokenizer writes into the
``tool_declare`` turn instead of the tools JSON.

The format, its sources and how sure each rule is: ``docs/reference/k2_tools_ts.md``. In short::

    # Tools

    ## functions
    namespace functions {
    // Get the weather.
    type get_weather = (_: {
      // minimum: 1
      days: number,
      city?: string
    }) => any;
    }

``encode_tools_ts`` takes the tools as the tokenizer hands them over (keys already sorted: ``sort_tools``);
``declare_tools_ts`` does the whole tokenizer step, sorting first and returning ``None`` where the encoder gives up
(a schema the format has no rule for), in which case the template falls back to the compact JSON. Pure Python.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from k2trt.chat.template import sort_tools

ENCODER_FILE = "tool_declaration_ts.py"
"""The encoder a K2.5+ checkpoint ships beside ``tokenization_kimi.py``: its presence is how a model directory says
its tokenizer declares tools in TypeScript."""

_IND = "  "
_LIMITS = {"string": ("maxLength", "minLength", "pattern"), "number": ("maximum", "minimum"),
           "integer": ("maximum", "minimum"), "array": ("maxItems", "minItems")}
"""Constraint keys written as a comment, by type (other types get none)."""
_IN_UNION = {"string": "string", "number": "number", "integer": "number", "boolean": "boolean", "null": "null",
             "object": "{}", "array": "Array<any>"}
_ENUM_TYPES = {"string": (str,), "number": (int, float), "integer": (int,), "boolean": (bool,)}


class ToolsTsError(ValueError):
    """A schema the TypeScript format has no rule for (the template then declares the tools as JSON)."""


def _comment(text: Any, indent: str) -> list[str]:
    if not isinstance(text, str):
        raise ToolsTsError(f"description {text!r} is not a string")
    return [f"{indent}// {line}" if line else "" for line in text.split("\n")]


def _kind(s: Any) -> str:
    """Which rule renders schema ``s``, in the encoder's order of precedence."""
    if isinstance(s, bool):
        return "bool"
    if not isinstance(s, Mapping):
        raise ToolsTsError(f"schema {s!r} is not an object")
    for key, kind in (("$ref", "ref"), ("anyOf", "anyOf"), ("enum", "enum")):
        if key in s:
            return kind
    t = s.get("type")
    if isinstance(t, list):
        return "union"
    if t in ("object", "array"):
        return t
    if isinstance(t, str):
        return "scalar"
    if not s:
        return "any"
    raise ToolsTsError(f"schema {dict(s)!r} has no type, $ref, anyOf or enum")


class _Encoder:
    """One function's encoding: its ``$defs`` (collected from every object) and whether it refers to itself."""

    def __init__(self, parameters: Mapping[str, Any]) -> None:
        self.defs: dict[str, Any] = {}
        self.self_ref = False
        self._collect(parameters, top=True)
        self.interfaces = list(self.defs)  # definitions found inside definitions resolve, but get no interface
        for d in list(self.defs.values()):
            self._collect(d)

    def _collect(self, s: Any, top: bool = False) -> None:
        """Gather ``$defs`` from every object the encoder will read (parameters are always one)."""
        try:
            kind = "object" if top else _kind(s)
        except ToolsTsError:
            return  # rendering reports it
        subs: list[Any] = []
        if kind == "object" and isinstance(s, Mapping):
            if isinstance(s.get("$defs"), Mapping):
                self.defs.update(s["$defs"])
            props = s.get("properties")
            subs = [s.get("additionalProperties")] + list(props.values() if isinstance(props, Mapping) else ())
        elif kind == "array":
            subs = [s.get("items")]
        elif kind == "anyOf" and isinstance(s["anyOf"], list):
            subs = s["anyOf"]
        for sub in subs:
            if isinstance(sub, Mapping):
                self._collect(sub)

    def ref(self, ref: Any) -> str:
        if ref == "#":
            self.self_ref = True
            return "parameters"
        if isinstance(ref, str) and ref.startswith("#/$defs/") and ref.rsplit("/", 1)[1] in self.defs:
            return ref.rsplit("/", 1)[1]
        raise ToolsTsError(f"$ref {ref!r} is not #/$defs/<a definition of this function>")

    def doc(self, s: Any, indent: str) -> list[str]:
        """The comment lines above a field or an array item: description, then constraints."""
        if isinstance(s, bool):
            return []
        lines = _comment(s["description"], indent) if s.get("description") else []
        kind = _kind(s)
        keys = _LIMITS.get(s["type"], ()) if kind in ("scalar", "array") else ()
        limits = sorted((k, s[k]) for k in keys if k in s)
        if limits:
            lines.append(indent + "// " + ", ".join(f"{k}: {v}" for k, v in limits))
        return lines

    def type(self, s: Any, indent: str) -> str:
        kind = _kind(s)
        if kind == "bool":
            return "any" if s else "null"
        if kind == "ref":
            return self.ref(s["$ref"])
        if kind == "anyOf":
            return " | ".join(self.type(m, indent) for m in s["anyOf"])
        if kind == "enum":
            return _enum(s)
        if kind == "union":
            try:
                return " | ".join(_IN_UNION[t] for t in s["type"])
            except (KeyError, TypeError):
                raise ToolsTsError(f"type list {s['type']!r} names a type without a rule") from None
        if kind == "object":
            return self.object(s, indent)
        if kind == "array":
            return self.array(s, indent)
        return "any" if kind == "any" else ("number" if s["type"] == "integer" else s["type"])

    def array(self, s: Mapping[str, Any], indent: str) -> str:
        item = s.get("items") or {}
        inner = indent + _IND
        doc = self.doc(item, inner)
        if not doc:
            return f"Array<{self.type(item, indent)}>"
        return "Array<\n" + "".join(line + "\n" for line in doc) + inner + self.type(item, inner) + "\n" + indent + ">"

    def fields(self, s: Mapping[str, Any], indent: str, ordered: bool) -> list[str]:
        """The fields of object ``s`` at ``indent``: required then optional, each sorted by name (``ordered``), or
        in key order."""
        props = s.get("properties") or {}
        if not isinstance(props, Mapping):
            raise ToolsTsError("properties is not an object")
        required = set(s.get("required") or ())
        names = list(props)
        if ordered:
            names = sorted(n for n in names if n in required) + sorted(n for n in names if n not in required)
        out = []
        for name in names:
            p = props[name]
            lines = self.doc(p, indent)
            default = p.get("default") if isinstance(p, Mapping) else None
            if default is not None:
                shown = repr(default) if isinstance(default, (int, float)) else json.dumps(default, ensure_ascii=False)
                lines.append(f"{indent}// Default: {shown}")
            opt = "" if name in required else "?"
            out.append("".join(line + "\n" for line in lines) + f"{indent}{name}{opt}: {self.type(p, indent)}")
        return out

    def object(self, s: Mapping[str, Any], indent: str) -> str:
        if not s:
            return "{}"
        inner = indent + _IND
        fields = self.fields(s, inner, ordered=True)
        extra = s.get("additionalProperties")
        if extra is not None:
            if isinstance(extra, bool):
                fields.append(f"{inner}[k: string]: {'any' if extra else 'never'}")
            elif isinstance(extra, Mapping):
                fields.append(f"{inner}[k: string]: {self.type(extra, inner)}")
            else:
                raise ToolsTsError(f"additionalProperties {extra!r} is neither a boolean nor a schema")
        return "{\n" + ",\n".join(fields) + "\n" + indent + "}" if fields else "{}"


def _enum(s: Mapping[str, Any]) -> str:
    values = s["enum"]
    if not isinstance(values, list):
        raise ToolsTsError("enum is not a list")
    t = s.get("type")
    if isinstance(t, list):  # one type, or one type and null
        rest = [x for x in t if x != "null"] if len(t) == 2 and "null" in t else t
        if len(rest) != 1:
            raise ToolsTsError(f"an enum of type {t!r} has no rule")
        t = rest[0]
    want = _ENUM_TYPES.get(t) if t is not None else None
    for v in values:
        if want and v is not None and not isinstance(v, want):
            raise ToolsTsError(f"enum value {v!r} is not of type {t}")
    return " | ".join(f'"{v}"' if isinstance(v, str) else str(v) for v in values)


def _function(fn: Mapping[str, Any]) -> str:
    """One function's block: its interfaces, its description and its ``type NAME = (_: PARAMS) => any;``."""
    params = fn.get("parameters") or {}
    if not isinstance(params, Mapping):
        raise ToolsTsError("parameters is not an object")
    enc = _Encoder(params)
    body = enc.object(params, "")
    interfaces = []
    if enc.self_ref:  # the function's own parameters, named so that "#" can refer to them
        fields = enc.fields(params, _IND, ordered=False)
        interfaces.append("interface parameters {" + ("\n" + ",\n".join(fields) + "\n" if fields else "") + "}")
        body = "parameters"
    for name in enc.interfaces:
        d = enc.defs[name]
        doc = _comment(d["description"], "") if isinstance(d, Mapping) and d.get("description") else []
        interfaces.append("".join(line + "\n" for line in doc) + f"interface {name} {enc.type(d, '')}")
    name = fn.get("name", "function")
    parts = ["\n".join(interfaces), "\n".join(_comment(fn["description"], "")) if fn.get("description") else "",
             f"type {name} = (_: {body}) => any;"]
    return "\n".join(p for p in parts if p)


def encode_tools_ts(tools: Sequence[Any]) -> str:
    """The TypeScript declaration of ``tools`` (OpenAI ``{"type": "function", "function": {...}}`` entries; other
    types are skipped), keys assumed sorted as the tokenizer sorts them.

    Raises:
        ToolsTsError: a schema the format has no rule for.

    Example:
        >>> print(encode_tools_ts([{"type": "function", "function": {"name": "ping"}}]), end="")
        # Tools
        <BLANKLINE>
        ## functions
        namespace functions {
        type ping = (_: {}) => any;
        }
    """
    if not tools:
        return ""
    blocks = [_function(t["function"]) for t in tools
              if isinstance(t, Mapping) and t.get("type") == "function" and t.get("function")]
    if not blocks:
        return "# Tools\n\n"
    return "# Tools\n\n## functions\nnamespace functions {\n" + "\n".join(blocks) + "\n}\n"


def declare_tools_ts(tools: Sequence[Any]) -> str | None:
    """What K2.5's tokenizer passes the template as ``tools_ts_str``: the sorted tools encoded, or ``None`` where
    the encoder gives up (the template then writes the JSON)."""
    try:
        return encode_tools_ts(sort_tools(tools)) or None
    except Exception:  # noqa: BLE001 - the tokenizer falls back to JSON on any failure of its encoder
        return None


def ships_encoder(model_dir: str | Path) -> bool:
    """Whether a model directory's tokenizer declares tools in TypeScript (it ships ``ENCODER_FILE``)."""
    return (Path(model_dir) / ENCODER_FILE).is_file()
