"""A bundle on Kubernetes, as typed data: its engine groups, their pods and commands, and the preflight that can be
known before a cluster sees the manifests.

One engine instance is one LeaderWorkerSet group of ``ceil(world / gpus_per_node)`` pods; a pod holds one node's
ranks (a pod cannot span nodes). LeaderWorkerSet names pod ``i`` of group ``g`` ``<lws>-<g>-<i>`` (the leader
``<lws>-<g>``) under the headless Service ``<lws>`` (subdomain policy ``Shared``), which publishes not-ready pods,
and ``LWS_LEADER_ADDRESS`` is ``<lws>-<g>.<lws>.<namespace>`` (kubernetes-sigs/lws v0.10.0:
``api/leaderworkerset/v1/leaderworkerset_types.go``, ``pkg/utils/pod/pod_utils.go`` ``AddLWSVariables``,
``pkg/utils/controller/controller_utils.go`` ``PublishNotReadyAddresses``). The group index reaches the pod through
the downward API from its ``leaderworkerset.sigs.k8s.io/group-index`` label (as NVIDIA's k8s-nim-operator does for
its LWS leaders), and the kubelet expands ``$(VAR)`` in a container's command: the leader's command stays the list
``mpirun_argv`` returns, with no shell in between.

ssh: the leader's mpirun needs no ssh option at all. The pods' ``/etc/ssh/ssh_config`` names the port and the key
(from a Secret), which works the same for Open MPI 4 (``plm_rsh_args``) and 5 (``plm_ssh_args``), whichever the
image ships; the launch spec's own ssh port and options (the bare-metal hosts') are dropped. Workers run sshd
(``StrictModes no``: Secret volumes are not laid out the way sshd's ownership checks want, as Dynamo's operator also
found, ai-dynamo/dynamo ``deploy/operator/internal/dynamo/backend_trtllm.go``), and hand their environment to the
ranks ssh starts (``PermitUserEnvironment``). ``OMPI_MCA_orte_keep_fqdn_hostnames`` / its PRRTE twin keep the pods'
DNS names whole (Dynamo, k8s-nim-operator).

Budgets, both from the plan in the bundle's manifest: the start-up probe allows what ``k2trt serve`` waits for
readiness (``plan.memory.ready_budget_s`` of the plan's load estimate); ``/dev/shm`` is a memory ``emptyDir`` sized
for the node's share of the weights (``SHM_WEIGHTS_HEADROOM``; per-GPU bytes × GPUs, so replicated weights count on
every GPU) plus online EPLB's host copy of the routed experts (``launch.json`` ``shm_min_bytes``). Its ``sizeLimit``
is a cap, not a reservation — the pod uses only what it writes — so erring high costs nothing, while a limit too low evicts the pod.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from pathlib import PurePosixPath
from typing import Any, Mapping

from k2trt.bundle.recipe import K8sSection, Recipe
from k2trt.errors import ConfigError
from k2trt.launch.mpi import JOB_ID_VAR, MpiFlavor, mpirun_argv
from k2trt.launch.spec import LOCAL_NAMES, GatewayOptions, HostSlots, LaunchSpec
from k2trt.plan.gpus import GiB
from k2trt.plan.memory import load_seconds, ready_budget_s
from k2trt.plan.rules import Finding
from k2trt.trtllm.deploy import project_image
from k2trt.trtllm.disagg import RoleServers, disagg_config
from k2trt.trtllm.disagg_lint import lint_disagg
from k2trt.trtllm.render import dump_yaml

GROUP_INDEX_ENV = "K2TRT_GROUP_INDEX"
"""The pod's LeaderWorkerSet group index (downward API), expanded by the kubelet in the pods' host names."""
SHM_WEIGHTS_HEADROOM = 1.1
"""``/dev/shm`` per node over its weight bytes: TensorRT-LLM's K2-Thinking guide fixes the loader's host "Bus
error" with a 640 GB ``/dev/shm`` on 8×B200 for a 594 GB checkpoint (shared/reference/trtllm.md §3.2), ~1.08×."""
SSH_KEY_PATH = "/etc/k2trt/ssh/id_ed25519"
"""The private key of the SSH Secret (mounted at ``/etc/k2trt/ssh``) as the leader's ssh reads it."""
BUNDLE_CONFIGS = ("config.yml", "ctx.yml", "gen.yml", "disagg.yml")
"""Bundle files an engine or router command may read; they travel in a ConfigMap mounted where the argv names them."""
MAX_LABEL = 63
"""Kubernetes label values and host names: at most 63 characters."""
STS_NAME_MAX = 52
"""A StatefulSet's name plus ``-`` and its 10-character revision hash must fit a label value (63)."""

