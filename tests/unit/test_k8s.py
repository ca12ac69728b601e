"""k2trt build --target k8s / k2trt k8s render: LeaderWorkerSet manifests from a bundle.

Every packaged recipe's manifests are validated offline with real validators (tests/unit/k8s_schemas.py: the
Kubernetes API schemas via kubernetes-validate, the LeaderWorkerSet CRD schema of LWS v0.10.0 via jsonschema); two
recipes are pinned by golden files; the leader's command is the one ``k2trt serve`` builds for the same bundle. No
GPU node and no API server exist here: the GPU recipes are built from header-only sparse checkpoints, and the
manifests are checked as data, not applied.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml
from click.testing import CliRunner

from k2trt import __version__
from k2trt.bundle.build import BuildResult, build_bundle
from k2trt.bundle.recipe import list_recipes, load_recipe
from k2trt.cli import cli
from k2trt.errors import ConfigError, PlanError
from k2trt.k8s.deployment import BundleView, deployment, pod_host, quantity_bytes
from k2trt.k8s.manifests import gateway_argv
from k2trt.k8s.render import MANIFESTS_FILE, K8sResult, build_k8s, read_bundle, render, render_bundle, view_of
from k2trt.launch.hosts import HostList
from k2trt.launch.mpi import MpiFlavor
from k2trt.launch.runner import load_spec, plan_launch, with_hosts
from k2trt.launch.spec import HostSlots, LaunchSpec
from k2trt.trtllm.disagg_lint import lint_config_text

from gateway_cli import parsed_config
from k8s_schemas import lws_source, validate

GOLDEN = Path(__file__).parent.parent / "golden" / "k8s"
UPDATE = os.environ.get("K2TRT_UPDATE_GOLDEN") == "1"
IMAGE = "registry.example.com/ml/k2trt:0.1.0-trtllm1.3.0rc24"
REFUSED = {"k2-h200-1x8-w4a8": (PlanError, "MIXED_PRECISION"),
           "k2-thinking-h200-1x8-w4a8": (PlanError, "MIXED_PRECISION"),
           "tiny-cpu": (ConfigError, "runs the reference engine")}


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory, tiny_ckpt: Path) -> dict[str, Path]:
    """A header-only full-size K2 per weight format the packaged recipes need, and the tiny K2."""
    from k2trt.checkpoint.synth import synthesize
    from k2trt.spec import Quantization, preset

    out = {"tiny": tiny_ckpt}
    for fmt in ("fp8_block", "nvfp4", "w4a8"):
        spec = preset("k2-instruct")
        if fmt != "fp8_block":
            spec = spec.with_quantization(Quantization.requant(fmt))
        out[fmt] = synthesize(spec, tmp_path_factory.mktemp(fmt) / "K2", sparse=True, tokenizer=False,
                              preset_name="k2-instruct")
    return out


def _ckpt(name: str, ckpts: dict[str, Path], sets: list[str] | tuple[str, ...] = ()) -> Path:
    r = load_recipe(name, list(sets))
    return ckpts["tiny"] if r.model.preset == "tiny" else ckpts[r.model.weights or "fp8_block"]


@pytest.fixture(scope="module")
def built(ckpts: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Callable[..., BuildResult]:
    """``built(name, *bundle_sets)``: the dry-run bundle of a recipe, built once per module (a K2 build inspects a
    139,644-tensor checkpoint: seconds each on these cores); ``k8s.*`` settings do not change a bundle."""
    cache: dict[tuple[str, ...], BuildResult] = {}
    root = tmp_path_factory.mktemp("bundles")

    def get(name: str, *sets: str) -> BuildResult:
        if (name, *sets) not in cache:
            out = root / f"{name}-{len(cache)}"
            cache[(name, *sets)] = build_bundle(load_recipe(name, list(sets)), _ckpt(name, ckpts, sets), out,
                                                dry_run=True)
        return cache[(name, *sets)]
    return get


def _k8s(built: Callable[..., BuildResult], name: str, k8s_sets: tuple[str, ...] = (),
         bundle_sets: tuple[str, ...] = ()) -> tuple[BuildResult, K8sResult]:
    """Render recipe ``name``'s manifests (as ``k8s render --set`` would: ``k8s_sets`` change k8s.* only)."""
    res = built(name, *bundle_sets)
    r = load_recipe(name, [*bundle_sets, f"k8s.image={IMAGE}", *k8s_sets])
    return res, render(view_of(r, res.files), res.out / MANIFESTS_FILE)


