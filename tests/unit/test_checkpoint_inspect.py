"""inspect: a clean tiny K2 passes; every kind of damage is reported with its file or tensor, from headers alone."""

from __future__ import annotations

import json
import shutil
import struct
import time

import pytest
from click.testing import CliRunner

from k2trt.checkpoint.inspect import inspect_checkpoint
from k2trt.checkpoint.synth import synthesize
from k2trt.cli import cli
from k2trt.spec import preset


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    return synthesize(preset("tiny"), tmp_path_factory.mktemp("ck") / "tiny", seed=0, preset_name="tiny")


@pytest.fixture
def ck(pristine, tmp_path):
    d = tmp_path / "ck"
    shutil.copytree(pristine, d)
    return d


def _errors(d):
    rep = inspect_checkpoint(d)
    return rep, [p for p in rep.problems if p.severity == "error"]


def test_clean_checkpoint(ck) -> None:
    rep = inspect_checkpoint(ck)
    assert rep.ok, rep.problems
    assert rep.params == preset("tiny").param_count()
    assert rep.fp8_coverage == 1.0
    assert [s.kind for s in rep.layers] == ["dense", "moe", "moe"]
    r = CliRunner().invoke(cli, ["inspect", str(ck), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["ok"] is True


def test_truncated_shard(ck) -> None:
    p = ck / "model-2-of-4.safetensors"
    p.write_bytes(p.read_bytes()[:-1000])
    rep, errs = _errors(ck)
    assert any(e.where == p.name and "truncated" in e.message for e in errs)
    r = CliRunner().invoke(cli, ["inspect", str(ck)])
    assert r.exit_code == 1 and "truncated" in r.output


def test_header_length_past_eof_and_bad_json(ck) -> None:
    p = ck / "model-1-of-4.safetensors"
    data = p.read_bytes()
    p.write_bytes(struct.pack("<Q", len(data) * 2) + data[8:])
    q = ck / "model-3-of-4.safetensors"
    data = q.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    q.write_bytes(data[:8] + b"X" + data[9:])  # break the JSON in place
    _, errs = _errors(ck)
    msgs = {e.where: e.message for e in errs}
    assert "runs past the end" in msgs[p.name]
    assert "not valid JSON" in msgs[q.name]


def test_shape_and_dtype_mismatch(ck) -> None:
    cfg = json.loads((ck / "config.json").read_text())
    cfg["moe_intermediate_size"] = 384  # the weights say 256
    (ck / "config.json").write_text(json.dumps(cfg))
    _, errs = _errors(ck)
    assert any("mlp.experts.0.gate_proj.weight" in e.where and "[256, 256]" in e.message for e in errs)
    assert any(e.where.endswith("experts.0.gate_proj.weight_scale_inv") and "expected [3, 2]" in e.message
               for e in errs)


def _rewrite_header(path, edit):
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    edit(header)
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (n - len(blob))
    assert len(blob) == n
    path.write_bytes(data[:8] + blob + data[8 + n:])


def test_missing_scale_and_wrong_dtype(ck) -> None:
    idx = json.loads((ck / "model.safetensors.index.json").read_text())
    victim = "model.layers.1.self_attn.q_b_proj.weight"
    shard = ck / idx["weight_map"][victim]

    norm = "model.layers.1.input_layernorm.weight"

    def edit(h):
        h["dropped"] = h.pop(victim + "_scale_inv")  # rename the scale away: the weight has none
        if norm in h:
            h[norm]["dtype"] = "F16"  # same size as BF16, so only the dtype check can see it
    _rewrite_header(shard, edit)
    rep, errs = _errors(ck)
    assert any(e.where == victim + "_scale_inv" and "missing" in e.message for e in errs)
    assert any(p.where == "dropped" and p.severity == "warning" for p in rep.problems)
    if idx["weight_map"][norm] == shard.name:
        assert any(e.where == norm and "is F16, expected BF16" in e.message for e in errs)


def test_index_problems(ck) -> None:
    idx = json.loads((ck / "model.safetensors.index.json").read_text())
    idx["weight_map"]["model.layers.0.self_attn.o_proj.weight"] = "model-9-of-4.safetensors"
    (ck / "model.safetensors.index.json").write_text(json.dumps(idx))
    shutil.copy(ck / "model-4-of-4.safetensors", ck / "consolidated.safetensors")
    _, errs = _errors(ck)
    wheres = {e.where: e.message for e in errs}
    assert "not on disk" in wheres["model-9-of-4.safetensors"]
    assert "TensorRT-LLM loads every" in wheres["consolidated.safetensors"]
    assert any("is in both" in e.message for e in errs)  # the stray copy duplicates every tensor


def test_sparse_k2_inspects_fast(tmp_path) -> None:
    d = synthesize(preset("k2-instruct"), tmp_path / "k2", sparse=True, tokenizer=False)
    t = time.perf_counter()
    rep = inspect_checkpoint(d)
    elapsed = time.perf_counter() - t
    assert rep.tensors == 139_644 and round(rep.params / 1e9, 1) == 1026.4
    assert not [p for p in rep.problems if p.severity == "error"]
    print(f"inspect of the sparse 1 TB layout: {elapsed:.2f} s")  # informational; the target is < 5 s
