"""``k2trt build``: recipe + checkpoint → a self-describing bundle that ``k2trt serve BUNDLE`` runs.

Steps: inspect the checkpoint (headers only; errors refuse) → check its weight format against the recipe (a
conversion, if needed, is named, not run) → plan every instance's layout (refuse with the reasons when it does not
fit) → render and lint the TensorRT-LLM YAML(s) → write, atomically as one directory:

- ``config.yml`` (and ``ctx.yml``/``gen.yml``/``disagg.yml`` when disaggregated): extra-llm-api options and the
  router config, each linted as the target release reads it (an error refuses the build);
- ``launch.json``: k2trt.launch.spec.LaunchSpec — per-rank argv, world size, hostfile, ports, versions, the
  gateway's settings and the job's log format;
- ``hostfile``: Open MPI ``host slots=N`` lines, rank 0's host first;
- ``launch.sh``: ``k2trt serve`` on this bundle, with the equivalent Open MPI 5 command as a comment;
- ``manifest.json``: checkpoint manifest hash, k2trt and target TensorRT-LLM versions, the resolved recipe;
- ``PLAN.md``: the memory plan, roofline and warnings.

The bundle is staged in a sibling temporary directory and renamed into place, so a failed build leaves nothing.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

from k2trt import __version__
from k2trt.bundle.recipe import Recipe, recipe_to_dict
from k2trt.errors import CheckpointError, ConfigError, PlanError
from k2trt.fsio import atomic_dir, atomic_write
from k2trt.launch.hosts import HostList
from k2trt.launch.spec import GatewayOptions, is_loopback
from k2trt.layout import Layout
from k2trt.plan.gpus import Gpu
from k2trt.plan.memory import INT4_SOURCE, convert_target, ready_budget_s, weight_format
from k2trt.plan.planner import Cluster, LayoutPlan, Plan, PlanRequest, plan_layout, resolve_spec, to_markdown
from k2trt.reference.serve import serve_argv as reference_argv
from k2trt.spec import ModelSpec
from k2trt.trtllm import PINNED_RELEASE
from k2trt.trtllm.deploy import VERSION_PROBE, container_image, rank_argv
from k2trt.trtllm.disagg import RoleServers, disagg_config, router_argv
from k2trt.trtllm.disagg_lint import lint_disagg
from k2trt.trtllm.lint import lint
from k2trt.trtllm.profiles import profile_for
from k2trt.trtllm.render import (DEFAULT_TRANSCEIVER, SERVER_ROLES, dump_yaml, llm_options,
                                 tool_parser_available)

CONFIG_FILE = "config.yml"
HOSTFILE = "hostfile"
MANIFEST = "manifest.json"
PLAN_FILE = "PLAN.md"
LAUNCH_SH = "launch.sh"
FORMAT = "k2trt-bundle/1"


@dataclass
class BuildResult:
    """What was (or, with dry_run, would be) written."""

    out: Path
    files: dict[str, str]
    """File name → content."""
    plans: list[tuple[str, Plan]]
    """(role, plan) per instance kind: ``server`` or ``ctx``/``gen``."""
    notes: list[str] = field(default_factory=list)
    written: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"out": str(self.out), "written": self.written, "files": sorted(self.files),
                "plans": {role: p.to_dict() for role, p in self.plans}, "notes": self.notes}


def _inspect(checkpoint: Path, notes: list[str]) -> ModelSpec:
    try:
        from k2trt.checkpoint.inspect import inspect_checkpoint
    except ImportError:  # pragma: no cover - inspect ships with k2trt; kept so build degrades to config checks
        notes.append("checkpoint inspection unavailable: validated config.json only")
        return ModelSpec.from_config(checkpoint)
    rep = inspect_checkpoint(checkpoint)
    errors = [p for p in rep.problems if p.severity == "error"]
    if errors:
        first = errors[0]
        raise CheckpointError(f"{checkpoint}: {len(errors)} checkpoint error(s), first: {first.where}: "
                              f"{first.message}", first.fix or "run k2trt inspect for the full list")
    for p in rep.problems:
        if p.severity == "warning":
            notes.append(f"inspect warning: {p.where}: {p.message}")
    return ModelSpec.from_config(checkpoint)


def _request(r: Recipe, spec: ModelSpec, layout: Layout, gpus_per_node: int) -> PlanRequest:
    nodes = max(1, -(-layout.world_size // gpus_per_node))
    prof = profile_for(r.serve.trtllm) if r.serve.engine == "trtllm" else None
    return PlanRequest(spec, Cluster(r.cluster.gpu, nodes, min(gpus_per_node, layout.world_size)), r.context,
                       r.kv_dtype, r.serve.options.kv_fraction, None, prof.name if prof else None,
                       eplb_online=_eplb_online(r), tool_parser=_use_tool_parser(r), model_name=r.name,
                       load_gbps=r.cluster.load_gbps)


def _eplb_online(r: Recipe) -> bool:
    lb = (r.serve.options.extra.get("moe_config") or {}).get("load_balancer")
    return isinstance(lb, dict) and int(lb.get("layer_updates_per_iter", 0) or 0) > 0


def _use_tool_parser(r: Recipe) -> bool:
    return r.serve.engine == "trtllm" and r.serve.tool_parser and tool_parser_available(r.serve.trtllm)


def recipe_spec(r: Recipe, checkpoint: Path | None = None, notes: list[str] | None = None) -> ModelSpec:
    """The model recipe ``r`` deploys: ``checkpoint``'s, or without one the recipe's preset in its weight format.

    Args:
        r: the recipe.
        checkpoint: the checkpoint directory (inspected: its errors refuse, its warnings go to ``notes``).
        notes: where inspection warnings are appended.
    Returns:
        The ModelSpec that ``k2trt build`` and ``k2trt plan --recipe`` plan.
    Raises:
        CheckpointError: a broken checkpoint, or one stored in another format than ``model.weights`` says.
        ConfigError / PlanError: no checkpoint and no (known) ``model.preset``.
    Example:
        >>> weight_format(recipe_spec(load_recipe("k2-b200-1x8-nvfp4")))  # what convert --to nvfp4 would write
        'nvfp4'
    """
    if checkpoint is None:
        if r.model.preset is None:
            raise ConfigError(f"recipe {r.name} names no model.preset", "give the checkpoint to plan")
        return resolve_spec(None, r.model.preset, r.model.weights)[0]
    if not checkpoint.is_dir():
        raise CheckpointError(f"{checkpoint} is not a directory", "pass the checkpoint directory with --checkpoint")
    spec = _inspect(checkpoint, [] if notes is None else notes)
    fmt = weight_format(spec)
    if fmt == INT4_SOURCE and r.serve.engine == "trtllm":
        to = convert_target(r.model.weights or "fp8_block")
        raise CheckpointError(f"{checkpoint} holds Moonshot's INT4 experts (compressed-tensors), which TensorRT-LLM "
                              f"cannot load; recipe {r.name} serves {r.model.weights or 'fp8_block'}",
                              f"convert it first: k2trt convert {checkpoint} DST --to {to}")
    if r.model.weights and fmt != r.model.weights:
        to = convert_target(r.model.weights)
        raise CheckpointError(f"recipe {r.name} needs {r.model.weights} weights but {checkpoint} is {fmt}",
                              f"convert it first: k2trt convert {checkpoint} DST --to {to}")
    return spec


def recipe_plans(r: Recipe, spec: ModelSpec) -> list[tuple[str, LayoutPlan, Plan]]:
    """Judge the recipe's layout(s) on its cluster: (role, verdict, plan) for ``server`` or ``ctx`` and ``gen``.

    The one place a recipe becomes plan requests, so ``k2trt plan --recipe`` shows exactly what ``k2trt build``
    checks.
    """
    roles = [("server", r.layout)] if r.disagg is None else [("ctx", r.disagg.ctx.layout),
                                                             ("gen", r.disagg.gen.layout)]
    out = []
    for role, lay in roles:
        req = _request(r, spec, lay, r.cluster.gpus_per_node)
        lp = plan_layout(req, lay)
        out.append((role, lp, Plan(req, [lp])))
    return out


def plan_recipe(r: Recipe, spec: ModelSpec) -> list[tuple[str, LayoutPlan, Plan]]:
    """``recipe_plans``, refusing with PlanError (every reason listed) when a layout does not fit."""
    out = recipe_plans(r, spec)
    for role, lp, _ in out:
        if not lp.ok:
            reasons = [lp.invalid] if lp.invalid else [f.message for f in lp.errors]
            raise PlanError(f"recipe {r.name}: {role} layout {lp.layout} does not fit: " + "; ".join(reasons),
                            "k2trt plan --recipe shows the whole plan; k2trt plan --help how to compare layouts")
    return out


def _hosts(r: Recipe, hosts: HostList | Sequence[str] | None, notes: list[str]) -> list[str]:
    """One host name per node, rank 0's first: ``--hosts`` (whose ``:N``, if given, must be the recipe's GPUs per
    node), else the recipe's, else ``localhost`` for a one-node reference recipe, else placeholders."""
    gpn = r.cluster.gpus_per_node
    if isinstance(hosts, HostList):
        for name, slots in hosts.entries:
            if slots is not None and slots != gpn:
                raise ConfigError(f"host {name}:{slots} gives {slots} slots but recipe {r.name} places {gpn} "
                                  "ranks per node", f"drop :{slots}, or --set cluster.gpus_per_node={slots}")
        hosts = hosts.names
    names = list(hosts or r.cluster.hosts)
    if not names:
        if r.cluster.nodes == 1 and r.serve.engine == "reference":
            return ["localhost"]
        names = [f"node{i + 1}" for i in range(r.cluster.nodes)]
        notes.append(f"no hosts given: hostfile uses placeholders {', '.join(names)}; rebuild with --hosts")
    if len(names) != r.cluster.nodes:
        raise ConfigError(f"{len(names)} hosts given for {r.cluster.nodes} nodes", "give one host per node")
    return names


