"""``k2trt synth`` and ``k2trt inspect``."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from k2trt.cli_options import echo_json, json_option


@click.command()
@click.option("--preset", "preset_name", default="tiny", show_default=True,
              help="Model preset: tiny, tiny-thinking (INT4 experts), k2-instruct, k2-instruct-0905 or k2-thinking.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory to write the checkpoint to.")
@click.option("--seed", default=0, show_default=True, help="Weights are a pure function of the seed.")
@click.option("--shards", type=click.IntRange(min=1), default=None,
              help="Number of safetensors shards [default: 4 for the tiny presets, one per layer otherwise].")
@click.option("--sparse", is_flag=True, help="Headers only; data regions left as file holes (full-size presets).")
@click.option("--force", is_flag=True, help="Replace a non-empty --out.")
def synth(preset_name: str, out: Path, seed: int, shards: int | None, sparse: bool, force: bool) -> None:
    """Write a K2-format checkpoint: the tiny K2 for the verification path, or the real layout as sparse files."""
    from k2trt.checkpoint.synth import synthesize
    from k2trt.spec import preset

    spec = preset(preset_name)
    written = synthesize(spec, out, seed=seed, shards=shards, sparse=sparse, force=force,
                         progress=sys.stderr.isatty(), preset_name=preset_name)
    size = sum(t.nbytes for t in spec.tensors())
    click.echo(f"wrote {preset_name} K2 ({spec.param_count() / 1e9:.4g} B params, {size / 2**30:.3g} GiB"
               f"{', sparse' if sparse else ''}) to {written}")


@click.command()
@click.argument("model_dir", type=click.Path(path_type=Path))
@json_option
@click.option("--layers", "show_layers", is_flag=True, help="Show the per-layer summary.")
@click.option("--gpu", "gpu_key", default=None,
              help="GPU to serve on (h100, h200, h20, b200, gb200, ...): name only its conversion of an INT4 "
                   "checkpoint.")
def inspect(model_dir: Path, as_json: bool, show_layers: bool, gpu_key: str | None) -> None:
    """Check a checkpoint from its headers alone. Exit 0 when clean, 1 when there are errors or warnings."""
    from k2trt.checkpoint.inspect import inspect_checkpoint

    rep = inspect_checkpoint(model_dir)
    if rep.int4 is not None and gpu_key is not None:
        from k2trt.plan.gpus import gpu

        family = "blackwell" if gpu(gpu_key).fp4 else "hopper"
        rep.int4["convert"] = {gpu_key: rep.int4["convert"][family]}
    if as_json:
        echo_json(rep.to_dict())
    else:
        _render(rep, show_layers)
    sys.exit(0 if rep.ok else 1)


def _render(rep: "object", show_layers: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    from k2trt.checkpoint.inspect import Report

    assert isinstance(rep, Report)
    con = Console(highlight=False)
    total = sum(rep.bytes_by_dtype.values())
    con.print(f"[bold]{rep.model_dir}[/bold]: {rep.model_type or '?'}, quantization {rep.quantization or '?'}")
    con.print(f"  {rep.shards} shards, {rep.tensors:,} tensors, {rep.params:,} parameters "
              f"({_count(rep.params)}), {_size(total)}, linear weights "
              + (", ".join(f"{k} {v:.1%}" for k, v in sorted(rep.coverage.items(), key=lambda kv: -kv[1]))
                 or f"fp8 {rep.fp8_coverage:.1%}"))
    con.print("  bytes by dtype: " + ", ".join(f"{k} {v / 2**30:.2f} GiB" for k, v in
                                               sorted(rep.bytes_by_dtype.items())))
    if show_layers and rep.layers:
        t = Table("layer", "kind", "tensors", "params", "GiB")
        for s in rep.layers:
            t.add_row(str(s.layer), s.kind, str(s.tensors), f"{s.params:,}", f"{s.bytes / 2**30:.3f}")
        con.print(t)
    if rep.int4 is not None:
        _render_int4(con, rep.int4)
    style = {"error": "red", "warning": "yellow", "info": "dim"}
    for p in rep.problems:
        fix = f" — {p.fix}" if p.fix else ""
        con.print(f"  [{style[p.severity]}]{p.severity}[/]: {p.where}: {p.message}{fix}", soft_wrap=True)
    n_err, n_warn = rep.count("error"), rep.count("warning")
    con.print("[green]clean[/green]" if rep.ok else f"[red]{n_err} errors, {n_warn} warnings[/red]")


def _render_int4(con: "object", d: dict) -> None:  # type: ignore[type-arg]
    """The INT4 section: what is stored, and the exact conversion TensorRT-LLM needs."""
    from rich.console import Console

    from k2trt.checkpoint.inspect import INT4_CONVERSIONS

    assert isinstance(con, Console)
    st = d["stored"]
    con.print(f"  INT4 routed experts (compressed-tensors pack-quantized, symmetric, group {d['group_size']}): "
              f"declared {d['declared_shape']} stored as weight_packed {st['weight']['dtype']}{st['weight']['shape']} "
              f"(8 codes per word), weight_scale {st['scale']['dtype']}{st['scale']['shape']}, "
              f"weight_shape {st['shape']['dtype']}{st['shape']['shape']}", soft_wrap=True)
    con.print(f"  not quantized (ignore list): {', '.join(d['ignore']) or '-'}", soft_wrap=True)
    con.print("  [bold]TensorRT-LLM cannot load INT4 experts[/bold] (its compressed-tensors loader takes FP8, NVFP4 "
              "and MXFP4). Convert first:", soft_wrap=True)
    for k, cmd in d["convert"].items():
        why = INT4_CONVERSIONS.get(k, INT4_CONVERSIONS["blackwell" if "nvfp4" in cmd else "hopper"])[1]
        con.print(f"    {k}: {cmd}   # {why}", soft_wrap=True)


def _count(n: int) -> str:
    """A parameter count at a glance: ``1.03 T``, ``32.5 B``, ``15.7 M``."""
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:,}"


def _size(nbytes: float) -> str:
    return f"{nbytes / 2**30:.1f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.1f} MiB"
