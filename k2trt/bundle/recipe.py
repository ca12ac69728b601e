"""Recipes: a deployment as data (model, cluster, layout, serve, optional disaggregation and bench).

One schema for the YAML files and the CLI: frozen dataclasses with a docstring per field (STYLE P1). ``load_recipe``
layers defaults < recipe YAML < ``--set key.path=value`` (STYLE P4), rejects unknown keys with a did-you-mean at
every level, converts and checks types, and runs ``Recipe.validate``. Recipes are found by name among the packaged
ones (``k2trt/recipes/*.yaml``; the repository's top-level ``recipes/`` points there) or by path.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

from k2trt.bench.spec import BenchSpec
from k2trt.errors import ConfigError, K2trtError
from k2trt.fsio import read_mapping
from k2trt.gateway.config import API_KEYS_ENV, GatewayLimits
from k2trt.jsonlog import DEFAULT_LOG_FORMAT, LogFormat
from k2trt.layout import Layout
from k2trt.mapping import GPUS_PER_NODE
from k2trt.plan.gpus import DEFAULT_GPU, Gpu
from k2trt.plan.gpus import gpu as gpu_kind
from k2trt.plan.memory import DEFAULT_KV_DTYPE, LOAD_GBPS, KvDtype, WeightFormat, parse_weight_format
from k2trt.plan.planner import DEFAULT_CONTEXT, DEFAULT_PRESET
from k2trt.trtllm.metrics import PROMETHEUS_PATH
from k2trt.trtllm.render import DEFAULT_TRANSCEIVER, EngineOptions

Engine = Literal["trtllm", "reference"]
Plugins = Literal["off", "auto", "triton"]
GatewayAuth = Literal["auto", "required", "optional"]


@dataclass(frozen=True)
class ModelSection:
    """Which model the recipe serves."""

    preset: str | None = DEFAULT_PRESET
    """Preset whose dimensions to plan with when no checkpoint is given (``k2-instruct``, ``tiny``, …)."""
    weights: WeightFormat | None = None
    """Weight format the recipe needs (``nvfp4`` for Blackwell FP4 recipes; ``fp8`` means ``fp8_block``); None:
    whatever the checkpoint is."""
    served_name: str | None = None
    """Model name clients use; None: the checkpoint directory name."""


@dataclass(frozen=True)
class ClusterSection:
    """Where the instance runs."""

    gpu: Gpu = gpu_kind(DEFAULT_GPU)
    """GPU kind from the plan catalog (``h200``, ``h100``, ``h20``, ``b200``, ``cpu`` for the reference engine)."""
    nodes: int = 1
    """Nodes."""
    gpus_per_node: int = GPUS_PER_NODE
    """GPUs (ranks) per node."""
    hosts: tuple[str, ...] = ()
    """Host names, first is rank 0's (empty: fill in at build/serve time)."""
    ssh_port: int | None = None
    """sshd port of the containers (Moonshot's guide uses 2233); None: the default 22."""
    load_gbps: float = LOAD_GBPS
    """Read bandwidth of the checkpoint storage per GPU, GB/s: the plan's load-time estimate (and the Kubernetes
    start-up probe's budget) divide each GPU's shard by it. The default is an assumption (k2trt.plan.memory)."""


