"""Preflight: catch the usual multi-node failures in seconds instead of after a 40-minute load.

Every host is checked in parallel. One probe program runs per host (``python3 -`` over ssh on the configured
port; this interpreter for localhost, without ssh) and reports GPUs (``nvidia-smi``), the model directory's
manifest hash, free /dev/shm, whether every port the job binds there is free (the engine's HTTP port and a
fixed rendezvous port on host 1; the gateway and the disaggregated router on this, the launching, host) and the
engine version (the bundle's ``engine_version_probe`` command). The probe's functions are sent as their own
source, so local and remote hosts run exactly the same code. A gateway that must not run without an API key is
checked here too, against this machine's environment and key file (the supervisor reads the same).

Each failed check is one line naming the host, the cause and the fix; results are data (``to_dict``) for
``--json``.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import shlex
import subprocess
import sys
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from k2trt.errors import K2trtError, LaunchError
from k2trt.gateway.config import read_api_keys
from k2trt.launch.hosts import is_local
from k2trt.launch.mpi import job_hosts
from k2trt.launch.spec import GatewayOptions, HostSlots, LaunchSpec

RENDEZVOUS_VAR = "MASTER_PORT"
"""torch.distributed's rendezvous port: when a spec's environment fixes it, rank 0 binds it on host 1."""


@dataclass(frozen=True)
class Port:
    """A port some process of the job binds on one host."""

    label: str
    """What binds it, as the failure line names it (``HTTP port``, ``gateway port``, …)."""
    bind: str
    """Address it is bound on."""
    port: int
    """The port."""


def manifest_hash(model_dir: str) -> str | None:
    """Fingerprint of a model directory: sha256 over every file's relative path and size, plus the bytes of every
    small (<= 4 MiB) JSON/Python/tokenizer file. Shards are compared by size, not content (hashing 1 TB per node
    is not a preflight). Returns None when the directory does not exist."""
    import hashlib
    import os

    if not os.path.isdir(model_dir):
        return None
    h = hashlib.sha256()
    for root, dirs, files in os.walk(model_dir):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith("."):
                continue
            path = os.path.join(root, name)
            size = os.path.getsize(path)
            h.update(f"{os.path.relpath(path, model_dir)}\t{size}\n".encode())
            if size <= 4 << 20 and name.endswith((".json", ".py", ".model", ".jinja", ".txt")):
                with open(path, "rb") as f:
                    h.update(f.read())
    return h.hexdigest()


def _probe(args: dict) -> dict:  # type: ignore[type-arg]  # runs on the node: stdlib only
    import os
    import socket
    import subprocess

    out: dict = {"hostname": socket.gethostname()}  # type: ignore[type-arg]
    try:
        r = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=60)
        out["gpus"] = [ln.strip() for ln in r.stdout.splitlines() if ln.strip()] if r.returncode == 0 else []
        out["gpu_error"] = None if r.returncode == 0 else (r.stderr.strip() or f"exit {r.returncode}")[-200:]
    except (FileNotFoundError, subprocess.TimeoutExpired) as e:
        out["gpus"], out["gpu_error"] = None, type(e).__name__
    if args.get("model_dir"):
        out["manifest"] = manifest_hash(args["model_dir"])
    try:
        st = os.statvfs("/dev/shm")
        out["shm_free"] = st.f_bavail * st.f_frsize
    except OSError:
        out["shm_free"] = None
    out["ports_busy"] = {}
    for bind, port in args.get("ports", []):
        s = socket.socket(socket.AF_INET6 if ":" in bind else socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do: TIME_WAIT is not "in use"
        try:
            s.bind((bind, port))
        except OSError as e:
            out["ports_busy"][f"{bind}:{port}"] = e.strerror
        finally:
            s.close()
    if args.get("version_probe"):
        try:
            r = subprocess.run(args["version_probe"], capture_output=True, text=True, timeout=120)
            ok = r.returncode == 0 and r.stdout.strip()
            out["engine_version"] = r.stdout.strip().splitlines()[-1] if ok else None
            out["engine_error"] = None if r.returncode == 0 else (r.stderr.strip() or f"exit {r.returncode}")[-200:]
        except (FileNotFoundError, subprocess.TimeoutExpired) as e:
            out["engine_version"], out["engine_error"] = None, f"{type(e).__name__}: {args['version_probe'][0]}"
    return out


PROBE_SOURCE = (inspect.getsource(manifest_hash) + "\n" + inspect.getsource(_probe)
                + "\nimport json, sys\nprint(json.dumps(_probe(json.loads(sys.argv[1]))))\n")


@dataclass(frozen=True)
class Check:
    """One preflight result."""

    host: str
    """Host the check ran against."""
    name: str
    """ssh | gpu | model | shm | port | engine."""
    status: str
    """ok | fail | skip."""
    detail: str
    """What was found (or why skipped)."""
    fix: str = ""
    """What to do about a failure."""

    def line(self) -> str:
        """``host: cause (fix)`` for failures, ``host: name ok/skip: detail`` otherwise."""
        if self.status == "fail":
            return f"{self.host}: {self.detail} (fix: {self.fix})"
        return f"{self.host}: {self.name} {self.status}: {self.detail}"


@dataclass
class PreflightReport:
    """All checks of one preflight run."""

    checks: list[Check] = field(default_factory=list)
    """Results in host order."""

    @property
    def problems(self) -> list[Check]:
        """The failed checks."""
        return [c for c in self.checks if c.status == "fail"]

    def to_dict(self) -> dict[str, Any]:
        """JSON view: ok flag, checks, problem lines."""
        return {"ok": not self.problems, "checks": [asdict(c) for c in self.checks],
                "problems": [c.line() for c in self.problems]}

    def raise_if_failed(self) -> None:
        """LaunchError listing every problem on one line each (the message's first line counts them)."""
        if self.problems:
            body = "\n".join("  " + c.line() for c in self.problems)
            keys = any(c.name == "gateway" for c in self.problems)  # a security rule, not a node check
            raise LaunchError(f"preflight found {len(self.problems)} problem(s):\n{body}",
                              "fix them" + (" (--skip-preflight does not waive the gateway's API key)" if keys
                                            else ", or pass --skip-preflight to launch anyway"))


def _ssh_base(spec: LaunchSpec, host: str) -> list[str]:
    port = ["-p", str(spec.ssh_port)] if spec.ssh_port is not None else []
    return ["ssh", *port, *shlex.split(" ".join(spec.ssh_args)), "-o", "BatchMode=yes", "-o", "ConnectTimeout=10",
            host]


def _run_probe(spec: LaunchSpec, host: str, args: dict[str, Any]) -> tuple[dict[str, Any] | None, str]:
    """Run the probe on ``host``; returns (result, error text)."""
    payload = json.dumps(args)
    if is_local(host):
        cmd = [sys.executable, "-c", PROBE_SOURCE, payload]
        stdin = None
    else:
        cmd = _ssh_base(spec, host) + ["python3", "-", shlex.quote(payload)]
        stdin = PROBE_SOURCE
    try:
        r = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=180)
    except subprocess.TimeoutExpired:
        return None, "probe timed out after 180s"
    except FileNotFoundError as e:
        return None, f"{e.filename} not found"
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or [f"exit status {r.returncode}"])[-1]
        return None, last
    try:
        return json.loads(r.stdout.strip().splitlines()[-1]), ""
    except (json.JSONDecodeError, IndexError):
        return None, f"unreadable probe output: {r.stdout[-200:]!r}"


