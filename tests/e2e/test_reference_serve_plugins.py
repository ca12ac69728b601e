"""The reference server with ``--plugins triton`` under real ``mpirun -np 2`` (tp2, ep2: each rank holds half the
experts and runs its share through the kernels), over real HTTP; the Triton kernels run in Triton's interpreter on
CPU. That other ranks' slots are zeroed is proved precisely by tests/unit/test_reference_plugins.py; this test
proves the sharded server runs and agrees: greedy tokens are compared with the plain engine's on fixed prompts, and
since FP8 activations may flip a near-tie, most — not all — must agree."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time

import httpx
import pytest

import k2trt
from k2trt.reference.parallel import mpirun_command

from launch_helpers import stop_group

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("single_thread")]
PORT, MASTER_PORT = 18340, 18341
ROOT = os.path.dirname(os.path.dirname(k2trt.__file__))


def _serve(ckpt, logf, plugins: str, port: int, master_port: int) -> subprocess.Popen:
    rank = [sys.executable, "-m", "k2trt.reference.serve", str(ckpt), "--tp", "2", "--ep", "2", "--host",
            "127.0.0.1", "--port", str(port), "--plugins", plugins]
    argv, environ = mpirun_command(2, rank, env={"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(master_port),
                                                 "PYTHONPATH": ROOT, "TRITON_INTERPRET": "1"})
    return subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True, env=environ)


def _wait(proc: subprocess.Popen, port: int, logf) -> None:
    deadline = time.monotonic() + 180
    while True:
        logf.flush()
        assert proc.poll() is None, open(logf.name).read()[-4000:]
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health_generate", timeout=60).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "server not ready in 180 s\n" + open(logf.name).read()[-4000:]
        time.sleep(1)


def _greedy(port: int, prompts: list[list[int]]) -> list[str]:
    """The first greedy token of each prompt (as text), then one 6-token decode through the kernel path."""
    out = []
    for ids in prompts:
        r = httpx.post(f"http://127.0.0.1:{port}/v1/completions", timeout=120,
                       json={"prompt": ids, "max_tokens": 1, "temperature": 0, "ignore_eos": True})
        assert r.status_code == 200, r.text
        out.append(r.json()["choices"][0]["text"])
    r = httpx.post(f"http://127.0.0.1:{port}/v1/completions", timeout=120,
                   json={"prompt": prompts[0], "max_tokens": 6, "temperature": 0, "ignore_eos": True})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 6, r.text
    return out


def test_plugins_serve_sharded_and_agree_with_the_plain_engine(tiny_ckpt, tmp_path) -> None:
    g = random.Random(7)  # fixed prompts: the comparison below is deterministic, not a coin toss on near-ties
    prompts = [[g.randrange(1, 1000) for _ in range(5)] for _ in range(6)]
    results = {}
    for i, plugins in enumerate(("off", "triton")):
        log = open(tmp_path / f"{plugins}.log", "w+")
        proc = _serve(tiny_ckpt, log, plugins, PORT + 2 * i, MASTER_PORT + 2 * i)
        try:
            _wait(proc, PORT + 2 * i, log)
            results[plugins] = _greedy(PORT + 2 * i, prompts)
        finally:
            stop_group(proc)
            log.close()
    text = (tmp_path / "triton.log").read_text()
    assert "plugins (triton)" in text and "'moe_fp8': None" in text  # the kernels ran, not a fallback
    a, b = results["off"], results["triton"]
    print("first greedy token agrees on", sum(x == y for x, y in zip(a, b)), "of", len(a))
    assert sum(x == y for x, y in zip(a, b)) >= 4, (a, b)  # top-1 agreement per position ≈ 0.9 (unit tests)