def _docs(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d is not None]


def _by_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def _container(pod: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in pod["containers"] if c["name"] == name)


# ---- schema validation of every packaged recipe ---------------------------------------------------------------
def test_the_stored_lws_schema_names_its_source() -> None:
    src = lws_source()
    assert src["repository"] == "kubernetes-sigs/lws" and src["release"] == "v0.10.0"
    assert re.fullmatch(r"[0-9a-f]{40}", src["commit"]) and src["path"].endswith("_leaderworkersets.yaml")


@pytest.mark.parametrize("name", list_recipes())
def test_every_packaged_recipe_renders_valid_manifests(name: str, ckpts: dict[str, Path], tmp_path: Path) -> None:
    """``k2trt build --target k8s --dry-run`` for each packaged recipe: what the pinned release can serve renders
    objects that pass the Kubernetes and LWS schemas; a recipe build refuses is refused here with build's own
    error (W4A8), and the reference engine, whose rank command names this machine's Python, in one line."""
    r = load_recipe(name, [f"k8s.image={IMAGE}"])
    if name in REFUSED:
        kind, msg = REFUSED[name]
        with pytest.raises(kind, match=msg) as e:
            _, k = build_k8s(r, _ckpt(name, ckpts), tmp_path / name, dry_run=True)
            k.raise_if_failed()
        assert "\n" not in str(e.value)
        return
    res, k = build_k8s(r, _ckpt(name, ckpts), tmp_path / name, dry_run=True)
    assert not k.errors, [f.message for f in k.errors]
    objs = _docs(k.text)
    assert objs == k.objects and len(objs) >= 4
    for obj in objs:
        validate(obj)
    assert {o["kind"] for o in objs} >= {"ConfigMap", "LeaderWorkerSet", "Service", "Deployment"}
    assert not res.written and not (tmp_path / name).exists()


def test_the_validators_refuse_what_a_cluster_refuses(built: Callable[..., BuildResult]) -> None:
    """The offline validation can fail: an unknown LWS restart policy, an unknown field at several depths, a
    duplicate container, a port given as text are each refused."""
    import jsonschema
    import kubernetes_validate

    _, k = _k8s(built, "k2-h200-2x8-tp16ep8")
    lws = _by_kind(k.objects, "LeaderWorkerSet")[0]
    svc = _by_kind(k.objects, "Service")[0]

    def broken(obj: dict[str, Any], edit: Callable[[dict[str, Any]], Any]) -> dict[str, Any]:
        obj = json.loads(json.dumps(obj))
        edit(obj)
        return obj

    def leader(o: dict[str, Any]) -> dict[str, Any]:
        return o["spec"]["leaderWorkerTemplate"]["leaderTemplate"]["spec"]  # type: ignore[no-any-return]

    bad = [
        broken(lws, lambda o: o["spec"]["leaderWorkerTemplate"].update(restartPolicy="OnFailure")),
        broken(lws, lambda o: o["spec"].update(replicaCount=2)),
        broken(lws, lambda o: leader(o)["containers"].append(leader(o)["containers"][0])),
        broken(lws, lambda o: o["spec"]["leaderWorkerTemplate"]["workerTemplate"]["spec"]["containers"][0].update(
            readinesProbe={})),
        broken(svc, lambda o: o["spec"]["ports"][0].update(port="http")),
        broken(svc, lambda o: o["spec"].update(selecter={})),
    ]
    for obj in bad:
        with pytest.raises((jsonschema.ValidationError, kubernetes_validate.ValidationError)):
            validate(obj)


# ---- golden files ----------------------------------------------------------------------------------------------
GOLDEN_SETS = {
    "k2-h200-2x8-tp16ep8": ("k8s.namespace=serving", "k8s.storage.kind=pvc", "k8s.storage.claim=kimi-k2",
                            "k8s.rdma_resource=rdma/ib", "k8s.node_gpus=8", "k8s.gateway_api_key_secret=k2-keys",
                            "k8s.env={NCCL_IB_HCA: mlx5, UCX_NET_DEVICES: 'mlx5_0:1', TZ: UTC}",
                            "k8s.node_selector={nvidia.com/gpu.product: NVIDIA-H200}",
                            "k8s.tolerations=[{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}]"),
    "k2-h200-disagg": ("k8s.storage.kind=nfs", "k8s.storage.server=nfs.example.com",
                       "k8s.storage.path=/export/models/Kimi-K2-Instruct", "k8s.service_type=LoadBalancer"),
}


