"""Moonshot's native INT4 (K2-Thinking / K2.5 / K2.6: compressed-tensors ``pack-quantized`` routed experts) on the
one conversion pipeline, end to end on CPU.

Real files throughout: the tiny K2-Thinking from ``synthesize`` (its experts quantized and packed by the
compressed-tensors package itself), real conversions to every target, the reference model for verification. The
broken conversions are real conversions run with a deliberately wrong INT4 decoder swapped into the format table
(the bug under test), then judged by the real reference engine with the correct one.
"""

from __future__ import annotations

import importlib.util
import dataclasses
import json
import shutil
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
# compressed-tensors imports triton: only probe for it here, so that collecting this module does not import
# triton before tests/unit/test_plugins.py sets TRITON_INTERPRET (the k2trt code imports it when it reads INT4)
pytestmark = pytest.mark.skipif(importlib.util.find_spec("compressed_tensors") is None,
                                reason="compressed-tensors is not installed (the quant extra)")

from k2trt.checkpoint import files, formats, names  # noqa: E402
from k2trt.checkpoint.convert import ConvertOptions, convert  # noqa: E402
from k2trt.checkpoint.inspect import inspect_checkpoint  # noqa: E402
from k2trt.checkpoint.quant4 import dequantize_ct_int4, quantize_ct_int4  # noqa: E402
from k2trt.checkpoint.reader import CheckpointReader  # noqa: E402
from k2trt.checkpoint.synth import synthesize  # noqa: E402
from k2trt.errors import ConfigError  # noqa: E402
from k2trt.reference.verify import Thresholds, between  # noqa: E402
from k2trt.spec import ModelSpec, preset  # noqa: E402

TARGETS = ("bf16", "fp8-block", "w4a8", "nvfp4")


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("int4")
    src = synthesize(preset("tiny-thinking"), root / "src", seed=0, preset_name="tiny-thinking")
    out = {"src": src}
    for t in TARGETS:
        res = convert(src, root / t, ConvertOptions(target=t), verify=True)
        assert res.verified and res.verified["tensors"] > 0
        out[t] = root / t
    return out


# ---- the format ------------------------------------------------------------------------------------------------

def test_decode_is_the_compressed_tensors_packages() -> None:
    """Our decode of ``weight_packed`` / ``weight_scale`` equals the package's own decompressor (which multiplies
    in BF16; ours keeps the exact float32 product), and any whole-group slice decodes on its own."""
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    w = torch.randn(64, 256, generator=torch.Generator().manual_seed(1))
    packed, scale, shape = quantize_ct_int4(w)
    assert (packed.dtype, tuple(packed.shape), scale.dtype, tuple(scale.shape)) == \
        (torch.int32, (64, 32), torch.bfloat16, (64, 8))
    assert shape.tolist() == [64, 256] and shape.dtype == torch.int64
    scheme = QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(
        num_bits=4, type="int", symmetric=True, strategy="group", group_size=32))
    theirs = PackedQuantizationCompressor.decompress(
        {"weight_packed": packed, "weight_scale": scale, "weight_shape": shape}, scheme)["weight"]
    ours = dequantize_ct_int4(packed, scale)
    assert torch.equal(ours.to(torch.bfloat16), theirs.to(torch.bfloat16))
    assert (ours - w).abs().max() <= scale.float().max() / 2 * 1.01  # half a step at most
    assert torch.equal(dequantize_ct_int4(packed[3:9, 4:12], scale[3:9, 1:3]), ours[3:9, 32:96])


def test_config_parsing_accepts_k2_thinking_and_names_what_it_refuses() -> None:
    cfg = preset("tiny-thinking").to_config()
    assert cfg["quantization_config"]["quant_method"] == "compressed-tensors"  # written back verbatim
    q = ModelSpec.from_config(cfg).quantization
    assert q is not None and q.is_int4_source and q.group_size == 32 and q.layout == "ct-int4"
    for path, value, msg in ((("weights", "group_size"), 128, "group_size is 128"),
                             (("weights", "num_bits"), 8, "num_bits is 8"),
                             (("weights", "symmetric"), False, "symmetric is false"),
                             (("input_activations",), {"num_bits": 8}, "quantizes activations")):
        bad = json.loads(json.dumps(cfg))
        g = bad["quantization_config"]["config_groups"]["group_0"]
        for k in path[:-1]:
            g = g[k]
        g[path[-1]] = value
        with pytest.raises(ConfigError, match=msg):
            ModelSpec.from_config(bad)


