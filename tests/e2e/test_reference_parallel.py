"""The sharded reference K2 under real ``mpirun``: every layout's logits equal the unsharded model's, and every rank
read exactly the shard TensorRT-LLM's Mapping assigns it (never a full copy of a sharded tensor)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import k2trt
from k2trt.checkpoint.formats import inventory
from k2trt.errors import ConfigError
from k2trt.layout import Layout
from k2trt.mapping import Mapping
from k2trt.reference.generate import SamplingParams, generate
from k2trt.reference.model import load_model
from k2trt.reference.parallel import mpirun_command
from k2trt.spec import ModelSpec

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("single_thread")]
ROOT = Path(k2trt.__file__).parent.parent
LAYOUTS = [("tp2", 18310), ("tp4,ep2", 18311), ("tp4,ep4,adp", 18312), ("tp8,ep4", 18313)]


def launch(ckpt: Path, layout: str, port: int, out: Path, np: int | None = None) -> subprocess.CompletedProcess:
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "PYTHONPATH": str(ROOT)}
    rank = [sys.executable, "-m", "k2trt.reference.parallel", "--check", str(ckpt), "--layout", layout, "--out",
            str(out), "--timeout", "60"]
    argv, environ = mpirun_command(np or Layout.parse(layout).tp, rank, env=env)
    return subprocess.run(argv, capture_output=True, text=True, timeout=240, cwd=ROOT, env=environ)


@pytest.fixture(scope="module")
def unsharded(tiny_ckpt):
    return load_model(tiny_ckpt)


@pytest.mark.parametrize("layout,port", LAYOUTS, ids=[x[0] for x in LAYOUTS])
def test_sharded_logits_equal_unsharded(tiny_ckpt, unsharded, tmp_path, layout, port) -> None:
    r = launch(tiny_ckpt, layout, port, tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    got = torch.load(tmp_path / "logits.pt")
    want = unsharded(got["tokens"], unsharded.new_cache(len(got["pad"]), got["pad"]))
    rel = float((got["logits"] - want).norm() / want.norm())
    assert rel <= 1e-5, f"{layout}: relative error {rel:.2e}"
    assert [c.tokens for c in generate(unsharded, got["prompts"], SamplingParams(max_tokens=3))] == got["generated"]

    # every rank read exactly its Mapping shard of every weight it touched, and nothing it does not hold
    spec = ModelSpec.from_config(tiny_ckpt)
    lay = Layout.parse(layout)
    mapping = Mapping(world_size=lay.tp, tp=lay.tp, moe_ep=lay.ep, enable_attention_dp=lay.adp, spec=spec)
    weights = {n: t for n, t in inventory(spec).items() if t.scale_of is None}
    total = sum(t.nbytes for t in spec.tensors())
    partial = 0  # reads of a strict part of a tensor, or tensors a rank never touched
    for rank in range(lay.tp):
        log = json.loads((tmp_path / f"reads-{rank}.json").read_text())
        assert log["bytes_read"] < total
        read = set()
        for name, shape in log["reads"]:
            if name not in weights:
                continue  # a weight_scale_inv: its block rows follow the weight's slice
            read.add(name)
            s = mapping.shard(weights[name], rank)
            assert s.held, f"rank {rank} read {name}, which it does not hold"
            assert tuple(shape) == s.shape, (rank, name, shape, s.shape)
            partial += s.shape != weights[name].shape
        for name in set(weights) - read:
            assert not mapping.shard(weights[name], rank).held, f"rank {rank} never loaded {name}"
            partial += 1
    assert partial > 0, "every rank read every tensor whole: the layout test cannot fail"


def test_wrong_rank_count_fails_fast(tiny_ckpt, tmp_path) -> None:
    r = launch(tiny_ckpt, "tp2", 18314, tmp_path, np=1)
    assert r.returncode != 0
    assert "needs 2 ranks but the job has 1" in r.stdout + r.stderr


def test_mpirun_command_shape() -> None:
    argv, environ = mpirun_command(4, ["python", "-m", "x"], env={"A": "1"})
    assert argv[1:3] == ["-np", "4"] and "--oversubscribe" in argv
    assert argv[argv.index("--bind-to") + 1] == "none"
    assert ("--allow-run-as-root" in argv) == (os.geteuid() == 0)
    assert argv[argv.index("A=1") - 1] == "-x" and argv[-3:] == ["python", "-m", "x"]
    assert environ["A"] == "1"


def test_verify_layout_command(tiny_ckpt) -> None:
    from click.testing import CliRunner

    from k2trt.cli import cli

    r = CliRunner().invoke(cli, ["verify", str(tiny_ckpt), "--layout", "tp2", "--master-port", "18315", "--json"],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert rep["passed"] and rep["mode"] == "layout" and rep["metrics"]["rel"] <= 1e-5
    assert len(rep["detail"]["bytes_read_per_rank"]) == 2
    bad = CliRunner().invoke(cli, ["verify", str(tiny_ckpt), "--layout", "tp2", "--np", "3"])
    assert isinstance(bad.exception, ConfigError) and "runs on 2 ranks, not --np 3" in str(bad.exception)