def _normalized(text: str, ckpt: Path, bundle: Path) -> str:
    """Machine-specific paths and the k2trt version replaced, so the golden file holds what a user would see."""
    return (text.replace(str(bundle.resolve()), "/bundles/k2").replace(str(ckpt.resolve()), "/models/Kimi-K2-Instruct")
            .replace(f"k2trt {__version__}", "k2trt VERSION"))


@pytest.mark.parametrize("name", sorted(GOLDEN_SETS))
def test_manifests_match_golden(name: str, ckpts: dict[str, Path], built: Callable[..., BuildResult]) -> None:
    res, k = _k8s(built, name, GOLDEN_SETS[name])
    assert not k.errors, [f.message for f in k.errors]
    text = _normalized(k.text, _ckpt(name, ckpts), res.out)
    path = GOLDEN / f"{name}.yaml"
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"missing golden {path}; run with K2TRT_UPDATE_GOLDEN=1"
    assert text == path.read_text(), f"{path} changed; review and regenerate with K2TRT_UPDATE_GOLDEN=1"
    for obj in _docs(text):
        validate(obj)


# ---- the same argv as serve ------------------------------------------------------------------------------------
def _serve_argv(bundle: Path, hosts: tuple[HostSlots, ...], env: dict[str, str], major: int) -> list[str]:
    """What ``k2trt serve BUNDLE --hosts …`` runs, as root, on an Open MPI ``major`` node whose ssh client config
    carries the port and key (so the spec's own ssh options are dropped, as in the pods)."""
    spec, _, bundle_dir = load_spec(bundle)
    spec = dataclasses.replace(spec, ssh_port=None, ssh_args=())
    given = HostList(tuple((h.name, h.slots) for h in hosts))
    plan = plan_launch(with_hosts(spec, given, None, bundle_dir), bundle_dir, launcher="mpirun", environ=env,
                       euid=0, flavor=MpiFlavor("openmpi", (major, 1, 0)))
    (cmd,), = plan.stages
    return list(cmd.argv)


def test_leader_runs_the_argv_serve_runs_for_the_same_bundle(ckpts: dict[str, Path], tmp_path: Path) -> None:
    """``k2trt build --target k8s`` written to disk; ``k2trt serve`` on that bundle, given the group's pods as
    hosts, plans exactly the leader container's command (Open MPI 4 and 5 alike)."""
    r = load_recipe("k2-h200-2x8-tp16ep8", [f"k8s.image={IMAGE}", "k8s.env={NCCL_IB_HCA: mlx5, TZ: UTC}"])
    res, k = build_k8s(r, ckpts["fp8_block"], tmp_path / "b")
    assert res.written and (res.out / MANIFESTS_FILE).read_text() == k.text
    lws = _by_kind(_docs(k.text), "LeaderWorkerSet")[0]
    leader = _container(lws["spec"]["leaderWorkerTemplate"]["leaderTemplate"]["spec"], "engine")
    name = lws["metadata"]["name"]
    hosts = (HostSlots(pod_host(name, "default", 0), 8), HostSlots(pod_host(name, "default", 1), 8))
    assert hosts[0].name == f"{name}-$(K2TRT_GROUP_INDEX).{name}.default"  # = LWS_LEADER_ADDRESS
    for major in (4, 5):
        served = _serve_argv(res.out, hosts, {"NCCL_IB_HCA": "mlx5", "TZ": "UTC"}, major)
        assert leader["command"][0] == "mpirun" and served[0].endswith("mpirun")
        assert leader["command"][1:] == served[1:]
    spec, _, _ = load_spec(res.out)
    assert tuple(leader["command"][-len(spec.argv):]) == spec.argv  # the bundle's rank command, untouched
    cmd = leader["command"]
    assert cmd[cmd.index("NCCL_IB_HCA") - 1] == "-x" and "TZ" not in cmd  # forwarded by the spec's patterns only