def _gpu_substring(g: Gpu) -> str | None:
    """What nvidia-smi's GPU name must contain on every node (``H200``); None for the reference engine's CPU ranks."""
    return None if g.reference_only else g.name.split()[0]


def _ready_timeout(r: Recipe, planned: list[tuple[str, LayoutPlan, Plan]]) -> float:
    """``launch.json``'s ``ready_timeout_s``: ``ready_budget_s`` of the slowest role's load estimate (every server
    must be ready), the Kubernetes start-up probe's budget too; where no plan has an estimate, the wait before
    there was one (an hour for TensorRT-LLM, ten minutes for the reference engine)."""
    loads = [lp.memory.load_s for _, lp, _ in planned if lp.memory is not None and lp.memory.load_s > 0]
    if loads:
        return float(ready_budget_s(max(loads)))
    return 600.0 if r.serve.engine == "reference" else LaunchSpec.ready_timeout_s


def engine_argv(r: Recipe, lay: Layout, model_dir: str, config_path: str, port: int,
                role: str | None = None) -> tuple[str, ...]:
    """The per-rank command of one instance, spelled by the engine's own module: TensorRT-LLM's
    (``k2trt.trtllm.deploy.rank_argv``) or the reference server's (``k2trt.reference.serve.serve_argv``)."""
    if r.serve.engine == "reference":
        return reference_argv(model_dir, lay, host=r.serve.host, port=port, plugins=r.serve.plugins,
                              served_model_name=r.model.served_name)
    return rank_argv(model_dir, lay, config_path=config_path, gpus_per_node=r.cluster.gpus_per_node,
                     host=r.serve.host, port=port, tool_parser=_use_tool_parser(r), version=r.serve.trtllm,
                     server_role=role)