@dataclass(frozen=True)
class ServeSection:
    """How the engine is started."""

    engine: Engine = "trtllm"
    """``trtllm`` (production) or ``reference`` (the PyTorch reference K2 on CPU, for CI and the quickstart)."""
    trtllm: str | None = None
    """TensorRT-LLM version the config targets; None: the pinned release."""
    host: str = "0.0.0.0"
    """Address the engine listens on (``0.0.0.0`` for multi-node and remote clients)."""
    port: int = 8000
    """Engine HTTP port."""
    tool_parser: bool = True
    """Ask trtllm-serve for ``--tool_parser kimi_k2`` where the release has it (else the gateway parses)."""
    gateway_port: int | None = 8080
    """Port of the k2trt gateway (OpenAI + Anthropic APIs, Kimi tool calls) ``k2trt serve`` starts in front of
    the engine on the launching host; null for none."""
    gateway_mode: str = "render"
    """``render`` (the gateway renders K2 prompts and parses tool calls) or ``passthrough`` (the engine does)."""
    gateway_auth: GatewayAuth = "auto"
    """``auto``: the gateway refuses to start without an API key when it listens beyond loopback (``serve.host``
    0.0.0.0, as every GPU recipe does); ``required``: always; ``optional``: keys are used when given, and an open
    gateway is allowed (an explicit opt-out)."""
    gateway_api_key_env: str | None = API_KEYS_ENV
    """Environment variable on the launching host whose whitespace-separated API keys the gateway accepts, read
    when the job starts (never argv, which /proc shows every user); null for none."""
    gateway_api_key_file: str | None = None
    """Absolute path of a file on the launching host holding API keys (whitespace-separated, ``#`` comments),
    read when the job starts, e.g. a mounted secret."""
    gateway_limits: GatewayLimits = field(default_factory=GatewayLimits)
    """The gateway's request limits, timeouts and accepted model ids (``GatewayConfig``'s fields of the same names
    and defaults, e.g. ``max_connections: 256``); ``max_context_tokens`` null means the recipe's ``context``."""
    log_format: LogFormat = DEFAULT_LOG_FORMAT
    """``json``: every log the job writes (supervisor, ranks, gateway, watchdog) is JSON lines with the job id, and a
    rank's lines its rank; ``text``: each program's usual lines (``k2trt serve --log-format`` overrides it)."""
    plugins: Plugins = "off"
    """Reference engine only: run its MoE layers through k2trt's Triton kernels (``auto``: their torch twins where
    Triton cannot run). TensorRT-LLM loads the plugin ops with ``--custom_module_dirs`` (plugins/README.md)."""
    options: EngineOptions = field(default_factory=EngineOptions)
    """Engine knobs (KV fraction, batch sizes, CUDA graphs, MoE backend, raw ``extra`` keys)."""


@dataclass(frozen=True)
class RoleSection:
    """One role of a disaggregated deployment."""

    layout: Layout = Layout(8, 8)
    """Layout of each instance of this role."""
    instances: int = 1
    """Instances of this role."""
    port: int = 8001
    """Port of the first instance (the next ones count up)."""


@dataclass(frozen=True)
class DisaggSection:
    """Disaggregated prefill/decode: context and generation servers behind ``trtllm-serve disaggregated``."""

    ctx: RoleSection = field(default_factory=lambda: RoleSection(port=8001))
    """Context (prefill) servers."""
    gen: RoleSection = field(default_factory=lambda: RoleSection(port=8002))
    """Generation (decode) servers."""
    transceiver: str = DEFAULT_TRANSCEIVER
    """KV transfer backend (cache_transceiver_config.backend)."""


@dataclass(frozen=True)
class Toleration:
    """One Kubernetes pod toleration (``spec.tolerations[]``), e.g. for tainted GPU nodes."""

    key: str | None = None
    """Taint key (``nvidia.com/gpu``); None with ``Exists`` tolerates every taint."""
    operator: Literal["Exists", "Equal"] = "Exists"
    """``Exists`` (any value) or ``Equal`` (``value`` must match)."""
    value: str | None = None
    """Taint value for ``Equal``."""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    """Taint effect to tolerate; None: every effect."""


@dataclass(frozen=True)
class ModelStorage:
    """Where the pods find the checkpoint. It is mounted read-only at the bundle's model directory, so every rank
    runs the bundle's argv unchanged (the same path on every node, as ``k2trt serve`` requires of hosts)."""

    kind: Literal["hostPath", "pvc", "nfs"] = "hostPath"
    """``hostPath`` (a directory on every GPU node), ``pvc`` (a ReadOnlyMany/ReadWriteMany claim) or ``nfs``."""
    path: str | None = None
    """hostPath: the node directory; nfs: the export path. None: the bundle's model directory."""
    claim: str | None = None
    """pvc: the PersistentVolumeClaim's name."""
    server: str | None = None
    """nfs: the server's address."""
    sub_path: str | None = None
    """pvc/nfs: the checkpoint's directory inside the volume; None: the volume's root."""


