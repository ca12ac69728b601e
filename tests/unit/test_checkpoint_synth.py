"""synth, block-FP8 math and shard files, on real safetensors files."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from safetensors import safe_open

from k2trt.checkpoint import files
from k2trt.checkpoint.formats import inventory
from k2trt.checkpoint.fp8 import dequantize, quantize, scale_problems
from k2trt.checkpoint.synth import synthesize
from k2trt.errors import CheckpointError
from k2trt.spec import ModelSpec, preset


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return synthesize(preset("tiny"), tmp_path_factory.mktemp("ck") / "tiny", seed=0, preset_name="tiny")


def test_tiny_checkpoint_has_k2_file_set(tiny) -> None:
    names = sorted(p.name for p in tiny.iterdir())
    for f in ("config.json", "generation_config.json", "model.safetensors.index.json", "tiktoken.model",
              "tokenizer_config.json", "chat_template.jinja"):
        assert f in names
    assert [n for n in names if n.endswith(".safetensors")] == [f"model-{i}-of-4.safetensors" for i in range(1, 5)]
    cfg = json.loads((tiny / "config.json").read_text())
    assert cfg["architectures"] == ["DeepseekV3ForCausalLM"] and cfg["model_type"] == "kimi_k2"
    assert cfg["quantization_config"] == {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                                          "weight_block_size": [128, 128]}
    assert "AutoModelForCausalLM" in cfg["auto_map"]
    assert ModelSpec.from_config(tiny) == preset("tiny")


def test_index_matches_files_and_inventory(tiny) -> None:
    idx = files.read_index(tiny)
    present = files.tensor_locations(tiny)
    assert set(idx["weight_map"]) == set(present) == set(inventory(preset("tiny")))
    assert all(present[n].file == f for n, f in idx["weight_map"].items())
    assert idx["metadata"]["total_size"] == sum(e.nbytes for e in present.values())


def test_weights_are_fp8_with_scales_and_sane(tiny) -> None:
    spec = preset("tiny")
    loc = files.tensor_locations(tiny)
    for name, t in inventory(spec).items():
        if not t.is_fp8:
            continue
        with safe_open(tiny / loc[name].file, "pt") as f:
            w = f.get_tensor(name)
        with safe_open(tiny / loc[name + "_scale_inv"].file, "pt") as f:
            s = f.get_tensor(name + "_scale_inv")
        assert w.dtype == torch.float8_e4m3fn and s.dtype == torch.float32
        assert scale_problems(s) is None
        x = dequantize(w, s)
        assert torch.isfinite(x).all() and x.std() > 0
        # the block maximum maps to ±448 in every block: the scale is amax/448
        assert w.to(torch.float32).abs().max() == 448


def test_synth_is_deterministic_per_seed(tiny, tmp_path) -> None:
    again = synthesize(preset("tiny"), tmp_path / "again", seed=0, preset_name="tiny")
    other = synthesize(preset("tiny"), tmp_path / "other", seed=1, preset_name="tiny", tokenizer=False)
    for p in tiny.iterdir():
        assert (again / p.name).read_bytes() == p.read_bytes(), p.name
    assert (other / "model-2-of-4.safetensors").read_bytes() != (tiny / "model-2-of-4.safetensors").read_bytes()


def test_synth_refuses_non_empty_out(tiny) -> None:
    with pytest.raises(CheckpointError, match="is not empty"):
        synthesize(preset("tiny"), tiny, seed=0)


def test_sparse_k2_layout_costs_no_disk(tmp_path) -> None:
    out = synthesize(preset("k2-instruct"), tmp_path / "k2", sparse=True, tokenizer=False)
    shards = files.shard_files(out)
    assert len(shards) == 61 and shards[0].name == "model-1-of-61.safetensors"
    apparent = sum(p.stat().st_size for p in shards)
    used = sum(p.stat().st_blocks * 512 for p in shards)
    assert apparent > 1.0e12 and used < 200 * 2**20
    assert len(files.tensor_locations(out)) == 139_644


@pytest.mark.parametrize("shape", [(320, 256), (576, 200), (128, 128), (5, 7), (1000, 130)])
def test_block_quant_round_trip_is_exact(shape) -> None:
    w = torch.randn(shape) * torch.logspace(-3, 2, shape[0]).unsqueeze(1)  # every block at its own scale
    q, s = quantize(w.to(torch.bfloat16))
    assert s.shape == (-(-shape[0] // 128), -(-shape[1] // 128))
    b = dequantize(q, s, torch.bfloat16)
    q2, s2 = quantize(b)
    assert torch.equal(q2.view(torch.uint8), q.view(torch.uint8)) and torch.equal(s2, s)
    rel = ((b.float() - w).abs() / w.abs().clamp_min(1e-30)).median()
    assert rel < 0.07  # e4m3 keeps 3 mantissa bits


def test_dequant_partial_block_uses_its_own_scale() -> None:
    q = torch.ones(200, 130).to(torch.float8_e4m3fn)
    s = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    x = dequantize(q, s)
    assert x[0, 0] == 1 and x[0, 129] == 2 and x[199, 0] == 3 and x[199, 129] == 4 and x[128, 128] == 4
    with pytest.raises(CheckpointError, match=r"expected \[2, 2\]"):
        dequantize(q, torch.ones(1, 2))


def test_shard_writer_is_atomic(tmp_path) -> None:
    path = tmp_path / "s.safetensors"
    with pytest.raises(RuntimeError):
        with files.ShardWriter(path, [("a", "F32", (2,)), ("b", "F32", (2,))]) as w:
            w.write("a", bytes(8))
            raise RuntimeError("interrupted")
    assert not path.exists() and not any(tmp_path.iterdir())
    with pytest.raises(CheckpointError, match="never written"):
        w = files.ShardWriter(path, [("a", "F32", (2,))])
        w.commit()
    w.abort()
    with files.ShardWriter(path, [("a", "F32", (2,)), ("b", "BF16", (3,))]) as w:
        w.write("b", torch.tensor([1.0, 2.0, 3.0], dtype=torch.bfloat16).view(torch.uint8).numpy().tobytes())
        w.write("a", torch.tensor([4.0, 5.0]).numpy().tobytes())
    with safe_open(path, "pt") as f:  # the real safetensors reader agrees with our layout
        assert f.get_tensor("a").tolist() == [4.0, 5.0]
        assert f.get_tensor("b").tolist() == [1.0, 2.0, 3.0]
    assert os.listdir(tmp_path) == ["s.safetensors"]


def test_shard_writer_flush_then_commit(tmp_path, monkeypatch) -> None:
    """``flush`` (the converter calls it on the writing thread) hashes and syncs under the temporary name; ``commit``
    then only renames. A writer past ``WRITEBACK`` bytes asks the kernel to start writing them back as it goes,
    covering every byte once, in order."""
    import blake3

    hinted: list[tuple[int, int]] = []
    real = files.start_writeback
    monkeypatch.setattr(files, "start_writeback", lambda fd, off, n: (hinted.append((off, n)), real(fd, off, n)))
    n = 3 * files.WRITEBACK // 16 + 1  # float32s: three tensors of 3/4 WRITEBACK bytes (+4) each
    path = tmp_path / "s.safetensors"
    w = files.ShardWriter(path, [(k, "F32", (n,)) for k in "abc"], hashing=True)
    for k in "abc":
        w.write(k, np.full(n, ord(k), np.float32).tobytes())
    w.flush()
    assert not path.exists() and w.tmp.exists() and w.digest is not None
    assert w.digest == blake3.blake3(w.tmp.read_bytes()).hexdigest()
    w.flush()  # idempotent
    assert w.commit() == path and not w.tmp.exists()
    assert blake3.blake3(path.read_bytes()).hexdigest() == w.digest
    assert len(hinted) == 1 and hinted[0][0] == 0 and hinted[0][1] >= files.WRITEBACK
    with safe_open(path, "np") as f:
        assert f.get_tensor("c")[0] == ord("c")
    w = files.ShardWriter(tmp_path / "t.safetensors", [("a", "F32", (2,))])
    with pytest.raises(CheckpointError, match="never written"):
        w.flush()
    w.abort()
    assert sorted(os.listdir(tmp_path)) == ["s.safetensors"]


@pytest.mark.parametrize("extra", [-1, 0, 1, 2**20 * 2 + 7])
def test_file_hash_and_hashed_copy_equal_blake3_at_buffer_boundaries(tmp_path, extra: int) -> None:
    """hash_file reads through one reused buffer (``HASH_CHUNK``): sizes around its edges, and a hashed copy,
    give blake3's digest of the whole bytes in one call (what ``b3sum`` prints)."""
    import blake3

    data = np.random.default_rng(extra & 0xFFFF).integers(0, 256, files.HASH_CHUNK + extra, dtype=np.uint8).tobytes()
    src = tmp_path / "a.bin"
    src.write_bytes(data)
    want = blake3.blake3(data).hexdigest()
    assert files.FILE_HASH == "blake3" and files.hash_file(src) == want
    assert files.copy_file(src, tmp_path / "b.bin", hashing=True) == want and (tmp_path / "b.bin").read_bytes() == data
    (tmp_path / "empty").write_bytes(b"")
    assert files.hash_file(tmp_path / "empty") == blake3.blake3(b"").hexdigest()