def test_disaggregated_servers_run_serves_argv_and_the_router_knows_the_pods(
        built: Callable[..., BuildResult], tmp_path: Path) -> None:
    res, k = _k8s(built, "k2-h200-disagg")
    out = tmp_path / "b"
    from k2trt.bundle.build import write_bundle

    write_bundle(out, res.files)  # the built bundle on disk, for serve (its argv names res.out's paths)
    spec, _, bundle_dir = load_spec(out)
    assert spec.disagg is not None
    objs = _docs(k.text)
    groups = {o["metadata"]["name"]: o for o in _by_kind(objs, "LeaderWorkerSet")}
    assert sorted(groups) == ["k2-h200-disagg-ctx", "k2-h200-disagg-gen"]
    placed = []
    for role in spec.disagg.ctx + spec.disagg.gen:
        lws = f"k2-h200-disagg-{role.name.rstrip('0123456789')}"
        hosts = (HostSlots(pod_host(lws, "default", 0), 8), HostSlots(pod_host(lws, "default", 1), 8))
        placed.append(dataclasses.replace(role, hosts=hosts))
        assert groups[lws]["spec"]["replicas"] == 1 and groups[lws]["spec"]["leaderWorkerTemplate"]["size"] == 2
    ctx, gen = placed
    spec = dataclasses.replace(spec, ssh_port=None, ssh_args=(),
                               disagg=dataclasses.replace(spec.disagg, ctx=(ctx,), gen=(gen,)))
    servers, (router,) = plan_launch(spec, bundle_dir, launcher="mpirun", environ={}, euid=0,
                                     flavor=MpiFlavor("openmpi", (4, 1, 0))).stages
    for cmd in servers:
        lws = groups[f"k2-h200-disagg-{cmd.name.rstrip('0123456789')}"]
        leader = _container(lws["spec"]["leaderWorkerTemplate"]["leaderTemplate"]["spec"], "engine")
        assert leader["command"][1:] == list(cmd.argv)[1:]
    (router_dep,) = [o for o in _by_kind(objs, "Deployment") if o["metadata"]["name"].endswith("-router")]
    assert _container(router_dep["spec"]["template"]["spec"], "router")["command"] == list(router.argv)
    cm = _by_kind(objs, "ConfigMap")[0]["data"]
    ours, bundled = yaml.safe_load(cm["disagg.yml"]), yaml.safe_load(res.files["disagg.yml"])
    assert ours["context_servers"]["urls"] == ["k2-h200-disagg-ctx-0.k2-h200-disagg-ctx.default:8001"]
    assert ours["generation_servers"]["urls"] == ["k2-h200-disagg-gen-0.k2-h200-disagg-gen.default:8002"]
    for section in ("context_servers", "generation_servers"):
        ours[section].pop("urls"), bundled[section].pop("urls")
    assert ours == bundled  # the bundle's router config but for the servers' addresses
    assert lint_config_text(cm["disagg.yml"]).ok
    assert cm["ctx.yml"] == res.files["ctx.yml"] and cm["gen.yml"] == res.files["gen.yml"]


def test_gateway_command_is_the_real_gateway_cli(built: Callable[..., BuildResult], tiny_ckpt: Path) -> None:
    """The gateway pod's command parses with ``k2trt gateway`` itself (its --dry-run prints the resolved config).
    The header-only K2 has no tokenizer, so the tiny K2's directory stands in for --model-dir."""
    res, k = _k8s(built, "k2-h200-2x8-tp16ep8")
    d = deployment(view_of(load_recipe("k2-h200-2x8-tp16ep8", [f"k8s.image={IMAGE}"]), res.files))
    argv = gateway_argv(d)
    (dep,) = [o for o in k.objects if o["metadata"]["name"].endswith("-gateway") and o["kind"] == "Deployment"]
    assert _container(dep["spec"]["template"]["spec"], "gateway")["command"] == argv
    scrape = dep["spec"]["template"]["metadata"]["annotations"]
    assert (scrape["prometheus.io/path"], scrape["prometheus.io/port"]) == ("/metrics", str(d.launch.gateway.port))
    assert argv[argv.index("--model-dir") + 1] == d.launch.model_dir
    argv[argv.index("--model-dir") + 1] = str(tiny_ckpt)
    (env,) = _container(dep["spec"]["template"]["spec"], "gateway")["env"]
    ref = env["valueFrom"]["secretKeyRef"]
    assert (ref["name"], ref["key"], ref["optional"]) == ("k2-h200-2x8-tp16ep8-gateway-keys", "api-keys", False)
    out = CliRunner().invoke(cli, argv[1:] + ["--dry-run"], env={env["name"]: "key-1 key-2"})
    assert out.exit_code == 0, out.output
    cfg = json.loads(out.output)
    assert (cfg["engine_url"], cfg["host"], cfg["port"], cfg["mode"], cfg["api_keys"]) == (
        "http://k2-h200-2x8-tp16ep8-engine:8000", "0.0.0.0", 8080, "render", 2)
    # a bundle whose gateway may run open (serve.gateway_auth: optional) does not need the Secret to start
    _, open_ = _k8s(built, "k2-h200-2x8-tp16ep8", bundle_sets=("serve.gateway_auth=optional",))
    (dep,) = [o for o in open_.objects if o["metadata"]["name"].endswith("-gateway") and o["kind"] == "Deployment"]
    assert _container(dep["spec"]["template"]["spec"], "gateway")["env"][0]["valueFrom"]["secretKeyRef"]["optional"]