@dataclass(frozen=True)
class K8sSection:
    """Kubernetes choices of ``k2trt build --target k8s`` / ``k2trt k8s render``: everything a cluster may need
    to change is here, never an edit of the generated YAML."""

    namespace: str = "default"
    """Namespace of every object."""
    name: str | None = None
    """Base name of the objects (LeaderWorkerSet, Services, Deployments); None: the recipe name."""
    image: str | None = None
    """Image every pod runs: the one built from the repository's Dockerfile and pushed where the cluster pulls
    from. None: ``k2trt.trtllm.deploy.project_image`` (``k2trt:<k2trt version>-trtllm<release>``, the tag the
    README's ``docker build`` gives)."""
    image_pull_policy: Literal["IfNotPresent", "Always", "Never"] = "IfNotPresent"
    """Kubernetes ``imagePullPolicy``."""
    image_pull_secrets: tuple[str, ...] = ()
    """Secrets for a private registry."""
    replicas: int = 1
    """Serving replicas: one LeaderWorkerSet group (leader + worker pods = one engine instance) each."""
    storage: ModelStorage = field(default_factory=ModelStorage)
    """Where the checkpoint comes from."""
    node_selector: dict[str, str] = field(default_factory=dict, hash=False)
    """Node labels the engine pods require, e.g. ``nvidia.com/gpu.product: NVIDIA-H200``."""
    tolerations: tuple[Toleration, ...] = ()
    """Taints the pods tolerate."""
    node_gpus: int | None = None
    """GPUs one node offers (its allocatable ``gpu_resource``); a pod cannot span nodes. None: the recipe's
    ``cluster.gpus_per_node``."""
    gpu_resource: str = "nvidia.com/gpu"
    """Extended resource name of a GPU."""
    rdma_resource: str | None = None
    """Extended resource of an RDMA NIC (e.g. ``rdma/ib``) requested by each engine pod; None: none (NCCL/UCX
    over TCP between pods)."""
    rdma_per_pod: int = 1
    """Units of ``rdma_resource`` per engine pod."""
    ssh_port: int = 2222
    """Port of the worker pods' sshd, which the leader's mpirun reaches them on."""
    ssh_secret: str | None = None
    """Secret with the SSH key pair (keys ``id_ed25519`` and ``authorized_keys``); None: ``<name>-ssh``."""
    shm_size: str | None = None
    """Size of each engine pod's ``/dev/shm`` (a Kubernetes quantity, ``512Gi``); None: from the plan."""
    env: dict[str, str] = field(default_factory=dict, hash=False)
    """Environment of every engine pod (``NCCL_IB_HCA``, ``UCX_NET_DEVICES``, …); names matching the launch
    spec's forward patterns also reach the ranks through ``mpirun -x``."""
    service_type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = "ClusterIP"
    """Type of the client-facing Service (the gateway's, else the engine's or router's)."""
    gateway_replicas: int = 1
    """Pods of the gateway Deployment."""
    gateway_api_key_secret: str | None = None
    """Secret whose key ``api-keys`` holds the gateway's accepted API keys (whitespace-separated), passed to the
    gateway pods in its environment; None: ``<name>-gateway-keys``. When the bundle's gateway requires a key
    (``serve.gateway_auth``) the pods do not start without the Secret, as ``k2trt serve`` refuses to."""


