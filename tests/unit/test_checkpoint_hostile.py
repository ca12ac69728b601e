"""Hostile checkpoints through the real CLI: an absurd or mistyped config.json, a FIFO (or a directory) named like a
shard, safetensors headers with the wrong JSON types. inspect reports each as a problem and convert refuses it
with one line naming the file and field — never a traceback, never a hang, never unbounded memory.

The cases that would hang or grow memory without bound run the CLI in a child process under a timeout and an
address-space limit, so a regression fails the test instead of taking the test run down.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest

import k2trt
from k2trt.cli import main

ROOT = Path(k2trt.__file__).resolve().parents[1]
SHARD = "model-2-of-4.safetensors"
MEM_LIMIT = 3 * 2**30  # the CLI inspecting the tiny K2 needs a few hundred MiB


@pytest.fixture
def ck(tiny_ckpt: Path, tmp_path: Path) -> Path:
    d = tmp_path / "src"
    shutil.copytree(tiny_ckpt, d)
    return d


def _main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """The console entry point in this process: exit status, stdout, stderr (an exception other than SystemExit —
    a traceback for the user — fails the test)."""
    with pytest.raises(SystemExit) as ex:
        main(list(args))
        raise SystemExit(0)
    out = capsys.readouterr()
    return int(ex.value.code or 0), out.out, out.err


def _child(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``python -m k2trt.cli ARGS`` in a child process with a timeout and an address-space limit."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (MEM_LIMIT, MEM_LIMIT))

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "plugins"),
                                                         os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "k2trt.cli", *args], capture_output=True, text=True,
                          timeout=timeout, preexec_fn=limit, env=env, cwd=ROOT)


def _refused_by_both(capsys: pytest.CaptureFixture[str], ck: Path, pattern: str) -> None:
    """inspect: exit 1 with the problem listed; convert: exit 2 with one line naming it; nothing written."""
    code, out, err = _main(capsys, "inspect", str(ck))
    assert code == 1 and pattern in out and "Traceback" not in out + err, out + err
    dst = ck.parent / "out"
    code, out, err = _main(capsys, "convert", str(ck), str(dst), "--to", "trtllm")
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and pattern in err, err
    assert not dst.exists() or not list(dst.glob("*.safetensors"))


# ---- config.json ---------------------------------------------------------------------------------------------

def _edit_config(ck: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    cfg = json.loads((ck / "config.json").read_text())
    edit(cfg)
    (ck / "config.json").write_text(json.dumps(cfg))


def _refused_in_a_child(ck: Path, pattern: str) -> None:
    """inspect and convert in a child process (memory-limited, timed): exit 1 / 2 with ``pattern``, no traceback."""
    for args in (["inspect", str(ck)], ["convert", str(ck), str(ck.parent / "out"), "--to", "trtllm"]):
        r = _child(*args)
        assert "Traceback" not in r.stderr and "MemoryError" not in r.stderr, r.stderr[-2000:]
        assert pattern in r.stdout + r.stderr
        assert r.returncode == (1 if args[0] == "inspect" else 2)
    assert not (ck.parent / "out").exists()


def test_absurd_layer_count_is_refused_before_anything_is_sized(ck: Path) -> None:
    _edit_config(ck, lambda c: c.update(num_hidden_layers=10**8))
    _refused_in_a_child(ck, "num_hidden_layers is 100000000, outside 1..1024")


def test_experts_times_layers_is_bounded(ck: Path) -> None:
    """Each field within its own bound, the product is not: the inventory would hold ~50 million entries."""
    _edit_config(ck, lambda c: c.update(num_hidden_layers=1024, n_routed_experts=8192))
    _refused_in_a_child(ck, "1024 layers × 8192 routed experts")


@pytest.mark.parametrize("field,value,pattern", [
    ("hidden_size", 10**12, "hidden_size is 1000000000000, outside 1..131072"),
    ("n_routed_experts", -4, "n_routed_experts must be a positive integer, got -4"),
    ("moe_intermediate_size", 0, "moe_intermediate_size must be a positive integer, got 0"),
    ("num_hidden_layers", "3", 'num_hidden_layers is "3", not an integer'),
    ("first_k_dense_replace", "1", 'first_k_dense_replace is "1", not an integer'),
    ("q_lora_rank", 1.5, "q_lora_rank is 1.5, not an integer"),
    ("moe_layer_freq", [1], "moe_layer_freq is [1], not an integer"),
    ("norm_topk_prob", "yes", 'norm_topk_prob is "yes", not true or false'),
    ("rms_norm_eps", "1e-6", 'rms_norm_eps is "1e-6", not a finite number'),
    ("rope_theta", -1.0, "rope_theta is -1.0, not positive"),
    ("rope_scaling", ["yarn"], 'rope_scaling is ["yarn"], not an object'),
    ("rope_scaling", {"type": "yarn", "factor": "32"}, 'rope_scaling: factor is "32", not a finite number'),
    ("quantization_config", ["fp8"], 'quantization_config is ["fp8"], not an object'),
    ("hidden_act", 7, "hidden_act is 7, not a string"),
])
def test_config_field_of_wrong_type_or_range(ck: Path, capsys: pytest.CaptureFixture[str], field: str,
                                             value: Any, pattern: str) -> None:
    _edit_config(ck, lambda c: c.update({field: value}))
    _refused_by_both(capsys, ck, pattern)


@pytest.mark.parametrize("value,pattern", [
    ("128", 'weight_block_size is "128", not a list of 2 integers'),
    ([128], "weight_block_size is [128], not a list of 2 integers"),
    (["128", "128"], 'weight_block_size is "128", not an integer'),
    ([128, 0], "weight_block_size must be a positive integer, got 0"),
])
def test_weight_block_size_types(ck: Path, capsys: pytest.CaptureFixture[str], value: Any, pattern: str) -> None:
    _edit_config(ck, lambda c: c["quantization_config"].update(weight_block_size=value))
    _refused_by_both(capsys, ck, pattern)


def test_hf_quant_config_with_a_list_of_layers(ck: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (ck / "hf_quant_config.json").write_text(json.dumps(
        {"quantization": {"quant_algo": "MIXED_PRECISION", "quantized_layers": ["model.layers.1.mlp.experts"]}}))
    _refused_by_both(capsys, ck, "quantized_layers is")


# ---- special files named like checkpoint files ---------------------------------------------------------------

@pytest.mark.parametrize("name", [SHARD, "config.json", "model.safetensors.index.json"])
def test_fifo_named_like_a_checkpoint_file_is_refused_not_read(ck: Path, name: str) -> None:
    (ck / name).unlink()
    os.mkfifo(ck / name)
    for args in (["inspect", str(ck)], ["convert", str(ck), str(ck.parent / "out"), "--to", "trtllm"]):
        r = _child(*args, timeout=60)  # a blocking open of a FIFO without a writer never returns
        assert "Traceback" not in r.stderr, r.stderr[-2000:]
        assert r.returncode == (1 if args[0] == "inspect" else 2), r.stdout + r.stderr
        assert name in r.stdout + r.stderr
        assert ("FIFO" if name.endswith(".safetensors") else "not a regular file") in r.stdout + r.stderr


def test_directory_named_like_a_shard(ck: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (ck / SHARD).unlink()
    (ck / SHARD).mkdir()
    _refused_by_both(capsys, ck, "is a directory, not a regular file")


# ---- safetensors headers with the wrong JSON types -----------------------------------------------------------

def _rewrite(path: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    """Re-serialise the header after ``edit`` (any length: the data region moves with it, offsets are relative)."""
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    edit(header)
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + data[8 + n:])


def _first(h: dict[str, Any]) -> dict[str, Any]:
    return h[next(k for k in h if k != "__metadata__")]


@pytest.mark.parametrize("edit,pattern", [
    (lambda h: _first(h).update(dtype=["F8_E4M3"]), "dtype is a list, not a string"),
    (lambda h: _first(h).update(dtype=None), "dtype is null, not a string"),
    (lambda h: _first(h).update(data_offsets=["0", "64"]), "data_offsets is not two non-negative integers"),
    (lambda h: _first(h).update(data_offsets="ab"), "data_offsets is not two non-negative integers"),
    (lambda h: _first(h).update(data_offsets=[64, 0]), "data_offsets is not two non-negative integers"),
    (lambda h: _first(h).update(data_offsets=[0, 1.5]), "data_offsets is not two non-negative integers"),
    (lambda h: _first(h).update(shape=["256", 256]), "shape is not a list of non-negative integers"),
    (lambda h: _first(h).update(shape=[-1, 256]), "shape is not a list of non-negative integers"),
    (lambda h: h.update({next(k for k in h if k != "__metadata__"): [1, 2]}), "a list instead of an object"),
    (lambda h: h.update(__metadata__=["format", "pt"]), "__metadata__ is a list, not an object of strings"),
    (lambda h: h.update(__metadata__={"format": 1}), "__metadata__ is an object, not an object of strings"),
    (lambda h: _first(h).update(dtype="U8", shape=[2**40], data_offsets=[0, 2**40]), "but the file has"),
])
def test_header_json_types(ck: Path, capsys: pytest.CaptureFixture[str], edit: Callable[[dict[str, Any]], None],
                           pattern: str) -> None:
    _rewrite(ck / SHARD, edit)
    _refused_by_both(capsys, ck, pattern)


def test_header_longer_than_the_file(ck: Path, capsys: pytest.CaptureFixture[str]) -> None:
    p = ck / SHARD
    data = p.read_bytes()
    p.write_bytes(struct.pack("<Q", 50 * 2**20) + data[8:])
    _refused_by_both(capsys, ck, "runs past the end of the")
