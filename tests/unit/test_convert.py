"""convert on the tiny K2: every target, exact block math, fp8 → bf16 → fp8 byte round trip, verify, resume,
DST guards, the CLI, and --dry-run on the sparse 1 TB K2 layout.

Outputs are read back with safetensors' own loader (not k2trt's reader), so the checks do not share code with the
converter's IO.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Iterator

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from k2trt.checkpoint import names
from k2trt.checkpoint.convert import ConvertOptions, convert, plan_conversion
from k2trt.checkpoint.fp8 import dequantize
from k2trt.checkpoint.inspect import inspect_checkpoint
from k2trt.checkpoint.files import hash_file
from k2trt.checkpoint.manifest import MANIFEST_FILE
from k2trt.checkpoint.verify import verify_output
from k2trt.cli import cli
from k2trt.errors import CheckpointError
from k2trt.spec import preset


def _shards(d: Path) -> list[Path]:
    return sorted(d.glob("*.safetensors"))


def _load_all(d: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for p in _shards(d):
        out.update(load_file(p))
    return out


def _tree(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


@pytest.fixture(scope="module")
def bf16_out(tiny_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cv") / "bf16"
    convert(tiny_ckpt, out, ConvertOptions(target="bf16"), verify=True)
    return out


def test_trtllm_links_shards_and_carries_side_files(tiny_ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "trt"
    res = convert(tiny_ckpt, out, ConvertOptions(target="trtllm"), verify=True)
    assert res.state == "converted" and res.verified and res.verified["tensors"] > 0
    for p in _shards(tiny_ckpt):  # hard links: same inode, nothing copied
        assert os.stat(out / p.name).st_ino == os.stat(p).st_ino
    assert sorted(p.name for p in _shards(out)) == sorted(p.name for p in _shards(tiny_ckpt))
    for f in ("tiktoken.model", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
        assert (out / f).read_bytes() == (tiny_ckpt / f).read_bytes()
    src_cfg, cfg = json.loads((tiny_ckpt / "config.json").read_text()), json.loads((out / "config.json").read_text())
    # synth writes K2's auto_map but not configuration_deepseek.py: transformers could not load kimi_k2 from here
    assert src_cfg["model_type"] == "kimi_k2" and "auto_map" in src_cfg
    assert cfg["model_type"] == "deepseek_v3" and "auto_map" not in cfg
    assert cfg["quantization_config"] == src_cfg["quantization_config"]
    assert not (out / "hf_quant_config.json").exists()
    idx = json.loads((out / names.INDEX_FILE).read_text())
    assert idx["weight_map"] == json.loads((tiny_ckpt / names.INDEX_FILE).read_text())["weight_map"]
    man = json.loads((out / MANIFEST_FILE).read_text())
    assert man["complete"] and man["target"] == "trtllm" and man["source"] == str(tiny_ckpt.resolve())
    assert man["k2trt_version"]
    for name, rec in man["files"].items():
        assert rec["size"] == (out / name).stat().st_size and rec["blake3"] == hash_file(out / name), name
    assert set(man["files"]) == {p.name for p in out.iterdir()} - {MANIFEST_FILE}
    assert inspect_checkpoint(out).ok


def test_trtllm_keeps_kimi_k2_with_remote_code_and_copies(tiny_ckpt: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(tiny_ckpt, src)
    for f in ("configuration_deepseek.py", "modeling_deepseek.py"):
        (src / f).write_text("# K2's remote code would be here\n")
    out = tmp_path / "trt"
    convert(src, out, ConvertOptions(target="trtllm", copy=True, kv_cache_dtype="fp8"), verify=True)
    assert (out / "config.json").read_bytes() == (src / "config.json").read_bytes()  # untouched: kimi_k2 loads
    assert (out / "configuration_deepseek.py").exists()
    for p in _shards(src):
        assert os.stat(out / p.name).st_ino != os.stat(p).st_ino and (out / p.name).read_bytes() == p.read_bytes()
    hq = json.loads((out / "hf_quant_config.json").read_text())["quantization"]
    assert hq["quant_algo"] == "FP8_BLOCK_SCALES" and hq["kv_cache_quant_algo"] == "FP8" and hq["group_size"] == 128


@pytest.fixture
def one_thread() -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # torch's intra-op threads make small element-wise ops slow on busy cores
    yield
    torch.set_num_threads(old)


def test_bf16_dequantises_with_exact_block_math(tiny_ckpt: Path, bf16_out: Path, one_thread: None) -> None:
    src, out = _load_all(tiny_ckpt), _load_all(bf16_out)
    fp8 = [n for n, t in src.items() if t.dtype == torch.float8_e4m3fn]
    assert fp8 and not [n for n in out if n.endswith(names.SCALE_SUFFIX)]
    assert set(out) == {n for n in src if not n.endswith(names.SCALE_SUFFIX)}
    for n, t in out.items():
        if n in fp8:
            assert t.dtype == torch.bfloat16
            assert torch.equal(t, dequantize(src[n], src[names.scale_name(n)], torch.bfloat16)), n
        else:
            assert torch.equal(t, src[n]), n
    # the ragged kv_a_proj_with_mqa (K2: 576 rows; tiny: 320): its last, partial block uses its own scale
    kv_a = names.name_of("kv_a", 1)
    w, s = src[kv_a], src[names.scale_name(kv_a)]
    assert w.shape[0] % 128 != 0
    last = (w.shape[0] // 128) * 128
    want = (w[last:, :128].float() * s[-1, 0]).to(torch.bfloat16)
    assert torch.equal(out[kv_a][last:, :128], want)
    cfg = json.loads((bf16_out / "config.json").read_text())
    assert "quantization_config" not in cfg
    idx = json.loads((bf16_out / names.INDEX_FILE).read_text())
    assert idx["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in out.values())
    assert set(idx["weight_map"]) == set(out)
    rep = inspect_checkpoint(bf16_out)  # a clean BF16 K2 by its own config
    assert rep.ok and rep.quantization == "none (bf16)", rep.problems


def test_fp8_block_round_trip_is_byte_exact(tiny_ckpt: Path, bf16_out: Path, tmp_path: Path) -> None:
    out = tmp_path / "fp8"
    res = convert(bf16_out, out, ConvertOptions(target="fp8-block"), verify=True)
    assert res.plan.shards[0].counts()["quant"] > 0
    for p in _shards(tiny_ckpt):  # fp8 → bf16 → fp8 gives back the synthesized shards, byte for byte
        assert (out / p.name).read_bytes() == p.read_bytes(), p.name
    for f in ("config.json", names.INDEX_FILE):
        assert json.loads((out / f).read_text()) == json.loads((tiny_ckpt / f).read_text()), f


def test_verify_catches_a_changed_tensor(tiny_ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "bf16"
    convert(tiny_ckpt, out, ConvertOptions(target="bf16", hash=False))
    plan = plan_conversion(tiny_ckpt, out, ConvertOptions(target="bf16", hash=False))
    assert verify_output(plan)["tensors"] > 0
    victim = names.name_of("q_b", 2)
    shard = out / json.loads((out / names.INDEX_FILE).read_text())["weight_map"][victim]
    from k2trt.checkpoint.files import read_header

    e = read_header(shard).tensors[victim]
    with open(shard, "r+b") as f:  # same size, one element changed: only a tensor comparison can see it
        f.seek(e.begin + 10)
        b = f.read(1)
        f.seek(e.begin + 10)
        f.write(bytes([b[0] ^ 0x40]))
    with pytest.raises(CheckpointError, match=victim.replace(".", r"\.")):
        verify_output(plan)


def test_resume_skips_finished_shards_and_redoes_damaged_ones(tiny_ckpt: Path, bf16_out: Path,
                                                              tmp_path: Path) -> None:
    out = tmp_path / "bf16"
    shutil.copytree(bf16_out, out)
    want = _tree(bf16_out)
    man = json.loads((out / MANIFEST_FILE).read_text())
    man["complete"] = False  # as if killed after shard 2: shard 3 missing, shard 4 half-written, no config
    (out / "model-3-of-4.safetensors").unlink()
    (out / "config.json").unlink()
    del man["files"]["model-3-of-4.safetensors"]
    (out / MANIFEST_FILE).write_text(json.dumps(man))
    p4 = out / "model-4-of-4.safetensors"
    data = bytearray(p4.read_bytes())
    data[-5] ^= 0xFF  # same size, different bytes: the recorded hash catches it
    p4.write_bytes(bytes(data))
    (out / ".model-4-of-4.safetensors.partial").write_bytes(b"leftover")
    keep = os.stat(out / "model-1-of-4.safetensors").st_mtime_ns
    res = convert(tiny_ckpt, out, ConvertOptions(target="bf16"))
    assert res.state == "resumed" and res.shards_written == 2 and res.shards_skipped == 2
    assert os.stat(out / "model-1-of-4.safetensors").st_mtime_ns == keep
    assert _tree(out) == want  # byte-identical to the uninterrupted run, manifest included
    again = convert(tiny_ckpt, out, ConvertOptions(target="bf16"))
    assert again.state == "up-to-date" and again.shards_written == 0 and _tree(out) == want


def test_dst_guards(tiny_ckpt: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="inside SRC"):
        plan_conversion(tiny_ckpt, tiny_ckpt / "out")
    with pytest.raises(CheckpointError, match="inside DST"):
        plan_conversion(tiny_ckpt, tiny_ckpt.parent)
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="not empty.*--force"):
        convert(tiny_ckpt, out, ConvertOptions(target="trtllm"))
    assert [p.name for p in out.iterdir()] == ["notes.txt"]
    convert(tiny_ckpt, out, ConvertOptions(target="trtllm", hash=False, force=True))
    assert not (out / "notes.txt").exists()
    with pytest.raises(CheckpointError, match="different conversion"):  # same DST, other target
        convert(tiny_ckpt, out, ConvertOptions(target="bf16"))
    res = convert(tiny_ckpt, out, ConvertOptions(target="bf16", force=True))
    assert res.state == "converted" and not (out / "hf_quant_config.json").exists()
    man = json.loads((out / MANIFEST_FILE).read_text())
    man["format"] = "k2trt-convert-manifest/1"  # an older k2trt's (sha256 per file): ours, but never resumed
    (out / MANIFEST_FILE).write_text(json.dumps(man))
    with pytest.raises(CheckpointError, match="different conversion.*--force"):
        convert(tiny_ckpt, out, ConvertOptions(target="bf16"))
    assert json.loads((out / MANIFEST_FILE).read_text())["format"] == "k2trt-convert-manifest/1"  # nothing touched
    assert convert(tiny_ckpt, out, ConvertOptions(target="bf16", force=True)).state == "converted"


def test_cli_json_and_one_line_errors(tiny_ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    r = CliRunner().invoke(cli, ["convert", str(tiny_ckpt), str(tmp_path / "o"), "--to", "trtllm", "--no-hash",
                                 "--kv-cache-dtype", "fp8", "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["state"] == "converted" and d["hf_quant_config"]["quantization"]["kv_cache_quant_algo"] == "FP8"
    from k2trt.cli import main

    with pytest.raises(SystemExit) as ex:
        main(["convert", str(tiny_ckpt), str(tiny_ckpt / "sub"), "--to", "bf16"])
    err = capsys.readouterr().err.strip()
    assert ex.value.code == 2 and err.startswith("error: ") and "inside SRC" in err and "\n" not in err


@pytest.fixture(scope="module")
def sparse_k2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from k2trt.checkpoint.synth import synthesize

    return synthesize(preset("k2-instruct"), tmp_path_factory.mktemp("k2") / "k2", sparse=True, tokenizer=False)


def test_dry_run_on_the_sparse_k2_layout(sparse_k2: Path, tmp_path: Path) -> None:
    spec = preset("k2-instruct")
    n_fp8 = sum(1 for t in spec.tensors() if t.is_fp8)
    out = tmp_path / "never"
    t = time.perf_counter()
    r = CliRunner().invoke(cli, ["convert", str(sparse_k2), str(out), "--to", "bf16", "--dry-run", "--json"])
    elapsed = time.perf_counter() - t
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert not out.exists()  # nothing written, not even the directory
    assert len(d["shards"]) == 61 and d["src_bytes"] > 1.0e12
    assert sum(s["ops"].get("dequant", 0) for s in d["shards"]) == n_fp8
    assert sum(s["ops"].get("drop", 0) for s in d["shards"]) == n_fp8
    bf16_bytes = sum(t.numel * 2 if t.is_fp8 else t.nbytes for t in spec.tensors() if t.scale_of is None)
    assert sum(s["out_bytes"] for s in d["shards"]) - bf16_bytes < 61 * 2**20  # headers only on top
    print(f"convert --dry-run of the sparse 1 TB layout: {elapsed:.2f} s")  # informational; bench has figures