@dataclass(frozen=True)
class Recipe:
    """A deployment: model × cluster × layout × serve (× disaggregation) (× bench)."""

    name: str = ""
    """Recipe name (the file stem)."""
    description: str = ""
    """One line on what the recipe is for."""
    model: ModelSection = field(default_factory=ModelSection)
    """The model."""
    cluster: ClusterSection = field(default_factory=ClusterSection)
    """The cluster of one instance (aggregated) or of all instances (disaggregated)."""
    layout: Layout = Layout(16, 8)
    """Parallel layout of the (aggregated) instance, e.g. ``tp16ep8`` or ``tp16ep16adp``."""
    context: int = DEFAULT_CONTEXT
    """Tokens per sequence the deployment must hold (becomes max_seq_len)."""
    kv_dtype: KvDtype = DEFAULT_KV_DTYPE
    """KV cache dtype."""
    serve: ServeSection = field(default_factory=ServeSection)
    """Engine start-up."""
    disagg: DisaggSection | None = None
    """Disaggregated serving; None: one aggregated instance."""
    bench: BenchSpec | None = None
    """Benchmark sweep (``k2trt bench --recipe``); ``gpus`` defaults to the cluster's GPU count."""
    k8s: K8sSection = field(default_factory=K8sSection)
    """Kubernetes deployment choices (``k2trt build --target k8s``)."""

    def validate(self) -> None:
        """Cross-field checks; ConfigError names the field."""
        if self.context < 1:
            raise ConfigError(f"recipe {self.name}: context must be ≥ 1")
        if self.cluster.nodes < 1 or self.cluster.gpus_per_node < 1:
            raise ConfigError(f"recipe {self.name}: cluster.nodes and cluster.gpus_per_node must be ≥ 1")
        if self.cluster.hosts and len(self.cluster.hosts) != self.cluster.nodes:
            raise ConfigError(f"recipe {self.name}: {len(self.cluster.hosts)} hosts for {self.cluster.nodes} nodes")
        total = self.cluster.nodes * self.cluster.gpus_per_node
        if not self.disagg:
            w = self.layout.world_size
            if w != total:
                raise ConfigError(f"recipe {self.name}: layout {self.layout} uses {w} GPUs but the cluster has "
                                  f"{self.cluster.nodes}×{self.cluster.gpus_per_node}")
        else:
            d = self.disagg
            used = sum(r.instances * r.layout.world_size for r in (d.ctx, d.gen))
            if used != total:
                raise ConfigError(f"recipe {self.name}: disagg uses {used} GPUs ({d.ctx.instances}× {d.ctx.layout} + "
                                  f"{d.gen.instances}× {d.gen.layout}) but the cluster has {total}")
            for role in (d.ctx, d.gen):
                w = role.layout.world_size
                if w % self.cluster.gpus_per_node and w > self.cluster.gpus_per_node:
                    raise ConfigError(f"recipe {self.name}: {role.layout} does not fill whole nodes")
        if self.serve.plugins != "off" and self.serve.engine != "reference":
            raise ConfigError(f"recipe {self.name}: serve.plugins applies to the reference engine only",
                              "remove serve.plugins (TensorRT-LLM: see plugins/README.md for --custom_module_dirs)")
        key_file = self.serve.gateway_api_key_file
        if key_file is not None and not Path(key_file).is_absolute():
            raise ConfigError(f"recipe {self.name}: serve.gateway_api_key_file {key_file!r} is not an absolute path",
                              "name the key file by its absolute path on the launching host")
        if self.serve.engine == "reference" and self.disagg:
            raise ConfigError(f"recipe {self.name}: the reference engine does not do disaggregated serving")
        if self.cluster.load_gbps <= 0:
            raise ConfigError(f"recipe {self.name}: cluster.load_gbps must be > 0")
        k = self.k8s
        for what, n in (("k8s.replicas", k.replicas), ("k8s.gateway_replicas", k.gateway_replicas),
                        ("k8s.rdma_per_pod", k.rdma_per_pod), ("k8s.node_gpus", k.node_gpus or 1)):
            if n < 1:
                raise ConfigError(f"recipe {self.name}: {what} must be ≥ 1, got {n}")
        try:
            self.serve.gateway_limits.validate()
        except ConfigError as e:
            raise ConfigError(f"recipe {self.name}: serve.gateway_limits: {e}") from None
        gw_context = self.serve.gateway_limits.max_context_tokens
        if gw_context is not None and gw_context > self.context:
            raise ConfigError(f"recipe {self.name}: serve.gateway_limits.max_context_tokens {gw_context} is over "
                              f"the deployment's context {self.context}", "lower it, or raise context")

    def endpoint(self) -> str:
        """The served root URL clients (and ``k2trt bench``) use: ``serve.host``:``serve.port``, a wildcard listen
        address becoming the first host, else 127.0.0.1."""
        host = self.serve.host
        if host in ("0.0.0.0", "::", ""):
            host = self.cluster.hosts[0] if self.cluster.hosts else "127.0.0.1"
        return f"http://{host}:{self.serve.port}"

    def gateway_endpoint(self) -> str | None:
        """The root URL of the gateway ``k2trt serve`` starts in front of the engine (as ``endpoint`` spells the
        engine's, on ``serve.gateway_port``); None when the recipe has none."""
        if self.serve.gateway_port is None:
            return None
        return f"{self.endpoint().rpartition(':')[0]}:{self.serve.gateway_port}"

    def metrics_urls(self, endpoint: str) -> tuple[str, ...]:
        """The Prometheus endpoints of this recipe's servers that ``endpoint`` itself does not expose, for a
        benchmark of ``endpoint`` to scrape: benchmarking the engine, the gateway's ``/metrics``; benchmarking the
        gateway, TensorRT-LLM's (the reference engine has none). Nothing for an endpoint that is not the recipe's.

        Example:
            >>> load_recipe("tiny-cpu").metrics_urls("http://127.0.0.1:18000")
            ('http://127.0.0.1:18001/metrics',)
        """
        engine, gateway = self.endpoint(), self.gateway_endpoint()
        url = endpoint.rstrip("/")
        if url == engine and gateway is not None:
            return (f"{gateway}/metrics",)
        if url == gateway and self.serve.engine == "trtllm":
            return (f"{engine}{PROMETHEUS_PATH}",)
        return ()