# ---- inspect -----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``synth --sparse --preset k2-thinking``: the full-size INT4 layout, header-only."""
    return synthesize(preset("k2-thinking"), tmp_path_factory.mktemp("kt") / "K2-Thinking", sparse=True,
                      preset_name="k2-thinking")


def test_full_size_k2_thinking_layout_inspects(full: Path) -> None:
    """The full-size INT4 layout at its real size: ~594 GB, INT4 on 99.1 % of the linear parameters."""
    spec = preset("k2-thinking")
    assert spec.checkpoint_bytes() / 1e9 == pytest.approx(594.2, abs=0.1)
    d = full
    rep = inspect_checkpoint(d)
    assert not [p for p in rep.problems if p.severity == "error"], rep.problems[:3]
    assert rep.coverage["ct-int4"] == pytest.approx(0.991, abs=0.001)
    n = names.module_name(names.name_of("expert_gate", 1, 0))
    hdr = files.tensor_locations(d)
    assert hdr[f"{n}.weight_packed"].shape == (2048, 896) and hdr[f"{n}.weight_packed"].dtype == "I32"
    assert hdr[f"{n}.weight_scale"].shape == (2048, 224) and hdr[f"{n}.weight_scale"].dtype == "BF16"
    assert rep.int4 is not None and rep.int4["declared_shape"] == [2048, 7168] and rep.int4["group_size"] == 32
    assert rep.int4["stored"]["weight"]["shape"] == [2048, 896] and not rep.int4["trtllm_loads"]
    assert rep.int4["convert"]["hopper"] == f"k2trt convert {d} DST --to fp8-block"
    assert rep.int4["convert"]["blackwell"] == f"k2trt convert {d} DST --to nvfp4"


def test_inspect_cli_names_the_conversion_for_the_gpu(full: Path) -> None:
    from click.testing import CliRunner

    from k2trt.cli import cli

    r = CliRunner().invoke(cli, ["inspect", str(full), "--gpu", "h200"])
    assert r.exit_code == 0, r.output
    flat = " ".join(r.output.split())
    assert "TensorRT-LLM cannot load INT4 experts" in flat and f"k2trt convert {full} DST --to fp8-block" in flat
    assert "ct-int4 99.1%" in flat and "weight_packed I32[2048, 896]" in flat
    assert " parameters (1.03 T), 553.4 GiB," in flat, flat[:300]  # at a glance: the count and the bytes
    r = CliRunner().invoke(cli, ["inspect", str(full), "--gpu", "b200", "--json"])
    assert json.loads(r.output)["int4"]["convert"] == {"b200": f"k2trt convert {full} DST --to nvfp4"}