def test_gateway_pods_run_the_gateway_serve_starts(built: Callable[..., BuildResult], tiny_ckpt: Path) -> None:
    """The gateway pods' command, parsed back by the real ``k2trt gateway --dry-run``, is the ``GatewayConfig``
    ``k2trt serve`` starts for the same bundle (``GatewayOptions.config``: limits, the recipe's context, served name,
    aliases, key requirement, the job's log format) but for the address it listens on (every one, in a pod) and the
    keys (from the Secret). The header-only K2 has no tokenizer, so the tiny K2's directory stands in for it."""
    sets = ("serve.gateway_limits.max_connections=64", "serve.gateway_limits.read_timeout_s=1200.5",
            "serve.gateway_limits.max_body_bytes=65536", "serve.gateway_limits.model_aliases=[kimi, '*']",
            "serve.gateway_limits.max_context_tokens=32768", "model.served_name=kimi-k2-prod", "serve.log_format=json")
    res, k = _k8s(built, "k2-h200-2x8-tp16ep8", bundle_sets=sets)
    (dep,) = [o for o in k.objects if o["metadata"]["name"].endswith("-gateway") and o["kind"] == "Deployment"]
    argv = _container(dep["spec"]["template"]["spec"], "gateway")["command"]
    launch = LaunchSpec.from_dict(json.loads(res.files["launch.json"]))
    assert launch.gateway is not None and launch.model_dir is not None
    serve_cfg = launch.gateway.config("http://k2-h200-2x8-tp16ep8-engine:8000", launch.model_dir, ("key-1",),
                                      launch.log_format)
    assert (serve_cfg.max_connections, serve_cfg.max_context_tokens, serve_cfg.served_model_name,
            serve_cfg.log_format, serve_cfg.require_api_key) == (64, 32768, "kimi-k2-prod", "json", True)
    argv[argv.index("--model-dir") + 1] = str(tiny_ckpt)
    got = parsed_config(argv, {"K2TRT_GATEWAY_API_KEYS": "key-1"}, ("key-1",))
    assert got == dataclasses.replace(serve_cfg, host="0.0.0.0", model_dir=str(tiny_ckpt))
    # without the settings, the gateway still gets the bundle's context (the recipe's) and key requirement
    res, k = _k8s(built, "k2-h200-2x8-tp16ep8")
    (dep,) = [o for o in k.objects if o["metadata"]["name"].endswith("-gateway") and o["kind"] == "Deployment"]
    argv = _container(dep["spec"]["template"]["spec"], "gateway")["command"]
    assert argv[argv.index("--max-context") + 1] == str(load_recipe("k2-h200-2x8-tp16ep8").context)
    assert "--require-api-key" in argv and "--log-format" not in argv


# ---- probes, shared memory, replicas ---------------------------------------------------------------------------
def _leader(k: K8sResult) -> tuple[dict[str, Any], dict[str, Any]]:
    lws = _by_kind(k.objects, "LeaderWorkerSet")[0]
    tpl = lws["spec"]["leaderWorkerTemplate"]
    return lws, (tpl.get("leaderTemplate") or tpl["workerTemplate"])["spec"]


