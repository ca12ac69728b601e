"""How fast a job's ranks follow their SIGKILLed supervisor, against a clean ``k2trt stop`` in the same run.

Each trial starts a detached job (``k2trt.launch.runner.serve(..., detach=True)``: the supervisor in its own
session, mpirun, N ranks of tests/e2e/launch_rank_server.py on this machine), then either SIGKILLs the supervisor —
its watchdog sees the pipe close and ends the job — or stops it with ``k2trt.launch.state.stop`` (the baseline:
SIGTERM to a live supervisor, which tears down itself). The time is from the signal (or the ``stop`` call) to the
moment no process carrying the trial's token is left in /proc, polled every 10 ms.

    python bench/bench_supervisor_kill.py                 # 5 trials each, 3 ranks, ~1 min on 2 cores
    python bench/bench_supervisor_kill.py --trials 10 --ranks 4 --json
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

from k2trt.launch.runner import serve  # noqa: E402
from k2trt.launch.spec import LaunchSpec  # noqa: E402
from k2trt.launch.state import STATE_FILE, stop  # noqa: E402

RANK_SERVER = ROOT / "tests" / "e2e" / "launch_rank_server.py"
MPIRUN = str(Path(sys.executable).parent / "mpirun")


def _alive_with(tok: str) -> int:
    n = 0
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes()
            state = (d / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        n += tok.encode() in cmd and state not in ("Z", "X")
    return n


def _trial(work: Path, port: int, ranks: int, kill: bool) -> float:
    tok = f"k2b-{uuid.uuid4().hex[:10]}"
    bundle = work / tok
    LaunchSpec(argv=(sys.executable, str(RANK_SERVER), "--port", str(port), "--token", tok), world_size=ranks,
               http_port=port, mpirun=MPIRUN, oversubscribe=True, stop_grace_s=5.0,
               ready_paths=("/health",)).validate().dump(bundle / "launch.json")
    res = serve(bundle, detach=True, echo=None, progress=False)
    if res["status"] != "ready":
        sys.exit(f"the job did not start: {res.get('message')}")
    if _alive_with(tok) < ranks:
        sys.exit(f"expected {ranks} ranks carrying {tok}")
    t0 = time.monotonic()
    if kill:
        os.kill(res["supervisor_pid"], signal.SIGKILL)
    else:
        stop(bundle / "logs" / STATE_FILE)
    while _alive_with(tok):
        if time.monotonic() - t0 > 60:
            stop(bundle / "logs" / STATE_FILE)
            sys.exit("processes of the job survived 60 s")
        time.sleep(0.01)
    return time.monotonic() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--ranks", type=int, default=3)
    ap.add_argument("--port", type=int, default=18290)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    out: dict[str, Any] = {"trials": a.trials, "ranks": a.ranks}
    with tempfile.TemporaryDirectory() as tmp:
        for name, kill in (("stop", False), ("sigkill", True)):
            times = [_trial(Path(tmp), a.port, a.ranks, kill) for _ in range(a.trials)]
            out[name] = {"median_s": round(statistics.median(times), 3), "max_s": round(max(times), 3)}
    out["ratio_median"] = round(out["sigkill"]["median_s"] / out["stop"]["median_s"], 2)
    if a.json:
        print(json.dumps(out, indent=2))
        return
    print(f"{a.ranks} ranks, {a.trials} trials each: every process gone")
    print(f"  after k2trt stop (baseline):  median {out['stop']['median_s']:.3f} s, max {out['stop']['max_s']:.3f} s")
    print(f"  after SIGKILL of supervisor:  median {out['sigkill']['median_s']:.3f} s, "
          f"max {out['sigkill']['max_s']:.3f} s  ({out['ratio_median']:.2f}× the baseline)")


if __name__ == "__main__":
    main()