def test_inspect_checks_the_ignore_list_and_the_packed_shapes(ckpts: dict[str, Path], tmp_path: Path) -> None:
    """An ignore list that would quantize the shared experts contradicts the weights; an expert packed along the
    output dimension (weight_packed [out/8, in]) or with a transposed scale has the wrong header shape."""
    d = tmp_path / "ck"
    shutil.copytree(ckpts["src"], d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["quantization_config"]["ignore"].remove("re:.*shared_experts.*")
    (d / "config.json").write_text(json.dumps(cfg))
    warns = [p for p in inspect_checkpoint(d).problems if p.severity == "warning"]
    assert warns and "quantizes it to INT4 (model.layers.1.mlp.shared_experts" in warns[0].message
    from safetensors.torch import load_file, save_file

    name = names.module_name(names.name_of("expert_down", 2, 5))
    for suffix, bad in (("weight_packed", lambda t: t.view(-1)[: t.numel()].reshape(t.shape[0] // 8, -1)),
                        ("weight_scale", lambda t: t.t().contiguous())):
        d2 = tmp_path / suffix
        shutil.copytree(ckpts["src"], d2)
        f = d2 / files.tensor_locations(d2)[f"{name}.{suffix}"].file
        sd = load_file(f)
        sd[f"{name}.{suffix}"] = bad(sd[f"{name}.{suffix}"]).contiguous()
        save_file(sd, f, metadata={"format": "pt"})
        errs = [p for p in inspect_checkpoint(d2).problems if p.severity == "error"]
        assert errs and errs[0].where == f"{name}.{suffix}", errs[:2]


# ---- convert and verify ------------------------------------------------------------------------------------------

def test_every_target_converts_and_verifies(ckpts: dict[str, Path]) -> None:
    """INT4 → bf16 / fp8-block / w4a8 / nvfp4 through the existing targets; ``k2trt verify SRC OUT`` (logits of
    the reference engine, which reads the INT4 source natively) passes with the per-target thresholds."""
    for t in TARGETS:
        assert inspect_checkpoint(ckpts[t]).ok, t
        rep = between(ckpts["src"], ckpts[t], prompts=8)
        assert rep.passed, (t, rep.metrics, rep.failures)
        assert rep.thresholds == dataclasses.asdict(Thresholds.for_pair(ckpts["src"], ckpts[t]))
        if t != "bf16":
            assert rep.metrics["kl"] > 1e-3, t  # the requantized weights really were read
    assert Thresholds.for_pair(ckpts["src"], ckpts["bf16"]).max_kl == 1e-3


def _tensors(d: Path) -> dict[str, "torch.Tensor"]:
    from safetensors.torch import load_file

    return {k: v for f in sorted(d.glob("*.safetensors")) for k, v in load_file(f).items()}


def test_ct_int4_target_writes_k2_thinkings_own_layout(ckpts: dict[str, Path], tiny_ckpt: Path,
                                                      tmp_path: Path) -> None:
    """``--to ct-int4`` (the tiny K2's INT4 variant is written by it): a K2-Thinking source comes out unchanged,
    byte for byte; from its BF16 conversion every routed expert is the compressed-tensors package's own quantization
    of the BF16 weight, every other tensor the BF16 bytes, config.json K2-Thinking's, and verify passes; K2-Instruct's
    block FP8 converts too; ``--kv-cache-dtype fp8`` (a TensorRT-LLM setting) is refused."""
    from click.testing import CliRunner

    from k2trt.checkpoint.verify import verify_output
    from k2trt.cli import cli
    from k2trt.errors import CheckpointError
    from k2trt.presets import K2_THINKING_QUANT

    same = convert(ckpts["src"], tmp_path / "same", ConvertOptions(target="ct-int4")).plan.dst
    for f in sorted(ckpts["src"].glob("*.safetensors")):
        assert (same / f.name).read_bytes() == f.read_bytes(), f.name
    src_cfg = json.loads((ckpts["src"] / "config.json").read_text())
    assert json.loads((same / "config.json").read_text()) == src_cfg

    res = convert(ckpts["bf16"], tmp_path / "back", ConvertOptions(target="ct-int4"), verify=True)
    assert res.verified and res.verified["tensors"] > 0
    back, bf = _tensors(res.plan.dst), _tensors(ckpts["bf16"])
    experts = 0
    for name, w in bf.items():
        p = names.parse(name)
        if p is not None and p.role in ("expert_gate", "expert_up", "expert_down"):
            mod = name.removesuffix(".weight")
            want = dict(zip(("weight_packed", "weight_scale", "weight_shape"), quantize_ct_int4(w)))
            for part, t in want.items():
                assert torch.equal(back.pop(f"{mod}.{part}"), t), (mod, part)
            experts += 1
        else:
            assert torch.equal(back.pop(name), w), name
    assert not back and experts == 2 * 16 * 3  # 2 MoE layers × 16 experts × gate/up/down, nothing else written
    cfg = json.loads((res.plan.dst / "config.json").read_text())
    assert cfg["quantization_config"] == K2_THINKING_QUANT == src_cfg["quantization_config"]
    assert ModelSpec.from_config(cfg).quantization.is_int4_source
    assert inspect_checkpoint(res.plan.dst).ok
    shown = " ".join(CliRunner().invoke(cli, ["inspect", str(res.plan.dst)]).output.split())
    assert "compressed-tensors INT4 experts" in shown and "parameters (15.7 M), 21.2 MiB," in shown, shown[:300]
    rep = between(ckpts["src"], res.plan.dst, prompts=8)
    # not lossless: a dequantized group's largest magnitude is 7 or 8 steps, so its new scale (amax / 7.5) is not
    # the old one and the codes round again
    assert rep.passed and rep.metrics["kl"] > 1e-4, rep.metrics

    fp8 = convert(tiny_ckpt, tmp_path / "from-fp8", ConvertOptions(target="ct-int4"))
    assert ModelSpec.from_config(json.loads((fp8.plan.dst / "config.json").read_text())).quantization.layout == \
        "ct-int4"
    assert between(tiny_ckpt, fp8.plan.dst, prompts=4).passed
    swapped = _swapped_nibbles_encode(formats.FORMATS["ct-int4"])
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(formats.FORMATS, "ct-int4", swapped)
        bad = convert(tiny_ckpt, tmp_path / "swapped", ConvertOptions(target="ct-int4")).plan
    with pytest.raises(CheckpointError, match="off its source by more than the ct-int4 rounding bound"):
        verify_output(bad)  # convert --verify catches a mispacked encoder
    assert not between(tiny_ckpt, bad.dst, prompts=4).passed  # and so do the 4-bit logit thresholds
    with pytest.raises(CheckpointError, match="kv-cache-dtype fp8 does not apply to --to ct-int4"):
        convert(tiny_ckpt, tmp_path / "kv", ConvertOptions(target="ct-int4", kv_cache_dtype="fp8"))
    assert not (tmp_path / "kv").exists()


def _swapped_nibbles_encode(row: formats.StorageFormat) -> formats.StorageFormat:
    def encode(w: "torch.Tensor", extra: dict) -> "list[torch.Tensor]":
        packed, *rest = row.encode(w, extra)
        b = packed.contiguous().view(torch.uint8)
        return [((b >> 4) | ((b & 15) << 4)).view(torch.int32), *rest]

    return dataclasses.replace(row, encode=encode)


def test_bf16_is_the_exact_dequantisation_rounded_once(ckpts: dict[str, Path]) -> None:
    """``--to bf16``: every expert is code × scale (exact in float32) rounded once to BF16 — relative error at most
    2^-8 per weight (BF16 unit roundoff); the BF16 rest is copied byte for byte."""
    with CheckpointReader(ckpts["src"]) as a, CheckpointReader(ckpts["bf16"]) as b:
        for role, layer, e in (("expert_down", 1, 3), ("expert_gate", 2, 15), ("q_b", 1, None)):
            exact = a.get(role, layer, e)
            got = b.get(role, layer, e)
            assert torch.equal(got, exact.to(torch.bfloat16).float())
            assert ((got - exact).abs() <= exact.abs() * 2**-8).all()


def test_a_killed_int4_conversion_resumes_to_identical_bytes(ckpts: dict[str, Path], tmp_path: Path) -> None:
    import hashlib

    def digest(d: Path) -> dict[str, str]:
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.iterdir()) if p.is_file()}

    dst = tmp_path / "fp8"
    r1 = convert(ckpts["src"], dst, ConvertOptions(target="fp8-block"), stop_after=2)
    assert r1.shards_written == 2 and not (dst / "config.json").exists()
    r2 = convert(ckpts["src"], dst, ConvertOptions(target="fp8-block"))
    assert (r2.state, r2.shards_skipped, r2.shards_written) == ("resumed", 2, 2)
    assert digest(dst) == digest(ckpts["fp8-block"])
    assert any("INT4 routed experts (compressed-tensors, group 32)" in n for n in r2.plan.notes)
    # bounded memory, metered as what the compiled loop reads: at most one expert's packed bytes and group
    # scales per worker (the loop holds no float32 copy of the weight; BF16 weights are read as bits, unmetered)
    with CheckpointReader(ckpts["src"]) as rd:
        expert = sum(e.nbytes for e in rd.stored("expert_gate", 1, 0).parts.values())
    for r in (r1, r2):
        assert r.peak_tensor_bytes <= ConvertOptions().workers * expert, (r.peak_tensor_bytes, expert)
    assert r1.peak_tensor_bytes + r2.peak_tensor_bytes > 0


@pytest.mark.parametrize("bug", ["nibbles-swapped", "packed-along-wrong-dim", "group-128", "scales-transposed"])
def test_a_misread_int4_fails_verify(ckpts: dict[str, Path], tmp_path: Path, bug: str,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A conversion that misreads the INT4 experts (the four classic bugs) is caught by ``k2trt verify``."""
    row = formats.FORMATS["ct-int4"]
    monkeypatch.setitem(formats.FORMATS, "ct-int4", dataclasses.replace(row, decode=_broken_decode(bug)))
    out = convert(ckpts["src"], tmp_path / bug, ConvertOptions(target="bf16")).plan.dst
    monkeypatch.setitem(formats.FORMATS, "ct-int4", row)
    bad = between(ckpts["src"], out, prompts=8)
    assert not bad.passed, (bug, bad.metrics)
    shutil.rmtree(out)


def _broken_decode(bug: str):  # type: ignore[no-untyped-def]
    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32

    def decode(p: dict[str, "torch.Tensor"]) -> "torch.Tensor":
        packed, scale = p["weight"], p["scale"].float()
        m, n = packed.shape[0], packed.shape[1] * 8
        c = unpack_from_int32(packed.contiguous(), 4, torch.Size((m, n))).float()
        if bug == "nibbles-swapped":
            c = c.view(m, n // 2, 2).flip(-1).reshape(m, n)
        elif bug == "packed-along-wrong-dim":
            c = c.view(m, n // 8, 8).transpose(1, 2).reshape(m, n)
        elif bug == "scales-transposed":
            scale = scale.t().reshape(m, n // 32)
        if bug == "group-128":
            return c * scale.repeat_interleave(128, 1)[:, :n]
        return (c.view(m, n // 32, 32) * scale.unsqueeze(-1)).view(m, n)

    return decode


# ---- plan and build ----------------------------------------------------------------------------------------------

def test_plan_knows_int4_sources_and_their_converted_sizes(full: Path) -> None:
    """``k2trt plan --checkpoint`` an INT4 K2-Thinking: sized as stored (594 GB) but refused on TensorRT-LLM with
    the conversion to run; ``--weights fp8`` / ``w4a8`` / ``nvfp4`` plan what ``convert --to`` would write."""
    from click.testing import CliRunner

    from k2trt.cli import cli
    from k2trt.plan.memory import inventory, weight_format
    from k2trt.plan.planner import resolve_spec

    r = CliRunner().invoke(cli, ["plan", "--checkpoint", str(full), "--gpu", "h200", "--nodes", "2", "--json"])
    d = json.loads(r.output)
    assert d["weight_format"] == "int4" and d["checkpoint_gib"] == pytest.approx(594.2e9 / 2**30, abs=0.1)
    assert d["layouts"] and not any(lp["ok"] for lp in d["layouts"])
    for lp in [lp for lp in d["layouts"] if "invalid" not in lp]:  # (invalid: the layout cannot shard K2 at all)
        assert "int4-not-loadable" in [f["rule"] for f in lp["findings"]]
    msg = next(f["message"] for f in d["layouts"][0]["findings"] if f["rule"] == "int4-not-loadable")
    assert "--to fp8-block" in msg
    r = CliRunner().invoke(cli, ["plan", "--checkpoint", str(full), "--gpu", "b200", "--json"])
    assert "--to nvfp4" in json.dumps(json.loads(r.output)["layouts"][0]["findings"])
    sizes = {}
    for w in ("fp8", "w4a8", "nvfp4", "bf16"):
        spec, _ = resolve_spec(str(full), None, w)
        sizes[w] = round(inventory(spec).total_bytes / 1e9, 1)
        assert weight_format(spec) == {"fp8": "fp8_block"}.get(w, w)
    assert sizes == {"fp8": 1029.2, "w4a8": 553.3, "nvfp4": 594.2, "bf16": 2052.8}, sizes
    r = CliRunner().invoke(cli, ["plan", "--checkpoint", str(full), "--weights", "fp8", "--gpu", "h200",
                                 "--nodes", "2", "--json"])
    assert any(lp["ok"] for lp in json.loads(r.output)["layouts"])


def test_build_refuses_an_int4_checkpoint_with_the_convert_command(full: Path, tmp_path: Path) -> None:
    from k2trt.bundle.build import build_bundle
    from k2trt.bundle.recipe import load_recipe
    from k2trt.errors import CheckpointError

    for recipe, to in (("k2-thinking-h200-2x8-fp8", "fp8-block"), ("k2-h200-2x8-tp16ep8", "fp8-block"),
                       ("k2-thinking-h200-1x8-w4a8", "w4a8")):
        with pytest.raises(CheckpointError, match="cannot load") as e:
            build_bundle(load_recipe(recipe), full, tmp_path / recipe, dry_run=True)
        assert f"k2trt convert {full} DST --to {to}" in str(e.value) and "\n" not in str(e.value)
        assert not (tmp_path / recipe).exists()


@pytest.mark.parametrize("recipe,fits", [("k2-thinking-h200-2x8-fp8", True), ("k2-thinking-h200-1x8-w4a8", False)])
def test_k2_thinking_recipes_plan(recipe: str, fits: bool) -> None:
    """K2-Thinking on 2×8 H200 from the block-FP8 conversion fits at its 256K context; on 1×8 H200 from W4A8 the
    weights fit but the recipe is refused like every W4A8 recipe (rule w4a8-not-loadable)."""
    from k2trt.bundle.build import plan_recipe, recipe_spec
    from k2trt.bundle.recipe import load_recipe
    from k2trt.errors import PlanError
    from k2trt.plan.memory import inventory

    r = load_recipe(recipe)
    spec = recipe_spec(r)
    assert spec.max_position_embeddings == 262144 and spec.n_routed_experts == 384
    gb = inventory(spec).total_bytes / 1e9
    assert gb == pytest.approx(1029.2 if fits else 553.3, abs=0.1)
    if fits:
        planned = plan_recipe(r, spec)
        assert all(lp.ok for _, lp, _ in planned) and r.context == 262144
        return
    with pytest.raises(PlanError, match="w4a8-not-loadable|MIXED_PRECISION") as e:
        plan_recipe(r, spec)
    assert "does not fit" in str(e.value) and "MIXED_PRECISION" in str(e.value)
    assert "memory" not in str(e.value).split("does not fit:")[1].split("MIXED")[0]  # refused for the loader only


def test_int4_to_block_fp8_needs_neither_torch_nor_compressed_tensors(ckpts: dict[str, Path],
                                                                        tmp_path: Path) -> None:
    """INT4 → block FP8 reads the packed bytes in a compiled loop: the plan loads neither library (torch ~1 s and
    compressed-tensors ~2 s of start-up), and with both made unimportable after planning the conversion writes the
    same bytes. Decoding to any other target still goes through them."""
    import subprocess
    import sys

    from k2trt.checkpoint.convert import plan_conversion

    p = plan_conversion(ckpts["src"], tmp_path / "p", ConvertOptions(target="fp8-block"))
    assert not p.needs_torch and not p.needs_compressed_tensors
    p = plan_conversion(ckpts["src"], tmp_path / "q", ConvertOptions(target="bf16"))
    assert p.needs_torch and p.needs_compressed_tensors
    code = ("import sys; from k2trt.checkpoint.convert import ConvertOptions, convert, plan_conversion; "
            "o = ConvertOptions(target='fp8-block'); plan_conversion(sys.argv[1], sys.argv[2], o); "
            "sys.modules['torch'] = sys.modules['compressed_tensors'] = None; convert(sys.argv[1], sys.argv[2], o)")
    out = tmp_path / "fp8"
    r = subprocess.run([sys.executable, "-c", code, str(ckpts["src"]), str(out)], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    for f in sorted(ckpts["fp8-block"].glob("*.safetensors")):
        assert (out / f.name).read_bytes() == f.read_bytes(), f.name
