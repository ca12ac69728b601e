"""K2.5's TypeScript tool declaration (``k2trt.chat.tools_ts``) and the gateway's choice of it.

The byte-exact cases are Moonshot's own encoder's outputs as recorded in ``docs/reference/k2_tools_ts.md`` (its
"Golden pairs" section names where they were observed); the rule cases follow the same sheet.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Callable

import pytest

from k2trt.chat import families as fam
from k2trt.chat.tokenizer import K2Tokenizer
from k2trt.chat.tools_ts import ENCODER_FILE, ToolsTsError, declare_tools_ts, encode_tools_ts
from k2trt.errors import ConfigError
from k2trt.gateway.app import _tools_ts
from k2trt.gateway.backend import RenderBackend
from k2trt.gateway.config import GatewayConfig
from k2trt.gateway.events import Job

HEAD = "# Tools\n\n## functions\nnamespace functions {\n"


def fn(name: str, params: Any = None, description: str | None = None) -> dict[str, Any]:
    f: dict[str, Any] = {"name": name}
    if params is not None:
        f["parameters"] = params
    if description is not None:
        f["description"] = description
    return {"type": "function", "function": f}


def obj(props: dict[str, Any], required: tuple[str, ...] = (), **kw: Any) -> dict[str, Any]:
    return {"type": "object", "properties": props, "required": list(required), **kw}


GOLDEN = [
    ([fn("delay", obj({"ms": {"type": "integer", "minimum": 0}, "reason": {"type": "string"}}, ("ms",)),
         "Sleep for some milliseconds.")],
     "// Sleep for some milliseconds.\ntype delay = (_: {\n  // minimum: 0\n  ms: number,\n  reason?: string\n}) "
     "=> any;"),
    ([fn("create_user", obj({"user": obj({"name": {"type": "string"}, "age": {"type": "integer"}}, ("name",))},
                            ("user",)), "Create a new user record.")],
     "// Create a new user record.\ntype create_user = (_: {\n  user: {\n    name: string,\n    age?: number\n  }\n"
     "}) => any;"),
    ([fn("ping", obj({})), fn("pong", obj({}))], "type ping = (_: {}) => any;\ntype pong = (_: {}) => any;"),
    ([fn("create_node", {**obj({"node": {"$ref": "#/$defs/Node"}}, ("node",)),
                         "$defs": {"Node": obj({"id": {"type": "string"}, "label": {"type": "string"}}, ("id",))}})],
     "interface Node {\n  id: string,\n  label?: string\n}\ntype create_node = (_: {\n  node: Node\n}) => any;"),
    ([fn("annotate", obj({"text": {"type": "string", "description": "The text\nto annotate."}}, ("text",)),
         "Annotate the input.\nSupports multiple\nlines.")],
     "// Annotate the input.\n// Supports multiple\n// lines.\ntype annotate = (_: {\n  // The text\n  // to "
     "annotate.\n  text: string\n}) => any;"),
    ([fn("t", obj({"status": {"type": "string", "enum": ["active", "paused", "done"]}}, ("status",)))],
     'type t = (_: {\n  status: "active" | "paused" | "done"\n}) => any;'),
    ([fn("t", obj({"v": {"anyOf": [{"type": "string"}, {"type": "number"}]}}, ("v",)))],
     "type t = (_: {\n  v: string | number\n}) => any;"),
    ([fn("t", obj({"x": {"type": ["string", "null"]}}, ("x",)))], "type t = (_: {\n  x: string | null\n}) => any;"),
    ([fn("t", obj({"x": {"type": "uuid"}}, ("x",)), "翻译 text into 中文.")],
     "// 翻译 text into 中文.\ntype t = (_: {\n  x: uuid\n}) => any;"),
]


@pytest.mark.parametrize("tools, blocks", GOLDEN)
def test_moonshots_outputs_byte_for_byte(tools: list[dict[str, Any]], blocks: str) -> None:
    assert declare_tools_ts(tools) == HEAD + blocks + "\n}\n"


def test_fields_constraints_defaults_and_closed_objects() -> None:
    params = obj({"b": {"type": "string", "maxLength": 8, "pattern": "^a", "default": "x y"},
                  "a": {"type": "number", "default": 0.5, "description": "first\n\nthird"},
                  "z": {"type": "boolean", "default": True}, "c": {"type": "array", "minItems": 1,
                                                                  "items": {"type": "string", "description": "one"}}},
                 ("z", "c"), additionalProperties=False)
    got = encode_tools_ts([fn("f", params)])
    assert got == HEAD + (
        "type f = (_: {\n"
        "  // minItems: 1\n  c: Array<\n    // one\n    string\n  >,\n"   # required first, sorted; item over lines
        "  // Default: True\n  z: boolean,\n"
        "  // first\n\n  // third\n  // Default: 0.5\n  a?: number,\n"     # an empty description line stays empty
        '  // maxLength: 8, pattern: ^a\n  // Default: "x y"\n  b?: string,\n'
        "  [k: string]: never\n}) => any;\n}\n")


def test_self_reference_and_edge_types() -> None:
    tree = obj({"name": {"type": "string"}, "kids": {"type": "array", "items": {"$ref": "#"}}}, ("name",))
    assert encode_tools_ts([fn("t", tree)]) == HEAD + (
        "interface parameters {\n  name: string,\n  kids?: Array<parameters>\n}\ntype t = (_: parameters) => any;"
        "\n}\n")
    anyx = obj({"a": True, "b": False, "c": {}, "d": {"type": "array"}, "e": {"type": ["integer", "object"]}})
    assert "a?: any,\n  b?: null,\n  c?: any,\n  d?: Array<any>,\n  e?: number | {}\n" in encode_tools_ts(
        [fn("t", anyx)])
    assert encode_tools_ts([fn("t")]) == HEAD + "type t = (_: {}) => any;\n}\n"  # no parameters at all


def test_keys_are_sorted_before_encoding_and_other_types_skipped() -> None:
    a = {"function": {"parameters": obj({"q": {"type": "string"}}), "name": "s"}, "type": "function"}
    b = {"type": "function", "function": {"name": "s", "parameters": obj({"q": {"type": "string"}})}}
    assert declare_tools_ts([a]) == declare_tools_ts([b]) == HEAD + "type s = (_: {\n  q?: string\n}) => any;\n}\n"
    assert encode_tools_ts([{"type": "_plugin", "function": {"name": "x"}}, b]) == encode_tools_ts([b])
    assert encode_tools_ts([{"type": "_plugin", "function": {"name": "x"}}]) == "# Tools\n\n"  # not "": no JSON
    assert declare_tools_ts([]) is None


@pytest.mark.parametrize("schema", [{"oneOf": [{"type": "string"}]}, {"const": 3},
                                    {"$ref": "#/$defs/Missing"}, {"type": "string", "enum": [1, 2]},
                                    {"type": ["string", "date"]}, {"type": "string", "description": 7}])
def test_a_schema_without_a_rule_falls_back_to_json(schema: dict[str, Any]) -> None:
    tools = [fn("t", obj({"x": schema}))]
    with pytest.raises(ToolsTsError):
        encode_tools_ts(tools)
    assert declare_tools_ts(tools) is None


def test_gateway_declares_typescript_when_the_model_ships_the_encoder(family_dir: Callable[[str], Path],
                                                                       tmp_path: Path) -> None:
    k25 = tmp_path / "k25"
    shutil.copytree(family_dir("k2.5"), k25)
    k25_fam = fam.family("k2.5")
    cfg = GatewayConfig(engine_url="http://x", model_dir=str(k25))
    assert not _tools_ts(cfg, k25_fam)  # auto: no encoder file, JSON as the template's fallback
    (k25 / ENCODER_FILE).write_text("# Moonshot's encoder would be here\n")
    assert _tools_ts(cfg, k25_fam) and not _tools_ts(cfg, fam.family("k2-thinking"))
    assert not _tools_ts(GatewayConfig(engine_url="http://x", model_dir=str(k25), tool_declaration="json"), k25_fam)
    with pytest.raises(ConfigError, match="k2-instruct prompts declare tools as JSON"):
        _tools_ts(GatewayConfig(engine_url="http://x", tool_declaration="typescript"), fam.family("k2-instruct"))
    tok = K2Tokenizer.from_dir(k25)
    tools = [fn("get_weather", obj({"city": {"type": "string"}}, ("city",)), "Weather now.")]
    job = Job(messages=[{"role": "user", "content": "Weather in Oslo?"}], tools=tools)
    for ts, want, not_there in ((True, "// Weather now.\ntype get_weather = (_: {\n  city: string\n}) => any;",
                                 '"name":"get_weather"'), (False, '"name":"get_weather"', "namespace functions")):
        b = RenderBackend(cfg, None, tok, k25_fam, tools_ts=ts)  # type: ignore[arg-type]
        prompt = tok.decode(b.prompt(job).ids)
        assert want in prompt and not_there not in prompt