def build_bundle(r: Recipe, checkpoint: Path, out: Path, *, hosts: HostList | Sequence[str] | None = None,
                 dry_run: bool = False, force: bool = False) -> BuildResult:
    """Inspect → plan → render → write the bundle for recipe ``r`` (see module docstring).

    Raises CheckpointError (bad checkpoint), PlanError (does not fit), ConfigError (bad recipe / lint errors / an
    existing non-bundle ``out``). With ``dry_run`` nothing is written and ``BuildResult.files`` holds the content.
    """
    from k2trt.launch.preflight import manifest_hash
    from k2trt.launch.spec import DisaggSpec, GatewayOptions, HostSlots, LaunchSpec, RoleSpec, SlurmOptions

    notes: list[str] = []
    checkpoint = checkpoint.resolve()
    out = out.resolve()
    spec = recipe_spec(r, checkpoint, notes)
    fmt = weight_format(spec)
    planned = plan_recipe(r, spec)
    names = _hosts(r, hosts, notes)
    gpn = r.cluster.gpus_per_node
    version = profile_for(r.serve.trtllm).version if r.serve.engine == "trtllm" else None
    files: dict[str, str] = {}
    header = (f"extra-llm-api options for TensorRT-LLM {version} — written by k2trt {__version__} "
              f"from recipe {r.name}") if version else (f"written by k2trt {__version__} from recipe {r.name}; "
                                                         "the reference engine does not read this file")
    model_dir = str(checkpoint)

    def render(role: str | None, lay: Layout) -> str:
        doc = llm_options(r.serve.options, adp=lay.adp, kv_dtype=r.kv_dtype, max_seq_len=r.context, role=role,
                          transceiver=r.disagg.transceiver if r.disagg else DEFAULT_TRANSCEIVER,
                          version=r.serve.trtllm)
        res = lint(doc, version)
        if not res.ok:
            raise ConfigError(f"recipe {r.name}: rendered config fails the lint: {res.errors[0]}",
                              "fix serve.options.extra in the recipe")
        notes.extend(f"config {role or 'server'}: {i}" for i in res.issues)
        return dump_yaml(doc, header)

    def argv_for(lay: Layout, config_name: str, port: int, role: str | None) -> tuple[str, ...]:
        return engine_argv(r, lay, model_dir, str(out / config_name), port, role)

    common: dict[str, Any] = dict(
        engine=r.serve.engine, ssh_port=r.cluster.ssh_port, http_host=r.serve.host, model_dir=model_dir,
        model_manifest_sha256=manifest_hash(model_dir), engine_version=version or None,
        engine_version_probe=VERSION_PROBE if version else (), gpus_per_node=gpn if version else None,
        gpu_kind=_gpu_substring(r.cluster.gpu), eplb=_eplb_online(r),
        shm_min_bytes=int(max(lp.memory.eplb_shm_bytes if lp.memory else 0.0 for _, lp, _ in planned)),
        gateway=gateway_options(r), log_format=r.serve.log_format, ready_timeout_s=_ready_timeout(r, planned),
        slurm=SlurmOptions(gpus_per_node=gpn if version else None,
                           container_image=container_image(version) if version else None),
    )
    if r.disagg is None:
        lay = r.layout
        files[CONFIG_FILE] = render(None, lay)
        files[HOSTFILE] = "".join(f"{h} slots={gpn}\n" for h in names)
        launch = LaunchSpec(argv=argv_for(lay, CONFIG_FILE, r.serve.port, None), world_size=lay.world_size,
                            hostfile=HOSTFILE, http_port=r.serve.port, **common)
    else:
        d = r.disagg
        roles: dict[str, list[Any]] = {"ctx": [], "gen": []}
        host_iter = iter(names)
        servers: dict[str, RoleServers] = {}
        for key, sec in (("ctx", d.ctx), ("gen", d.gen)):
            lay = sec.layout
            files[f"{key}.yml"] = render(SERVER_ROLES[key], lay)
            nodes = max(1, lay.world_size // gpn)
            urls = []
            for i in range(sec.instances):
                hs = tuple(HostSlots(next(host_iter), min(gpn, lay.world_size)) for _ in range(nodes))
                port = sec.port + i
                urls.append(f"{hs[0].name}:{port}")
                roles[key].append(RoleSpec(f"{key}{i}", argv_for(lay, f"{key}.yml", port, None), lay.world_size,
                                           port, hs))
            servers[key] = RoleServers(tuple(urls), lay.tp, lay.pp)
        router = disagg_config(servers["ctx"], servers["gen"], hostname=r.serve.host, port=r.serve.port)
        res = lint_disagg(router, version)
        if not res.ok:
            raise ConfigError(f"recipe {r.name}: the router config (disagg.yml) fails the lint: {res.errors[0]}",
                              "it is made from the roles' hosts and ports (--hosts, disagg.ctx/gen.port) and "
                              "serve.host/serve.port: change those")
        notes.extend(f"config router: {i}" for i in res.issues)
        files["disagg.yml"] = dump_yaml(router, header)
        files[HOSTFILE] = "".join(f"{h} slots={gpn}\n" for h in names)
        launch = LaunchSpec(argv=(), world_size=1, http_port=r.serve.port,
                            disagg=DisaggSpec(tuple(roles["ctx"]), tuple(roles["gen"]),
                                              tuple(router_argv(str(out / "disagg.yml"))), r.serve.port), **common)
    launch.validate()
    files["launch.json"] = json.dumps(launch.to_dict(), indent=2) + "\n"
    files[LAUNCH_SH] = _launch_sh(launch, out, tuple(HostSlots(h, gpn) for h in names))
    plans = [(role, p) for role, _, p in planned]
    files[PLAN_FILE] = "\n".join(to_markdown(p) for _, p in plans) + _notes_md(notes)
    files[MANIFEST] = json.dumps({
        "format": FORMAT, "k2trt_version": __version__, "engine": r.serve.engine,
        "trtllm_version": version, "trtllm_pinned": PINNED_RELEASE,
        "checkpoint": model_dir, "checkpoint_manifest_sha256": launch.model_manifest_sha256,
        "weight_format": fmt, "recipe": recipe_to_dict(r),
        "plan": {role: p.to_dict()["layouts"][0] for role, p in plans},
    }, indent=2, default=str) + "\n"
    result = BuildResult(out, files, plans, notes)
    if not dry_run:
        write_bundle(out, files, force)
        result.written = True
    return result


def gateway_options(r: Recipe) -> GatewayOptions | None:
    """The recipe's gateway as launch options: where it listens, where its API keys come from (a key is required
    when ``serve.gateway_auth`` says so; ``auto``: when it listens beyond loopback), the model name clients use, and
    its limits (``serve.gateway_limits``; the context defaults to the recipe's).

    Example:
        >>> gateway_options(load_recipe("k2-h200-2x8-tp16ep8")).require_key   # listens on 0.0.0.0
        True
    """
    if r.serve.gateway_port is None:
        return None
    auth = r.serve.gateway_auth
    limits = r.serve.gateway_limits
    return GatewayOptions(r.serve.gateway_port, r.serve.host, r.serve.gateway_mode,
                          api_key_env=r.serve.gateway_api_key_env, api_key_file=r.serve.gateway_api_key_file,
                          require_key=auth == "required" or (auth == "auto" and not is_loopback(r.serve.host)),
                          served_model_name=r.model.served_name,
                          limits=replace(limits, max_context_tokens=limits.max_context_tokens or r.context))


def _notes_md(notes: list[str]) -> str:
    return ("\n## Build notes\n\n" + "".join(f"- {n}\n" for n in notes)) if notes else ""


def _launch_sh(launch: Any, out: Path, hosts: tuple[Any, ...]) -> str:
    from k2trt.launch.mpi import MpiFlavor, mpirun_argv

    lines = ["#!/usr/bin/env bash", "# Start this bundle: k2trt serve runs preflight, mpirun (or Slurm) and supervision.",
             "set -euo pipefail", ""]
    if launch.disagg is None:
        cmd = mpirun_argv(launch, MpiFlavor("openmpi", (5, 0)), euid=1000, environ={}, hosts=hosts)
        lines.insert(2, "# Equivalent Open MPI 5 command: " + shlex.join(cmd))
    lines.append('exec k2trt serve "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)" "$@"')
    return "\n".join(lines) + "\n"


def write_bundle(out: Path, files: dict[str, str], force: bool = False) -> None:
    """Write ``files`` (name → text; a name may hold a subdirectory, ``k8s/manifests.yaml``) as the bundle ``out``,
    atomically as one directory. Refuses a non-empty ``out`` that is no bundle, and an existing bundle without
    ``force`` (ConfigError)."""
    if out.exists():
        if not out.is_dir():
            raise ConfigError(f"{out} exists and is not a directory")
        if any(out.iterdir()):
            if not (out / MANIFEST).exists():
                raise ConfigError(f"{out} is not empty and is not a k2trt bundle", "choose another --out")
            if not force:
                raise ConfigError(f"{out} already holds a bundle", "pass --force to replace it")
    with atomic_dir(out, perm=0o755) as stage:
        for name, text in files.items():
            atomic_write(stage / name, text, perm=0o755 if name == LAUNCH_SH else None)
