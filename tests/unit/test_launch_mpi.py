"""mpirun argv goldens per Open MPI version, root vs non-root, env forwarding, and the common K2 two-node
recipe's command with its known mistakes fixed."""

from __future__ import annotations

import dataclasses
import shlex
from pathlib import Path

import pytest

from k2trt.errors import LaunchError
from k2trt.launch.mpi import (JOB_ID_VAR, launch_environ, mpirun_argv, parse_mpi_version, resolve_env_forward)
from k2trt.launch.runner import plan_launch
from k2trt.launch.spec import DisaggSpec, HostSlots, LaunchSpec, RoleSpec

OMPI4 = parse_mpi_version("mpirun (Open MPI) 4.1.5\n\nReport bugs to http://www.open-mpi.org/community/help/")
OMPI5 = parse_mpi_version("mpirun (Open MPI) 5.0.11\n\nReport bugs to https://www.open-mpi.org/community/help/")

# The inner server argv is the config generator's output; here it is a fixture (the generator is not ours).
# Values from the two-node H200 recipe (reference/trtllm.md §3.2), with its launcher-independent mistakes fixed:
# --host 0.0.0.0 (the default binds localhost, unreachable from clients) and the model positional first.
SERVE_FIXTURE = {"model": "/models/Kimi-K2-Instruct", "backend": "pytorch", "host": "0.0.0.0", "port": 8000,
                 "tp_size": 16, "ep_size": 8, "kv_cache_free_gpu_memory_fraction": 0.95, "trust_remote_code": True,
                 "max_batch_size": 128, "max_num_tokens": 4096, "extra_llm_api_options": "/bundle/config.yml"}


def _inner(d: dict) -> list[str]:
    out = ["trtllm-llmapi-launch", "trtllm-serve", "serve", d["model"]]
    for k, v in d.items():
        if k != "model":
            out += [f"--{k}"] if v is True else [f"--{k}", str(v)]
    return out


def _k2_2x8() -> LaunchSpec:
    return LaunchSpec(engine="trtllm", argv=tuple(_inner(SERVE_FIXTURE)), world_size=16,
                      hosts=(HostSlots("h200-a", 8), HostSlots("h200-b", 8)), ssh_port=2233,
                      env={"TRTLLM_DG_ENABLED": "1"}, http_port=8000)


ENV = {"NCCL_IB_HCA": "mlx5_0,mlx5_1", "NCCL_SOCKET_IFNAME": "bond0", "UCX_NET_DEVICES": "mlx5_0:1",
       "HF_HUB_OFFLINE": "1", "TLLM_LOG_LEVEL": "INFO", "HOME": "/root", "SLURM_PROCID": "3", "PATH": "/bin"}


def test_k2_two_node_recipe_golden_open_mpi_4_as_root() -> None:
    """The recipe's `mpirun -np 16 -H h1:8,h2:8 -mca plm_rsh_args "-p 2233" --allow-run-as-root …` with its
    mistakes fixed: explicit by-slot placement, binding off, NCCL/UCX/HF/TLLM variables forwarded with -x, rank
    tags for per-rank logs."""
    argv = mpirun_argv(_k2_2x8(), OMPI4, euid=0, environ=ENV)
    assert argv == [
        "mpirun", "-np", "16", "-H", "h200-a:8,h200-b:8", "--map-by", "slot", "--bind-to", "none",
        "-mca", "plm_rsh_args", "-p 2233", "--allow-run-as-root", "--tag-output",
        "-x", "TRTLLM_DG_ENABLED=1", "-x", "HF_HUB_OFFLINE", "-x", "NCCL_IB_HCA", "-x", "NCCL_SOCKET_IFNAME",
        "-x", "TLLM_LOG_LEVEL", "-x", "UCX_NET_DEVICES", "-x", JOB_ID_VAR,
        "trtllm-llmapi-launch", "trtllm-serve", "serve", "/models/Kimi-K2-Instruct", "--backend", "pytorch",
        "--host", "0.0.0.0", "--port", "8000", "--tp_size", "16", "--ep_size", "8",
        "--kv_cache_free_gpu_memory_fraction", "0.95", "--trust_remote_code", "--max_batch_size", "128",
        "--max_num_tokens", "4096", "--extra_llm_api_options", "/bundle/config.yml"]
    shown = shlex.join(argv)  # what --dry-run prints: one shell line that parses back to the same list
    assert shlex.split(shown) == argv and "-mca plm_rsh_args '-p 2233' --allow-run-as-root" in shown


def test_open_mpi_5_spells_the_ssh_port_so_it_is_not_ignored() -> None:
    argv = mpirun_argv(_k2_2x8(), OMPI5, euid=1000, environ={})
    head = argv[:argv.index("trtllm-llmapi-launch")]
    assert head == ["mpirun", "-np", "16", "-H", "h200-a:8,h200-b:8", "--map-by", "slot", "--bind-to", "none",
                    "--prtemca", "plm_ssh_args", "-p 2233", "--tag-output", "-x", "TRTLLM_DG_ENABLED=1",
                    "-x", JOB_ID_VAR]
    assert "-mca" not in argv and "plm_rsh_args" not in argv  # 5.x ignores that spelling silently


@pytest.mark.parametrize("euid,flag", [(0, True), (1000, False)])
@pytest.mark.parametrize("flavor", [OMPI4, OMPI5])
def test_allow_run_as_root_only_for_root(euid: int, flag: bool, flavor) -> None:
    argv = mpirun_argv(_k2_2x8(), flavor, euid=euid, environ={})
    assert ("--allow-run-as-root" in argv) is flag


