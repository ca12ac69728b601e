"""``k2trt plan``: memory, KV capacity, roofline and warnings for one layout, or every layout ranked."""

from __future__ import annotations

import dataclasses
import sys
from typing import Any

import click

from k2trt.cli_options import LayoutType, echo_json, json_option


def _default(cls: Any, name: str) -> Any:
    """A dataclass field's default: defaults live in the schema, not in the options (STYLE P2)."""
    return {f.name: f.default for f in dataclasses.fields(cls)}[name]


def _req_defaults() -> dict[str, Any]:
    from k2trt.plan.planner import Cluster, PlanRequest

    return {"nodes": _default(Cluster, "nodes"), "gpn": _default(Cluster, "gpus_per_node"),
            "context": _default(PlanRequest, "context"), "kv": _default(PlanRequest, "kv_dtype"),
            "frac": _default(PlanRequest, "kv_fraction"), "reserve": _default(PlanRequest, "reserve_gib")}


_D = _req_defaults()


@click.command()
@click.option("--checkpoint", type=click.Path(exists=True, file_okay=False), help="Plan this checkpoint's config.")
@click.option("--preset", "preset_name", help="Plan a preset instead: k2-instruct, k2-instruct-0905, tiny "
              "[default: k2-instruct].")
@click.option("--weights", type=click.Choice(["fp8", "bf16", "nvfp4", "w4a8"]),
              help="Re-describe the weights in this format (e.g. an NVFP4 checkpoint still to be made).")
@click.option("--gpu", "gpu_key", default="h200", show_default=True, help="GPU kind (h100, h200, h20, h20-141, "
              "b200, gb200, a100).")
@click.option("--nodes", type=click.IntRange(min=1), default=_D["nodes"], show_default=True)
@click.option("--gpus-per-node", type=click.IntRange(min=1), default=_D["gpn"], show_default=True)
@click.option("--context", type=click.IntRange(min=1), default=_D["context"], show_default=True,
              help="Tokens per sequence the deployment must hold.")
@click.option("--kv-dtype", type=click.Choice(["fp8", "bf16"]), default=_D["kv"], show_default=True)
@click.option("--kv-fraction", type=click.FloatRange(0, 1, min_open=True), default=_D["frac"], show_default=True,
              help="TensorRT-LLM kv_cache_config.free_gpu_memory_fraction.")
@click.option("--reserve", "reserve_gib", type=click.FloatRange(min=0), default=_D["reserve"],
              help="Activation/CUDA-graph reserve per GPU, GiB [default: the GPU's, 8 GiB].")
@click.option("--layout", "layouts", type=LayoutType(), multiple=True,
              help="Judge only these layouts (repeatable), e.g. tp16ep8 or tp16ep16adp. Default: all, ranked.")
@click.option("--trtllm", "release", default=None, help="TensorRT-LLM version whose known issues to consider "
              "[default: the pinned release].")
@click.option("--all", "show_invalid", is_flag=True, help="Also list invalid layouts with their reasons.")
@json_option
def plan(checkpoint: str | None, preset_name: str | None, weights: str | None, gpu_key: str, nodes: int,
         gpus_per_node: int, context: int, kv_dtype: str, kv_fraction: float, reserve_gib: float,
         layouts: tuple[Any, ...], release: str | None, show_invalid: bool, as_json: bool) -> None:
    """Plan K2 on a cluster: exact per-GPU bytes, KV capacity, concurrency, roofline, warnings.

    Exit 0 when a judged layout fits, 1 when none does.
    """
    from k2trt.plan import planner
    from k2trt.plan.gpus import gpu
    from k2trt.trtllm.profiles import profile_for

    spec, name = planner.resolve_spec(checkpoint, preset_name, weights)
    req = planner.PlanRequest(spec, planner.Cluster(gpu(gpu_key), nodes, gpus_per_node), context, kv_dtype,
                              kv_fraction, reserve_gib, profile_for(release).name, model_name=name)
    result = planner.plan(req, list(layouts) or None)
    if as_json:
        echo_json(result.to_dict())
    else:
        planner.render_table(result, show_invalid=show_invalid or bool(layouts))
    sys.exit(0 if result.best is not None else 1)
