"""Abandoned requests: the latency of a small request queued behind a long stream whose client has gone, against
the same small request on an idle engine, measured in the same run against the same engine.

The engine is the PyTorch reference engine serving the tiny K2 (synthesised into a temporary directory), under real
``mpirun`` with ``--tp 2`` by default, so cancellation has to reach every rank. A client starts a stream of
``--long-tokens`` tokens (``ignore_eos``), reads three events and hangs up; at once another client asks for two
tokens. An engine that keeps generating for the departed client makes the small request wait for the whole long
one; one that cancels answers it about as fast as when idle. ``--via-gateway`` puts the k2trt gateway in front
(the long request is then an OpenAI chat stream that the gateway abandons on the engine in turn).

    python bench/bench_abandoned.py                     # tp2, 1500 tokens, 3 rounds: ~1 min once cancelled
    python bench/bench_abandoned.py --via-gateway --json

Run it from a checkout of an older revision (PYTHONPATH) to measure that revision's engine the same way.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

from k2trt.checkpoint.synth import synthesize  # noqa: E402
from k2trt.reference.parallel import mpirun_command  # noqa: E402
from k2trt.spec import preset  # noqa: E402

SMALL = {"prompt": [5, 6, 7], "max_tokens": 2, "temperature": 0}


def _wait(url: str, proc: subprocess.Popen[bytes], what: str, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{what} exited with {proc.returncode}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    sys.exit(f"{what} did not come up at {url}")


def _small(engine: str) -> float:
    t0 = time.monotonic()
    r = httpx.post(engine + "/v1/completions", json=SMALL, timeout=600)
    r.raise_for_status()
    return time.monotonic() - t0


def _abandon(url: str, path: str, body: dict[str, Any]) -> None:
    with httpx.stream("POST", url + path, json=body, timeout=600) as r:
        r.raise_for_status()
        seen = 0
        for line in r.iter_lines():
            seen += line.startswith("data:")
            if seen >= 3:
                return  # hang up


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, default=18470, help="engine port; the gateway uses port+1, MPI port+2")
    ap.add_argument("--tp", type=int, default=2, help="engine ranks (1: one process without mpirun)")
    ap.add_argument("--long-tokens", type=int, default=1500, help="tokens the abandoned stream asks for")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--via-gateway", action="store_true", help="abandon the long request at the gateway")
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    a = ap.parse_args()

    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(ROOT)]))}
    engine, gateway = f"http://127.0.0.1:{a.port}", f"http://127.0.0.1:{a.port + 1}"
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = synthesize(preset("tiny"), Path(tmp) / "tiny", seed=0, preset_name="tiny")
        rank = [sys.executable, "-m", "k2trt.reference.serve", str(ckpt), "--tp", str(a.tp), "--host",
                "127.0.0.1", "--port", str(a.port)]
        argv, environ = (mpirun_command(a.tp, rank, env={"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(a.port + 2),
                                                         "PYTHONPATH": env["PYTHONPATH"], "OMP_NUM_THREADS": "1"})
                         if a.tp > 1 else (rank, env))
        try:
            procs.append(subprocess.Popen(argv, env=environ, start_new_session=True, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL))
            _wait(engine, procs[0], "engine")
            if a.via_gateway:
                procs.append(subprocess.Popen([sys.executable, "-m", "k2trt.cli", "gateway", "--engine-url", engine,
                                               "--model-dir", str(ckpt), "--port", str(a.port + 1),
                                               "--log-level", "warning"], env=env))
                _wait(gateway, procs[1], "gateway")
            long_at, long_path, long_body = ((gateway, "/v1/chat/completions", {
                "messages": [{"role": "user", "content": "hi"}], "max_tokens": a.long_tokens, "ignore_eos": True,
                "stream": True}) if a.via_gateway else (engine, "/v1/completions", {
                    "prompt": [5, 6, 7], "max_tokens": a.long_tokens, "ignore_eos": True, "temperature": 1.0,
                    "stream": True}))
            idle, queued = [], []
            for i in range(a.rounds):
                print(f"round {i + 1}/{a.rounds}…", file=sys.stderr)
                idle.append(_small(engine))
                _abandon(long_at, long_path, long_body)
                queued.append(_small(engine))
        finally:
            for p in reversed(procs):
                p.terminate()
            for p in procs:
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
    res = {"tp": a.tp, "long_tokens": a.long_tokens, "via_gateway": a.via_gateway,
           "idle_s": statistics.median(idle), "queued_s": statistics.median(queued),
           "ratio": statistics.median(queued) / statistics.median(idle), "rounds": {"idle": idle, "queued": queued}}
    if a.json:
        print(json.dumps(res, indent=2))
        return
    print(f"small request (2 tokens), median of {a.rounds}: idle {res['idle_s']:.2f} s, behind an abandoned "
          f"{a.long_tokens}-token stream {res['queued_s']:.2f} s (ratio {res['ratio']:.1f}×)")


if __name__ == "__main__":
    main()