_DNS1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_DNS1123 = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_QUANTITY = re.compile(r"(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|Pi|k|M|G|T|P)?")
_UNITS = {None: 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15,
          "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50}
_IMAGE_PATH = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*")
_IMAGE_TAG = re.compile(r"\w[\w.-]{0,127}")


@dataclass(frozen=True)
class BundleView:
    """What the manifests are rendered from: a bundle's recipe, launch spec, config files and plan."""

    recipe: Recipe
    """The resolved recipe (``manifest.json``), its ``k8s:`` section included."""
    launch: LaunchSpec
    """``launch.json``: per-rank argv, world sizes, ports, model directory, EPLB shared memory."""
    files: Mapping[str, str]
    """Bundle file name → text, for the files in ``BUNDLE_CONFIGS`` the bundle has."""
    plan: Mapping[str, Any]
    """``manifest.json`` ``plan``: role (``server``, ``ctx``, ``gen``) → that role's judged layout."""


@dataclass(frozen=True)
class EngineGroup:
    """One LeaderWorkerSet: every replica is one engine instance of a role."""

    role: str
    """``server`` (aggregated), ``ctx`` or ``gen``."""
    lws: str
    """LeaderWorkerSet name (also its headless Service, the pods' subdomain)."""
    argv: tuple[str, ...]
    """The bundle's per-rank command of this instance."""
    world_size: int
    """Ranks of one instance."""
    pods: int
    """Pods of one group (LeaderWorkerSet ``size``)."""
    ranks_per_pod: int
    """Ranks (GPUs) per pod."""
    replicas: int
    """Groups."""
    port: int
    """HTTP port of the leader's engine."""
    startup_s: int
    """Start-up probe budget, seconds."""
    shm_bytes: int
    """``/dev/shm`` size of each pod."""


@dataclass(frozen=True)
class K8sDeployment:
    """Everything the manifests say, decided."""

    name: str
    """Base name of the objects."""
    namespace: str
    """Namespace of every object."""
    image: str
    """Image of every pod."""
    opts: K8sSection
    """The recipe's Kubernetes choices."""
    launch: LaunchSpec
    """The bundle's launch spec."""
    groups: tuple[EngineGroup, ...]
    """Engine groups: one aggregated, or ``ctx`` and ``gen``."""
    config: dict[str, str]
    """ConfigMap data: the bundle files the commands read (the router's with the pods' addresses) and the ssh
    client config."""
    bundle_dir: str | None
    """Where the engine and router commands expect the bundle's files (the ConfigMap's mount path)."""
    router_argv: tuple[str, ...] = ()
    """The router's command (disaggregated), else empty."""
    router_port: int = 0
    """The router's port."""

    @property
    def ssh_secret(self) -> str:
        """The Secret with the SSH key pair."""
        return self.opts.ssh_secret or f"{self.name}-ssh"

    @property
    def gateway_secret(self) -> str:
        """The Secret with the gateway's API keys (key ``api-keys``)."""
        return self.opts.gateway_api_key_secret or f"{self.name}-gateway-keys"

    @property
    def gateway(self) -> GatewayOptions | None:
        """The gateway in front (the bundle's), if any."""
        return self.launch.gateway

    def front(self) -> tuple[str, int]:
        """(Service name, port) the gateway forwards to: the router, else the aggregated engine."""
        if self.router_argv:
            return f"{self.name}-router", self.router_port
        return f"{self.name}-engine", self.groups[0].port


# ---- names and quantities --------------------------------------------------------------------------------------
def quantity_bytes(text: str) -> int:
    """A Kubernetes memory quantity in bytes: ``512Gi`` → 549755813888, ``1.5T`` → 1500000000000.

    Raises ConfigError naming the accepted forms.
    """
    m = _QUANTITY.fullmatch(text.strip())
    if not m:
        raise ConfigError(f"{text!r} is not a Kubernetes quantity", "write it like 512Gi, 64Gi or 1Ti")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def gib_quantity(nbytes: float) -> str:
    """Bytes as whole GiB, rounded up: 1.2 GiB → ``2Gi``."""
    return f"{max(1, math.ceil(nbytes / GiB))}Gi"


def image_problem(ref: str) -> str | None:
    """Why ``ref`` is not an image reference (``[registry/]path[:tag][@sha256:…]``), or None."""
    if not ref.strip():
        return "is empty"
    rest, _, digest = ref.partition("@")
    if digest and not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
        return f"has a malformed digest {digest!r}"
    first, slash, tail = rest.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        rest = tail  # a registry host: any host[:port]
    path, colon, tag = rest.rpartition(":") if ":" in rest else (rest, "", "")
    if not _IMAGE_PATH.fullmatch(path):
        return f"has an invalid repository {path!r} (lower-case letters, digits, '.', '_', '-' and '/')"
    if colon and not _IMAGE_TAG.fullmatch(tag):
        return f"has an invalid tag {tag!r}"
    return None


def has_registry(ref: str) -> bool:
    """Whether ``ref`` names a registry host (``nvcr.io/…``, ``registry:5000/…``), not a bare local name."""
    first, slash, _ = ref.partition("/")
    return bool(slash) and ("." in first or ":" in first or first == "localhost")


def base_name(r: Recipe) -> str:
    """``k8s.name``, else the recipe name made a DNS label (``my_recipe`` → ``my-recipe``)."""
    if r.k8s.name:
        return r.k8s.name
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", r.name.lower())).strip("-") or "k2trt"


def pod_host(lws: str, namespace: str, index: int) -> str:
    """DNS name of pod ``index`` of this pod's group (the leader is 0), with the group index left to the kubelet."""
    pod = f"{lws}-$({GROUP_INDEX_ENV})" + (f"-{index}" if index else "")
    return f"{pod}.{lws}.{namespace}"


def group_hosts(g: EngineGroup, namespace: str) -> tuple[HostSlots, ...]:
    """The group's pods as mpirun hosts in rank order; a one-pod group runs on its own pod (``localhost``)."""
    if g.pods == 1:
        return (HostSlots("localhost", g.world_size),)
    return tuple(HostSlots(pod_host(g.lws, namespace, i), g.ranks_per_pod) for i in range(g.pods))


def leader_argv(d: K8sDeployment, g: EngineGroup) -> list[str]:
    """The leader's command: ``mpirun_argv`` — what ``k2trt serve --hosts <the group's pods>`` runs for this bundle
    — with ssh's port and key left to the pods' ssh config, as root (containers run as root), forwarding the pod
    environment's names that match the launch spec's patterns.

    Example: ``leader_argv(d, d.groups[0])[:3]`` → ``['mpirun', '-np', '16']``.
    """
    spec = replace(d.launch, hosts=(), hostfile=None, ssh_port=None, ssh_args=(), mpirun="mpirun")
    return mpirun_argv(spec, MpiFlavor("openmpi", ()), euid=0, environ=d.opts.env, argv=g.argv,
                       world_size=g.world_size, hosts=group_hosts(g, d.namespace))


def ssh_client_config(port: int, key: str) -> str:
    """``/etc/ssh/ssh_config`` of the engine pods: every host on ``port`` with ``key``, no host-key prompts."""
    return ("# k2trt: the leader's mpirun reaches its worker pods' sshd on this port with this key\n"
            f"Host *\n    Port {port}\n    IdentityFile {key}\n    StrictHostKeyChecking no\n"
            "    UserKnownHostsFile /dev/null\n    LogLevel ERROR\n    ConnectionAttempts 20\n")


# ---- the deployment ---------------------------------------------------------------------------------------------
def _config_dir(argv: tuple[str, ...]) -> str | None:
    """The directory of the bundle config file ``argv`` reads (an absolute path ending in a ``BUNDLE_CONFIGS``
    name), None when it reads none."""
    dirs = {str(PurePosixPath(a).parent) for a in argv
            if a.startswith("/") and PurePosixPath(a).name in BUNDLE_CONFIGS}
    if len(dirs) > 1:
        raise ConfigError(f"the bundle's commands read config files from several directories: {sorted(dirs)}",
                          "rebuild the bundle")
    return dirs.pop() if dirs else None


def _budget(view: BundleView, role: str) -> int:
    mem = (view.plan.get(role) or {}).get("memory") or {}
    load = mem.get("load_s")
    if load is None:  # a bundle from before the plan had a load estimate: the same estimate from its weights
        load = load_seconds(float(mem.get("weights_gib_max", 0.0)) * GiB, view.recipe.cluster.load_gbps)
    return ready_budget_s(float(load))


def _shm(view: BundleView, role: str, ranks_per_pod: int) -> int:
    if view.recipe.k8s.shm_size:
        return quantity_bytes(view.recipe.k8s.shm_size)
    mem = (view.plan.get(role) or {}).get("memory") or {}
    weights = float(mem.get("weights_gib_max", 0.0)) * GiB * ranks_per_pod * SHM_WEIGHTS_HEADROOM
    need = weights + (view.launch.shm_min_bytes if view.launch.eplb else 0)
    return math.ceil(need / GiB) * GiB


def _group(view: BundleView, role: str, lws: str, argv: tuple[str, ...], world: int, port: int,
           replicas: int) -> EngineGroup:
    gpn = view.launch.gpus_per_node or view.recipe.cluster.gpus_per_node
    per_pod = min(gpn, world)
    return EngineGroup(role, lws, argv, world, -(-world // gpn), per_pod, replicas, port, _budget(view, role),
                       _shm(view, role, per_pod))


def deployment(view: BundleView) -> K8sDeployment:
    """Decide the deployment of ``view`` (run ``preflight`` first: this assumes its errors are absent).

    Returns:
        The K8sDeployment the manifests render.
    Example:
        >>> d = deployment(view)
        >>> [g.lws for g in d.groups]
        ['k2-h200-disagg-ctx', 'k2-h200-disagg-gen']
    """
    r, launch = view.recipe, view.launch
    name, ns = base_name(r), r.k8s.namespace
    image = r.k8s.image if r.k8s.image is not None else project_image(launch.engine_version)
    config: dict[str, str] = {}
    if launch.disagg is None:
        groups = (_group(view, "server", name, launch.argv, launch.world_size, launch.http_port, r.k8s.replicas),)
        router: tuple[str, ...] = ()
        config.update({f: view.files[f] for f in ("config.yml",) if f in view.files})
    else:
        groups = tuple(_group(view, role, f"{name}-{role}", specs[0].argv, specs[0].world_size,
                              specs[0].http_port, len(specs))
                       for role, specs in (("ctx", launch.disagg.ctx), ("gen", launch.disagg.gen)))
        router = launch.disagg.router_argv
        config.update({f: view.files[f] for f in ("ctx.yml", "gen.yml") if f in view.files})
        config["disagg.yml"] = router_config(view, groups)
    if any(g.pods > 1 for g in groups):
        config["ssh_config"] = ssh_client_config(r.k8s.ssh_port, SSH_KEY_PATH)
    dirs = {_config_dir(a) for a in (*(g.argv for g in groups), router)} - {None}
    if len(dirs) > 1:
        raise ConfigError(f"the bundle's commands read their configs from several directories: {sorted(dirs)}",
                          "rebuild the bundle")
    return K8sDeployment(name, ns, image, r.k8s, launch, groups, config, next(iter(dirs), None), router,
                         launch.disagg.router_port if launch.disagg else 0)


def router_config(view: BundleView, groups: tuple[EngineGroup, ...]) -> str:
    """The router's YAML: the bundle's, rendered by the same function with the leader pods' addresses (instance
    ``i`` of a role is that role's group ``i``), linted as the release reads it (ConfigError on errors)."""
    r = view.recipe
    assert r.disagg is not None
    servers = []
    for g, sec in zip(groups, (r.disagg.ctx, r.disagg.gen)):
        urls = tuple(f"{g.lws}-{i}.{g.lws}.{r.k8s.namespace}:{g.port}" for i in range(g.replicas))
        servers.append(RoleServers(urls, sec.layout.tp, sec.layout.pp))
    doc = disagg_config(servers[0], servers[1], hostname=r.serve.host, port=r.serve.port)
    res = lint_disagg(doc, view.launch.engine_version)
    if not res.ok:
        raise ConfigError(f"recipe {r.name}: the Kubernetes router config fails the lint: {res.errors[0]}",
                          "k2trt config check shows every issue")
    return dump_yaml(doc, f"router config of recipe {r.name} on Kubernetes: the servers are the leader pods")


# ---- preflight -------------------------------------------------------------------------------------------------
def _finding(rule: str, severity: str, message: str) -> Finding:
    return Finding(rule, severity, message)


def preflight(view: BundleView) -> list[Finding]:
    """What can be known about the deployment before a cluster sees it: errors (render refuses), warnings and
    notes. Each message is one line naming the cause and the fix.

    Example:
        >>> [f.message for f in preflight(view) if f.severity == "error"]
        ['each engine pod needs 8 GPUs (tp16ep8 over 2 pods) but k8s.node_gpus is 4: a pod cannot span nodes — …']
    """
    out: list[Finding] = []
    r, launch, k = view.recipe, view.launch, view.recipe.k8s
    if launch.engine != "trtllm":
        out.append(_finding("engine", "error", f"recipe {r.name} runs the {launch.engine} engine, whose rank command "
                            "names this machine's Python — Kubernetes deployments run TensorRT-LLM: use a trtllm "
                            "recipe"))
        return out
    if launch.http_host in LOCAL_NAMES:
        out.append(_finding("bind", "error", f"the engine binds {launch.http_host}, which probes and other pods "
                            "cannot reach — rebuild with --set serve.host=0.0.0.0"))
    out += _names(r)
    out += _image(r, launch)
    out += _gpus(view)
    out += _shm_checks(view)
    out += _storage(view)
    ports = [launch.http_port] + ([launch.gateway.port] if launch.gateway else [])
    if launch.disagg:
        ports += [s.http_port for s in launch.disagg.ctx + launch.disagg.gen] + [launch.disagg.router_port]
        if k.replicas != 1:
            out.append(_finding("replicas", "error", "k8s.replicas scales aggregated deployments — a disaggregated "
                                "recipe scales with disagg.ctx.instances and disagg.gen.instances"))
    if not 0 < k.ssh_port < 65536 or k.ssh_port in ports:
        out.append(_finding("ssh-port", "error", f"k8s.ssh_port {k.ssh_port} is not a free TCP port of the engine "
                            f"pods (HTTP ports {sorted(set(ports))}) — choose another"))
    if r.cluster.gpu.reference_only is False and not k.node_selector:
        out.append(_finding("gpu-kind", "warning", f"no k8s.node_selector: the pods may land on any GPU kind, but "
                            f"the plan is for {r.cluster.gpu.name} — set k8s.node_selector in the recipe "
                            "(e.g. nvidia.com/gpu.product: <the GPU's product label>)"))
    multi = any(-(-s // (launch.gpus_per_node or r.cluster.gpus_per_node)) > 1 for s in _worlds(launch))
    if (multi or launch.disagg) and not k.rdma_resource:
        out.append(_finding("rdma", "warning", "no k8s.rdma_resource: NCCL/UCX traffic between pods goes over TCP "
                            "— name the cluster's RDMA device resource (e.g. rdma/ib)"))
    if multi:
        out.append(_finding("ssh-secret", "info", f"create Secret {k.ssh_secret or base_name(r) + '-ssh'} (keys "
                            "id_ed25519, authorized_keys) before applying: the manifests' header shows how"))
    if launch.gateway is not None and launch.gateway.require_key:
        secret = k.gateway_api_key_secret or base_name(r) + "-gateway-keys"
        out.append(_finding("gateway-keys", "info", f"the gateway requires an API key (serve.gateway_auth): its "
                            f"pods start only once Secret {secret} (key api-keys) exists — the header shows how"))
    out.append(_finding("server-dry-run", "info", "no API server here: on the cluster, `kubectl apply "
                        "--dry-run=server -f k8s/` checks the objects against its API and the installed "
                        "LeaderWorkerSet CRD"))
    return out


def _worlds(launch: LaunchSpec) -> list[int]:
    if launch.disagg is None:
        return [launch.world_size]
    return [s.world_size for s in launch.disagg.ctx + launch.disagg.gen]


def _names(r: Recipe) -> list[Finding]:
    k, out = r.k8s, []
    name = base_name(r)
    if not _DNS1123.fullmatch(k.namespace) or len(k.namespace) > MAX_LABEL:
        out.append(_finding("namespace", "error", f"k8s.namespace {k.namespace!r} is not a DNS label — lower-case "
                            "letters, digits and '-', at most 63"))
    if not _DNS1035.fullmatch(name):
        out.append(_finding("name", "error", f"object name {name!r} is not a DNS label — set k8s.name (lower-case "
                            "letters, digits and '-', starting with a letter)"))
        return out
    roles = [("", k.replicas, r.cluster.nodes)] if r.disagg is None else [
        (f"-{role}", s.instances, -(-s.layout.world_size // r.cluster.gpus_per_node))
        for role, s in (("ctx", r.disagg.ctx), ("gen", r.disagg.gen))]
    for suffix, groups, pods in roles:
        lws = name + suffix
        longest_pod = f"{lws}-{groups - 1}" + (f"-{pods - 1}" if pods > 1 else "")
        if len(longest_pod) > MAX_LABEL or len(f"{lws}-{groups - 1}") > STS_NAME_MAX:
            out.append(_finding("name", "error", f"pod names like {longest_pod} are too long for Kubernetes (63 "
                                "characters, 52 for a StatefulSet) — set a shorter k8s.name"))
    return out


def _image(r: Recipe, launch: LaunchSpec) -> list[Finding]:
    default = project_image(launch.engine_version)
    ref = r.k8s.image if r.k8s.image is not None else default
    why = image_problem(ref)
    if why:
        return [_finding("image", "error", f"k8s.image {ref!r} {why} — set k8s.image to the image built from the "
                         f"Dockerfile (default {default}) as your registry names it")]
    if not has_registry(ref):
        return [_finding("image", "warning", f"image {ref} names no registry: nodes can pull it only if it is "
                         "preloaded — push it (docker tag/push) and set k8s.image to the registry's name")]
    return []


def _gpus(view: BundleView) -> list[Finding]:
    r, launch = view.recipe, view.launch
    gpn = launch.gpus_per_node or r.cluster.gpus_per_node
    node = r.k8s.node_gpus or r.cluster.gpus_per_node
    out = []
    for world in sorted(set(_worlds(launch))):
        per_pod = min(gpn, world)
        if per_pod > node:
            out.append(_finding("gpus", "error", f"each engine pod needs {per_pod} GPUs ({world} ranks over "
                                f"{-(-world // gpn)} pod(s)) but k8s.node_gpus is {node}: a pod cannot span nodes "
                                f"— use nodes with {per_pod} GPUs, or a recipe with cluster.gpus_per_node={node}"))
    return out


def _shm_checks(view: BundleView) -> list[Finding]:
    r, launch = view.recipe, view.launch
    if not r.k8s.shm_size:
        return []
    try:
        size = quantity_bytes(r.k8s.shm_size)
    except ConfigError as e:
        return [_finding("shm", "error", f"k8s.shm_size: {e}")]
    out = []
    if launch.eplb and size < launch.shm_min_bytes:
        need = launch.shm_min_bytes / GiB
        out.append(_finding("shm", "error", f"k8s.shm_size {r.k8s.shm_size} is below the {need:,.0f} GiB online "
                            "EPLB keeps in /dev/shm (a host copy of every routed expert) — raise it, or drop "
                            "k8s.shm_size to size it from the plan"))
    gpn = launch.gpus_per_node or r.cluster.gpus_per_node
    for role, p in view.plan.items():
        weights = float(((p or {}).get("memory") or {}).get("weights_gib_max", 0.0)) * GiB * gpn
        if size < weights:
            out.append(_finding("shm", "warning", f"k8s.shm_size {r.k8s.shm_size} is below the node's "
                                f"{weights / GiB:,.0f} GiB of {role} weights: the loader may die with 'Bus error' — "
                                "drop k8s.shm_size to size it from the plan"))
            break
    return out


def _storage(view: BundleView) -> list[Finding]:
    s, model = view.recipe.k8s.storage, view.launch.model_dir
    out = []
    if not model:
        return [_finding("storage", "error", "the bundle names no model directory — rebuild it with --checkpoint")]
    if s.kind == "pvc" and not s.claim:
        out.append(_finding("storage", "error", "k8s.storage.kind is pvc but k8s.storage.claim is not set — name "
                            "the PersistentVolumeClaim holding the checkpoint"))
    if s.kind == "nfs" and not s.server:
        out.append(_finding("storage", "error", "k8s.storage.kind is nfs but k8s.storage.server is not set"))
    path = s.path or model
    if s.kind != "pvc" and not path.startswith("/"):
        out.append(_finding("storage", "error", f"k8s.storage.path {path!r} must be absolute"))
    if s.kind == "hostPath":
        out.append(_finding("storage", "info", f"hostPath: every GPU node must hold the checkpoint at {path} "
                            "(k2trt serve's preflight compares it across hosts; on Kubernetes nothing can)"))
    elif s.kind == "pvc":
        out.append(_finding("storage", "info", f"claim {s.claim} is mounted by every engine and gateway pod: it "
                            "must be ReadOnlyMany or ReadWriteMany"))
    cfg = {_config_dir(a) for a in _argvs(view.launch)} - {None}
    for d in cfg:
        if _nested(d, model):  # type: ignore[arg-type]
            out.append(_finding("paths", "error", f"the bundle directory {d} and the model directory {model} nest: "
                                "the ConfigMap cannot be mounted inside (or over) the read-only model volume — "
                                "build the bundle outside the checkpoint directory"))
    return out


def _argvs(launch: LaunchSpec) -> list[tuple[str, ...]]:
    if launch.disagg is None:
        return [launch.argv]
    return [s.argv for s in launch.disagg.ctx + launch.disagg.gen] + [launch.disagg.router_argv]


def _nested(a: str, b: str) -> bool:
    pa, pb = PurePosixPath(a), PurePosixPath(b)
    return pa == pb or pa in pb.parents or pb in pa.parents


def leader_env(d: K8sDeployment) -> list[dict[str, Any]]:
    """Environment of the engine pods: the group index and job id the commands name, the FQDN switches for both
    Open MPI generations, then the recipe's ``k8s.env``."""
    env: list[dict[str, Any]] = [
        {"name": GROUP_INDEX_ENV,
         "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['leaderworkerset.sigs.k8s.io/group-index']"}}},
        {"name": JOB_ID_VAR, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "OMPI_MCA_orte_keep_fqdn_hostnames", "value": "1"},
        {"name": "PRTE_MCA_prte_keep_fqdn_hostnames", "value": "1"},
    ]
    return env + [{"name": n, "value": v} for n, v in d.opts.env.items()]
