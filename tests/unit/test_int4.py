"""Moonshot's native INT4 (K2-Thinking / K2.5 / K2.6: compressed-tensors ``pack-quantized`` routed experts) on the
one conversion pipeline, end to end on CPU.

Real files throughout: the tiny K2-Thinking from ``synthesize`` (its experts quantized and packed by the
compressed-tensors package itself), real conversions to every target, the reference model for verification. The
broken conversions are real conversions run with a deliberately wrong INT4 decoder swapped into the format table
(the bug under test), then judged by the real reference engine with the correct one.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("compressed_tensors")

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
                             (("weights", "symmetric"), False, "symmetric is False"),
                             (("input_activations",), {"num_bits": 8}, "quantizes activations")):
        bad = json.loads(json.dumps(cfg))
        g = bad["quantization_config"]["config_groups"]["group_0"]
        for k in path[:-1]:
            g = g[k]
        g[path[-1]] = value
        with pytest.raises(ConfigError, match=msg):
            ModelSpec.from_config(bad)


# ---- inspect -----------------------------------------------------------------------------------------------------

def test_full_size_k2_thinking_layout_inspects(tmp_path: Path) -> None:
    """``synth --sparse --preset k2-thinking``: the full-size INT4 layout, header-only, at its real size."""
    spec = preset("k2-thinking")
    assert spec.checkpoint_bytes() / 1e9 == pytest.approx(594.2, abs=0.1)
    d = synthesize(spec, tmp_path / "kt", sparse=True, preset_name="k2-thinking")
    rep = inspect_checkpoint(d)
    assert not [p for p in rep.problems if p.severity == "error"], rep.problems[:3]
    assert rep.coverage["ct-int4"] == pytest.approx(0.991, abs=0.001)
    n = names.module_name(names.name_of("expert_gate", 1, 0))
    hdr = files.tensor_locations(d)
    assert hdr[f"{n}.weight_packed"].shape == (2048, 896) and hdr[f"{n}.weight_packed"].dtype == "I32"
    assert hdr[f"{n}.weight_scale"].shape == (2048, 224) and hdr[f"{n}.weight_scale"].dtype == "BF16"


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


def test_bf16_is_the_exact_dequantisation_rounded_once(ckpts: dict[str, Path]) -> None:
    """``--to bf16``: every expert is code × scale (exact in float32) rounded once to BF16 — relative error at most
    2^-8 per weight (BF16 unit roundoff); the BF16 rest is copied byte for byte."""
    with CheckpointReader(ckpts["src"]) as a, CheckpointReader(ckpts["bf16"]) as b:
        for role, layer, e in (("expert_down", 1, 3), ("expert_gate", 2, 15), ("q_b", 1, None)):
            exact = a.get(role, layer, e)
            got = b.get(role, layer, e)
            assert torch.equal(got, exact.to(torch.bfloat16).float())
            assert ((got - exact).abs() <= exact.abs() * 2**-8).all()


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
