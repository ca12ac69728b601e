"""The Kubernetes objects of a ``K8sDeployment``: plain dicts in apply order, and their YAML.

Per deployment: a ConfigMap (the bundle files the commands read, the pods' ssh client config); one LeaderWorkerSet
per engine group (``RecreateGroupOnPodRestart``: a rank that dies takes its whole group down, as ``k2trt serve``
tears a job down; ``startupPolicy: LeaderCreated``: the workers start with the leader, whose init container waits
for their sshd); in front of the aggregated engine's leaders a Service, or for a disaggregated recipe the router's
Deployment and Service; then the gateway's Deployment and Service.

Probes: the engine leader's start-up probe polls the last of the launch spec's ready paths (``/health``) for the
plan's start-up budget, its readiness probe the first (``/health_generate``, a one-token generation: HTTP status
200-399 is ready, anything else is not); workers are ready when their sshd accepts TCP (Dynamo's choice); the
router and the gateway are ready when their ``/health`` answers 200. Liveness probes are left out of the engine: a
rank that dies ends mpirun and the leader container with it, and a busy engine must not be killed for answering a
probe late.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import yaml

from k2trt.gateway.config import API_KEYS_ENV
from k2trt.k8s.deployment import (GROUP_INDEX_ENV, SSH_KEY_PATH, EngineGroup, K8sDeployment, gib_quantity,
                                  group_hosts, leader_argv, leader_env)

LWS_API_VERSION = "leaderworkerset.x-k8s.io/v1"
LWS_RELEASE = "v0.10.0"
"""The LeaderWorkerSet release whose CRD schema the manifests are validated against (tests/data/k8s/)."""
LWS_NAME_LABEL = "leaderworkerset.sigs.k8s.io/name"
LWS_WORKER_INDEX_LABEL = "leaderworkerset.sigs.k8s.io/worker-index"
SSH_DIR, SSH_KEY = SSH_KEY_PATH.rsplit("/", 1)
"""Where the SSH key Secret is mounted, and its private key's name; ``authorized_keys`` holds the public key."""
AUTHORIZED_KEYS = "authorized_keys"
PROBE_PERIOD_S = 10
"""Start-up and sshd probe period, seconds."""
READY_PERIOD_S, READY_TIMEOUT_S = 30, 20
"""The engine's readiness probe generates a token: polled every 30 s, allowed 20 s under load."""
GATEWAY_API_KEYS_KEY = "api-keys"
"""The key of the gateway's Secret that holds its API keys; they reach ``k2trt gateway`` in its own variable
(``API_KEYS_ENV``), never in argv."""


def manifests(d: K8sDeployment) -> list[dict[str, Any]]:
    """Every object of the deployment, in apply order (ConfigMap, engine groups, router, Services, gateway)."""
    objs = [_configmap(d)] + [_lws(d, g) for g in d.groups]
    front_svc, front_port = d.front()
    front_type = "ClusterIP" if d.gateway else d.opts.service_type
    if d.router_argv:
        objs.append(_deployment(d, front_svc, "router", 1, _router_pod(d)))
        objs.append(_service(d, front_svc, "router", _selector(d, "router"), front_port, front_type))
    else:
        g = d.groups[0]
        objs.append(_service(d, front_svc, "engine", {LWS_NAME_LABEL: g.lws, LWS_WORKER_INDEX_LABEL: "0"},
                             front_port, front_type))
    if d.gateway:
        name = f"{d.name}-gateway"
        scrape = {"prometheus.io/scrape": "true", "prometheus.io/path": "/metrics",
                  "prometheus.io/port": str(d.gateway.port)}  # the gateway's own Prometheus metrics
        objs.append(_deployment(d, name, "gateway", d.opts.gateway_replicas, _gateway_pod(d), scrape))
        objs.append(_service(d, name, "gateway", _selector(d, "gateway"), d.gateway.port, d.opts.service_type))
    return objs


