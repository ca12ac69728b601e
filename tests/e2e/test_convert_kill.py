"""convert as a real process: SIGKILL at random points then resume gives byte-identical output; a full disk
(file-size limit) gives one line, exit 2, and never an incomplete file under a final name.

The kill points are random per run (the seed is printed on failure) and spread over the conversion: each kill
waits until a random fraction of the still-missing output bytes has appeared on disk, so kills land inside shard
writes, between shards and, now and then, in the final metadata writes.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from k2trt.checkpoint.convert import ConvertOptions, convert
from k2trt.checkpoint.files import read_header

pytestmark = pytest.mark.e2e

KILLS = 5


def _cmd(src: Path, dst: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "k2trt.cli", "convert", str(src), str(dst), "--to", "bf16", *extra]


def _tree(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def _written(d: Path, since_ns: int) -> int:
    """Output bytes on disk: finished files, plus temporary files this process has touched."""
    n = 0
    for p in d.iterdir() if d.exists() else ():
        try:
            st = p.stat()
        except FileNotFoundError:  # renamed under us
            continue
        if not p.name.startswith(".") or st.st_mtime_ns >= since_ns:
            n += st.st_size
    return n


def _finished_shards_are_complete(d: Path, want: dict[str, bytes]) -> None:
    for p in d.glob("*.safetensors"):
        read_header(p)  # complete header and data
        assert p.read_bytes() == want[p.name], f"{p.name} is under its final name but not the finished file"


def test_sigkill_at_random_points_then_resume_is_byte_identical(tiny_ckpt: Path, tmp_path: Path) -> None:
    seed = int.from_bytes(os.urandom(4), "little")
    rng = random.Random(seed)
    base = tmp_path / "base"
    convert(tiny_ckpt, base, ConvertOptions(target="bf16"))
    want = _tree(base)
    total = sum(len(b) for b in want.values())
    out = tmp_path / "out"
    kills: list[tuple[float, int]] = []
    for _attempt in range(4 * KILLS):
        if len(kills) >= KILLS:
            break
        finished = _written(out, time.time_ns() + 10**12)
        threshold = finished + rng.uniform(0.05, 0.75) * (total - finished)
        start = time.time_ns()
        proc = subprocess.Popen(_cmd(tiny_ckpt, out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        while proc.poll() is None:
            if _written(out, start) >= threshold:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.001)
        _, err = proc.communicate(timeout=120)
        if proc.returncode == -signal.SIGKILL:
            kills.append((round(threshold / total, 3), _written(out, start)))
            _finished_shards_are_complete(out, want)
        elif proc.returncode == 0:  # finished before the kill landed: check it, then start a new chain
            assert _tree(out) == want, f"seed {seed}"
            for p in out.iterdir():
                p.unlink()
        else:
            pytest.fail(f"seed {seed}: convert exited {proc.returncode}: {err.decode()}")
    print(f"\nseed {seed} attempts {_attempt} kills {kills} total {total}")
    assert len(kills) >= KILLS, f"seed {seed}: only {len(kills)} kills landed mid-run: {kills}"
    res = convert(tiny_ckpt, out, ConvertOptions(target="bf16"), verify=True)
    assert res.state in ("resumed", "converted", "up-to-date")
    assert _tree(out) == want, f"seed {seed}: resumed output differs after kills at {kills}"


def test_disk_full_is_one_line_and_leaves_no_partial_file(tiny_ckpt: Path, tmp_path: Path) -> None:
    """RLIMIT_FSIZE with SIGXFSZ ignored makes every write past the limit fail with EFBIG, as a full disk does."""
    out = tmp_path / "out"
    limit = 4 * 2**20  # every bf16 shard of the tiny K2 is larger; the manifest and headers are not
    code = ("import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
            f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit})); "
            "from k2trt.cli import main; main(sys.argv[1:])")
    r = subprocess.run([sys.executable, "-c", code, *_cmd(tiny_ckpt, out)[3:]], capture_output=True, text=True,
                       timeout=300)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert "model-1-of-4.safetensors: writing tensor model." in lines[0] and "File too large" in lines[0], lines
    assert "run the same command again" in lines[0]
    assert not list(out.glob("*.safetensors")) and not list(out.glob(".*.partial"))
    assert not (out / "config.json").exists()  # never looks like a loadable model
    res = convert(tiny_ckpt, out, ConvertOptions(target="bf16"), verify=True)  # the same command, room again
    assert res.shards_written == 4 and res.verified is not None
