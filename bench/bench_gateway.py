"""Gateway overhead: p50 inter-token latency and non-streaming requests/s through the gateway vs calling the
engine directly, measured in the same run against the same engine.

The engine is the engine double (tests/e2e/engine_double.py: a real uvicorn server that replays a fixed completion
as text deltas, here with no generation delay by default) so that what is measured is the HTTP and gateway cost
itself: rendering the K2 prompt to token ids, the SSE relay, the incremental tool-call parser and the response
formatting. Both run as separate processes — the gateway through its real CLI, ``k2trt gateway`` — and this script
is the client.

    python bench/bench_gateway.py                        # ~30 s on 2 cores
    python bench/bench_gateway.py --token-delay-ms 10 --json

Direct = POST /v1/completions on the engine with the same prompt token ids the gateway would send;
gateway = POST /v1/chat/completions on the gateway with the chat messages.
"""

from __future__ import annotations

import argparse
import asyncio
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

from k2trt.chat import vocab  # noqa: E402
from k2trt.chat.template import render_ids  # noqa: E402
from k2trt.chat.tokenizer import K2Tokenizer  # noqa: E402

MESSAGES = [{"role": "system", "content": "You are a terse assistant."},
            {"role": "user", "content": "Tell me about the weather in Beijing, in some detail please."}]


def _wait(url: str, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{what} exited with {proc.returncode}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    sys.exit(f"{what} did not come up at {url}")


def _itl(url: str, path: str, body: dict[str, Any], requests: int) -> list[float]:
    """Gaps in seconds between consecutive content-bearing SSE events, over ``requests`` sequential streams."""
    gaps: list[float] = []
    with httpx.Client(timeout=60) as c:
        for _ in range(requests):
            last = None
            with c.stream("POST", url + path, json=body) as r:
                r.raise_for_status()
                for line in r.iter_lines():
                    if not line.startswith("data: {"):
                        continue
                    obj = json.loads(line[6:])
                    ch = obj.get("choices") or [{}]
                    if not (ch[0].get("text") or (ch[0].get("delta") or {}).get("content")):
                        continue
                    now = time.perf_counter()
                    if last is not None:
                        gaps.append(now - last)
                    last = now
    return gaps


async def _rps(url: str, path: str, body: dict[str, Any], total: int, concurrency: int) -> float:
    """Completed non-streaming requests per second with ``concurrency`` requests in flight."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=60, limits=limits) as c:
        left = total

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                r = await c.post(url + path, json=body)
                r.raise_for_status()

        await asyncio.gather(*(worker() for _ in range(min(concurrency, 4))))  # warm-up connections
        left = total
        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return total / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, default=18150, help="engine port; the gateway uses port+1")
    ap.add_argument("--stream-requests", type=int, default=20, help="sequential streams for the ITL")
    ap.add_argument("--requests", type=int, default=400, help="non-streaming requests per side")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--token-delay-ms", type=float, default=0.0, help="engine pause per delta")
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    a = ap.parse_args()

    reply = "The weather in Beijing is sunny with a light breeze, 22 degrees. " * 4
    procs: list[subprocess.Popen[bytes]] = []
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    with tempfile.TemporaryDirectory() as model_dir:
        vocab.write_tokenizer_files(model_dir)
        tok = K2Tokenizer.from_dir(model_dir)
        ids = render_ids(tok, MESSAGES, None, add_generation_prompt=True)
        engine, gateway = f"http://127.0.0.1:{a.port}", f"http://127.0.0.1:{a.port + 1}"
        try:
            procs.append(subprocess.Popen([sys.executable, str(ROOT / "tests/e2e/engine_double.py"), "--port",
                                           str(a.port), "--reply", reply, "--delay-ms", str(a.token_delay_ms)],
                                          env=env))
            procs.append(subprocess.Popen([sys.executable, "-m", "k2trt.cli", "gateway", "--engine-url", engine,
                                           "--model-dir", model_dir, "--port", str(a.port + 1),
                                           "--model-alias", "m", "--log-level", "warning"], env=env))
            _wait(engine, procs[0], "engine double")
            _wait(gateway, procs[1], "gateway")
            direct_body = {"model": "m", "prompt": ids, "temperature": 0.6, "stop_token_ids": list(tok.stop_ids),
                           "skip_special_tokens": False, "spaces_between_special_tokens": False}
            gw_body = {"model": "m", "messages": MESSAGES}
            print(f"streaming {a.stream_requests} × 2 requests…", file=sys.stderr)
            itl_d = _itl(engine, "/v1/completions", {**direct_body, "stream": True}, a.stream_requests)
            itl_g = _itl(gateway, "/v1/chat/completions", {**gw_body, "stream": True}, a.stream_requests)
            print(f"non-streaming {a.requests} × 2 requests at concurrency {a.concurrency}…", file=sys.stderr)
            rps_d = asyncio.run(_rps(engine, "/v1/completions", direct_body, a.requests, a.concurrency))
            rps_g = asyncio.run(_rps(gateway, "/v1/chat/completions", gw_body, a.requests, a.concurrency))
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()
    p50_d, p50_g = statistics.median(itl_d) * 1e3, statistics.median(itl_g) * 1e3
    res = {"token_delay_ms": a.token_delay_ms, "itl_p50_ms": {"direct": p50_d, "gateway": p50_g},
           "itl_ratio": p50_g / p50_d, "itl_added_ms": p50_g - p50_d,
           "rps": {"direct": rps_d, "gateway": rps_g}, "rps_ratio": rps_g / rps_d,
           "samples": {"itl_direct": len(itl_d), "itl_gateway": len(itl_g), "requests": a.requests,
                       "concurrency": a.concurrency}}
    if a.json:
        print(json.dumps(res, indent=2))
        return
    print(f"p50 inter-token latency: direct {p50_d:.3f} ms, gateway {p50_g:.3f} ms "
          f"(ratio {res['itl_ratio']:.2f}×, +{res['itl_added_ms']:.3f} ms)")
    print(f"non-stream requests/s (concurrency {a.concurrency}): direct {rps_d:.0f}, gateway {rps_g:.0f} "
          f"(ratio {res['rps_ratio']:.2f}×)")


if __name__ == "__main__":
    main()