# ---- loading -----------------------------------------------------------------------------------------------------


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


# Values that have their own parser: parsed here, once, so the rest of k2trt sees typed values.
_PARSERS: dict[Any, Any] = {Layout: Layout.parse, WeightFormat: parse_weight_format, Gpu: gpu_kind}


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value, where)
    if tp in _PARSERS:
        if isinstance(tp, type) and isinstance(value, tp):
            return value
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected text, got {value!r}")
        try:
            return _PARSERS[tp](value)
        except K2trtError as e:
            raise ConfigError(f"{where}: {e}") from None
    if tp is BenchSpec:
        return value if isinstance(value, BenchSpec) else BenchSpec.from_dict(value, where=where)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__} {value!r}")
        return _build(tp, value, where)
    if origin is Literal:
        if value not in args:
            close = difflib.get_close_matches(str(value), [str(a) for a in args], n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"choose one of {', '.join(map(str, args))}"
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(str, args))}", hint)
        return value
    if origin is tuple:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return tuple(_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        if len(args) == 2:  # typed values (dict[str, str]: a YAML `true` or `8` is refused, not passed on)
            return {str(k): _convert(args[1], v, f"{where}.{k}") for k, v in value.items()}
        return dict(value)
    if tp is bool:
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp in (int, float):
        if isinstance(value, str):
            try:
                value = tp(value)
            except ValueError:
                raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (tp is int and not isinstance(value, int)):
            raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
        return tp(value)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{where}: expected text, got {value!r}")
        return str(value)
    return value


def _build(cls: Any, data: dict[str, Any], where: str) -> Any:
    hints = _hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kw: dict[str, Any] = {}
    for k, v in data.items():
        if k not in names:
            close = difflib.get_close_matches(str(k), names, n=1)
            raise ConfigError(f"{where}: unknown key {k!r}",
                              f"did you mean {close[0]!r}?" if close else f"valid keys: {', '.join(names)}")
        kw[k] = _convert(hints[k], v, f"{where}.{k}" if where else k)
    return cls(**kw)


def _set(doc: dict[str, Any], dotted: str, raw: str) -> None:
    parts = dotted.split(".")
    node = doc
    for p in parts[:-1]:
        nxt = node.get(p)
        if nxt is None:
            nxt = node[p] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"--set {dotted}: {p} is not a section")
        node = nxt
    node[parts[-1]] = yaml.safe_load(raw) if raw != "" else ""


