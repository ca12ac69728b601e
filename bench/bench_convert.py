"""Convert throughput against ``cp`` of the same bytes on the same disk, and peak RSS at two checkpoint sizes.

For each checkpoint — the tiny K2 (~16 MB), a wider/deeper variant of it (~190 MB) whose largest tensor is the same
size (peak RSS must not follow the checkpoint size), and a variant with bigger tensors (~215 MB, 1024×2048
experts) whose throughput is set by bytes rather than per-tensor overhead — this measures, each in a fresh child
process:

- ``cp`` of the shard files into a new directory on the same filesystem, then ``sync -f`` (convert fsyncs every
  shard, so the baseline writes durably too) — the baseline;
- ``k2trt convert --to trtllm --copy`` (passthrough with copy), with and without ``--no-hash``;
- ``k2trt convert --to bf16`` (dequantise: reads N bytes, writes ~2N) with ``--workers 1`` and ``2``;
- ``k2trt convert --to trtllm`` with hard links and ``--no-hash``;
- peak RSS of each child (``os.wait4``), next to the RSS of a child that only imports torch and k2trt.

Throughput is source bytes / the conversion's streaming seconds (``timings.stream`` from ``--json``: shards and
metadata written, fsynced and hashed; process start-up, header validation, the scale check and the torch import
are reported separately as ``total``, since ``cp`` does none of them); ratio = cp seconds / convert seconds in the
same run. Also times ``inspect`` and ``convert --dry-run`` on the sparse 1 TB K2 layout, and the BF16
dequantisation kernel alone on a K2-sized expert weight (2048×7168), the size that dominates a real conversion.

    python bench/bench_convert.py             # ~3-5 min on 2 busy cores (mostly synthesizing the checkpoints)
    python bench/bench_convert.py --keep /tmp/k2bench   # reuse synthesized checkpoints between runs
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(ROOT))

from k2trt.spec import preset  # noqa: E402


def _child(argv: list[str], ok: tuple[int, ...] = (0,)) -> tuple[float, int, str]:
    """Run argv; return (wall seconds, peak RSS bytes, stdout)."""
    t = time.perf_counter()
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out = p.stdout.read() if p.stdout else ""
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t
    err = p.stderr.read() if p.stderr else ""
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode not in ok:
        raise SystemExit(f"{argv[:6]} failed ({p.returncode}): {err.strip()}")
    return wall, ru.ru_maxrss * 1024, out


def _checkpoints(work: Path) -> list[tuple[str, Path]]:
    tiny = preset("tiny")
    # more experts and layers, same widths: 8× the bytes, same largest tensor (RSS must not follow the size)
    wide = dataclasses.replace(tiny, n_routed_experts=128, num_hidden_layers=8)
    # bigger tensors (1024×2048 experts; K2's are 2048×7168), where bytes, not per-tensor overhead, set the pace
    big = dataclasses.replace(tiny, hidden_size=2048, intermediate_size=2048, moe_intermediate_size=1024)
    out = []
    for label, spec, shards in (("tiny", tiny, 4), ("wide", wide, 8), ("big", big, 4)):
        d = work / f"src-{label}"
        if not (d / "config.json").exists():
            print(f"synthesizing {label} ({spec.checkpoint_bytes() / 2**20:.0f} MiB) …", file=sys.stderr)
            _synth_in_child(spec, d, shards)
        out.append((label, d))
    return out


def _synth_in_child(spec: Any, d: Path, shards: int | None, sparse: bool = False) -> None:
    """Synthesize in a child: a forked child starts with its parent's peak RSS (ru_maxrss survives exec), so the
    parent must stay small for the RSS figures of the convert children to mean anything."""
    code = ("import dataclasses, json, sys; from k2trt.spec import ModelSpec; "
            "from k2trt.checkpoint.synth import synthesize; a = json.loads(sys.argv[1]); "
            "spec = dataclasses.replace(ModelSpec.from_config(a['cfg']), rotary_inv_freq_tensors=a['inv']); "
            "synthesize(spec, a['dir'], seed=0, shards=a['shards'], sparse=a['sparse'], force=True, tokenizer=False)")
    arg = json.dumps({"cfg": spec.to_config(), "inv": spec.rotary_inv_freq_tensors, "dir": str(d), "shards": shards,
                      "sparse": sparse})
    subprocess.run([sys.executable, "-c", code, arg], check=True)


def _cp(src: Path, dst: Path) -> float:
    shutil.rmtree(dst, ignore_errors=True)
    dst.mkdir()
    files = [str(p) for p in sorted(src.glob("*.safetensors"))]
    t = time.perf_counter()
    subprocess.run(["cp", *files, str(dst)], check=True)
    subprocess.run(["sync", "-f", str(dst)], check=True)
    return time.perf_counter() - t


def _convert(src: Path, dst: Path, *args: str) -> dict[str, Any]:
    shutil.rmtree(dst, ignore_errors=True)
    wall, rss, out = _child([sys.executable, "-m", "k2trt.cli", "convert", str(src), str(dst), "--json", *args])
    d = json.loads(out)
    return {"wall": wall, "rss": rss, "seconds": d["timings"]["stream"], "total": d["seconds"],
            "written": d["bytes_written"]}


def run(work: Path, repeat: int) -> dict[str, Any]:
    base_rss = _child([sys.executable, "-c", "import torch, k2trt.checkpoint.convert, k2trt.checkpoint.inspect"])[1]
    rows: list[dict[str, Any]] = []
    for label, src in _checkpoints(work):
        size = sum(p.stat().st_size for p in src.glob("*.safetensors"))
        cp = min(_cp(src, work / "cp") for _ in range(repeat))
        cases = {
            "cp + sync": None,
            "trtllm --copy": ("--to", "trtllm", "--copy"),
            "trtllm --copy --no-hash": ("--to", "trtllm", "--copy", "--no-hash"),
            "trtllm (hard links) --no-hash": ("--to", "trtllm", "--no-hash"),
            "bf16 --workers 1": ("--to", "bf16", "--workers", "1"),
            "bf16 --workers 2": ("--to", "bf16", "--workers", "2"),
        }
        for name, args in cases.items():
            if args is None:
                rows.append({"ckpt": label, "bytes": size, "case": name, "seconds": cp, "ratio": 1.0, "rss": None})
                continue
            best = min((_convert(src, work / "out", *args) for _ in range(repeat)), key=lambda r: r["seconds"])
            rows.append({"ckpt": label, "bytes": size, "case": name, "seconds": best["seconds"],
                         "ratio": cp / best["seconds"], "rss": best["rss"], "wall": best["wall"],
                         "total": best["total"], "written": best["written"]})
    return {"base_rss": base_rss, "rows": rows, "sparse": _sparse(work), "kernel": _kernel(work)}


def _kernel(work: Path) -> dict[str, float]:
    """BF16 dequantisation of K2-sized expert weights, one thread, vs fp8.dequantize (the reference)."""
    import numpy as np
    import torch

    from k2trt.checkpoint.fp8 import dequantize, dequantize_bf16_bits, quantize

    torch.set_num_threads(1)
    q, s = quantize(torch.randn(2048, 7168, generator=torch.Generator().manual_seed(0)) / 85)
    u8, grid = q.view(torch.uint8).numpy(), s.numpy()
    out = np.empty(u8.shape, dtype=np.uint16)
    t = time.process_time()
    for _ in range(3):
        dequantize_bf16_bits(u8, grid, 0, out)
    ours_s = (time.process_time() - t) / 3
    t = time.process_time()
    ref = dequantize(q, s, torch.bfloat16)
    ref_s = time.process_time() - t
    assert torch.equal(torch.from_numpy(out).view(torch.bfloat16), ref)
    return {"mb": q.numel() / 2**20, "ours_s": ours_s, "ref_s": ref_s}


def _sparse(work: Path) -> dict[str, float]:
    d = work / "k2-sparse"
    if not (d / "config.json").exists():
        _synth_in_child(preset("k2-instruct"), d, None, sparse=True)
    ins = _child([sys.executable, "-m", "k2trt.cli", "inspect", str(d), "--json"], ok=(0, 1))  # 1: warnings
    dry = _child([sys.executable, "-m", "k2trt.cli", "convert", str(d), str(work / "never"), "--to", "bf16",
                  "--dry-run", "--json"])
    return {"inspect_wall": ins[0], "dry_run_wall": dry[0], "dry_run_rss": dry[1]}


def _print(res: dict[str, Any]) -> None:
    mib = 2**20
    print(f"child baseline RSS (python + torch + k2trt imported): {res['base_rss'] / mib:.0f} MiB")
    print(f"{'ckpt':5} {'MiB':>6} {'case':32} {'stream s':>8} {'MiB/s':>7} {'× cp':>6} {'total s':>8} "
          f"{'peak RSS MiB':>13}")
    for r in res["rows"]:
        rss = "" if r["rss"] is None else f"{r['rss'] / mib:.0f}"
        total = f"{r['total']:.2f}" if "total" in r else ""
        print(f"{r['ckpt']:5} {r['bytes'] / mib:6.0f} {r['case']:32} {r['seconds']:8.3f} "
              f"{r['bytes'] / mib / r['seconds']:7.0f} {r['ratio']:6.2f} {total:>8} {rss:>13}")
    k = res["kernel"]
    print(f"BF16 dequant of one K2 expert weight (2048×7168 fp8, 1 thread, CPU time): {k['ours_s'] * 1e3:.0f} ms "
          f"({k['mb'] / k['ours_s']:.0f} MiB/s of fp8), fp8.dequantize {k['ref_s'] * 1e3:.0f} ms; bit-identical")
    s = res["sparse"]
    print(f"sparse 1 TB K2 layout: inspect {s['inspect_wall']:.1f} s, convert --dry-run {s['dry_run_wall']:.1f} s "
          f"(wall, process start-up included), dry-run peak RSS {s['dry_run_rss'] / mib:.0f} MiB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--keep", type=Path, help="work directory to keep (and reuse) synthesized checkpoints")
    ap.add_argument("--repeat", type=int, default=2, help="runs per case; the fastest counts")
    ap.add_argument("--json", action="store_true", help="print the raw results as JSON")
    a = ap.parse_args()
    work = a.keep or Path(tempfile.mkdtemp(prefix="k2trt-bench-convert-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        res = run(work, a.repeat)
    finally:
        for sub in ("out", "cp", "never"):
            shutil.rmtree(work / sub, ignore_errors=True)
        (work / "expert.safetensors").unlink(missing_ok=True)
        if a.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(res, indent=2)) if a.json else _print(res)


if __name__ == "__main__":
    main()
