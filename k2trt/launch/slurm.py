"""The Slurm launcher: one sbatch script that runs every rank with ``srun --mpi=pmix``.

Variable hygiene, because Slurm variables nest badly:
- ``submit`` runs sbatch with the caller's ``SLURM_*`` variables removed (``SLURM_CONF`` kept). Submitting from
  inside an allocation would otherwise carry the outer job's task counts and memory settings into the new job
  (sbatch exports the whole environment), and srun there would inherit them.
- srun is given ``--nodes``, ``--ntasks`` and ``--ntasks-per-node`` explicitly rather than inheriting the batch
  step's values, because the engine's launch wrapper takes its world size from ``SLURM_NTASKS`` and its rank from
  ``SLURM_PROCID`` (before any MPI variable), so both must describe exactly this step.
- ``--kill-on-bad-exit=1``: one rank dying ends the step, the Slurm analogue of the mpirun supervisor.

Container mounts: with ``slurm.container_image`` set, every path the job reads or writes (the model directory, the
bundle with its config, the log directory, and any other absolute path on the engine's command line) is mounted at
the same path inside the container unless a ``slurm.container_mounts`` entry already maps it; the default mounts are
listed in the script and in ``k2trt serve --launcher slurm --dry-run``.
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
from k2trt.launch.mpi import JOB_ID_VAR, LOG_FORMAT_VAR
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


_FILE_SUFFIXES = (".yml", ".yaml", ".json", ".txt", ".jinja", ".py", ".sh")


def _covered(path: str, dests: list[str]) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in dests)


def default_mounts(spec: LaunchSpec, bundle_dir: Path) -> list[tuple[str, str]]:
    """``(SRC:DST, why)`` identity mounts for every path the job uses that no ``container_mounts`` entry maps.

    Empty without a container image. A path inside another mounted path adds nothing; a file on the command line
    mounts its directory.

    Example: a spec with ``model_dir="/lustre/K2"`` and bundle ``/scratch/b`` gives
    ``[("/lustre/K2:/lustre/K2", "model"), ("/scratch/b:/scratch/b", "bundle, config and logs")]``.
    """
    if not spec.slurm.container_image:
        return []
    dests = [m.split(":")[1] if ":" in m else m for m in spec.slurm.container_mounts]
    bundle = str(bundle_dir.absolute())
    log_dir = str((bundle_dir / spec.log_dir).absolute())
    wanted: list[tuple[str, str]] = []
    if spec.model_dir:
        wanted.append((spec.model_dir, "model"))
    wanted += [(bundle, "bundle, config and logs"), (log_dir, "logs")]
    for arg in spec.argv:
        value = arg.split("=", 1)[1] if arg.startswith("--") and "=" in arg else arg
        if value.startswith("/") and not value.startswith(("/dev/", "/proc/", "/sys/")):
            path = str(Path(value).parent) if value.endswith(_FILE_SUFFIXES) else value
            wanted.append((path, "engine command line"))
    out: list[tuple[str, str]] = []
    for path, why in wanted:
        if not _covered(path, dests):
            out.append((f"{path}:{path}", why))
            dests.append(path)
    return out


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
    if spec.log_format == "json":  # ranks that can log JSON do (srun's own lines stay text)
        lines.append(f"export {LOG_FORMAT_VAR}={spec.log_format}")
    srun = ["srun", f"--nodes={nodes}", f"--ntasks={spec.world_size}", f"--ntasks-per-node={per_node}",
            f"--mpi={s.mpi}", "--kill-on-bad-exit=1", "--export=ALL",
            f"--output={log_dir / 'server.rank%t.log'}"]
    mounts = default_mounts(spec, bundle_dir)
    if mounts:
        lines += [f"# container mount (default, {why}): {m}" for m, why in mounts]
    if s.container_image:
        srun.append(f"--container-image={s.container_image}")
        all_mounts = list(s.container_mounts) + [m for m, _ in mounts]
        if all_mounts:
            srun.append(f"--container-mounts={','.join(all_mounts)}")
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