class _Dumper(yaml.SafeDumper):
    """Plain YAML for people: no anchors for shared label dicts, multi-line text (the ConfigMap's files) as ``|``
    blocks."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _text(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


_Dumper.add_representer(str, _text)


def to_yaml(objs: list[dict[str, Any]], header: str = "") -> str:
    """Multi-document YAML, keys in the order written (stable for golden files), ``header`` as comment lines."""
    head = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines())
    return head + yaml.dump_all(objs, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=120,
                                allow_unicode=True)


def gateway_argv(d: K8sDeployment) -> list[str]:
    """``k2trt gateway`` in front of the engine's (or router's) Service with the bundle's gateway settings — the
    ``GatewayConfig`` ``k2trt serve`` starts in its supervising process (``GatewayOptions.config``: limits, context,
    served name, aliases, key requirement, the job's log format), here in its own pods listening on every address.
    The API keys come from the Secret in ``API_KEYS_ENV``, never argv.

    Example: ``gateway_argv(d)[:4]`` → ``['k2trt', 'gateway', '--engine-url', 'http://k2-engine:8000']``.
    """
    assert d.gateway is not None
    svc, port = d.front()
    cfg = d.gateway.config(f"http://{svc}:{port}", d.launch.model_dir, log_format=d.launch.log_format)
    return dataclasses.replace(cfg, host="0.0.0.0").argv()


# ---- objects ---------------------------------------------------------------------------------------------------
def _labels(d: K8sDeployment, component: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "k2trt", "app.kubernetes.io/instance": d.name,
            "app.kubernetes.io/component": component}


def _selector(d: K8sDeployment, component: str) -> dict[str, str]:
    return {"app.kubernetes.io/instance": d.name, "app.kubernetes.io/component": component}


def _meta(d: K8sDeployment, name: str, component: str) -> dict[str, Any]:
    return {"name": name, "namespace": d.namespace, "labels": _labels(d, component)}


def _configmap(d: K8sDeployment) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(d, f"{d.name}-bundle", "config"),
            "data": dict(d.config)}


def _component(g: EngineGroup) -> str:
    return "engine" if g.role == "server" else f"engine-{g.role}"


def _lws(d: K8sDeployment, g: EngineGroup) -> dict[str, Any]:
    labels = _labels(d, _component(g))
    lwt: dict[str, Any] = {"size": g.pods, "restartPolicy": "RecreateGroupOnPodRestart"}
    if g.pods > 1:
        lwt["leaderTemplate"] = {"metadata": {"labels": labels}, "spec": _leader_pod(d, g)}
        lwt["workerTemplate"] = {"metadata": {"labels": labels}, "spec": _worker_pod(d, g)}
    else:  # a one-pod group is its leader; LeaderWorkerSet takes the worker template for it
        lwt["workerTemplate"] = {"metadata": {"labels": labels}, "spec": _leader_pod(d, g)}
    return {"apiVersion": LWS_API_VERSION, "kind": "LeaderWorkerSet", "metadata": _meta(d, g.lws, _component(g)),
            "spec": {"replicas": g.replicas, "startupPolicy": "LeaderCreated",
                     "networkConfig": {"subdomainPolicy": "Shared"}, "leaderWorkerTemplate": lwt}}


def _service(d: K8sDeployment, name: str, component: str, selector: dict[str, str], port: int,
             kind: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": _meta(d, name, component),
            "spec": {"type": kind, "selector": selector,
                     "ports": [{"name": "http", "port": port, "targetPort": "http", "protocol": "TCP"}]}}


def _deployment(d: K8sDeployment, name: str, component: str, replicas: int, pod: dict[str, Any],
                annotations: dict[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"labels": _labels(d, component)}
    if annotations:
        meta["annotations"] = annotations
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta(d, name, component),
            "spec": {"replicas": replicas, "selector": {"matchLabels": _selector(d, component)},
                     "template": {"metadata": meta, "spec": pod}}}


# ---- pods ------------------------------------------------------------------------------------------------------
def _pod(d: K8sDeployment, containers: list[dict[str, Any]], volumes: list[dict[str, Any]], *,
         init: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"enableServiceLinks": False}  # no Service variables in the ranks' environment
    if init:
        spec["initContainers"] = init
    spec["containers"] = containers
    spec["volumes"] = volumes
    spec["terminationGracePeriodSeconds"] = math.ceil(d.launch.stop_grace_s) + 10
    if d.opts.node_selector:
        spec["nodeSelector"] = dict(d.opts.node_selector)
    if d.opts.tolerations:
        spec["tolerations"] = [{k: v for k, v in (("key", t.key), ("operator", t.operator), ("value", t.value),
                                                   ("effect", t.effect)) if v is not None}
                               for t in d.opts.tolerations]
    if d.opts.image_pull_secrets:
        spec["imagePullSecrets"] = [{"name": s} for s in d.opts.image_pull_secrets]
    return spec


def _container(d: K8sDeployment, name: str, command: list[str], port: tuple[str, int]) -> dict[str, Any]:
    return {"name": name, "image": d.image, "imagePullPolicy": d.opts.image_pull_policy, "command": command,
            "ports": [{"name": port[0], "containerPort": port[1], "protocol": "TCP"}]}


def _http_probe(path: str, period: int, timeout: int, failures: int) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": "http"}, "periodSeconds": period, "timeoutSeconds": timeout,
            "failureThreshold": failures}


def _model_volume(d: K8sDeployment) -> tuple[dict[str, Any], dict[str, Any]]:
    """(volume, mount): the checkpoint, read-only, at the bundle's model directory."""
    s, model = d.opts.storage, d.launch.model_dir
    assert model is not None
    mount: dict[str, Any] = {"name": "model", "mountPath": model, "readOnly": True}
    if s.kind == "pvc":
        vol: dict[str, Any] = {"name": "model", "persistentVolumeClaim": {"claimName": s.claim, "readOnly": True}}
    elif s.kind == "nfs":
        vol = {"name": "model", "nfs": {"server": s.server, "path": s.path or model, "readOnly": True}}
    else:
        vol = {"name": "model", "hostPath": {"path": s.path or model, "type": "Directory"}}
    if s.sub_path and s.kind != "hostPath":
        mount["subPath"] = s.sub_path
    return vol, mount


def _bundle_volume(d: K8sDeployment, files: list[str]) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """(volume, mount) of the ConfigMap's bundle ``files`` where the commands expect them; None if they read none."""
    files = [f for f in files if f in d.config]
    if d.bundle_dir is None or not files:
        return None
    vol = {"name": "bundle", "configMap": {"name": f"{d.name}-bundle", "items": [{"key": f, "path": f}
                                                                                 for f in files]}}
    return vol, {"name": "bundle", "mountPath": d.bundle_dir, "readOnly": True}


def _engine_mounts(d: K8sDeployment, g: EngineGroup) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Volumes and mounts every pod of an engine group has: model, bundle config, /dev/shm, and for multi-pod
    groups the SSH key and ssh client config."""
    pairs = [_model_volume(d), _bundle_volume(d, ["config.yml" if g.role == "server" else f"{g.role}.yml"]),
             ({"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": gib_quantity(g.shm_bytes)}},
              {"name": "shm", "mountPath": "/dev/shm"})]
    if g.pods > 1:
        pairs.append(({"name": "ssh-key", "secret": {"secretName": d.ssh_secret, "defaultMode": 0o400}},
                      {"name": "ssh-key", "mountPath": SSH_DIR, "readOnly": True}))
        pairs.append(({"name": "ssh-config", "configMap": {"name": f"{d.name}-bundle",
                                                           "items": [{"key": "ssh_config", "path": "ssh_config"}]}},
                      {"name": "ssh-config", "mountPath": "/etc/ssh/ssh_config", "subPath": "ssh_config",
                       "readOnly": True}))
    present = [p for p in pairs if p is not None]
    return [v for v, _ in present], [m for _, m in present]


def _resources(d: K8sDeployment, g: EngineGroup) -> dict[str, Any]:
    limits: dict[str, Any] = {d.opts.gpu_resource: g.ranks_per_pod}
    if d.opts.rdma_resource:
        limits[d.opts.rdma_resource] = d.opts.rdma_per_pod
    return {"limits": limits}


def _engine_container(d: K8sDeployment, g: EngineGroup, name: str, command: list[str],
                      port: tuple[str, int], mounts: list[dict[str, Any]]) -> dict[str, Any]:
    c = _container(d, name, command, port)
    c["env"] = leader_env(d)
    c["resources"] = _resources(d, g)
    c["volumeMounts"] = mounts
    if d.opts.rdma_resource:  # registering RDMA memory needs locked pages
        c["securityContext"] = {"capabilities": {"add": ["IPC_LOCK"]}}
    return c


def _leader_pod(d: K8sDeployment, g: EngineGroup) -> dict[str, Any]:
    vols, mounts = _engine_mounts(d, g)
    c = _engine_container(d, g, "engine", leader_argv(d, g), ("http", g.port), mounts)
    paths = d.launch.ready_paths
    c["startupProbe"] = _http_probe(paths[-1], PROBE_PERIOD_S, 5, math.ceil(g.startup_s / PROBE_PERIOD_S))
    c["readinessProbe"] = _http_probe(paths[0], READY_PERIOD_S, READY_TIMEOUT_S, 3)
    init = [_wait_for_workers(d, g)] if g.pods > 1 else None
    return _pod(d, [c], vols, init=init)


def _wait_for_workers(d: K8sDeployment, g: EngineGroup) -> dict[str, Any]:
    """Init container of a multi-pod leader: mpirun starts only once every worker's sshd accepts connections."""
    hosts = " ".join(h.name for h in group_hosts(g, d.namespace)[1:])
    port = d.opts.ssh_port
    script = (f"for h in {hosts}; do until (exec 3<>\"/dev/tcp/$h/{port}\") 2>/dev/null; do "
              f"echo \"waiting for sshd on $h:{port}\"; sleep 5; done; done")
    return {"name": "wait-for-workers", "image": d.image, "imagePullPolicy": d.opts.image_pull_policy,
            "command": ["bash", "-c", script],
            "env": [e for e in leader_env(d) if e["name"] == GROUP_INDEX_ENV]}


def sshd_script(port: int) -> str:
    """The worker container's command: host keys, the pod's environment for the ranks ssh starts, then sshd in the
    foreground on ``port`` accepting only the Secret's key."""
    return ("set -e; mkdir -p /run/sshd /root/.ssh; ssh-keygen -A; "
            "env | grep -v -e '^HOSTNAME=' -e '^HOME=' > /root/.ssh/environment; "
            f"exec /usr/sbin/sshd -D -e -p {port} -o AuthorizedKeysFile={SSH_DIR}/{AUTHORIZED_KEYS} "
            "-o StrictModes=no -o PasswordAuthentication=no -o PermitRootLogin=prohibit-password "
            "-o PermitUserEnvironment=yes")


def _worker_pod(d: K8sDeployment, g: EngineGroup) -> dict[str, Any]:
    vols, mounts = _engine_mounts(d, g)
    c = _engine_container(d, g, "sshd", ["/bin/sh", "-c", sshd_script(d.opts.ssh_port)],
                          ("ssh", d.opts.ssh_port), mounts)
    c["readinessProbe"] = {"tcpSocket": {"port": "ssh"}, "periodSeconds": PROBE_PERIOD_S, "timeoutSeconds": 5}
    return _pod(d, [c], vols)


def _router_pod(d: K8sDeployment) -> dict[str, Any]:
    c = _container(d, "router", list(d.router_argv), ("http", d.router_port))
    pair = _bundle_volume(d, ["disagg.yml"])
    vols = [pair[0]] if pair else []
    c["volumeMounts"] = [pair[1]] if pair else []
    health = d.launch.ready_paths[-1]
    budget = max(g.startup_s for g in d.groups)
    c["startupProbe"] = _http_probe(health, PROBE_PERIOD_S, 5, math.ceil(budget / PROBE_PERIOD_S))
    c["readinessProbe"] = _http_probe(health, PROBE_PERIOD_S, 5, 3)
    return _pod(d, [c], vols)


def _gateway_pod(d: K8sDeployment) -> dict[str, Any]:
    assert d.gateway is not None
    c = _container(d, "gateway", gateway_argv(d), ("http", d.gateway.port))
    # a gateway that requires a key (the bundle's serve.gateway_auth) does not start without its Secret
    c["env"] = [{"name": API_KEYS_ENV, "valueFrom": {"secretKeyRef": {
        "name": d.gateway_secret, "key": GATEWAY_API_KEYS_KEY, "optional": not d.gateway.require_key}}}]
    vols = []
    if d.launch.model_dir:  # the tokenizer and chat template the gateway renders with
        vol, mount = _model_volume(d)
        vols, c["volumeMounts"] = [vol], [mount]
    c["readinessProbe"] = _http_probe("/health", PROBE_PERIOD_S, 5, 3)
    c["livenessProbe"] = {"tcpSocket": {"port": "http"}, "periodSeconds": 30, "timeoutSeconds": 5,
                          "failureThreshold": 4}
    return _pod(d, [c], vols)


def header(d: K8sDeployment, recipe: str) -> str:
    """Comment header of ``manifests.yaml``: what to have on the cluster before applying, and how to apply."""
    lines = [f"Kubernetes manifests of recipe {recipe}, rendered by k2trt from its bundle "
             "(launch.json, the engine config, the plan).",
             f"Needs LeaderWorkerSet ({LWS_API_VERSION}; validated against the {LWS_RELEASE} CRD) and the image "
             f"{d.image} where the nodes can pull it."]
    if any(g.pods > 1 for g in d.groups):
        lines += ["Before the first apply, create the SSH key Secret the leader and worker pods share:",
                  "  ssh-keygen -t ed25519 -N '' -C k2trt -f k2trt-ssh",
                  f"  kubectl -n {d.namespace} create secret generic {d.ssh_secret} "
                  f"--from-file={SSH_KEY}=k2trt-ssh --from-file={AUTHORIZED_KEYS}=k2trt-ssh.pub"]
    if d.gateway:
        need = "required: its pods start only once it exists" if d.gateway.require_key else "optional"
        lines += [f"The gateway's API keys ({need}):",
                  f"  kubectl -n {d.namespace} create secret generic {d.gateway_secret} "
                  f"--from-literal={GATEWAY_API_KEYS_KEY}='KEY1 KEY2'"]
    lines += ["Apply: kubectl apply -f manifests.yaml (kubectl apply --dry-run=server -f manifests.yaml checks it "
              "against the cluster first)."]
    return "\n".join(lines)