def _check_host(spec: LaunchSpec, host: HostSlots, ports: list[Port], need_gpus: int,
                job_host: bool = True) -> list[Check]:
    """Probe ``host``; ``job_host=False`` (the launching host, running only the gateway or router) checks ports."""
    h, out = host.name, []
    if not job_host:
        spec = dataclasses.replace(spec, engine="reference", model_dir=None, eplb=False)
    args = {"model_dir": spec.model_dir, "ports": [(p.bind, p.port) for p in ports],
            "version_probe": list(spec.engine_version_probe) if spec.engine == "trtllm" else []}
    res, err = _run_probe(spec, h, args)
    ssh_desc = "local (no ssh)" if is_local(h) else f"port {spec.ssh_port or 22}"
    if res is None:
        if is_local(h):
            return [Check(h, "probe", "fail", f"local probe failed: {err}", "check the Python environment")]
        return [Check(h, "ssh", "fail", f"ssh on {ssh_desc} failed: {err}",
                      f"start sshd on port {spec.ssh_port or 22} on {h} with key auth "
                      f"(`ssh -p {spec.ssh_port or 22} {h} true` must work without a password)")]
    out.append(Check(h, "ssh", "ok" if not is_local(h) else "skip", f"{ssh_desc}, hostname {res['hostname']}"))
    if not job_host:
        out.append(Check(h, "gpu", "skip", "the launching host runs only the gateway or router here"))
    elif spec.engine != "trtllm":
        out.append(Check(h, "gpu", "skip", "reference engine runs on CPU"))
    elif res["gpus"] is None or not res["gpus"]:
        why = "nvidia-smi not found" if res["gpus"] is None else f"nvidia-smi: {res.get('gpu_error')}"
        out.append(Check(h, "gpu", "fail", f"no GPU ({why})", "run the trtllm engine on GPU nodes, "
                         "or serve the reference engine (--engine reference)"))
    else:
        kinds = {g.split(",")[0].strip() for g in res["gpus"]}
        if len(res["gpus"]) < need_gpus:
            out.append(Check(h, "gpu", "fail", f"{len(res['gpus'])} GPUs visible, {need_gpus} needed",
                             "check CUDA_VISIBLE_DEVICES / the container's --gpus, or lower the slots"))
        elif spec.gpu_kind and not all(spec.gpu_kind.lower() in k.lower() for k in kinds):
            out.append(Check(h, "gpu", "fail", f"GPU kind {sorted(kinds)} is not {spec.gpu_kind}",
                             "use nodes of the kind the bundle was planned for, or re-plan"))
        else:
            out.append(Check(h, "gpu", "ok", f"{len(res['gpus'])} x {', '.join(sorted(kinds))}"))
    if spec.model_dir:
        if res.get("manifest") is None:
            out.append(Check(h, "model", "fail", f"model directory {spec.model_dir} is missing",
                             "put the checkpoint at the same path on every node (shared filesystem or rsync)"))
        elif spec.model_manifest_sha256 and res["manifest"] != spec.model_manifest_sha256:
            out.append(Check(h, "model", "fail", f"model directory {spec.model_dir} differs from the bundle's "
                             f"(manifest {res['manifest'][:12]} != {spec.model_manifest_sha256[:12]})",
                             "sync the checkpoint, or rebuild the bundle against this one"))
        else:
            out.append(Check(h, "model", "ok", f"manifest {res['manifest'][:12]}"))
    if spec.eplb:
        free = res.get("shm_free")
        if free is None or free < spec.shm_min_bytes:
            out.append(Check(h, "shm", "fail", f"/dev/shm has {(free or 0) / 2**30:.1f} GiB free, "
                             f"{spec.shm_min_bytes / 2**30:.1f} GiB needed for EPLB",
                             "mount a larger /dev/shm (docker --shm-size, or tmpfs size=...)"))
        else:
            out.append(Check(h, "shm", "ok", f"{free / 2**30:.1f} GiB free"))
    for p in ports:
        busy = res["ports_busy"].get(f"{p.bind}:{p.port}")
        if busy is None:
            out.append(Check(h, "port", "ok", f"{p.label} {p.bind}:{p.port} free"))
        else:
            out.append(Check(h, "port", "fail", f"{p.label} {p.port} is in use ({busy})",
                             f"stop what listens on {p.port} (`k2trt stop BUNDLE`?) or choose another port"))
    if spec.engine == "trtllm":
        if not spec.engine_version_probe or not spec.engine_version:
            out.append(Check(h, "engine", "skip", "bundle names no engine version to compare"))
        elif res.get("engine_version") != spec.engine_version:
            found = res.get("engine_version") or f"none ({res.get('engine_error')})"
            out.append(Check(h, "engine", "fail", f"engine version {found} != bundle's {spec.engine_version}",
                             f"run the container/release {spec.engine_version} the bundle was built for"))
        else:
            out.append(Check(h, "engine", "ok", spec.engine_version))
    return out


