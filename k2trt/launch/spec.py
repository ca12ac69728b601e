"""The contract between ``k2trt build`` and ``k2trt serve``: ``LaunchSpec``, stored as ``BUNDLE/launch.json``.

The bundle builder decides *what* runs on every rank (the engine argv, world size, hosts, ports, environment);
the launcher decides *how* it is started (mpirun spelling per MPI version, Slurm script, supervision). Nothing in
here knows an engine flag: ``argv`` is opaque. Relative paths (``log_dir``) are relative to the bundle directory.

JSON round-trip: ``LaunchSpec.from_dict(spec.to_dict()) == spec``; unknown keys are rejected with a "did you
mean" hint, so a typo in a hand-edited ``launch.json`` is an error rather than a silently ignored setting.

Example::

    spec = LaunchSpec(engine="reference", argv=("python", "-m", "k2trt.reference.serve", "/m", "--port", "8000"),
                      world_size=2, http_port=8000)
    spec.dump(bundle / LAUNCH_FILE)
    assert LaunchSpec.load(bundle / LAUNCH_FILE) == spec
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from k2trt.errors import ConfigError
from k2trt.fsio import atomic_write_json, read_mapping
from k2trt.gateway.config import GatewayConfig, GatewayLimits
from k2trt.jsonlog import DEFAULT_LOG_FORMAT, LogFormat
from k2trt.trtllm.deploy import ENV_FORWARD

EngineKind = Literal["trtllm", "reference"]
LauncherKind = Literal["mpirun", "slurm"]
SCHEMA_VERSION = 1
LAUNCH_FILE = "launch.json"
DEFAULT_READY_PATHS = ("/health_generate", "/health")
DEFAULT_ENV_FORWARD = ENV_FORWARD
"""Launching-environment variables forwarded to every rank by default: what the production engine's ranks read
(the engine's own list, ``k2trt.trtllm.deploy.ENV_FORWARD``)."""
LOCAL_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def is_loopback(host: str) -> bool:
    """True when a listen address reaches only this machine (``127.0.0.0/8``, ``::1``, ``localhost``).

    Example: ``is_loopback("0.0.0.0")`` → False.
    """
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it resolves to some interface, assume beyond loopback
        return False


@dataclass(frozen=True)
class HostSlots:
    """One node of the job and how many ranks it runs."""

    name: str
    """Host name or address as ssh and MPI reach it; ``localhost`` means this machine (no ssh)."""
    slots: int = 1
    """Ranks placed on this host, normally its GPU count (ranks fill hosts in list order, by slot)."""


@dataclass(frozen=True)
class SlurmOptions:
    """How ``--launcher slurm`` writes the sbatch script (ignored by mpirun)."""

    partition: str | None = None
    """``#SBATCH --partition``; None leaves the cluster default."""
    account: str | None = None
    """``#SBATCH --account``; None leaves the user's default account."""
    time: str = "04:00:00"
    """``#SBATCH --time`` wall-clock limit (HH:MM:SS or D-HH:MM:SS)."""
    job_name: str = "k2trt-serve"
    """``#SBATCH --job-name``."""
    nodes: int | None = None
    """Node count; None derives it from ``hosts`` (or world_size / ntasks_per_node)."""
    ntasks_per_node: int | None = None
    """Ranks per node; None takes the first host's slots (the GPU count per node)."""
    gpus_per_node: int | None = None
    """``#SBATCH --gres=gpu:N``; None omits the request (the engine reference runs on CPU)."""
    mpi: str = "pmix"
    """``srun --mpi=`` plugin; pmix is what the engine's MPI expects under Slurm."""
    container_image: str | None = None
    """pyxis ``--container-image`` (e.g. an NGC release image); None runs on the bare node."""
    container_mounts: tuple[str, ...] = ()
    """pyxis ``--container-mounts`` entries ``SRC:DST[:FLAGS]``; the model and bundle paths must be mounted."""
    container_workdir: str | None = None
    """pyxis ``--container-workdir``; None keeps the image's default."""
    extra_sbatch: tuple[str, ...] = ()
    """Further sbatch options, one per entry, e.g. ``--exclusive`` or ``--qos=high``."""
    setup: tuple[str, ...] = ()
    """Shell lines run in the batch script before srun (``module load …``); never secrets."""


@dataclass(frozen=True)
class RoleSpec:
    """One server instance of a disaggregated deployment (a context or a generation server)."""

    name: str
    """Unique name, used for log file names (``ctx0``, ``gen0``)."""
    argv: tuple[str, ...]
    """Per-rank command of this instance, exactly as every rank runs it."""
    world_size: int
    """Ranks of this instance (tp × pp)."""
    http_port: int
    """Port this instance's rank 0 serves HTTP on; the router's config names the same port."""
    hosts: tuple[HostSlots, ...] = ()
    """Hosts of this instance; empty means this machine with ``world_size`` slots."""
    probe_host: str | None = None
    """Address to probe readiness on; None uses the first host (127.0.0.1 for this machine)."""


@dataclass(frozen=True)
class DisaggSpec:
    """A disaggregated deployment: context servers, generation servers and the router in front of them."""

    ctx: tuple[RoleSpec, ...]
    """Context (prefill) server instances, each its own MPI job."""
    gen: tuple[RoleSpec, ...]
    """Generation (decode) server instances, each its own MPI job."""
    router_argv: tuple[str, ...]
    """The router's command, one process on the launching host, started once every server is ready."""
    router_port: int
    """Port the router serves clients on."""
    router_host: str = "127.0.0.1"
    """Address to probe the router's readiness on."""


@dataclass(frozen=True)
class GatewayOptions:
    """The k2trt gateway (OpenAI + Anthropic APIs, Kimi tool calls) that ``k2trt serve`` runs in front of the
    engine once it is ready, in the supervising process on the launching host."""

    port: int
    """Port clients use (OpenAI base URL ``http://HOST:PORT/v1``, Anthropic ``http://HOST:PORT``)."""
    host: str = "127.0.0.1"
    """Address the gateway binds (0.0.0.0 to serve other machines)."""
    mode: str = "render"
    """``render``: the gateway renders K2 prompts and parses tool calls; ``passthrough``: the engine does both
    (TensorRT-LLM with its kimi_k2 tool parser)."""
    api_key_env: str | None = None
    """Environment variable on the launching host holding the accepted API keys (whitespace-separated), read when
    the job starts. Keys never travel in argv, which every user of the machine can read in /proc."""
    api_key_file: str | None = None
    """Absolute path of a file on the launching host holding the accepted API keys (whitespace-separated, ``#``
    comment lines), read when the job starts (e.g. a mounted secret)."""
    require_key: bool = False
    """Refuse to start the job without at least one key (the bundle builder sets it for a gateway that listens
    beyond loopback, unless the recipe opts out)."""
    served_model_name: str | None = None
    """Model id clients use (the recipe's ``model.served_name``); None: the model directory's name."""
    limits: GatewayLimits = field(default_factory=GatewayLimits)
    """Request limits, timeouts and accepted model ids (``GatewayConfig``'s fields of the same names and defaults;
    the bundle builder sets ``max_context_tokens`` to the recipe's context)."""

    def config(self, engine_url: str, model_dir: str | None, api_keys: tuple[str, ...] = (),
               log_format: LogFormat = DEFAULT_LOG_FORMAT) -> GatewayConfig:
        """The settings of this gateway in front of the engine at ``engine_url`` (not yet validated).

        Args:
            engine_url: the engine's base URL (probed ready by the launcher).
            model_dir: the model directory (tokenizer, chat template, context).
            api_keys: the accepted keys, read when the job starts (``preflight.gateway_keys``).
            log_format: the job's log format.
        Returns:
            A ``GatewayConfig``.
        Example:
            >>> GatewayOptions(8080).config("http://127.0.0.1:8000", "/m").max_connections
            1024
        """
        return GatewayConfig(engine_url=engine_url, model_dir=model_dir, host=self.host, port=self.port,
                             mode=self.mode, api_keys=api_keys,  # type: ignore[arg-type]
                             require_api_key=self.require_key,
                             served_model_name=self.served_model_name, log_format=log_format,
                             **self.limits.settings())  # type: ignore[arg-type]


@dataclass(frozen=True)
class LaunchSpec:
    """Everything ``k2trt serve`` needs to start, check and supervise one deployment."""

    engine: EngineKind = "reference"
    """Which engine the argv starts: ``trtllm`` (production) or ``reference`` (the PyTorch verification engine)."""
    argv: tuple[str, ...] = ()
    """Per-rank command every rank runs (for trtllm the launch wrapper + server command); empty when disaggregated."""
    world_size: int = 1
    """Number of ranks (MPI processes) of the aggregated server."""
    hosts: tuple[HostSlots, ...] = ()
    """Hosts in rank order; rank 0 (the HTTP server) runs on the first. Empty means this machine."""
    hostfile: str | None = None
    """An Open MPI hostfile (``host slots=N`` lines) used instead of ``hosts``; relative to the bundle."""
    mpirun: str = "mpirun"
    """The mpirun executable (a name on PATH or an absolute path; an absolute path also locates it on remote nodes)."""
    ssh_port: int | None = None
    """sshd port on the nodes (2233 in the common container recipe); None means the ssh default."""
    ssh_args: tuple[str, ...] = ()
    """Further ssh options for MPI's remote launch, e.g. ``-i KEY -o StrictHostKeyChecking=no``."""
    env: dict[str, str] = field(default_factory=dict)
    """Variables set for every rank (exported by name and value)."""
    env_forward: tuple[str, ...] = DEFAULT_ENV_FORWARD
    """Names or ``PREFIX_*`` patterns of launching-environment variables forwarded to every rank."""
    mpi_args: tuple[str, ...] = ()
    """Extra mpirun arguments, appended before the rank command (e.g. ``--mca btl_tcp_if_include eth0``)."""
    oversubscribe: bool = False
    """Allow more ranks than slots (CPU tests only; never on GPU nodes)."""
    http_host: str = "0.0.0.0"
    """Address the engine binds on host 1 (informational: the engine argv carries it)."""
    http_port: int = 8000
    """Port the engine serves HTTP on host 1: probed for readiness, checked free in preflight."""
    probe_host: str | None = None
    """Address to probe readiness on; None uses the first host (127.0.0.1 when that is this machine)."""
    ready_paths: tuple[str, ...] = DEFAULT_READY_PATHS
    """Readiness URL paths in order of preference; a path answering 404 falls through to the next."""
    ready_timeout_s: float = 3600.0
    """Seconds to wait for readiness. A bundle sets it from its plan's load estimate (``plan.memory.ready_budget_s``:
    twice the estimate, never under 10 min; set ``cluster.load_gbps`` to your storage's pace); the default, an hour,
    is for a spec without one (a 1 TB load from slow network storage takes most of an hour)."""
    stop_grace_s: float = 20.0
    """Seconds between SIGTERM and SIGKILL when tearing the job down."""
    log_dir: str = "logs"
    """Directory for per-rank logs and the state file, relative to the bundle."""
    launcher: LauncherKind = "mpirun"
    """Default launcher when ``k2trt serve`` is not given ``--launcher``."""
    slurm: SlurmOptions = field(default_factory=SlurmOptions)
    """Options for the Slurm launcher."""
    model_dir: str | None = None
    """Model directory every node must have at the same path (checked in preflight)."""
    model_manifest_sha256: str | None = None
    """Expected manifest hash of ``model_dir`` (``preflight.manifest_hash``); None only compares nodes."""
    engine_version: str | None = None
    """Engine version the bundle was built for; preflight requires the nodes to have exactly this one."""
    engine_version_probe: tuple[str, ...] = ()
    """Command that prints the installed engine version on a node (written by the bundle builder)."""
    gpus_per_node: int | None = None
    """GPUs each node must show in nvidia-smi; None uses the largest host slot count."""
    gpu_kind: str | None = None
    """Substring the GPU name must contain (``H200``); None accepts any kind."""
    eplb: bool = False
    """Expert-parallel load balancing is on (it keeps expert weights in /dev/shm)."""
    shm_min_bytes: int = 0
    """Free /dev/shm each node needs when ``eplb`` is on."""
    disagg: DisaggSpec | None = None
    """Disaggregated roles; when set, ``argv`` is empty and the router is the client-facing server."""
    gateway: GatewayOptions | None = None
    """The gateway to start in front of the engine once it is ready (None: clients talk to the engine)."""
    log_format: LogFormat = DEFAULT_LOG_FORMAT
    """``json``: every log the job writes is JSON lines carrying the job id (and a rank's lines its rank): the
    supervisor, the watchdog, the gateway, and the ranks (the launcher exports ``K2TRT_LOG_FORMAT``; lines a rank
    prints in any other form are wrapped by the supervisor); ``text``: each program's usual lines."""
    schema_version: int = SCHEMA_VERSION
    """Version of this file format; a newer one than this k2trt knows is refused."""

    # ---- derived views -------------------------------------------------------------------------------------
    def host_list(self) -> tuple[HostSlots, ...]:
        """The hosts in rank order; this machine with ``world_size`` slots when none are named."""
        return self.hosts or (HostSlots("localhost", self.world_size),)

    def first_probe_host(self) -> str:
        """Where readiness is probed: ``probe_host``, else host 1 (127.0.0.1 for a local name)."""
        return probe_address(self.probe_host, self.host_list())

    def base_url(self) -> str:
        """Client-facing URL: the router when disaggregated, else host 1's engine port."""
        if self.disagg is not None:
            return f"http://{_urlhost(self.disagg.router_host)}:{self.disagg.router_port}"
        return f"http://{_urlhost(self.first_probe_host())}:{self.http_port}"

    # ---- validation ----------------------------------------------------------------------------------------
    def validate(self) -> LaunchSpec:
        """Check cross-field rules; raise ConfigError naming the field and the fix. Returns self."""
        if self.schema_version > SCHEMA_VERSION:
            raise ConfigError(f"launch.json schema_version {self.schema_version} is newer than this k2trt "
                              f"understands ({SCHEMA_VERSION})", "upgrade k2trt or rebuild the bundle")
        if self.engine not in get_args(EngineKind):
            raise ConfigError(f"engine {self.engine!r} is not one of {get_args(EngineKind)}")
        if self.launcher not in get_args(LauncherKind):
            raise ConfigError(f"launcher {self.launcher!r} is not one of {get_args(LauncherKind)}")
        if self.log_format not in get_args(LogFormat):
            raise ConfigError(f"log_format {self.log_format!r} is not one of {get_args(LogFormat)}")
        _check_port("http_port", self.http_port)
        if self.gateway is not None:
            _check_port("gateway.port", self.gateway.port)
            if self.gateway.mode not in ("render", "passthrough"):
                raise ConfigError(f"gateway.mode {self.gateway.mode!r} is not render or passthrough")
            if self.gateway.port == self.http_port and self.first_probe_host() == "127.0.0.1":
                raise ConfigError(f"gateway.port {self.gateway.port} is the engine's port on this machine",
                                  "give the gateway its own port")
            env = self.gateway.api_key_env
            if env is not None and (not env or not env.replace("_", "a").isalnum() or env[0].isdigit()):
                raise ConfigError(f"gateway.api_key_env {env!r} is not a valid variable name")
            if self.gateway.api_key_file is not None and not Path(self.gateway.api_key_file).is_absolute():
                raise ConfigError(f"gateway.api_key_file {self.gateway.api_key_file!r} is not an absolute path",
                                  "name the key file by its absolute path on the launching host")
            if self.model_dir is None and self.gateway.mode == "render":
                raise ConfigError("the gateway renders K2 prompts but the spec names no model_dir",
                                  "set model_dir (the tokenizer and chat template live there)")
            try:
                self.gateway.limits.validate()
            except ConfigError as e:
                raise ConfigError(f"gateway.limits: {e}") from None
        if self.ssh_port is not None:
            _check_port("ssh_port", self.ssh_port)
        if self.ready_timeout_s <= 0 or self.stop_grace_s < 0:
            raise ConfigError("ready_timeout_s must be > 0 and stop_grace_s >= 0")
        if not self.ready_paths or any(not p.startswith("/") for p in self.ready_paths):
            raise ConfigError(f"ready_paths {self.ready_paths!r} must be non-empty URL paths starting with '/'")
        for k in self.env:
            if not k.replace("_", "a").isalnum() or k[0].isdigit():
                raise ConfigError(f"env name {k!r} is not a valid variable name")
        if self.disagg is None:
            if not self.argv:
                raise ConfigError("launch spec has an empty argv", "rebuild the bundle with `k2trt build`")
            _check_ranks("the server", self.world_size, self.host_list(), self.oversubscribe and not self.hosts)
        else:
            if self.argv:
                raise ConfigError("a disaggregated spec must have an empty argv",
                                  "put the router command in disagg.router_argv")
            roles = self.disagg.ctx + self.disagg.gen
            if not self.disagg.ctx or not self.disagg.gen or not self.disagg.router_argv:
                raise ConfigError("disagg needs at least one ctx server, one gen server and a router_argv")
            names = [r.name for r in roles]
            if len(set(names)) != len(names):
                raise ConfigError(f"disagg role names must be unique, got {names}")
            ports = [r.http_port for r in roles] + [self.disagg.router_port]
            for r in roles:
                _check_port(f"{r.name}.http_port", r.http_port)
                if not r.argv:
                    raise ConfigError(f"disagg role {r.name!r} has an empty argv")
                hosts = r.hosts or (HostSlots("localhost", r.world_size),)
                _check_ranks(f"role {r.name!r}", r.world_size, hosts, self.oversubscribe and not r.hosts)
            local_ports = [r.http_port for r in roles if not r.hosts] + [self.disagg.router_port]
            if len(set(local_ports)) != len(local_ports):
                raise ConfigError(f"disagg ports on this machine collide: {ports}", "give each server its own port")
        return self

    # ---- JSON ----------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples become lists)."""
        return _to_jsonable(self)  # type: ignore[no-any-return]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LaunchSpec:
        """Build from a dict as written by ``to_dict``; unknown keys or wrong types raise ConfigError."""
        return _from_jsonable(cls, data, "launch")  # type: ignore[no-any-return]

    def dump(self, path: str | Path) -> Path:
        """Write JSON atomically (``k2trt.fsio``). Returns the path."""
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> LaunchSpec:
        """Read and validate a ``launch.json``; a missing or malformed file is a ConfigError."""
        data = read_mapping(path, what="launch spec", fmt="json",
                            hint="pass a bundle written by `k2trt build`, or --spec FILE")
        return cls.from_dict(data).validate()


# ---- helpers --------------------------------------------------------------------------------------------------
def probe_address(probe_host: str | None, hosts: tuple[HostSlots, ...]) -> str:
    """The address to probe: an explicit one, else host 1, with local names mapped to 127.0.0.1."""
    name = probe_host or hosts[0].name
    return "127.0.0.1" if name in LOCAL_NAMES else name


def _urlhost(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _check_port(what: str, port: int) -> None:
    if not 0 < port < 65536:
        raise ConfigError(f"{what} {port} is not a TCP port (1-65535)")


def _check_ranks(what: str, world: int, hosts: tuple[HostSlots, ...], oversubscribe: bool) -> None:
    if world < 1:
        raise ConfigError(f"{what}: world_size {world} must be >= 1")
    slots = sum(h.slots for h in hosts)
    if slots < world and not oversubscribe:
        raise ConfigError(f"{what}: {world} ranks but only {slots} slots on {[h.name for h in hosts]}",
                          "add hosts/slots or lower the world size")


def _to_jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (tuple, list)):
        return [_to_jsonable(x) for x in obj]
    if isinstance(obj, dict):
        return {str(k): _to_jsonable(v) for k, v in obj.items()}
    return obj


def _from_jsonable(tp: Any, value: Any, where: str) -> Any:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        opts = get_args(tp)
        if value is None and type(None) in opts:
            return None
        inner = [o for o in opts if o is not type(None)]
        return _from_jsonable(inner[0], value, where)
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(f"{where}: {value!r} is not one of {list(get_args(tp))}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__}")
        return tuple(_from_jsonable(get_args(tp)[0], v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected an object, got {type(value).__name__}")
        return {str(k): _from_jsonable(get_args(tp)[1], v, f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected an object, got {type(value).__name__}")
        hints = typing.get_type_hints(tp)
        names = [f.name for f in dataclasses.fields(tp)]
        for k in value:
            if k not in names:
                close = difflib.get_close_matches(k, names, n=1)
                raise ConfigError(f"{where}: unknown key {k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        kwargs = {k: _from_jsonable(hints[k], v, f"{where}.{k}") for k, v in value.items()}
        try:
            return tp(**kwargs)
        except TypeError as e:
            raise ConfigError(f"{where}: {e}") from None
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp in (int, str, bool):
        if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
            raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
        return value
    raise TypeError(f"unsupported field type {tp!r} at {where}")  # a bug in this module, not user input
