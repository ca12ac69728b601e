"""The Slurm launcher: sbatch script golden, shell syntax (bash -n), variable hygiene, submit without sbatch."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from pathlib import Path

import pytest

from k2trt.errors import LaunchError
from k2trt.launch.slurm import sanitized_environ, sbatch_script, slurm_shape, submit
from k2trt.launch.spec import DisaggSpec, HostSlots, LaunchSpec, RoleSpec, SlurmOptions

ARGV = ("trtllm-llmapi-launch", "trtllm-serve", "serve", "/models/K2", "--host", "0.0.0.0", "--port", "8000",
        "--tp_size", "16", "--ep_size", "8", "--trust_remote_code", "--extra_llm_api_options", "/bundle/config.yml")


def _spec() -> LaunchSpec:
    return LaunchSpec(engine="trtllm", argv=ARGV, world_size=16, hosts=(HostSlots("a", 8), HostSlots("b", 8)),
                      env={"TRTLLM_DG_ENABLED": "1", "NCCL_IB_HCA": "mlx5_0,mlx5_1"}, launcher="slurm",
                      slurm=SlurmOptions(partition="h200", account="llm team", time="02:00:00", gpus_per_node=8,
                                         container_image="nvcr.io#nvidia/tensorrt-llm/release:1.2.0",
                                         container_mounts=("/lustre/models:/models", "/lustre/bundle:/bundle"),
                                         container_workdir="/bundle", extra_sbatch=("--exclusive",),
                                         setup=("module load pmix",)))


GOLDEN = """#!/bin/bash
#SBATCH --job-name=k2trt-serve
#SBATCH --partition=h200
#SBATCH --account='llm team'
#SBATCH --time=02:00:00
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=8
#SBATCH --gres=gpu:8
#SBATCH --output=/bundle/logs/slurm-%j.out
#SBATCH --exclusive
# Written by `k2trt serve --launcher slurm` from the bundle's launch spec; rebuild, don't edit.
set -euo pipefail
mkdir -p /bundle/logs
module load pmix
export TRTLLM_DG_ENABLED=1
export NCCL_IB_HCA=mlx5_0,mlx5_1
export K2TRT_JOB_ID="slurm-${SLURM_JOB_ID}"
echo "k2trt: job ${SLURM_JOB_ID} serving at http://a:8000 once ready"
srun \\
    --nodes=2 \\
    --ntasks=16 \\
    --ntasks-per-node=8 \\
    --mpi=pmix \\
    --kill-on-bad-exit=1 \\
    --export=ALL \\
    --output=/bundle/logs/server.rank%t.log \\
    '--container-image=nvcr.io#nvidia/tensorrt-llm/release:1.2.0' \\
    --container-mounts=/lustre/models:/models,/lustre/bundle:/bundle \\
    --container-workdir=/bundle \\
    trtllm-llmapi-launch trtllm-serve serve /models/K2 --host 0.0.0.0 --port 8000 --tp_size 16 --ep_size 8 \