def test_ssh_args_join_the_port_and_no_ssh_option_without_them() -> None:
    s = dataclasses.replace(_k2_2x8(), ssh_args=("-i", "/k/id", "-o", "StrictHostKeyChecking=no"))
    argv = mpirun_argv(s, OMPI5, euid=0, environ={})
    assert argv[argv.index("plm_ssh_args") + 1] == "-p 2233 -i /k/id -o StrictHostKeyChecking=no"
    plain = mpirun_argv(dataclasses.replace(_k2_2x8(), ssh_port=None), OMPI4, euid=0, environ={})
    assert "plm_rsh_args" not in plain and "-mca" not in plain


def test_env_forwarding_patterns_and_scrubbing() -> None:
    assert resolve_env_forward(("NCCL_*", "HOME"), ENV) == ["HOME", "NCCL_IB_HCA", "NCCL_SOCKET_IFNAME"]
    s = dataclasses.replace(_k2_2x8(), env_forward=("NCCL_*", "SLURM_*", "NCCL_IB_HCA"),
                            env={"NCCL_IB_HCA": "mlx5_9"})
    argv = mpirun_argv(s, OMPI5, euid=0, environ=ENV)
    xs = [argv[i + 1] for i, a in enumerate(argv) if a == "-x"]
    # the explicit value wins over forwarding; an enclosing Slurm job's variables are never forwarded
    assert xs == ["NCCL_IB_HCA=mlx5_9", "NCCL_SOCKET_IFNAME", JOB_ID_VAR]
    env = launch_environ(ENV, s, "j1")
    assert "SLURM_PROCID" not in env and env["NCCL_IB_HCA"] == "mlx5_9" and env[JOB_ID_VAR] == "j1"
    assert env["PATH"] == "/bin"


def test_oversubscribe_extra_args_and_local_default() -> None:
    s = LaunchSpec(argv=("python", "srv.py"), world_size=4, oversubscribe=True, mpi_args=("--mca", "btl", "self,tcp"))
    assert mpirun_argv(s, OMPI5, euid=1000, environ={}) == [
        "mpirun", "-np", "4", "-H", "localhost:4", "--map-by", "slot", "--bind-to", "none", "--oversubscribe",
        "--tag-output", "-x", JOB_ID_VAR, "--mca", "btl", "self,tcp", "python", "srv.py"]


def test_hostfile_is_resolved_against_the_bundle(tmp_path: Path) -> None:
    (tmp_path / "hostfile").write_text("a slots=8\nb slots=8\n")
    s = dataclasses.replace(_k2_2x8(), hosts=(), hostfile="hostfile")
    argv = mpirun_argv(s, OMPI4, euid=0, environ={}, bundle_dir=tmp_path)
    assert argv[3:5] == ["--hostfile", str(tmp_path / "hostfile")] and "-H" not in argv
    with pytest.raises(LaunchError, match="both hosts and a hostfile"):
        mpirun_argv(dataclasses.replace(s, hosts=(HostSlots("a", 8),)), OMPI4, euid=0, environ={},
                    bundle_dir=tmp_path)


@pytest.mark.parametrize("text,kind,version", [
    ("mpirun (Open MPI) 4.1.5", "openmpi", (4, 1, 5)),
    ("mpirun (Open MPI) 5.0.3rc1\n", "openmpi", (5, 0, 3)),
    ("mpirun (Open MPI) 3.1.6", "openmpi", (3, 1, 6)),
    ("HYDRA build details:\n    Version:                                 4.1.2\n", "mpich", (4, 1, 2)),
    ("Intel(R) MPI Library for Linux* OS, Version 2021.10 Build 2023", "intel", (2021, 10)),
    ("something else", "unknown", ()),
])
def test_parse_mpi_version(text: str, kind: str, version: tuple) -> None:
    f = parse_mpi_version(text)
    assert (f.kind, f.version) == (kind, version)


@pytest.mark.parametrize("text", ["HYDRA build details:\n Version: 4.1.2", "Intel(R) MPI Library, Version 2021.10"])
def test_non_open_mpi_is_refused_with_a_fix(text: str) -> None:
    with pytest.raises(LaunchError, match="not supported by the mpirun launcher.*Open MPI"):
        mpirun_argv(_k2_2x8(), parse_mpi_version(text), euid=0, environ={})


def test_disaggregated_plan_starts_servers_then_router(tmp_path: Path) -> None:
    s = LaunchSpec(engine="trtllm", ssh_port=2233, disagg=DisaggSpec(
        ctx=(RoleSpec("ctx0", ("serve", "--port", "8001"), 8, 8001, hosts=(HostSlots("n1", 8),)),),
        gen=(RoleSpec("gen0", ("serve", "--port", "8002"), 16, 8002, hosts=(HostSlots("n2", 8), HostSlots("n3", 8))),),
        router_argv=("router", "-c", "disagg.yaml"), router_port=8000)).validate()
    plan = plan_launch(s, tmp_path, launcher="mpirun", environ={}, euid=0, flavor=OMPI4, job_id="J")
    assert [[c.name for c in st] for st in plan.stages] == [["ctx0", "gen0"], ["router"]]
    ctx, gen = plan.stages[0]
    assert ctx.argv[0].endswith("mpirun")  # made absolute when found, so remote nodes locate Open MPI too
    assert ctx.argv[1:5] == ("-np", "8", "-H", "n1:8") and ctx.argv[-3:] == ("serve", "--port", "8001")
    assert gen.argv[1:5] == ("-np", "16", "-H", "n2:8,n3:8") and gen.probe_url == "http://n2:8002"
    router = plan.stages[1][0]
    assert router.argv == ("router", "-c", "disagg.yaml") and not router.tagged
    assert router.probe_url == plan.url == "http://127.0.0.1:8000" and router.env[JOB_ID_VAR] == "J"
