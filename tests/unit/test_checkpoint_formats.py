"""The storage-format table and the numpy FP8 → BF16 path: every format the spec describes has its row, the
HF-named inventory agrees with the spec's, and the converter's lookup table is bit-identical to torch's math."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from k2trt.checkpoint import formats, names
from k2trt.checkpoint.files import TensorEntry
from k2trt.checkpoint.fp8 import dequantize, dequantize_rows, e4m3_values, quantize
from k2trt.checkpoint.kernels import bf16_bits
from k2trt.errors import CheckpointError
from k2trt.spec import LINEAR_FORMATS, Quantization, preset


def test_every_spec_format_has_a_row_naming_each_part() -> None:
    assert set(formats.FORMATS) == set(LINEAR_FORMATS)
    for name, row in formats.FORMATS.items():
        assert row.geometry is LINEAR_FORMATS[name]
        assert set(row.suffixes) == {p.part for p in row.parts}, name
        assert set(row.needs) <= set(row.suffixes) and row.needs[0] == "weight"


@pytest.mark.parametrize("quant", [Quantization(), None, Quantization.requant("nvfp4"), Quantization.requant("w4a8")])
def test_inventory_names_are_unique_and_parse_back_to_their_roles(quant: Quantization | None) -> None:
    spec = preset("tiny").with_quantization(quant)
    inv = formats.inventory(spec)
    assert len(inv) == len(spec.tensors())
    for n, t in inv.items():
        if t.part == "weight":
            p = names.parse(n)
            assert p is not None and (p.role, p.layer, p.expert) == (t.role, t.layer, t.expert), n
    assert inv["model.layers.1.self_attn.kv_a_proj_with_mqa.weight"].shape == (320, 256)


def test_stored_detects_the_format_and_refuses_a_missing_part() -> None:
    w = "model.layers.1.mlp.experts.0.down_proj.weight"
    m = names.module_name(w)

    def e(name: str, dtype: str, shape: tuple[int, ...]) -> TensorEntry:
        return TensorEntry(name, dtype, shape, 0, 0, "f.safetensors")

    nv = {w: e(w, "U8", (256, 128)), f"{m}.weight_scale": e(f"{m}.weight_scale", "F8_E4M3", (256, 16)),
          f"{m}.weight_scale_2": e(f"{m}.weight_scale_2", "F32", ())}
    st = formats.stored(nv, w)
    assert st is not None and st.fmt.name == "nvfp4" and st.shape == (256, 256)  # unpacked [out, in]
    del nv[f"{m}.weight_scale_2"]
    with pytest.raises(CheckpointError, match="is NVFP4 but has no .*weight_scale_2"):
        formats.stored(nv, w)
    assert formats.stored({w: e(w, "F16", (4, 4))}, w).fmt.name == "bf16"  # type: ignore[union-attr]
    assert formats.stored({}, w, required=False) is None


def test_e4m3_table_and_bf16_rounding_match_torch() -> None:
    codes = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).to(torch.float32).numpy()
    assert np.array_equal(e4m3_values(), codes, equal_nan=True)  # subnormals, ±0, NaN at 0x7F/0xFF
    x = np.random.default_rng(0).standard_normal(100_000).astype(np.float32) * np.float32(1e3)
    x[:6] = [0.0, -0.0, np.inf, -np.inf, 3.4e38, 1e-40]  # signed zeros, infinities, overflow to inf, subnormal
    want = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy()
    assert np.array_equal(bf16_bits(x).view(np.int16), want)


@pytest.mark.parametrize("m,n,chunk", [(320, 256, 128), (2048, 1024, 256), (130, 1000, 1024), (576, 7168, 16)])
def test_table_dequantisation_is_bit_identical_to_torch(m: int, n: int, chunk: int) -> None:
    """Ragged rows and columns (partial edge blocks), chunks that start mid-tensor, every fp8 code."""
    w = torch.randn(m, n, generator=torch.Generator().manual_seed(m)) / 85
    w[0, :256] = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).float().nan_to_num(0.0)[:min(n, 256)]
    q, s = quantize(w)
    want = dequantize(q, s, torch.bfloat16).view(torch.int16).numpy()
    u8, grid = q.view(torch.uint8).numpy(), s.numpy()
    got = np.empty((m, n), dtype=np.int16)
    for r0 in range(0, m, chunk):
        dequantize_rows(u8[r0:r0 + chunk], grid, r0, got[r0:r0 + chunk])
    assert np.array_equal(got, want)
    odd = np.empty((m - 7, n), dtype=np.float32)  # a start row off any block or stripe boundary, float32 out
    dequantize_rows(u8[7:], grid, 7, odd)
    assert np.array_equal(odd, dequantize(q, s)[7:].numpy())
