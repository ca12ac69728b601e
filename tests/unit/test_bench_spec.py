"""BenchSpec: the recipe's ``bench:`` section — the two reference sweeps, validation, YAML loading."""

from __future__ import annotations

import ast
import inspect
from dataclasses import fields
from pathlib import Path

import pytest
import yaml

from k2trt.bench import spec as spec_mod
from k2trt.bench.spec import BenchSpec, load_bench_section
from k2trt.bundle.recipe import spec_from_recipe
from k2trt.errors import ConfigError

# The tiny CPU sweep the demo and CI run against the reference engine.
TINY_CPU = {"endpoint": "completions", "streaming": True, "isl_osl": [[16, 8]], "concurrency": [1, 2],
            "request_multiplier": 3, "gpus": 1, "model": "tiny-k2", "point_timeout_s": 150}
# A production sweep: 1K/1K and 8K/1K, concurrency 1…256, on two 8×H200 nodes.
PRODUCTION = {"endpoint": "chat", "streaming": True, "isl_osl": [[1024, 1024], [8192, 1024]],
              "concurrency": [1, 2, 4, 8, 16, 32, 64, 128, 256], "request_multiplier": 8, "gpus": 16,
              "model": "kimi-k2-instruct", "request_timeout_s": 1800, "point_timeout_s": 7200,
              "ready_timeout_s": 1800}


def test_every_field_has_a_docstring() -> None:
    """STYLE P1: each BenchSpec field is followed by its docstring in the class body."""
    tree = ast.parse(inspect.getsource(spec_mod))
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "BenchSpec")
    documented = set()
    for a, b in zip(cls.body, cls.body[1:]):
        if isinstance(a, ast.AnnAssign) and isinstance(b, ast.Expr) and isinstance(b.value, ast.Constant) \
                and isinstance(b.value.value, str) and b.value.value.strip():
            documented.add(a.target.id)  # type: ignore[union-attr]
    names = {f.name for f in fields(BenchSpec)}
    assert names - documented == set()


def test_tiny_cpu_sweep() -> None:
    s = BenchSpec.from_dict(TINY_CPU, where="recipes/tiny-cpu.yaml: bench")
    pts = s.points()
    assert [(p.isl, p.osl, p.concurrency, p.requests, p.warmup) for p in pts] == [(16, 8, 1, 3, 1), (16, 8, 2, 6, 2)]
    assert [p.name for p in pts] == ["isl16_osl8_c1", "isl16_osl8_c2"]
    assert s.endpoint == "completions" and s.point_timeout_s == 150.0 and isinstance(s.point_timeout_s, float)


def test_production_sweep() -> None:
    s = BenchSpec.from_dict(PRODUCTION)
    pts = s.points()
    assert len(pts) == 18 and s.gpus == 16
    assert [p.concurrency for p in pts[:9]] == [1, 2, 4, 8, 16, 32, 64, 128, 256]
    last = pts[-1]
    assert (last.isl, last.osl, last.concurrency, last.requests, last.warmup) == (8192, 1024, 256, 2048, 256)
    assert BenchSpec.from_dict(s.to_dict()) == s
    assert BenchSpec.from_dict(yaml.safe_load(yaml.safe_dump(s.to_dict()))) == s


def test_defaults_and_explicit_warmup() -> None:
    assert BenchSpec.from_dict(None) == BenchSpec() == BenchSpec.from_dict({})
    s = BenchSpec.from_dict({"concurrency": [4, 8], "warmup": 0})
    assert [p.warmup for p in s.points()] == [0, 0]
    assert BenchSpec.from_dict({"concurrency": 4}).concurrency == (4,)
    assert BenchSpec.from_dict({"isl_osl": [{"isl": 128, "osl": 64}]}).isl_osl == ((128, 64),)