def test_startup_budget_and_shm_come_from_the_plan(built: Callable[..., BuildResult]) -> None:
    res, k = _k8s(built, "k2-h200-2x8-tp16ep8")
    mem = json.loads(res.files["manifest.json"])["plan"]["server"]["memory"]
    c = _container(_leader(k)[1], "engine")
    probe = c["startupProbe"]
    assert probe["httpGet"]["path"] == "/health" and c["readinessProbe"]["httpGet"]["path"] == "/health_generate"
    assert probe["failureThreshold"] * probe["periodSeconds"] >= 2 * mem["load_s"] > 0
    assert (probe["failureThreshold"] - 1) * probe["periodSeconds"] < 2 * mem["load_s"]
    # k2trt serve waits as long for the same bundle (one budget: plan.memory.ready_budget_s)
    wait = json.loads(res.files["launch.json"])["ready_timeout_s"]
    assert abs(wait - 2 * mem["load_s"]) <= 1 and wait <= probe["failureThreshold"] * probe["periodSeconds"] < \
        wait + probe["periodSeconds"]
    shm = next(v for v in _leader(k)[1]["volumes"] if v["name"] == "shm")["emptyDir"]
    assert shm["medium"] == "Memory"
    assert quantity_bytes(shm["sizeLimit"]) >= mem["weights_gib_max"] * 2**30 * 8 * 1.1
    # slower storage → a longer load estimate in the plan → a longer budget
    slow_res, slow = _k8s(built, "k2-h200-2x8-tp16ep8", bundle_sets=("cluster.load_gbps=0.1",))
    assert json.loads(slow_res.files["manifest.json"])["plan"]["server"]["memory"]["load_s"] > mem["load_s"]
    assert _container(_leader(slow)[1], "engine")["startupProbe"]["failureThreshold"] > probe["failureThreshold"]
    assert json.loads(slow_res.files["launch.json"])["ready_timeout_s"] > wait


def test_eplb_sizes_shm_and_a_smaller_one_is_refused(built: Callable[..., BuildResult]) -> None:
    """Online EPLB keeps every routed expert in each node's /dev/shm (≈ 0.92 TiB for K2 FP8): the bundle's launch
    spec and the pods' /dev/shm carry it; a k8s.shm_size below it is a one-line error."""
    from k2trt.plan.memory import routed_expert_bytes
    from k2trt.spec import preset

    eplb = ("serve.options.extra={moe_config: {backend: CUTLASS, load_balancer: {num_slots: 384, "
            "layer_updates_per_iter: 1}}}",)
    res, k = _k8s(built, "k2-h200-2x8-tp16ep8", bundle_sets=eplb)
    assert not k.errors, [f.message for f in k.errors]
    need = json.loads(res.files["launch.json"])["shm_min_bytes"]
    assert need == int(routed_expert_bytes(preset("k2-instruct"))) and 0.9 * 2**40 < need < 0.95 * 2**40
    shm = next(v for v in _leader(k)[1]["volumes"] if v["name"] == "shm")["emptyDir"]["sizeLimit"]
    assert quantity_bytes(shm) >= need + 8 * 60 * 2**30
    _, small = _k8s(built, "k2-h200-2x8-tp16ep8", ("k8s.shm_size=512Gi",), bundle_sets=eplb)
    errs = [f.message for f in small.errors]
    assert len(errs) == 1 and "below the 945 GiB online EPLB keeps in /dev/shm" in errs[0] and "\n" not in errs[0]
    _, plain = _k8s(built, "k2-h200-2x8-tp16ep8", ("k8s.shm_size=256Gi",))
    assert not plain.errors and any("Bus error" in f.message for f in plain.findings)


def test_replicas_and_a_single_pod_group(built: Callable[..., BuildResult]) -> None:
    _, k = _k8s(built, "k2-b200-1x8-nvfp4", ("k8s.replicas=3", "k8s.gateway_replicas=2"))
    lws, pod = _leader(k)
    assert lws["spec"]["replicas"] == 3 and lws["spec"]["leaderWorkerTemplate"]["size"] == 1
    assert "leaderTemplate" not in lws["spec"]["leaderWorkerTemplate"]  # the one pod is its own leader
    cmd = _container(pod, "engine")["command"]
    assert cmd[cmd.index("-H") + 1] == "localhost:8" and "initContainers" not in pod
    assert not [v for v in pod["volumes"] if v["name"].startswith("ssh")]  # no ssh in a one-pod group
    assert not any(f.rule in ("ssh-secret", "rdma") for f in k.findings)
    (gw,) = _by_kind(k.objects, "Deployment")
    assert gw["spec"]["replicas"] == 2


