"""From a LaunchSpec to a running (or dry-run, or submitted) job: the one library call behind ``k2trt serve``.

``plan_launch`` turns the spec into exact commands and files for the chosen launcher without running anything
(``--dry-run`` prints it). ``serve`` runs preflight, then either supervises in the foreground, hands the job to
a detached supervisor process (``python -m k2trt.launch.runner``, its own session, same code) or writes and
submits the sbatch script. With the job's log format ``json`` the supervising process logs JSON lines
(``joblog.use_job_logs``); the command's own result (stdout) and a failure's one-line error stay as they are.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import shlex
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from k2trt.errors import ConfigError, K2trtError, LaunchError
from k2trt.fsio import atomic_write
from k2trt.jsonlog import LOG_FORMATS, LogFormat
from k2trt.launch import preflight as pf
from k2trt.launch import procs
from k2trt.launch.joblog import use_job_logs
from k2trt.launch.mpi import MpiFlavor, detect_mpi, job_hosts, launch_environ, mpirun_argv, resolve_mpirun
from k2trt.launch.hosts import HostList, format_hosts, parse_host_list, read_hostfile
from k2trt.launch.process import JobCommand, Outcome, Supervisor
from k2trt.launch.slurm import SBATCH_FILE, default_mounts, sbatch_script, submit
from k2trt.launch.spec import LAUNCH_FILE, HostSlots, LauncherKind, LaunchSpec, probe_address
from k2trt.launch.state import STATE_FILE, StateFile, check_not_running, read_state

log = logging.getLogger("k2trt.launch")


def find_spec(target: Path, engine: str | None = None) -> Path:
    """The launch file for ``target`` (a bundle directory or a launch JSON file).

    A bundle may hold ``launch.json`` and per-engine ``launch.<engine>.json``; ``engine`` picks the latter when
    present. Raises ConfigError when nothing fits.
    """
    if target.is_file():
        return target
    if not target.is_dir():
        raise ConfigError(f"{target} is neither a bundle directory nor a launch file",
                          "pass the directory `k2trt build` wrote, or --spec launch.json")
    if engine and (target / f"launch.{engine}.json").is_file():
        return target / f"launch.{engine}.json"
    return target / LAUNCH_FILE


def load_spec(target: Path, engine: str | None = None) -> tuple[LaunchSpec, Path, Path]:
    """Load and validate the spec. Returns (spec, spec_path, bundle_dir); ``--engine`` must match the spec."""
    path = find_spec(target, engine)
    spec = LaunchSpec.load(path)
    if engine and spec.engine != engine:
        raise ConfigError(f"{path} launches the {spec.engine} engine, not {engine}",
                          f"build the bundle for --engine {engine}, or drop --engine")
    return spec, path, path.parent


def with_hosts(spec: LaunchSpec, hosts: HostList | str | None = None, hostfile: Path | None = None,
               bundle_dir: Path | None = None) -> LaunchSpec:
    """``spec`` with its hosts replaced by ``-H host1:8,host2:8`` or a hostfile (command-line overrides).

    A host given without ``:N`` takes the bundle's GPUs per node (``gpus_per_node``, else the most slots any of
    its hosts has), as ``k2trt build --hosts`` does with the recipe's.
    """
    if hosts and hostfile:
        raise LaunchError("give either -H/--hosts or --hostfile, not both", "keep one of them")
    if spec.disagg is not None and (hosts or hostfile):
        raise LaunchError("-H/--hostfile cannot re-place a disaggregated deployment", "edit the roles' hosts")
    if hosts:
        given = parse_host_list(hosts) if isinstance(hosts, str) else hosts
        per_node = spec.gpus_per_node or max(h.slots for h in job_hosts(spec, bundle_dir))
        return dataclasses.replace(spec, hosts=given.with_slots(per_node), hostfile=None).validate()
    if hostfile:
        return dataclasses.replace(spec, hosts=read_hostfile(hostfile), hostfile=None).validate()
    return spec


@dataclass
class LaunchPlan:
    """What a launch would run and write; printed by ``--dry-run``."""

    launcher: LauncherKind
    """mpirun or slurm."""
    stages: list[list[JobCommand]]
    """Commands per stage (mpirun); empty for slurm, which runs the script instead."""
    files: dict[str, str]
    """Files written before launching (path → content)."""
    writes: list[str]
    """Paths written while running (logs, state file)."""
    url: str
    """Client-facing URL once ready."""
    mpi: str | None = None
    """Detected MPI, e.g. ``Open MPI 5.0.11`` (None for slurm)."""
    notes: list[str] = field(default_factory=list)
    """Why the command looks the way it does (version-specific spellings)."""

    def to_dict(self) -> dict[str, Any]:
        """JSON view with argv lists and their shell rendering."""
        return {"launcher": self.launcher, "mpi": self.mpi, "url": self.url, "notes": self.notes,
                "commands": [{"stage": i, "name": c.name, "argv": list(c.argv), "shell": shlex.join(c.argv),
                              "probe_url": c.probe_url} for i, st in enumerate(self.stages) for c in st],
                "files": self.files, "writes": self.writes}

    def render(self) -> str:
        """Human view: every command with shlex quoting, then every file with its content."""
        out = [f"# launcher: {self.launcher}" + (f" ({self.mpi})" if self.mpi else ""), f"# url: {self.url}"]
        out += [f"# note: {n}" for n in self.notes]
        for i, stage in enumerate(self.stages):
            for c in stage:
                out.append(f"# stage {i}: {c.name}" + (f" (ready: {c.probe_url})" if c.probe_url else ""))
                out.append(shlex.join(c.argv))
        for path, text in self.files.items():
            out += [f"# file: {path}", text.rstrip("\n")]
        out += [f"# writes: {w}" for w in self.writes]
        return "\n".join(out)


def plan_launch(spec: LaunchSpec, bundle_dir: Path, *, launcher: LauncherKind | None = None,
                environ: Mapping[str, str] | None = None, euid: int | None = None,
                flavor: MpiFlavor | None = None, job_id: str = "JOBID") -> LaunchPlan:
    """Exact commands and files for ``launcher`` (default: the spec's); runs only ``mpirun --version``.

    Args:
        spec, bundle_dir: the validated spec and the directory its relative paths refer to.
        launcher: override ``spec.launcher``.
        environ, euid: launching environment and user (default: this process's).
        flavor: MPI flavour to spell for (default: detected from ``spec.mpirun``).
        job_id: value of the job marker exported to every rank.
    """
    launcher = launcher or spec.launcher
    environ = os.environ if environ is None else environ
    euid = os.geteuid() if euid is None else euid
    log_dir = bundle_dir / spec.log_dir
    writes = [str(log_dir) + "/", str(log_dir / STATE_FILE)]
    if launcher == "slurm":
        path = bundle_dir / SBATCH_FILE
        mounts = [f"container mount (default, {why}): {m}" for m, why in default_mounts(spec, bundle_dir)]
        return LaunchPlan("slurm", [], {str(path): sbatch_script(spec, bundle_dir)}, writes, spec.base_url(),
                          notes=["submit with --submit (runs sbatch); logs go to the log directory", *mounts])
    flavor = flavor or detect_mpi(spec.mpirun)
    # an absolute mpirun also tells Open MPI where its daemons live on the other nodes (same path everywhere)
    spec = dataclasses.replace(spec, mpirun=resolve_mpirun(spec.mpirun) or spec.mpirun)
    env = launch_environ(environ, spec, job_id)
    notes = [f"ssh port via {'-mca plm_rsh_args' if flavor.major < 5 else '--prtemca plm_ssh_args'} "
             f"for Open MPI {flavor.major}.x"] if spec.ssh_port or spec.ssh_args else []
    if spec.disagg is None:
        hosts = job_hosts(spec, bundle_dir)
        url = f"http://{probe_address(spec.probe_host, hosts)}:{spec.http_port}"
        cmd = JobCommand("server", tuple(mpirun_argv(spec, flavor, euid=euid, environ=environ,
                                                     bundle_dir=bundle_dir)), env, url)
        return LaunchPlan("mpirun", [[cmd]], {}, writes, url, flavor.describe(), notes)
    servers = []
    for role in spec.disagg.ctx + spec.disagg.gen:
        hosts = role.hosts or (HostSlots("localhost", role.world_size),)
        argv = mpirun_argv(spec, flavor, euid=euid, environ=environ, argv=role.argv, world_size=role.world_size,
                           hosts=hosts)
        servers.append(JobCommand(role.name, tuple(argv), env,
                                  f"http://{probe_address(role.probe_host, hosts)}:{role.http_port}"))
    router = JobCommand("router", spec.disagg.router_argv, env, spec.base_url(), tagged=False)
    return LaunchPlan("mpirun", [servers, [router]], {}, writes, spec.base_url(), flavor.describe(),
                      notes + ["servers start first; the router starts once every server is ready"])


def _start_gateway(spec: LaunchSpec, engine_url: str, keys: tuple[str, ...]) -> Any:
    """The gateway in a thread of this (supervising) process, in front of the engine at ``engine_url``, accepting
    ``keys`` (read from the environment or a file by ``preflight.gateway_keys``, never from argv), with the
    bundle's settings (``GatewayOptions``: served name, limits, context) and the job's log format."""
    from k2trt.gateway import BackgroundGateway

    assert spec.gateway is not None
    url = f"http://{spec.gateway.host}:{spec.gateway.port}"
    cfg = spec.gateway.config(engine_url, spec.model_dir, keys, spec.log_format)
    try:
        return BackgroundGateway(cfg.validate()).start()
    except (K2trtError, OSError) as e:
        detail = str(e.args[0]) if e.args else type(e).__name__
        raise LaunchError(f"the gateway could not start on {url}" + ("" if url in detail else f": {detail}"),
                          f"is port {spec.gateway.port} free? free it, or rebuild with another "
                          "serve.gateway_port") from None


def _supervise(spec: LaunchSpec, plan: LaunchPlan, log_dir: Path, state: StateFile, job_id: str, *,
               echo: Callable[[str], None] | None, progress: bool,
               after_ready: Callable[[], None] | None = None) -> Outcome:
    """Run the job to its end and record the outcome; a gateway that cannot start fails the whole job."""
    gateways: list[Any] = []
    try:  # before anything starts: a gateway that needs a key and has none must not cost an engine load
        keys = pf.gateway_keys(spec.gateway) if spec.gateway is not None else ()
    except LaunchError as e:
        state.update(status="failed", message=str(e), job="gateway", tail=[], leftover=[])
        raise

    def on_state(status: str, info: dict[str, Any]) -> None:
        # the gateway is up before "ready" is recorded, so a detached `serve` returns only once clients can connect
        if status == "ready" and spec.gateway is not None and not gateways:
            try:
                gateways.append(_start_gateway(spec, plan.url, keys))
            except LaunchError as e:  # the job cannot serve clients: the whole job fails, as when a rank dies
                sup.fail(f"{e}; whole job torn down", job="gateway")
                return
            info = {**info, "gateway_url": gateways[0].url}
            say(f"gateway: {gateways[0].url}/v1 (OpenAI) and {gateways[0].url}/v1/messages (Anthropic)")
        state.on_state(status, info)

    def say(line: str) -> None:  # the supervisor's own messages: echoed as text, logged as JSON
        if spec.log_format == "json":
            log.info(line)
        elif echo is not None:
            echo(line)

    sup = Supervisor(plan.stages, log_dir, ready_timeout_s=spec.ready_timeout_s, grace_s=spec.stop_grace_s,
                     job_id=job_id, echo=echo, progress=progress, on_state=on_state, ready_paths=spec.ready_paths,
                     log_format=spec.log_format)

    def log_ready() -> None:  # as JSON, a caller's text "ready" line would be the one line that is not JSON
        log.info("ready: %s", plan.url, extra={"url": plan.url})

    try:
        with sup:
            outcome = sup.run(after_ready=log_ready if spec.log_format == "json" else after_ready)
    finally:
        for gw in gateways:
            gw.stop()
    state.update(status=outcome.status, message=outcome.message, rank=outcome.rank, job=outcome.job,
                 tail=outcome.tail, leftover=outcome.leftover)
    if spec.log_format == "json":
        log.log(logging.INFO if outcome.status == "stopped" else logging.ERROR, "%s: %s", outcome.status,
                outcome.message, extra={"status": outcome.status, "rank": outcome.rank, "job": outcome.job})
    return outcome


def serve(target: Path, *, engine: str | None = None, launcher: LauncherKind | None = None, detach: bool = False,
          dry_run: bool = False, skip_preflight: bool = False, do_submit: bool = False,
          hosts: HostList | str | None = None,
          hostfile: Path | None = None, gateway: bool = True,
          echo: Callable[[str], None] | None = print, progress: bool = True,
          after_ready: Callable[[str], None] | None = None, log_format: LogFormat | None = None) -> dict[str, Any]:
    """Preflight, then launch (foreground, detached, or a Slurm submit); the body of ``k2trt serve``.

    Returns a result dict: ``{"status", "url", "plan", "preflight", ...}``; foreground runs return when the job
    ends (``status`` stopped / failed / timeout, with ``message``, ``rank``, ``tail``). Raises LaunchError when
    preflight finds problems (unless ``skip_preflight``). ``gateway=False`` skips the bundle's gateway;
    ``log_format`` replaces the bundle's (``json``: a foreground run makes this process log JSON lines, and logs
    its "ready" line instead of calling ``after_ready``).
    """
    spec, spec_path, bundle_dir = load_spec(target, engine)
    spec = with_hosts(spec, hosts, hostfile, bundle_dir)
    if not gateway:
        spec = dataclasses.replace(spec, gateway=None)
    if log_format is not None:
        spec = dataclasses.replace(spec, log_format=log_format).validate()
    job_id = uuid.uuid4().hex[:16]
    if dry_run:  # without --launcher: show what every launcher would do
        plans: dict[str, Any] = {}
        texts = []
        for kind in ([launcher] if launcher else ["mpirun", "slurm"]):
            try:
                p = plan_launch(spec, bundle_dir, launcher=kind, job_id=job_id)  # type: ignore[arg-type]
                plans[kind], text = p.to_dict(), p.render()
            except LaunchError as e:
                plans[kind], text = {"error": str(e)}, f"# launcher: {kind}: not available: {e}"
            texts.append(text)
        return {"status": "dry-run", "url": spec.base_url(), "spec": str(spec_path), "plans": plans,
                "text": "\n\n".join(texts)}
    launcher = launcher or spec.launcher
    plan = plan_launch(spec, bundle_dir, launcher=launcher, job_id=job_id)
    result: dict[str, Any] = {"url": plan.url, "spec": str(spec_path), "plan": plan.to_dict()}
    log_dir = bundle_dir / spec.log_dir
    state_path = log_dir / STATE_FILE
    if launcher != "slurm":  # an earlier job of this bundle explains busy ports better than preflight can
        check_not_running(state_path)
    if not skip_preflight:
        report = pf.run_preflight(spec, bundle_dir, launcher=launcher)
        result["preflight"] = report.to_dict()
        report.raise_if_failed()
    if launcher == "slurm":
        script = next(iter(plan.files))
        atomic_write(script, plan.files[script], perm=0o755)
        log_dir.mkdir(parents=True, exist_ok=True)
        if not do_submit:
            return {"status": "written", **result, "script": script}
        return {"status": "submitted", **result, "script": script, "slurm_job": submit(Path(script))}
    if detach:
        argv = child_argv(spec_path, launcher, job_id, hosts=spec.hosts if hosts or hostfile else None,
                          gateway=gateway, log_format=spec.log_format)
        return {**result, **_detach(argv, log_dir, state_path, spec.ready_timeout_s, progress)}
    use_job_logs(spec.log_format, job_id)
    state = StateFile(state_path, supervisor_pid=os.getpid(), pids=[], job_id=job_id, url=plan.url,
                      bundle=str(bundle_dir), spec=str(spec_path), log_dir=str(log_dir), launcher=launcher,
                      ready_paths=list(spec.ready_paths), detached=False)
    outcome = _supervise(spec, plan, log_dir, state, job_id, echo=echo, progress=progress,
                         after_ready=(lambda: after_ready(plan.url)) if after_ready else None)
    return {**result, "status": outcome.status, "message": outcome.message, "rank": outcome.rank,
            "job": outcome.job, "tail": outcome.tail, "leftover": outcome.leftover, "log_dir": str(log_dir),
            "exit_code": outcome.exit_code}


def _detach(argv: list[str], log_dir: Path, state_path: Path, timeout_s: float, progress: bool) -> dict[str, Any]:
    """Start the supervisor (``argv``) as its own session and wait until it reports ready or failed."""
    log_dir.mkdir(parents=True, exist_ok=True)
    state_path.unlink(missing_ok=True)
    with open(log_dir / "supervisor.log", "ab") as log:
        child = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                 start_new_session=True)
    bar = None
    if progress and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=int(timeout_s), unit="s", desc="waiting for readiness (detached)", file=sys.stderr,
                   bar_format="{desc} {bar} {n:.0f}/{total:.0f}s")
    start = time.monotonic()
    try:
        while True:
            data = read_state(state_path) if state_path.is_file() else {}
            st = data.get("status")
            if st == "ready":
                return {"status": "ready", "supervisor_pid": child.pid, "state_file": str(state_path),
                        "log_dir": str(log_dir), "detached": True, "gateway_url": data.get("gateway_url")}
            if st in ("failed", "timeout", "stopped") or child.poll() is not None:
                child.wait(timeout=60)
                data = read_state(state_path) if state_path.is_file() else {}
                # anything but a recorded end (a supervisor that died before it could say why) is a failure
                ended = data.get("status") in ("failed", "timeout", "stopped")
                why = f"the detached supervisor exited with status {child.returncode} before the job was ready"
                return {"status": data["status"] if ended else "failed",
                        "message": data.get("message") if ended else f"{why}; see {log_dir}/supervisor.log",
                        "rank": data.get("rank"), "tail": data.get("tail", []), "log_dir": str(log_dir),
                        "exit_code": 1, "detached": True}
            if bar is not None:
                bar.n = min(int(time.monotonic() - start), bar.total)
                bar.refresh()
            time.sleep(0.3)
    finally:
        if bar is not None:
            bar.close()


def child_parser() -> argparse.ArgumentParser:
    """The command line of the detached supervisor, ``python -m k2trt.launch.runner`` (``child_argv`` writes it)."""
    ap = argparse.ArgumentParser(prog="python -m k2trt.launch.runner")
    ap.add_argument("--spec", required=True, type=Path)
    ap.add_argument("--launcher", default="mpirun")
    ap.add_argument("--job-id", required=True)
    ap.add_argument("--hosts", default=None)
    ap.add_argument("--no-gateway", action="store_true")
    ap.add_argument("--log-format", choices=LOG_FORMATS, default=None)
    return ap


def child_argv(spec_path: Path, launcher: str, job_id: str, *, hosts: tuple[HostSlots, ...] | None = None,
               gateway: bool = True, log_format: LogFormat | None = None) -> list[str]:
    """The detached supervisor's command, spelled for :func:`child_parser`.

    Args:
        spec_path: the launch file; launcher and job_id: as the foreground run resolved them.
        hosts: a command-line placement to keep (written with explicit slots), else None.
        gateway: start the bundle's gateway.
        log_format: the job's log format (None: the bundle's).
    Returns:
        ``[python, "-m", "k2trt.launch.runner", "--spec", …]``.
    """
    argv = [sys.executable, "-m", "k2trt.launch.runner", "--spec", str(spec_path), "--launcher", launcher,
            "--job-id", job_id]
    argv += ["--hosts", format_hosts(hosts)] if hosts else []
    argv += ["--log-format", log_format] if log_format else []
    return argv + ([] if gateway else ["--no-gateway"])


def _child_main(argv: list[str] | None = None) -> int:
    """Entry of the detached supervisor: same plan and supervision, logs to files only (its own lines to stderr,
    which ``_detach`` points at ``supervisor.log``)."""
    a = child_parser().parse_args(argv)
    if a.log_format == "json":  # first, so that whatever follows (an error included) is JSON
        use_job_logs("json", a.job_id)
    try:
        spec, spec_path, bundle_dir = load_spec(a.spec)
        spec = with_hosts(spec, a.hosts, bundle_dir=bundle_dir)
        if a.no_gateway:
            spec = dataclasses.replace(spec, gateway=None)
        if a.log_format is not None:
            spec = dataclasses.replace(spec, log_format=a.log_format)
        log_dir = bundle_dir / spec.log_dir
        plan = plan_launch(spec, bundle_dir, launcher=a.launcher, job_id=a.job_id)
        state = StateFile(log_dir / STATE_FILE, supervisor_pid=os.getpid(), pids=[], job_id=a.job_id,
                          url=plan.url, bundle=str(bundle_dir), spec=str(spec_path), log_dir=str(log_dir),
                          launcher=a.launcher, ready_paths=list(spec.ready_paths), detached=True)
        outcome = _supervise(spec, plan, log_dir, state, a.job_id, echo=None, progress=False)
    except (LaunchError, ConfigError) as e:
        if a.log_format == "json":
            log.error("error: %s", e)
        else:
            print(f"error: {e}", file=sys.stderr)
        return 2
    if spec.log_format != "json":  # as JSON, _supervise logged the end
        print(f"{outcome.status}: {outcome.message}", flush=True)
    return outcome.exit_code


def state_path_for(target: Path, engine: str | None = None) -> Path:
    """The state file of a bundle (or of a launch file, or the state file itself)."""
    if target.is_file() and target.name == STATE_FILE:
        return target
    spec, _, bundle_dir = load_spec(target, engine)
    return bundle_dir / spec.log_dir / STATE_FILE


def leftover_processes(state_path: Path) -> list[procs.ProcInfo]:
    """Processes of the job recorded in ``state_path`` still alive on this machine (for checks and tests)."""
    from k2trt.launch.state import job_processes

    return job_processes(read_state(state_path))


if __name__ == "__main__":
    sys.exit(_child_main())
