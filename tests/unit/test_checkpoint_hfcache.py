"""A Hugging Face cache snapshot as SRC: ``models--org--name/snapshots/<sha>/`` whose files are relative symlinks
into ``../../blobs/``, built here from the tiny K2 exactly as ``huggingface_hub`` lays it out.

convert writes real files (hard links to the blobs, or copies) — never the symlinks themselves, which dangle
anywhere but in the snapshot — and the output still loads once the cache is gone; a rerun over what a failed run
left works; inspect, ``k2trt verify`` and the reference reader read the snapshot as they read a plain directory.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from k2trt.checkpoint import names
from k2trt.checkpoint.convert import ConvertOptions, convert
from k2trt.checkpoint.reader import CheckpointReader
from k2trt.cli import cli, main

REPO = "models--moonshotai--Kimi-K2-Instruct"
REVISION = "3f1a2b9c0d4e5f60718293a4b5c6d7e8f9a0b1c2"


def make_cache(src: Path, root: Path) -> Path:
    """``root/REPO`` with every file of ``src`` as a content-addressed blob and a snapshot of relative links to it
    (``refs/main`` names the revision); returns the snapshot directory."""
    repo = root / REPO
    snap, blobs = repo / "snapshots" / REVISION, repo / "blobs"
    snap.mkdir(parents=True)
    blobs.mkdir()
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(REVISION)
    for f in sorted(src.iterdir()):
        digest = hashlib.sha256(f.read_bytes()).hexdigest()
        shutil.copyfile(f, blobs / digest)
        (snap / f.name).symlink_to(f"../../blobs/{digest}")
    return snap


@pytest.fixture
def snap(tiny_ckpt: Path, tmp_path: Path) -> Path:
    return make_cache(tiny_ckpt, tmp_path / "hub")


def _shards(d: Path) -> list[Path]:
    return sorted(d.glob("*.safetensors"))


def _cli(*args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(cli, list(args))


def _main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """The console entry point itself (its one-line error handling included): exit status and stderr."""
    with pytest.raises(SystemExit) as ex:
        main(list(args))
        raise SystemExit(0)
    return int(ex.value.code or 0), capsys.readouterr().err


def test_the_cache_is_shaped_like_huggingface_hub(snap: Path) -> None:
    shard = _shards(snap)[0]
    assert shard.is_symlink() and os.readlink(shard).startswith("../../blobs/")
    assert shard.resolve().parent.name == "blobs"


@pytest.mark.parametrize("flags", [[], ["--no-hash"], ["--copy"]], ids=["hash", "no-hash", "copy"])
def test_convert_trtllm_from_snapshot_writes_real_files(snap: Path, tmp_path: Path, flags: list[str]) -> None:
    out = tmp_path / "out"
    r = _cli("convert", str(snap), str(out), "--to", "trtllm", "--verify", *flags)
    assert r.exit_code == 0, r.output
    assert _shards(out) and len(_shards(out)) == len(_shards(snap))
    for f in out.iterdir():
        assert stat.S_ISREG(f.lstat().st_mode), f"{f.name} is not a regular file"
    for f in _shards(out):
        blob = (snap / f.name).resolve()
        assert f.read_bytes() == blob.read_bytes()
        assert os.path.samefile(f, blob) == ("--copy" not in flags)  # hard link to the blob, or a copy
    man = json.loads((out / "k2trt-manifest.json").read_text())
    assert man["complete"] is True
    # the output owes the cache nothing: it inspects and reads the same with the cache moved away
    with CheckpointReader(out) as rd:
        before = rd.get("q_b", layer=1)
    shutil.move(str(snap.parents[2]), str(tmp_path / "moved"))
    r = _cli("inspect", str(out), "--json")
    assert r.exit_code == 0, r.output
    with CheckpointReader(out) as rd:
        assert torch.equal(rd.get("q_b", layer=1), before)


def test_rerun_over_the_links_a_failed_run_left(snap: Path, tmp_path: Path) -> None:
    """What an earlier converter left after failing: some shards finished, the rest dangling links to
    ``../../blobs/…`` under their final names. The same command run again completes the output."""
    out = tmp_path / "out"
    convert(snap, out, ConvertOptions(target="trtllm"), stop_after=1)
    for f in _shards(snap):
        if not (out / f.name).exists():
            (out / f.name).symlink_to(os.readlink(f))  # dangles: out/../../blobs does not exist
    r = _cli("convert", str(snap), str(out), "--to", "trtllm")
    assert r.exit_code == 0, r.output
    for f in _shards(out):
        assert not f.is_symlink() and f.read_bytes() == (snap / f.name).read_bytes()


def test_a_missing_blob_is_one_line_and_leaves_nothing(snap: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """An interrupted download: one snapshot link points at a blob that is not there."""
    victim = _shards(snap)[1]
    victim.resolve().unlink()
    out = tmp_path / "out"
    code, err = _main(capsys, "convert", str(snap), str(out), "--to", "trtllm")
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert victim.name in err and "missing blob" in err
    assert not out.exists() or not _shards(out)


def test_inspect_verify_and_reader_read_the_snapshot(snap: Path, tiny_ckpt: Path, tmp_path: Path) -> None:
    r = _cli("inspect", str(snap), "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["ok"] is True
    with CheckpointReader(snap) as a, CheckpointReader(tiny_ckpt) as b:
        for role, layer, expert in (("q_b", 0, None), ("expert_down", 1, 3), ("embed", None, None)):
            assert torch.equal(a.get(role, layer, expert), b.get(role, layer, expert))
    out = tmp_path / "out"
    assert _cli("convert", str(snap), str(out), "--to", "trtllm", "--no-hash").exit_code == 0
    r = _cli("verify", str(snap), str(out), "--prompts", "1", "--length", "4")
    assert r.exit_code == 0, r.output
    assert json.loads((out / names.INDEX_FILE).read_text())["weight_map"]