@pytest.mark.parametrize("data, message", [
    ({"concurency": [1]}, "unknown key 'concurency' (did you mean 'concurrency'?)"),
    ({"isl": 16}, "unknown key 'isl' (did you mean 'isl_osl'?)"),
    ({"zzz": 1}, "unknown key 'zzz' (known keys: endpoint"),
    ({"concurrency": "1,2"}, "concurrency='1,2' is not a list of integers"),
    ({"concurrency": [4, 2]}, "is not strictly ascending"),
    ({"concurrency": [0, 1]}, "has a value below 1"),
    ({"concurrency": []}, "concurrency is empty"),
    ({"isl_osl": [[16]]}, "is not a list of [isl, osl] integer pairs"),
    ({"isl_osl": [[16, 8], [16, 8]]}, "lists a pair twice"),
    ({"isl_osl": [[0, 8]]}, "at least 1 token"),
    ({"streaming": "yes"}, "streaming='yes' is not true or false"),
    ({"gpus": 0}, "gpus=0 must be at least 1"),
    ({"gpus": 1.5}, "gpus=1.5 is not an integer"),
    ({"request_multiplier": True}, "is not an integer"),
    ({"endpoint": "embeddings"}, "endpoint='embeddings' is not one of chat, completions"),
    ({"extra_args": "--verbose"}, "one argument each"),
    ({"point_timeout_s": 0}, "point_timeout_s=0.0 must be a positive number"),
    ({"warmup": -1}, "warmup=-1 is negative"),
    ({"model": ""}, "bench.model is empty"),
])
def test_bad_sections_are_one_line_errors(data: dict, message: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ConfigError) as e:
        BenchSpec.from_dict(data)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_load_from_recipe_and_spec_files(tmp_path: Path) -> None:
    recipe = tmp_path / "tiny-cpu.yaml"
    recipe.write_text(yaml.safe_dump({"cluster": {"gpu": "cpu"}, "serve": {"port": 8000}, "bench": TINY_CPU}))
    assert load_bench_section(recipe, recipe=True) == BenchSpec.from_dict(TINY_CPU)
    bare = tmp_path / "bench.yaml"
    bare.write_text(yaml.safe_dump(PRODUCTION))
    assert load_bench_section(bare) == BenchSpec.from_dict(PRODUCTION)

    no_bench = tmp_path / "no-bench.yaml"
    no_bench.write_text("cluster: {gpu: h200}\n")
    with pytest.raises(ConfigError, match="has no bench: section"):
        load_bench_section(no_bench, recipe=True)
    typo = tmp_path / "typo.yaml"
    typo.write_text("bench:\n  concurrancy: [1]\n")
    with pytest.raises(ConfigError, match=r"typo.yaml: bench: unknown key 'concurrancy' \(did you mean"):
        load_bench_section(typo)
    broken = tmp_path / "broken.yaml"
    broken.write_text("bench: [1, 2\n")
    with pytest.raises(ConfigError, match="is not readable YAML"):
        load_bench_section(broken)
    with pytest.raises(ConfigError, match="does not exist"):
        load_bench_section(tmp_path / "missing.yaml")


def test_spec_from_a_recipe_file(tmp_path: Path) -> None:
    """Through the recipe loader: gpus defaults to the cluster size, the endpoint comes from serve."""
    doc = {"cluster": {"gpu": "h200", "nodes": 2, "gpus_per_node": 8, "hosts": ["node0", "node1"]},
           "layout": "tp16ep8", "serve": {"host": "0.0.0.0", "port": 8123},
           "bench": {k: v for k, v in PRODUCTION.items() if k != "gpus"}}
    path = tmp_path / "two-nodes.yaml"
    path.write_text(yaml.safe_dump(doc))
    spec, endpoint = spec_from_recipe(path)
    assert spec == BenchSpec.from_dict(PRODUCTION) and spec.gpus == 16
    assert endpoint == "http://node0:8123"
    spec, _ = spec_from_recipe(path, ("bench.gpus=8", "bench.concurrency=[1, 2]"))
    assert (spec.gpus, spec.concurrency) == (8, (1, 2))
    del doc["bench"]
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError, match="recipe two-nodes has no bench: section"):
        spec_from_recipe(path)
