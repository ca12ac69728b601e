"""``k2trt train-tiny``: defaults from TrainConfig, a dry run that builds the corpus and trains nothing, and a
one-line error for an impossible configuration."""

from __future__ import annotations

import dataclasses
import json

from click.testing import CliRunner

from k2trt.cli import cli
from k2trt.commands.train import train_tiny
from k2trt.train.config import DEFAULT_OUT, RunOptions, TrainConfig


def test_option_defaults_are_the_dataclass_defaults() -> None:
    cfg, run = dataclasses.asdict(TrainConfig()), RunOptions()
    for p in train_tiny.params:
        if p.name in cfg:
            assert p.default == cfg[p.name], p.name
    by = {p.name: p.default for p in train_tiny.params}
    assert by["out"] == DEFAULT_OUT and by["workdir"] == run.workdir and by["evaluate"] == run.evaluate


def test_dry_run_builds_the_corpus_and_writes_no_checkpoint(tmp_path) -> None:
    out = tmp_path / "ckpt"
    r = CliRunner().invoke(cli, ["train-tiny", "--dry-run", "--json", "--examples", "12", "--out", str(out),
                                 "--workdir", str(tmp_path / "work")])
    assert r.exit_code == 0, r.output
    plan = json.loads(r.output)
    assert plan["dry_run"] and plan["config"]["examples"] == 12 and not plan["resume"]
    assert plan["corpus"]["sequences"] + plan["corpus"]["dropped_too_long"] == 12
    assert 0 < plan["corpus"]["targets"] < plan["corpus"]["tokens"]
    assert not out.exists() and not (tmp_path / "work" / "state.pt").exists()


def test_more_fp8_steps_than_steps_is_refused(tmp_path) -> None:
    r = CliRunner().invoke(cli, ["train-tiny", "--steps", "5", "--fp8-steps", "6", "--workdir", str(tmp_path)])
    assert r.exit_code == 2 and "exceed --steps 5" in r.output
