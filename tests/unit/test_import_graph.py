"""Arrows one way: the package's import graph — every import statement, function-level and ``TYPE_CHECKING`` ones
included, read with ``ast`` (nothing is imported) — has no cycle between modules, and no arrow against the layering.

The layering is the table below: each top-level module or subpackage of ``k2trt`` sits on a floor, and a module may
import another package's modules only from a strictly lower floor. Units on the same floor are siblings that must
not import each other. Inside a package, modules may import each other freely as long as there is no cycle. A new
package or top-level module must be given a floor here (the test names it until it is).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import k2trt

ROOT = Path(k2trt.__file__).parent

# floor: units, lowest first. The comment on each floor says why its units sit above everything under them.
FLOORS: list[tuple[str, ...]] = [
    ("k2trt", "errors"),  # the package root (only __version__) and the error hierarchy: they import nothing
    ("fsio",  # atomic writes and the mapping reader: stdlib, pyyaml and errors; every layer writes through it
     "jsonlog",  # the JSON-lines log formatter: stdlib only; the gateway and the launcher log through it
     "sampling",  # the sampling-value rules both the gateway and the reference engine enforce: stdlib only
     "asgi",  # racing a request against the client's disconnect: stdlib; the gateway and the reference server
     "configcheck",  # types and bounds of a config.json: stdlib and errors; spec checks a config through it
     "presets"),  # the presets' config.json data (no imports): spec turns a row into a ModelSpec
    ("spec",),  # ModelSpec from config.json: K2's dimensions and tensor inventory, which everything else reads
    ("mapping",),  # TensorRT-LLM's Mapping semantics: which rank holds which slice of a ModelSpec's tensors
    ("layout",),  # the tp16ep8adp syntax of one instance and its Mapping (recipes, plan, bundle, reference)
    ("chat",  # K2's tokenizer, chat template and tool-call grammar: knowledge of K2's text format, no model math
     "trtllm"),  # TensorRT-LLM's names: schema profiles, YAML and argv writers; argv takes a Layout
    ("plan",  # memory, KV, roofline and rules over spec/mapping/layout, with TensorRT-LLM's defaults and profiles
     "checkpoint",  # reading, inspecting, converting HF checkpoints; writes a checkpoint's tokenizer files (chat)
     "gateway"),  # the OpenAI/Anthropic HTTP front: renders and parses with chat
    ("bench",),  # the aiperf driver: tokenizer.json from chat, the gateway's metric names for its server figures
    ("launch",),  # hosts, mpirun/Slurm, supervision; starts the gateway in front of a ready engine
    ("reference",),  # the PyTorch K2: reads checkpoints, shards by layout, serves with chat, runs checks via launch
    ("train",),  # training the tiny K2: the reference model's code, chat's renderers, checkpoint's writer
    ("bundle",),  # recipes and bundles: plan, trtllm, launch specs, checkpoint inspect, bench sections, reference argv
    ("demo",  # the whole pipeline as one library call: synth, build, serve, bench
     "k8s"),  # Kubernetes manifests of a bundle: reads bundles and recipes, mpirun argv from launch, router from trtllm
    ("cli_options",),  # Click types over the library's parsers (layouts, host lists, weight formats)
    ("commands",),  # thin Click commands, one call into any library layer each
    ("cli",),  # the Click group; it finds commands by name (importlib), with no import statement
]
FLOOR = {unit: i for i, units in enumerate(FLOORS) for unit in units}


def module_files(root: Path, package: str) -> dict[str, Path]:
    """Dotted module name → file for every module of ``package`` (a package is its ``__init__``)."""
    mods = {}
    for f in sorted(root.rglob("*.py")):
        rel = f.relative_to(root.parent).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        mods[".".join(parts)] = f
    return mods


def import_edges(root: Path, package: str) -> dict[str, set[str]]:
    """Module → the package's modules it imports anywhere in its source (module level, functions, TYPE_CHECKING).

    ``from a.b import c`` counts as importing ``a.b.c`` when that is a module, else ``a.b``; a module importing its
    own package's ``__init__`` (a parent) is not an edge (Python runs it first anyway).
    """
    mods = module_files(root, package)
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        base = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                prefix = ".".join(base[: len(base) - node.level + 1] + [node.module or ""]) if node.level else \
                    node.module or ""
                prefix = prefix.rstrip(".")
                names = [f"{prefix}.{a.name}" if f"{prefix}.{a.name}" in mods else prefix for a in node.names]
            else:
                continue
            for name in names:
                while name and name not in mods:
                    name = name.rpartition(".")[0]
                if name and name != mod and not mod.startswith(name + "."):
                    edges[mod].add(name)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return sorted(found)


def unit(module: str) -> str:
    """The layering unit of a module: its subpackage or top-level module under the root (the root is itself)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def layering_violations(edges: dict[str, set[str]], floor: dict[str, int]) -> list[str]:
    """Every arrow that does not point to a strictly lower floor, and every unit the table does not place."""
    out = []
    for unplaced in sorted({unit(m) for m in edges} - set(floor)):
        out.append(f"{unplaced}: not in the floor table (place it in FLOORS with the reason)")
    for src in sorted(edges):
        for dst in sorted(edges[src]):
            a, b = unit(src), unit(dst)
            if a != b and a in floor and b in floor and floor[b] >= floor[a]:
                how = "a sibling on the same floor" if floor[b] == floor[a] else "a higher floor"
                out.append(f"{src} -> {dst}: {a} (floor {floor[a]}) imports {b}, {how} ({floor[b]})")
    return out


def test_no_import_cycles() -> None:
    found = cycles(import_edges(ROOT, "k2trt"))
    assert not found, "import cycles (function-level imports included):\n" + "\n".join(" ⇄ ".join(c) for c in found)


def test_arrows_follow_the_layering() -> None:
    bad = layering_violations(import_edges(ROOT, "k2trt"), FLOOR)
    assert not bad, "arrows against the layering:\n" + "\n".join(bad)


def test_the_checks_see_what_they_must(tmp_path: Path) -> None:
    """On a made-up package: a cycle hidden in a function-level import, an upward arrow in a ``from`` import of a
    submodule, a relative import, a sibling arrow and an unplaced package are all reported; legal arrows are not."""
    pkg = tmp_path / "p"
    for d in ("low", "high", "side"):
        (pkg / d).mkdir(parents=True)
        (pkg / d / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "base.py").write_text("X = 1\n")
    (pkg / "low" / "a.py").write_text("from p.base import X\n\ndef f():\n    from p.high import b\n")
    (pkg / "high" / "b.py").write_text("from ..low import a\nfrom p import side\n")
    (pkg / "side" / "c.py").write_text("import p.base\n")
    (pkg / "stray.py").write_text("from p.low import a\n")
    edges = import_edges(pkg, "p")
    assert edges["p.low.a"] == {"p.base", "p.high.b"} and edges["p.high.b"] == {"p.low.a", "p.side"}
    assert cycles(edges) == [["p.high.b", "p.low.a"]]
    floor = {"p": 0, "base": 0, "low": 1, "side": 2, "high": 2}
    assert layering_violations(edges, floor) == [
        "stray: not in the floor table (place it in FLOORS with the reason)",
        "p.high.b -> p.side: high (floor 2) imports side, a sibling on the same floor (2)",
        "p.low.a -> p.high.b: low (floor 1) imports high, a higher floor (2)",
    ]
