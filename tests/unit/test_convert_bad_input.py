"""convert refuses every kind of broken source with one line naming the file or tensor and the fix, before writing
anything: no shard ever appears under its final name unless it is complete."""

from __future__ import annotations

import json
import re
import shutil
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from k2trt.checkpoint import names
from k2trt.checkpoint.convert import ConvertOptions, convert
from k2trt.checkpoint.files import read_header
from k2trt.errors import CheckpointError


@pytest.fixture
def ck(tiny_ckpt: Path, tmp_path: Path) -> Path:
    d = tmp_path / "src"
    shutil.copytree(tiny_ckpt, d)
    return d


def _refused(src: Path, target: str, pattern: str) -> str:
    out = src.parent / "out"
    with pytest.raises(CheckpointError) as ei:
        convert(src, out, ConvertOptions(target=target))
    msg = str(ei.value)
    assert re.search(pattern, msg), msg
    assert "\n" not in msg and "(" in msg  # one line, with the fix in parentheses
    assert not out.exists() or not list(out.glob("*.safetensors"))
    return msg


def _shard_of(src: Path, tensor: str) -> Path:
    return src / json.loads((src / names.INDEX_FILE).read_text())["weight_map"][tensor]


def _rewrite_header(path: Path, edit) -> None:  # type: ignore[no-untyped-def]
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    edit(header)
    blob = json.dumps(header, separators=(",", ":")).encode()
    assert len(blob) <= n
    path.write_bytes(data[:8] + blob + b" " * (n - len(blob)) + data[8 + n:])


def _poke(path: Path, tensor: str, value: bytes, at: int = 0) -> None:
    e = read_header(path).tensors[tensor]
    with open(path, "r+b") as f:
        f.seek(e.begin + at)
        f.write(value)


def test_truncated_shard(ck: Path) -> None:
    p = ck / "model-2-of-4.safetensors"
    p.write_bytes(p.read_bytes()[:-1000])
    _refused(ck, "bf16", r"model-2-of-4\.safetensors.*truncated")


def test_header_length_past_end_of_file(ck: Path) -> None:
    p = ck / "model-1-of-4.safetensors"
    data = p.read_bytes()
    p.write_bytes(struct.pack("<Q", len(data) * 2) + data[8:])
    _refused(ck, "trtllm", r"model-1-of-4\.safetensors.*header length .* past the end")


def test_invalid_header_json(ck: Path) -> None:
    p = ck / "model-3-of-4.safetensors"
    data = bytearray(p.read_bytes())
    data[8:12] = b"!!!!"
    p.write_bytes(bytes(data))
    _refused(ck, "fp8-block", r"model-3-of-4\.safetensors.*not valid JSON")


def test_dtype_mismatch(ck: Path) -> None:
    norm = names.name_of("input_norm", 1)
    _rewrite_header(_shard_of(ck, norm), lambda h: h[norm].update(dtype="F16"))  # same size as BF16
    _refused(ck, "bf16", re.escape(norm) + r".*F16, expected BF16")


def test_shape_mismatch_against_config(ck: Path) -> None:
    cfg = json.loads((ck / "config.json").read_text())
    cfg["moe_intermediate_size"] = 384  # the weights say 256
    (ck / "config.json").write_text(json.dumps(cfg))
    _refused(ck, "trtllm", r"mlp\.experts\.0\.\w+_proj\.weight.*shape")


def test_missing_scale(ck: Path) -> None:
    victim = names.name_of("q_b", 1)
    _rewrite_header(_shard_of(ck, victim), lambda h: h.update(dropped=h.pop(names.scale_name(victim))))
    _refused(ck, "trtllm", re.escape(names.scale_name(victim)) + r".*missing")


@pytest.mark.parametrize("target,value,why", [("bf16", float("nan"), "NaN"), ("trtllm", float("inf"), "Inf"),
                                              ("fp8-block", 0.0, "zero")])
def test_bad_scale_values(ck: Path, target: str, value: float, why: str) -> None:
    """A passthrough target must refuse too: an FP8 weight never leaves with a broken scale."""
    scale = names.scale_name(names.name_of("expert_down", 2, 5))
    _poke(_shard_of(ck, scale), scale, struct.pack("<f", value), at=4)
    _refused(ck, target, re.escape(scale) + f".*{why}")


def test_unknown_fp8_tensor_without_scale(ck: Path) -> None:
    save_file({"extra.weight": torch.zeros(4, 4).to(torch.float8_e4m3fn)}, ck / "extra.safetensors")
    idx = json.loads((ck / names.INDEX_FILE).read_text())
    idx["weight_map"]["extra.weight"] = "extra.safetensors"
    (ck / names.INDEX_FILE).write_text(json.dumps(idx))
    _refused(ck, "trtllm", r"extra\.weight in extra\.safetensors is FP8 but has no extra\.weight_scale_inv")


def test_index_names_a_missing_file(ck: Path) -> None:
    idx = json.loads((ck / names.INDEX_FILE).read_text())
    idx["weight_map"][names.name_of("o", 0)] = "model-9-of-4.safetensors"
    (ck / names.INDEX_FILE).write_text(json.dumps(idx))
    _refused(ck, "bf16", r"model-9-of-4\.safetensors.*not on disk")


def test_non_finite_bf16_weight_cannot_be_quantised(ck: Path, tmp_path: Path) -> None:
    bf16 = tmp_path / "bf16"
    convert(ck, bf16, ConvertOptions(target="bf16", hash=False))
    victim = names.name_of("expert_up", 1, 3)
    _poke(_shard_of(bf16, victim), victim, struct.pack("<H", 0x7FC0))  # a bf16 NaN
    out = tmp_path / "fp8"
    with pytest.raises(CheckpointError, match=re.escape(victim) + ".*non-finite"):
        convert(bf16, out, ConvertOptions(target="fp8-block"))
    # the shards before the bad one are finished; the bad one never appears under its final name
    bad = _shard_of(bf16, victim).name
    assert not (out / bad).exists() and not list(out.glob(".*.partial"))
    for p in out.glob("*.safetensors"):
        read_header(p)