def recipe_dir() -> Path:
    """The packaged recipes directory (``k2trt/recipes``; the repository's ``recipes/`` points here)."""
    return Path(str(resources.files("k2trt") / "recipes"))


def list_recipes() -> list[str]:
    """Names of the packaged recipes."""
    return sorted(p.stem for p in recipe_dir().glob("*.yaml"))


def find_recipe(name_or_path: str) -> Path:
    """A recipe file by packaged name (``k2-h200-2x8-tp16ep8``) or by path."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") and p.exists():
        return p
    cand = recipe_dir() / f"{name_or_path}.yaml"
    if cand.exists():
        return cand
    names = list_recipes()
    close = difflib.get_close_matches(name_or_path, names, n=1)
    raise ConfigError(f"no recipe {name_or_path!r}",
                      f"did you mean {close[0]!r}?" if close else f"available: {', '.join(names)}")


def load_recipe(name_or_path: str | None = None, sets: tuple[str, ...] | list[str] = (),
                data: dict[str, Any] | None = None) -> Recipe:
    """Defaults < recipe YAML < ``--set key.path=value`` → a validated Recipe.

    Example: ``load_recipe("tiny-cpu", ["serve.port=9100"]).serve.port`` → 9100.
    """
    doc: dict[str, Any] = {}
    name = ""
    if name_or_path is not None:
        path = find_recipe(name_or_path)
        name = path.stem
        doc = read_mapping(path, what="recipe", fmt="yaml")
    if data:
        doc = {**doc, **data}
    for s in sets:
        key, eq, val = s.partition("=")
        if not eq or not key:
            raise ConfigError(f"--set {s!r} is not key.path=value", "e.g. --set serve.port=9000")
        _set(doc, key.strip(), val.strip())
    doc.setdefault("name", name)
    r: Recipe = _build(Recipe, doc, "")
    if r.bench is not None and "gpus" not in (doc.get("bench") or {}):
        r = dataclasses.replace(r, bench=dataclasses.replace(r.bench, gpus=r.cluster.nodes * r.cluster.gpus_per_node))
    r.validate()
    return r


def spec_from_recipe(name_or_path: str | Path | Recipe, sets: tuple[str, ...] = ()) -> tuple[BenchSpec, str]:
    """The bench sweep of a recipe and the root URL of the recipe's server (``Recipe.endpoint``).

    Args:
        name_or_path: a packaged recipe name (``tiny-cpu``), a YAML path, or a loaded recipe.
        sets: ``key.path=value`` overrides, as ``k2trt build --set`` takes them.
    Returns:
        (the sweep, with ``gpus`` defaulting to the cluster size; the server's root URL).
    Raises:
        ConfigError: the recipe is invalid or has no ``bench:`` section.
    Example:
        >>> spec_from_recipe("tiny-cpu")[1]
        'http://127.0.0.1:18000'
    """
    r = name_or_path if isinstance(name_or_path, Recipe) else load_recipe(str(name_or_path), list(sets))
    if r.bench is None:
        raise ConfigError(f"recipe {r.name} has no bench: section", "add one (see k2trt bench --help) or use --spec")
    return r.bench, r.endpoint()


def recipe_to_dict(r: Recipe) -> dict[str, Any]:
    """The resolved recipe as plain data (``k2trt config show``, the bundle's manifest)."""
    def conv(v: Any) -> Any:
        if isinstance(v, Layout):
            return str(v)
        if isinstance(v, Gpu):
            return v.key
        if isinstance(v, BenchSpec):
            return v.to_dict()
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, tuple):
            return [conv(x) for x in v]
        return v
    return conv(r)  # type: ignore[no-any-return]
