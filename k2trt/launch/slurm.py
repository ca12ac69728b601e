"""The Slurm launcher: one sbatch script that runs every rank with ``srun --mpi=pmix``.

Variable hygiene, because Slurm variables nest badly:
- ``submit`` runs sbatch with the caller's ``SLURM_*`` variables removed (``SLURM_CONF`` kept). Submitting from
  inside an allocation would otherwise carry the outer job's task counts and memory settings into the new job
  (sbatch exports the whole environment), and srun there would inherit them.
- srun is given ``--nodes``, ``--ntasks`` and ``--ntasks-per-node`` explicitly rather than inheriting the batch
  step's values, because the engine's launch wrapper takes its world size from ``SLURM_NTASKS`` and its rank from
  ``SLURM_PROCID`` (before any MPI variable), so both must describe exactly this step.
- ``--kill-on-bad-exit=1``: one rank dying ends the step, the Slurm analogue of the mpirun supervisor.
"""

from __future__ import annotations

import math
import os
import shlex
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

from k2trt.errors import LaunchError
from k2trt.launch.mpi import JOB_ID_VAR
from k2trt.launch.spec import LaunchSpec

SBATCH_FILE = "serve.sbatch"


def slurm_shape(spec: LaunchSpec) -> tuple[int, int]:
    """(nodes, ntasks_per_node) for the job: explicit Slurm options first, else from the hosts."""
    per_node = spec.slurm.ntasks_per_node or spec.host_list()[0].slots
    nodes = spec.slurm.nodes or (len(spec.hosts) if spec.hosts else math.ceil(spec.world_size / per_node))
    if nodes * per_node < spec.world_size:
        raise LaunchError(f"slurm: {nodes} nodes x {per_node} tasks < world size {spec.world_size}",
                          "raise slurm.nodes or slurm.ntasks_per_node")
    return nodes, per_node


def sbatch_script(spec: LaunchSpec, bundle_dir: Path) -> str:
    """The sbatch script text for ``spec`` (deterministic: the same spec gives the same bytes).

    Raises LaunchError for a disaggregated spec (not generated for Slurm; use mpirun inside an allocation).
    """
    if spec.disagg is not None:
        raise LaunchError("disaggregated deployments are not generated for Slurm",
                          "run `k2trt serve --launcher mpirun` inside an allocation (salloc) instead")
    s = spec.slurm
    nodes, per_node = slurm_shape(spec)
    log_dir = bundle_dir / spec.log_dir
    q = shlex.quote
    lines = ["#!/bin/bash", f"#SBATCH --job-name={q(s.job_name)}"]
    if s.partition:
        lines.append(f"#SBATCH --partition={q(s.partition)}")
    if s.account:
        lines.append(f"#SBATCH --account={q(s.account)}")
    lines += [f"#SBATCH --time={q(s.time)}", f"#SBATCH --nodes={nodes}", f"#SBATCH --ntasks-per-node={per_node}"]
    if s.gpus_per_node:
        lines.append(f"#SBATCH --gres=gpu:{s.gpus_per_node}")
    lines.append(f"#SBATCH --output={q(str(log_dir / 'slurm-%j.out'))}")
    lines += [f"#SBATCH {opt}" for opt in s.extra_sbatch]
    lines += ["# Written by `k2trt serve --launcher slurm` from the bundle's launch spec; rebuild, don't edit.",
              "set -euo pipefail", f"mkdir -p {q(str(log_dir))}"]
    lines += list(s.setup)
    lines += [f"export {k}={q(v)}" for k, v in spec.env.items()]
    lines.append(f'export {JOB_ID_VAR}="slurm-${{SLURM_JOB_ID}}"')
    srun = ["srun", f"--nodes={nodes}", f"--ntasks={spec.world_size}", f"--ntasks-per-node={per_node}",
            f"--mpi={s.mpi}", "--kill-on-bad-exit=1", "--export=ALL",
            f"--output={log_dir / 'server.rank%t.log'}"]
    if s.container_image:
        srun.append(f"--container-image={s.container_image}")
        if s.container_mounts:
            srun.append(f"--container-mounts={','.join(s.container_mounts)}")
        if s.container_workdir:
            srun.append(f"--container-workdir={s.container_workdir}")
    elif s.container_mounts or s.container_workdir:
        raise LaunchError("slurm.container_mounts/container_workdir given without slurm.container_image",
                          "set container_image or drop the container options")
    body = " \\\n    ".join(shlex.quote(a) for a in srun) + " \\\n    " + shlex.join(spec.argv)
    lines += [f"echo \"k2trt: job ${{SLURM_JOB_ID}} serving at {spec.base_url()} once ready\"", body, ""]
    return "\n".join(lines)


def sanitized_environ(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment for sbatch: without an enclosing job's ``SLURM_*`` variables (``SLURM_CONF`` kept)."""
    return {k: v for k, v in environ.items() if not k.startswith("SLURM_") or k == "SLURM_CONF"}


def submit(script: Path, environ: Mapping[str, str] | None = None) -> str:
    """Run ``sbatch --parsable SCRIPT``; returns the job id. LaunchError when sbatch is missing or refuses."""
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        raise LaunchError("sbatch not found on PATH",
                          f"run on a Slurm login node, or copy the script there and run: sbatch {script}")
    r = subprocess.run([sbatch, "--parsable", str(script)], capture_output=True, text=True, timeout=120,
                       env=sanitized_environ(os.environ if environ is None else environ))
    if r.returncode != 0:
        why = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"exit status {r.returncode}"
        raise LaunchError(f"sbatch refused {script}: {why}",
                          "fix the Slurm options in the recipe (partition, account, time)")
    return r.stdout.strip().split(";")[0]