# ---- render from an existing bundle ----------------------------------------------------------------------------
def test_render_from_a_bundle_equals_build_and_takes_k8s_sets_only(ckpts: dict[str, Path], tmp_path: Path) -> None:
    r = load_recipe("k2-h200-disagg", [f"k8s.image={IMAGE}"])
    res, made = build_k8s(r, ckpts["fp8_block"], tmp_path / "b")
    again = render_bundle(res.out, dry_run=True)
    assert again.text == made.text and not again.written
    moved = render_bundle(res.out, sets=["k8s.namespace=serving"], out=tmp_path / "elsewhere")
    assert moved.written and moved.path == (tmp_path / "elsewhere" / "manifests.yaml").resolve()
    assert {o["metadata"]["namespace"] for o in _docs(moved.path.read_text())} == {"serving"}
    assert (res.out / MANIFESTS_FILE).read_text() == made.text  # the bundle's own copy is untouched
    with pytest.raises(ConfigError, match="k8s render changes k8s.. settings only"):
        read_bundle(res.out, ["serve.port=9000"])
    r2 = CliRunner().invoke(cli, ["k8s", "render", str(res.out), "--set", "k8s.replicas=2"])
    assert isinstance(r2.exception, ConfigError) and "scales aggregated deployments" in str(r2.exception)
    r2 = CliRunner().invoke(cli, ["k8s", "render", str(res.out), "--json", "--dry-run"])
    assert r2.exit_code == 0, r2.output
    assert "LeaderWorkerSet/k2-h200-disagg-ctx" in json.loads(r2.output)["objects"]


