"""One option, one meaning: every flag that several commands take has the same destination and value type in all of
them (``--hosts`` in build and serve, ``--trtllm`` in plan/config/doctor, ``--recipe``, ``--layout``), the plan
command's defaults are the recipe schema's, and ``--hosts`` places ranks the same way in ``build`` and ``serve``."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from k2trt.bundle.build import build_bundle
from k2trt.bundle.recipe import ClusterSection, Recipe, load_recipe
from k2trt.cli import cli
from k2trt.errors import ConfigError, LaunchError
from k2trt.launch.hosts import parse_host_list
from k2trt.launch.runner import child_argv, child_parser
from k2trt.launch.spec import HostSlots, LaunchSpec
from k2trt.trtllm.render import EngineOptions

FILES = ["PLAN.md", "config.yml", "hostfile", "launch.json", "launch.sh", "manifest.json"]
# (command path, flag) pairs allowed to differ: an old spelling kept working after the option was renamed.
OLD_SPELLINGS = {("chat check", "--context")}  # now --diff-context: --context is plan's tokens per sequence


def _options() -> dict[str, set[tuple[str, str, str]]]:
    """flag → {(command, destination, value kind)} over every command and subcommand."""
    seen: dict[str, set[tuple[str, str, str]]] = defaultdict(set)

    def kind(t: click.ParamType) -> str:
        for base, name in ((click.types.IntParamType, "int"), (click.types.FloatParamType, "float")):
            if isinstance(t, base):
                return name
        return type(t).__name__

    def walk(cmd: click.Command, path: str) -> None:
        if isinstance(cmd, click.Group):
            ctx = click.Context(cmd)
            for name in cmd.list_commands(ctx):
                sub = cmd.get_command(ctx, name)
                assert sub is not None
                walk(sub, f"{path} {name}".strip())
        for p in cmd.params:
            if isinstance(p, click.Option):
                dest = p.name or ""
                dest = dest[:-1] if p.multiple and dest.endswith("s") else dest  # a repeatable option's plural
                for flag in p.opts + p.secondary_opts:
                    if (path, flag) not in OLD_SPELLINGS:
                        seen[flag].add((path, dest, kind(p.type)))
    walk(cli, "")
    return seen


def test_a_flag_means_the_same_thing_in_every_command() -> None:
    seen = _options()
    assert {c for c, _, _ in seen["--trtllm"]} >= {"plan", "config check", "doctor"}
    assert {c for c, _, _ in seen["--hosts"]} == {"build", "serve"}
    for flag, uses in seen.items():
        assert len({(dest, kind) for _, dest, kind in uses}) == 1, (flag, sorted(uses))


def test_plan_defaults_are_the_recipe_schema_defaults() -> None:
    """Defaults are stated once: ``k2trt plan`` with no options plans what a recipe with no cluster keys would."""
    from k2trt.commands.plan import plan

    d = {p.name: p.default for p in plan.params}
    r, c = Recipe(), ClusterSection()
    assert (d["gpu_key"], d["gpus_per_node"], d["context"], d["kv_dtype"], d["kv_fraction"]) == (
        c.gpu.key, c.gpus_per_node, r.context, r.kv_dtype, EngineOptions().kv_fraction)
    assert r.model.preset and f"[default: {r.model.preset}]" in CliRunner().invoke(cli, ["plan", "--help"]).output


def test_build_hosts_take_both_spellings(tiny_ckpt: Path, tmp_path: Path) -> None:
    """``build --hosts`` takes bare names (as before) and ``HOST:N`` (serve's spelling), N being the GPUs per node."""
    def build(*hosts: str) -> list[str]:
        return ["build", "--recipe", "tiny-cpu", "--set", "cluster.hosts=", "--checkpoint", str(tiny_ckpt),
                "--out", str(tmp_path / "b"), *hosts, "--dry-run", "--json"]

    for hosts in (["--hosts", "node7"], ["-H", "node7:2"]):
        res = CliRunner().invoke(cli, build(*hosts), catch_exceptions=False)
        assert res.exit_code == 0 and json.loads(res.output)["files"] == FILES, res.output
        r = load_recipe("tiny-cpu", ["cluster.hosts="])
        got = build_bundle(r, tiny_ckpt, tmp_path / "c", hosts=parse_host_list(hosts[1]), dry_run=True)
        assert got.files["hostfile"] == "node7 slots=2\n"
    with pytest.raises(ConfigError, match=r"host node7:4 gives 4 slots but recipe tiny-cpu places 2 ranks per node"):
        CliRunner().invoke(cli, build("--hosts", "node7:4"), catch_exceptions=False)
    with pytest.raises(ConfigError, match="2 hosts given for 1 nodes"):
        CliRunner().invoke(cli, build("--hosts", "a,b"), catch_exceptions=False)
    with pytest.raises(LaunchError, match="is listed twice"):  # the one host-list parser, for build too
        CliRunner().invoke(cli, build("--hosts", "a:2,a:2"), catch_exceptions=False)


def test_serve_hosts_without_slots_take_the_bundles_gpus_per_node(tmp_path: Path) -> None:
    """``serve -H n1,n2`` (build's spelling) places the bundle's GPUs per node on each host, not one rank."""
    b = tmp_path / "b"
    LaunchSpec(engine="trtllm", argv=("x",), world_size=16, http_port=18291, gpus_per_node=8).dump(b / "launch.json")
    res = CliRunner().invoke(cli, ["serve", str(b), "-H", "n1,n2", "-n", "--launcher", "slurm", "--json"])
    assert res.exit_code == 0, res.output
    script = next(iter(json.loads(res.output)["plans"]["slurm"]["files"].values()))
    assert "#SBATCH --nodes=2" in script and "#SBATCH --ntasks-per-node=8" in script


def test_detached_supervisor_argv_parses_back() -> None:
    argv = child_argv(Path("/b/launch.json"), "slurm", "j1", hosts=(HostSlots("n1", 8), HostSlots("n2", 8)),
                      gateway=False)
    assert argv[1:3] == ["-m", "k2trt.launch.runner"]
    a = child_parser().parse_args(argv[3:])
    assert (a.spec, a.launcher, a.job_id, a.hosts, a.no_gateway) == (Path("/b/launch.json"), "slurm", "j1",
                                                                     "n1:8,n2:8", True)
    assert "--hosts" not in child_argv(Path("/b/launch.json"), "mpirun", "j2")
