"""``k2trt plan``: memory, KV capacity, roofline and warnings for one layout, or every layout ranked — or exactly
the plan ``k2trt build`` checks for a recipe (``--recipe``)."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

import click

from k2trt.cli_options import (LayoutType, WeightFormatType, echo_json, json_option, recipe_option, sets_option,
                               trtllm_option)


def _default(cls: Any, name: str) -> Any:
    """A dataclass field's default: defaults live in the schema, not in the options (STYLE P2)."""
    return {f.name: f.default for f in dataclasses.fields(cls)}[name]


def _req_defaults() -> dict[str, Any]:
    from k2trt.plan.gpus import DEFAULT_GPU
    from k2trt.plan.planner import DEFAULT_PRESET, Cluster, PlanRequest

    return {"nodes": _default(Cluster, "nodes"), "gpn": _default(Cluster, "gpus_per_node"),
            "context": _default(PlanRequest, "context"), "kv": _default(PlanRequest, "kv_dtype"),
            "frac": _default(PlanRequest, "kv_fraction"), "reserve": _default(PlanRequest, "reserve_gib"),
            "gpu": DEFAULT_GPU, "preset": DEFAULT_PRESET}


_D = _req_defaults()
# What a recipe decides; with --recipe these come from it (change them with --set).
_FROM_RECIPE = ("preset_name", "weights", "gpu_key", "nodes", "gpus_per_node", "context", "kv_dtype",
                "kv_fraction", "reserve_gib", "layouts", "trtllm")


@click.command()
@recipe_option(required=False, help="Plan exactly what `k2trt build --recipe` checks for this recipe (its "
               "cluster, layout(s), context and engine options; change them with --set).")
@sets_option
@click.option("--checkpoint", type=click.Path(exists=True, file_okay=False), help="Plan this checkpoint's config.")
@click.option("--preset", "preset_name", help="Plan a preset instead: k2-instruct, k2-instruct-0905, tiny "
              f"[default: {_D['preset']}].")
@click.option("--weights", type=WeightFormatType(),
              help="Re-describe the weights in this format (e.g. an NVFP4 checkpoint still to be made).")
@click.option("--gpu", "gpu_key", default=_D["gpu"], show_default=True, help="GPU kind (h100, h200, h20, h20-141, "
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
@trtllm_option(help="TensorRT-LLM version whose known issues to consider")
@click.option("--all", "show_invalid", is_flag=True, help="Also list invalid layouts with their reasons.")
@json_option
@click.pass_context
def plan(ctx: click.Context, recipe_name: str | None, sets: tuple[str, ...], checkpoint: str | None,
         preset_name: str | None, weights: str | None, gpu_key: str, nodes: int, gpus_per_node: int, context: int,
         kv_dtype: str, kv_fraction: float, reserve_gib: float, layouts: tuple[Any, ...], trtllm: str | None,
         show_invalid: bool, as_json: bool) -> None:
    """Plan K2 on a cluster: exact per-GPU bytes, KV capacity, concurrency, roofline, warnings.

    Exit 0 when a judged layout fits (with --recipe: when every role's does), 1 when none does.
    """
    from k2trt.plan import planner
    from k2trt.plan.gpus import gpu
    from k2trt.trtllm.profiles import profile_for

    if recipe_name is not None:
        return _plan_recipe(ctx, recipe_name, sets, checkpoint, as_json)
    if sets:
        raise click.UsageError("--set changes a recipe: give --recipe too")
    spec, name = planner.resolve_spec(checkpoint, preset_name, weights)
    req = planner.PlanRequest(spec, planner.Cluster(gpu(gpu_key), nodes, gpus_per_node), context, kv_dtype,
                              kv_fraction, reserve_gib, profile_for(trtllm).name, model_name=name)
    result = planner.plan(req, list(layouts) or None)
    if as_json:
        echo_json(result.to_dict())
    else:
        planner.render_table(result, show_invalid=show_invalid or bool(layouts))
    sys.exit(0 if result.best is not None else 1)


def _plan_recipe(ctx: click.Context, recipe_name: str, sets: tuple[str, ...], checkpoint: str | None,
                 as_json: bool) -> None:
    from k2trt.bundle.build import recipe_plans, recipe_spec
    from k2trt.bundle.recipe import load_recipe
    from k2trt.plan.planner import render_table

    default = click.core.ParameterSource.DEFAULT
    given = [p.opts[-1] for p in ctx.command.params
             if p.name in _FROM_RECIPE and ctx.get_parameter_source(p.name or "") != default]
    if given:
        raise click.UsageError(f"{', '.join(given)}: the recipe decides this; change it with --set KEY=VALUE")
    r = load_recipe(recipe_name, sets)
    planned = recipe_plans(r, recipe_spec(r, Path(checkpoint) if checkpoint else None))
    if as_json:
        echo_json({"recipe": r.name, "plans": {role: p.to_dict() for role, _, p in planned}})
    else:
        for role, _, p in planned:
            if r.disagg is not None:
                click.echo(f"{role} servers:")
            render_table(p, show_invalid=True)  # one layout per role: its reasons are the answer
    sys.exit(0 if all(lp.ok for _, lp, _ in planned) else 1)