def test_build_target_k8s_cli(ckpts: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "b"
    args = ["build", "--recipe", "k2-h200-2x8-ep16-adp", "--checkpoint", str(ckpts["fp8_block"]), "--out", str(out),
            "--target", "k8s", "--set", f"k8s.image={IMAGE}"]
    r = CliRunner().invoke(cli, args + ["--dry-run"])
    assert r.exit_code == 0, r.output
    assert "k8s warning: no k8s.node_selector" in r.output and "kind: LeaderWorkerSet" in r.output
    assert not out.exists()
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    assert (out / MANIFESTS_FILE).is_file() and (out / "launch.json").is_file()
    assert "LeaderWorkerSet/k2-h200-2x8-ep16-adp" in r.output


# ---- bad inputs: one line each, nothing written ----------------------------------------------------------------
BAD = [
    (("k8s.node_gpus=4",), "each engine pod needs 8 GPUs (16 ranks over 2 pod(s)) but k8s.node_gpus is 4"),
    (("k8s.image=",), "k8s.image '' is empty"),
    (("k8s.image=Registry.example.com/K2TRT:latest",), "has an invalid repository"),
    (("k8s.namespace=Prod_NS",), "k8s.namespace 'Prod_NS' is not a DNS label"),
    (("k8s.name=" + "k" * 60,), "too long for Kubernetes"),
    (("k8s.ssh_port=8000",), "k8s.ssh_port 8000 is not a free TCP port"),
    (("k8s.storage.kind=pvc",), "k8s.storage.claim is not set"),
    (("k8s.storage.kind=nfs",), "k8s.storage.server is not set"),
    (("k8s.shm_size=lots",), "'lots' is not a Kubernetes quantity"),
]


@pytest.mark.parametrize("sets,message", BAD, ids=[s[0][0].split("=")[0] for s in BAD])
def test_bad_inputs_are_one_line_errors(sets: tuple[str, ...], message: str,
                                        built: Callable[..., BuildResult]) -> None:
    _, k = _k8s(built, "k2-h200-2x8-tp16ep8", sets)
    with pytest.raises(ConfigError) as e:
        k.raise_if_failed()
    assert message in str(e.value) and "\n" not in str(e.value) and not k.text


def test_an_engine_bound_to_loopback_is_refused(built: Callable[..., BuildResult]) -> None:
    _, k = _k8s(built, "k2-h200-2x8-tp16ep8", bundle_sets=("serve.host=127.0.0.1",))
    (err,) = k.errors
    assert "the engine binds 127.0.0.1, which probes and other pods cannot reach" in err.message


def test_cli_errors_are_one_line_and_write_nothing(ckpts: dict[str, Path], tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from k2trt.cli import main

    out = tmp_path / "b"
    with pytest.raises(SystemExit) as ex:
        main(["build", "--recipe", "k2-h200-2x8-tp16ep8", "--checkpoint", str(ckpts["fp8_block"]), "--out", str(out),
              "--target", "k8s", "--set", "k8s.node_gpus=4", "--set", "k8s.image="])
    err = capsys.readouterr().err.strip().splitlines()
    assert ex.value.code == 2 and not out.exists()
    assert len(err) == 1 and err[0].startswith("error: k8s.image '' is empty") and "1 more error" in err[0]


def test_recipe_schema_refuses_bad_k8s_fields() -> None:
    with pytest.raises(ConfigError, match="did you mean 'node_selector'"):
        load_recipe("k2-h200-2x8-tp16ep8", ["k8s.nodeselector={a: b}"])
    with pytest.raises(ConfigError, match=r"k8s.node_selector.gpu: expected text, got True"):
        load_recipe("k2-h200-2x8-tp16ep8", ["k8s.node_selector={gpu: true}"])
    with pytest.raises(ConfigError, match="k8s.replicas must be ≥ 1"):
        load_recipe("k2-h200-2x8-tp16ep8", ["k8s.replicas=0"])
    with pytest.raises(ConfigError, match="is not one of"):
        load_recipe("k2-h200-2x8-tp16ep8", ["k8s.storage.kind=s3"])


def test_nested_bundle_and_model_dirs_are_refused(ckpts: dict[str, Path], tmp_path: Path) -> None:
    model = tmp_path / "K2"
    model.symlink_to(ckpts["fp8_block"], target_is_directory=True)
    r = load_recipe("k2-h200-2x8-tp16ep8", [f"k8s.image={IMAGE}"])
    _, k = build_k8s(r, model, model.resolve() / "bundle", dry_run=True)
    assert any("nest: the ConfigMap cannot be mounted inside" in f.message for f in k.errors)


def test_sshd_and_ssh_configs_are_what_openssh_accepts(built: Callable[..., BuildResult], tmp_path: Path) -> None:
    """The worker's sshd options pass ``sshd -t`` and the leader's ssh client config gives ``ssh -G`` the port and
    key (OpenSSH itself parses both; nothing connects)."""
    import shlex
    import shutil
    import subprocess

    if not (shutil.which("ssh") and os.path.exists("/usr/sbin/sshd") and shutil.which("ssh-keygen")):
        pytest.skip("OpenSSH is not installed here")
    _, k = _k8s(built, "k2-h200-2x8-tp16ep8", ("k8s.ssh_port=2299",))
    lws = _by_kind(k.objects, "LeaderWorkerSet")[0]
    worker = _container(lws["spec"]["leaderWorkerTemplate"]["workerTemplate"]["spec"], "sshd")
    sshd = shlex.split(worker["command"][2].split("exec ", 1)[1])
    key = tmp_path / "hostkey"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    t = subprocess.run(sshd[:1] + ["-t", "-f", "/dev/null", "-h", str(key)] + sshd[1:], capture_output=True,
                       text=True)
    assert t.returncode == 0, t.stderr
    assert sshd[sshd.index("-p") + 1] == "2299"
    bad = subprocess.run(sshd[:1] + ["-t", "-f", "/dev/null", "-h", str(key), "-o", "PermitUserEnviroment=yes"],
                         capture_output=True, text=True)
    assert bad.returncode != 0  # sshd -t does refuse a misspelt option
    cfg = tmp_path / "ssh_config"
    cfg.write_text(_by_kind(k.objects, "ConfigMap")[0]["data"]["ssh_config"])
    g = subprocess.run(["ssh", "-G", "-F", str(cfg), "worker-1.example"], capture_output=True, text=True)
    assert g.returncode == 0, g.stderr
    eff = dict(line.split(" ", 1) for line in g.stdout.splitlines() if " " in line)
    assert eff["port"] == "2299" and eff["identityfile"] == "/etc/k2trt/ssh/id_ed25519"
    assert eff["stricthostkeychecking"] in ("false", "no")


def test_a_bundle_without_a_load_estimate_gets_the_same_budget(built: Callable[..., BuildResult]) -> None:
    """A bundle whose manifest has no load estimate (built before there was one) is budgeted from its weights with
    the plan's own estimate."""
    res = built("k2-h200-2x8-tp16ep8")
    view = view_of(load_recipe("k2-h200-2x8-tp16ep8", [f"k8s.image={IMAGE}"]), res.files)
    plan = json.loads(json.dumps(dict(view.plan)))
    full = deployment(view).groups[0].startup_s
    del plan["server"]["memory"]["load_s"]
    assert abs(deployment(BundleView(view.recipe, view.launch, view.files, plan)).groups[0].startup_s - full) <= 1
