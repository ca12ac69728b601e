"""K2.5 / K2.6 (``KimiK25ForConditionalGeneration``): the language model nested under ``text_config`` and
``language_model.``, a vision tower carried in the checkpoint but never run. Real files: the tiny K2.5 from
``synthesize`` (tiny K2-Thinking's text model plus a 2-block vision tower), real conversions, the reference engine.
"""

from __future__ import annotations

import importlib.util
import dataclasses
import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
# compressed-tensors imports triton: only probe for it here, so that collecting this module does not import
# triton before tests/unit/test_plugins.py sets TRITON_INTERPRET (the k2trt code imports it when it reads INT4)
pytestmark = pytest.mark.skipif(importlib.util.find_spec("compressed_tensors") is None,
                                reason="compressed-tensors is not installed (the quant extra)")

from k2trt.checkpoint import files, names  # noqa: E402
from k2trt.checkpoint.convert import ConvertOptions, convert  # noqa: E402
from k2trt.checkpoint.inspect import inspect_checkpoint  # noqa: E402
from k2trt.checkpoint.plan import plan_conversion  # noqa: E402
from k2trt.checkpoint.reader import CheckpointReader  # noqa: E402
from k2trt.checkpoint.synth import synthesize  # noqa: E402
from k2trt.errors import CheckpointError  # noqa: E402
from k2trt.reference.verify import between  # noqa: E402
from k2trt.spec import ModelSpec, preset  # noqa: E402


@pytest.fixture(scope="module")
def k25(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("k25")
    out = {"src": synthesize(preset("tiny-k25"), root / "src", seed=0, preset_name="tiny-k25"),
           "thinking": synthesize(preset("tiny-thinking"), root / "thinking", seed=0, preset_name="tiny-thinking")}
    for t in ("bf16", "fp8-block"):
        convert(out["src"], root / t, ConvertOptions(target=t), verify=True)
        out[t] = root / t
    return out


def test_tiny_k25_is_nested_and_carries_a_vision_tower(k25: dict[str, Path]) -> None:
    cfg = json.loads((k25["src"] / "config.json").read_text())
    assert cfg["architectures"] == ["KimiK25ForConditionalGeneration"] and cfg["model_type"] == "kimi_k25"
    assert cfg["text_config"]["quantization_config"]["quant_method"] == "compressed-tensors"
    assert "re:vision_tower.*" in cfg["text_config"]["quantization_config"]["ignore"]
    loc = files.tensor_locations(k25["src"])
    assert "language_model.model.embed_tokens.weight" in loc and "language_model.lm_head.weight" in loc
    assert "language_model.model.layers.1.mlp.experts.0.gate_proj.weight_packed" in loc
    vision = [n for n in loc if n.startswith(names.VISION_PREFIXES)]
    assert len(vision) == 17 and not [n for n in loc if n.startswith("model.")]
    rep = inspect_checkpoint(k25["src"])
    assert rep.ok, rep.problems
    assert any("images are not served" in p.message for p in rep.problems if p.where == "vision_tower")
    spec = ModelSpec.from_config(k25["src"])
    assert spec.multimodal is not None  # the same text model as tiny K2-Thinking (read as transformers' DeepseekV3)
    assert dataclasses.replace(spec, model_type="kimi_k2") == preset("tiny-thinking")


def test_full_size_k25_layout(tmp_path: Path) -> None:
    d = synthesize(preset("k2.5"), tmp_path / "k25", sparse=True, tokenizer=False, preset_name="k2.5")
    rep = inspect_checkpoint(d)
    assert not [p for p in rep.problems if p.severity == "error"], rep.problems[:3]
    vision = {n: e for n, e in files.tensor_locations(d).items() if n.startswith(names.VISION_PREFIXES)}
    params = sum(e.nbytes // 2 for e in vision.values())
    assert 0.35e9 < params < 0.5e9  # MoonViT, ~0.4 B
    assert rep.int4 is not None and rep.int4["declared_shape"] == [2048, 7168]


def test_text_only_conversion_round_trips(k25: dict[str, Path]) -> None:
    """INT4 K2.5 → a text-only DeepseekV3 checkpoint: no vision tensors, plain names, transformers' own config;
    its logits equal the INT4 original's (read natively) within each target's bound, and the text weights are
    exactly tiny K2-Thinking's conversion."""
    for t in ("bf16", "fp8-block"):
        out = k25[t]
        cfg = json.loads((out / "config.json").read_text())
        assert cfg["architectures"] == ["DeepseekV3ForCausalLM"] and cfg["model_type"] == "deepseek_v3"
        assert "text_config" not in cfg and "vision_config" not in cfg and "auto_map" not in cfg
        loc = files.tensor_locations(out)
        assert not [n for n in loc if n.startswith((names.TEXT_PREFIX, *names.VISION_PREFIXES))]
        assert inspect_checkpoint(out).ok
        rep = between(k25["src"], out, prompts=8)
        assert rep.passed, (t, rep.metrics, rep.failures)
    assert between(k25["src"], k25["bf16"], prompts=8).metrics["kl"] < 1e-4
    res = convert(k25["thinking"], k25["bf16"].parent / "thinking-bf16", ConvertOptions(target="bf16"))
    with CheckpointReader(k25["bf16"]) as a, CheckpointReader(res.plan.dst) as b:
        for role, layer, e in (("expert_up", 2, 7), ("kv_b", 0, None), ("lm_head", None, None)):
            assert torch.equal(a.get(role, layer, e), b.get(role, layer, e))


def test_every_command_says_images_are_not_served(k25: dict[str, Path], tmp_path: Path) -> None:
    plan = plan_conversion(k25["src"], tmp_path / "x", ConvertOptions(target="nvfp4"))
    assert any("images are not served" in n for n in plan.notes)
    assert sum(op.kind == "drop" and op.src.name.startswith(names.VISION_PREFIXES)
               for sp in plan.shards for op in sp.ops) == 17
    with pytest.raises(CheckpointError, match="INT4 experts") as e:
        plan_conversion(k25["src"], tmp_path / "y", ConvertOptions(target="trtllm"))
    assert "--to fp8-block" in str(e.value) and "\n" not in str(e.value)
    from k2trt.bundle.build import plan_recipe, recipe_spec
    from k2trt.bundle.recipe import find_recipe, load_recipe

    r = load_recipe("k2.5-text-h200-2x8-fp8")  # the text-only conversion: it plans and fits like K2's FP8
    assert all(lp.ok for _, lp, _ in plan_recipe(r, recipe_spec(r)))
    assert "images are not served" in find_recipe("k2.5-text-h200-2x8-fp8").read_text()
    from click.testing import CliRunner

    from k2trt.cli import cli

    out = CliRunner().invoke(cli, ["plan", "--preset", "k2.5", "--gpu", "h200", "--nodes", "2", "--json"])
    rules = {f["rule"]: f["message"] for lp in json.loads(out.output)["layouts"] for f in lp.get("findings", [])}
    assert "images are not served" in rules["k25-text-only"] and "--to fp8-block" in rules["int4-not-loadable"]
