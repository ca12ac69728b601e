"""``k2trt convert SRC DST --to {trtllm,bf16,fp8-block,nvfp4,w4a8}``."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

import click

from k2trt.cli_options import dry_run_option, echo_json, json_option

# Defaults and choices come from the one place that defines them (STYLE P2); importing them does not import torch.
from k2trt.checkpoint.plan import ConvertOptions
from k2trt.checkpoint.targets import KV_CACHE_DTYPES, MODEL_TYPES, TARGETS

_D = ConvertOptions()
_CALIBRATED = [t.name for t in TARGETS.values() if t.calibrated]


@click.command()
@click.argument("src", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("dst", type=click.Path(path_type=Path))
@click.option("--to", "target", type=click.Choice(list(TARGETS)), default=_D.target, show_default=True,
              help=" ".join(f"{t.name}: {t.help}." for t in TARGETS.values())
              + " The 4-bit targets need the quant extra (nvidia-modelopt; compressed-tensors for ct-int4).")
@click.option("--kv-cache-dtype", type=click.Choice(KV_CACHE_DTYPES), default=_D.kv_cache_dtype,
              show_default=True, help="fp8: hf_quant_config.json asks TensorRT-LLM for an FP8 KV cache.")
@click.option("--model-type", type=click.Choice(MODEL_TYPES), default=_D.model_type, show_default=True,
              help="config.json model_type. auto keeps kimi_k2 when SRC has its remote-code files "
                   "(configuration_deepseek.py), else writes deepseek_v3 for --to trtllm.")
@click.option("--copy", "copy_", is_flag=True, default=_D.copy,
              help="Never hard-link a shard: --to trtllm links where the filesystem allows (hard links share the "
                   "source's data: editing one edits both); the other targets rewrite every shard anyway.")
@click.option("--hash/--no-hash", "hash_", default=_D.hash, show_default=True,
              help="Record the BLAKE3 hash of every output file in k2trt-manifest.json (b3sum prints the same). "
                   "Linked shards are read once to hash them (about 15 min per TB at 1 GB/s), and a resumed run "
                   "re-hashes finished shards; "
                   "--no-hash records sizes only, lets the kernel copy unchanged bytes, and makes --to trtllm with "
                   "hard links near-instant.")
@click.option("--workers", type=click.IntRange(min=1), default=_D.workers, show_default=True,
              help="Threads converting tensors (or linking/copying/hashing shards for --to trtllm).")
@click.option("--force", is_flag=True, default=_D.force,
              help="Replace a non-empty DST that does not hold this same interrupted conversion (its contents "
                   "are deleted). An interrupted run of the same conversion resumes without it.")
@click.option("--calib-data", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help=f"{'/'.join(_CALIBRATED)} only: JSON lines of prompts ({{\"text\": …}} or {{\"input_ids\": "
                   "[…]}) to calibrate the experts' activation scales on a CUDA device. Without it the scales are "
                   "weight-only bounds that no activation can exceed (runs on CPU).")
@click.option("--verify", is_flag=True, help="Afterwards re-read every output tensor and check it against SRC.")
@dry_run_option
@json_option
def convert(src: Path, dst: Path, target: str, kv_cache_dtype: str, model_type: str, copy_: bool, hash_: bool,
            workers: int, force: bool, calib_data: Path | None, verify: bool, dry_run: bool, as_json: bool) -> None:
    """Convert the K2 checkpoint in SRC into DST: streaming, resumable (rerun after an interruption), atomic
    (each shard appears under its final name only when complete; config.json is written last)."""
    if calib_data is not None and not TARGETS[target].calibrated:
        raise click.UsageError(f"--calib-data applies to {' or '.join('--to ' + t for t in _CALIBRATED)} only")
    from k2trt.checkpoint import convert as cv

    opts = ConvertOptions(target=target, kv_cache_dtype=kv_cache_dtype, model_type=model_type, copy=copy_,
                          hash=hash_, workers=workers, force=force)
    if dry_run:
        _emit(cv.plan_conversion(src, dst, opts).to_dict() | {"dry_run": True}, as_json, _render_plan)
        return
    if calib_data is not None:
        from k2trt.reference.calibrate import calibrate

        opts = dataclasses.replace(opts, calib_amax=tuple(sorted(calibrate(src, calib_data).items())))
    res = cv.convert(src, dst, opts, verify=verify, progress=sys.stderr.isatty() and not as_json)
    _emit(res.to_dict(), as_json, _render_result)


def _emit(d: dict[str, Any], as_json: bool, render: Any) -> None:
    if as_json:
        echo_json(d)
    else:
        for line in render(d):
            click.echo(line)


def _gib(n: int) -> str:
    return f"{n / 2**30:,.2f} GiB" if n >= 2**28 else f"{n / 2**20:,.1f} MiB"


def _render_plan(d: dict[str, Any]) -> list[str]:
    lines = [f"plan: {d['src']} → {d['dst']} as {d['target']} (dry run: nothing is read or written)",
             f"  {len(d['shards'])} shards, {_gib(d['src_bytes'])} → {_gib(d['out_bytes'])}, "
             f"{_gib(d['bytes_to_write'])} to write"]
    for s in d["shards"]:
        ops = ", ".join(f"{v} {k}" for k, v in sorted(s["ops"].items()))
        lines.append(f"  {s['name']}: {s['action']} ({ops}), {_gib(s['src_bytes'])} → {_gib(s['out_bytes'])}")
    lines.append(f"  config.json: {d['config_json']}; side files: {', '.join(d['side_files']) or 'none'}")
    hq = d["hf_quant_config"]
    lines.append(f"  hf_quant_config.json: {hq['quantization'] if hq else 'not written'}")
    lines += [f"  note: {n}" for n in d["notes"]]
    return lines


def _render_result(d: dict[str, Any]) -> list[str]:
    rate = d["bytes_written"] / d["seconds"] / 2**20 if d["seconds"] else 0.0
    lines = [f"{d['state']}: {d['src']} → {d['dst']} as {d['target']}: {d['shards_written']} shards written, "
             f"{d['shards_skipped']} already done, {_gib(d['bytes_written'])} in {d['seconds']:.1f} s "
             f"({rate:,.0f} MiB/s)"]
    lines += [f"  note: {n}" for n in d["notes"]]
    if d["verified"]:
        v = d["verified"]
        lines.append(f"  verified: {v['tensors']:,} tensors against the source, {v['files_hashed']} files hashed "
                     f"({v['seconds']:.1f} s)")
        for kind, rel in sorted((v.get("max_rel_error") or {}).items()):
            lines.append(f"  requantization error of the {kind} experts: worst ‖Δw‖/‖w‖ {rel:.4f}")
    lines.append(f"  manifest: {d['manifest']}")
    return lines