def gateway_keys(opts: GatewayOptions, environ: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """The API keys the bundle's gateway accepts, read from its environment variable and key file on this host.

    Args:
        opts: the spec's gateway options (``api_key_env``, ``api_key_file``, ``require_key``).
        environ: the environment to read (default: this process's).
    Returns:
        The keys (empty: the gateway runs without authentication, allowed only without ``require_key``).
    Raises:
        LaunchError: the key file cannot be read, or ``require_key`` is set and no key was found.
    Example:
        >>> gateway_keys(GatewayOptions(8080, api_key_env="KEYS"), {"KEYS": "k1 k2"})
        ('k1', 'k2')
    """
    try:
        keys = read_api_keys(opts.api_key_env, opts.api_key_file, environ)
    except K2trtError as e:
        raise LaunchError(f"the gateway's API keys: {e}") from None
    if keys or not opts.require_key:
        return keys
    where = " and ".join(w for w in (f"${opts.api_key_env} is empty" if opts.api_key_env else "",
                                      f"{opts.api_key_file} holds none" if opts.api_key_file else "") if w)
    how = f"export {opts.api_key_env}='KEY …'" if opts.api_key_env else f"put keys in {opts.api_key_file}"
    raise LaunchError(f"the gateway listens on {opts.host}:{opts.port} and requires an API key, but "
                      f"{where or 'no key source is configured'}",
                      f"{how}, or rebuild with serve.gateway_auth: optional to serve without keys")


def _gateway_check(spec: LaunchSpec) -> Check:
    assert spec.gateway is not None
    try:
        n = len(gateway_keys(spec.gateway))
    except LaunchError as e:
        return Check("localhost", "gateway", "fail", str(e.args[0]), e.hint or "")
    return Check("localhost", "gateway", "ok" if n else "skip",
                 f"{n} API key(s)" if n else f"no API key: {spec.gateway.host}:{spec.gateway.port} is open")


def job_ports(spec: LaunchSpec, bundle_dir: Path | None = None) -> dict[str, list[Port]]:
    """Every port the job binds, by host name (``localhost`` for the launching host's gateway and router).

    Example: a one-host spec with a gateway → ``{"localhost": [Port("HTTP port", "0.0.0.0", 8000),
    Port("gateway port", "127.0.0.1", 8080)]}``.
    """
    ports: dict[str, list[Port]] = {}
    if spec.disagg is None:
        first = job_hosts(spec, bundle_dir)[0].name
        ports[first] = [Port("HTTP port", spec.http_host, spec.http_port)]
        rendezvous = spec.env.get(RENDEZVOUS_VAR, "")
        if rendezvous.isdigit():
            ports[first].append(Port(f"rendezvous port ({RENDEZVOUS_VAR})", "0.0.0.0", int(rendezvous)))
    else:
        for role in spec.disagg.ctx + spec.disagg.gen:
            first = (role.hosts or (HostSlots("localhost", role.world_size),))[0].name
            ports.setdefault(first, []).append(Port(f"{role.name} HTTP port", spec.http_host, role.http_port))
        ports.setdefault("localhost", []).append(Port("router port", spec.http_host, spec.disagg.router_port))
    if spec.gateway is not None:
        ports.setdefault("localhost", []).append(Port("gateway port", spec.gateway.host, spec.gateway.port))
    return ports


def run_preflight(spec: LaunchSpec, bundle_dir: Path | None = None, launcher: str = "mpirun") -> PreflightReport:
    """Check every host of the job in parallel; returns the report (raises nothing for failed checks).

    Under Slurm the nodes are unknown before allocation, so only this machine's view of the model is checked.
    """
    ports: dict[str, list[Port]] = {}
    hosts: dict[str, HostSlots] = {}
    if launcher == "slurm":
        hosts["localhost"] = HostSlots("localhost", 1)
        spec = dataclasses.replace(spec, engine="reference", eplb=False, gateway=None)  # node checks run in the job
    else:
        ports = job_ports(spec, bundle_dir)
        if spec.disagg is None:
            hosts.update((h.name, h) for h in job_hosts(spec, bundle_dir))
        else:
            for role in spec.disagg.ctx + spec.disagg.gen:
                for h in role.hosts or (HostSlots("localhost", role.world_size),):
                    hosts.setdefault(h.name, h)
    need = spec.gpus_per_node or max(h.slots for h in hosts.values())
    launching = [HostSlots(name, 1) for name in ports if name not in hosts]  # the gateway's or router's host only
    every = [(h, True) for h in hosts.values()] + [(h, False) for h in launching]
    with ThreadPoolExecutor(max_workers=min(32, len(every))) as pool:
        results = list(pool.map(lambda hj: _check_host(spec, hj[0], ports.get(hj[0].name, []), need, hj[1]),
                                every))
    checks = [c for r in results for c in r]
    if spec.gateway is not None:
        checks.append(_gateway_check(spec))
    if spec.model_dir:  # every node must see the same model, whatever the bundle expected
        hashes = {c.host: c.detail for c in checks if c.name == "model" and c.status == "ok"}
        if len(set(hashes.values())) > 1:
            first = next(iter(hashes))
            checks += [Check(h, "model", "fail", f"model directory differs from {first}'s ({d} vs {hashes[first]})",
                             "sync the checkpoint so every node has identical files")
                       for h, d in hashes.items() if d != hashes[first]]
    return PreflightReport(checks)