--trust_remote_code --extra_llm_api_options /bundle/config.yml
"""


def test_sbatch_script_golden_and_bash_syntax(tmp_path: Path) -> None:
    text = sbatch_script(_spec(), Path("/bundle"))
    assert text == GOLDEN
    script = tmp_path / "serve.sbatch"
    script.write_text(text)
    r = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    broken = tmp_path / "broken.sbatch"  # the syntax check can fail: an unbalanced quote is caught
    broken.write_text(text.replace("export TRTLLM_DG_ENABLED=1", "export TRTLLM_DG_ENABLED='1"))
    assert subprocess.run(["bash", "-n", str(broken)], capture_output=True, timeout=30).returncode != 0


def test_shape_without_hosts_and_bare_node() -> None:
    s = LaunchSpec(argv=("python", "-m", "srv"), world_size=4, slurm=SlurmOptions(ntasks_per_node=2))
    assert slurm_shape(s) == (2, 2)
    text = sbatch_script(s, Path("/b"))
    assert "--container" not in text and "--gres" not in text and "--partition" not in text
    assert "--ntasks=4" in text and "--ntasks-per-node=2" in text
    with pytest.raises(LaunchError, match="< world size 4"):
        slurm_shape(dataclasses.replace(s, slurm=SlurmOptions(nodes=1, ntasks_per_node=2)))


def test_container_options_need_an_image() -> None:
    s = LaunchSpec(argv=("x",), slurm=SlurmOptions(container_mounts=("/a:/a",)))
    with pytest.raises(LaunchError, match="without slurm.container_image"):
        sbatch_script(s, Path("/b"))


def test_disaggregated_is_refused_for_slurm_with_a_fix() -> None:
    s = LaunchSpec(disagg=DisaggSpec((RoleSpec("c", ("x",), 1, 1),), (RoleSpec("g", ("y",), 1, 2),), ("r",), 3))
    with pytest.raises(LaunchError, match="--launcher mpirun"):
        sbatch_script(s, Path("/b"))


def test_sbatch_environment_drops_an_enclosing_jobs_variables() -> None:
    env = {"SLURM_JOB_ID": "1", "SLURM_NTASKS": "64", "SLURM_MEM_PER_CPU": "4000", "SLURM_CONF": "/etc/slurm.conf",
           "PATH": "/bin", "NCCL_DEBUG": "INFO"}
    assert sanitized_environ(env) == {"SLURM_CONF": "/etc/slurm.conf", "PATH": "/bin", "NCCL_DEBUG": "INFO"}


@pytest.mark.skipif(shutil.which("sbatch") is not None, reason="sbatch exists here; this checks its absence")
def test_submit_without_sbatch_is_a_clear_error(tmp_path: Path) -> None:
    script = tmp_path / "serve.sbatch"
    script.write_text(GOLDEN)
    with pytest.raises(LaunchError, match="sbatch not found on PATH") as e:
        submit(script)
    assert str(script) in str(e.value)


def test_container_mounts_every_path_the_job_uses_by_default(tmp_path: Path) -> None:
    """With an image and no mounts, the model, bundle (config), logs and other absolute argv paths are mounted at
    the same path; a user mount that already maps a path adds nothing for it."""
    from k2trt.launch.runner import plan_launch
    from k2trt.launch.slurm import default_mounts

    argv = ("trtllm-serve", "serve", "/lustre/K2", "--config", "/scratch/b/config.yml",
            "--chat_template=/opt/tmpl/k2.jinja", "--custom_module_dirs", "/opt/plugins")
    spec = LaunchSpec(engine="trtllm", argv=argv, world_size=8, hosts=(HostSlots("a", 8),), launcher="slurm",
                      model_dir="/lustre/K2", log_dir="/var/log/k2",
                      slurm=SlurmOptions(container_image="nvcr.io#nvidia/tensorrt-llm/release:1.3.0rc24"))
    mounts = dict(default_mounts(spec, Path("/scratch/b")))
    assert list(mounts) == ["/lustre/K2:/lustre/K2", "/scratch/b:/scratch/b", "/var/log/k2:/var/log/k2",
                            "/opt/tmpl:/opt/tmpl", "/opt/plugins:/opt/plugins"]
    assert mounts["/lustre/K2:/lustre/K2"] == "model"
    text = sbatch_script(spec, Path("/scratch/b"))
    assert ("--container-mounts=/lustre/K2:/lustre/K2,/scratch/b:/scratch/b,/var/log/k2:/var/log/k2,"
            "/opt/tmpl:/opt/tmpl,/opt/plugins:/opt/plugins") in text
    assert "# container mount (default, model): /lustre/K2:/lustre/K2" in text
    dry = plan_launch(spec, Path("/scratch/b"), launcher="slurm").render()
    assert "# note: container mount (default, model): /lustre/K2:/lustre/K2" in dry
    # a user mount mapping /lustre (as /lustre) covers the model; the rest is still added
    user = dataclasses.replace(spec, slurm=dataclasses.replace(spec.slurm, container_mounts=("/gpfs/l:/lustre",)))
    got = [m for m, _ in default_mounts(user, Path("/scratch/b"))]
    assert "/lustre/K2:/lustre/K2" not in got and "/scratch/b:/scratch/b" in got
    assert "--container-mounts=/gpfs/l:/lustre,/scratch/b:/scratch/b" in sbatch_script(user, Path("/scratch/b"))
    # no image: nothing is mounted and nothing is said
    bare = dataclasses.replace(spec, slurm=SlurmOptions())
    assert default_mounts(bare, Path("/scratch/b")) == [] and "container" not in sbatch_script(bare, Path("/b"))
