"""The bundle's gateway and its API keys: GPU recipes (listening on all interfaces) require a key by default, with an
explicit opt-out; keys come from an environment variable or a file, never argv; preflight knows every port the
job binds. Bundles of GPU recipes are built from a header-only sparse K2 checkpoint and checked as files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from k2trt.bundle.build import build_bundle, gateway_options
from k2trt.bundle.recipe import list_recipes, load_recipe
from k2trt.errors import ConfigError, LaunchError
from k2trt.gateway.config import API_KEYS_ENV, read_api_keys
from k2trt.launch.preflight import Port, gateway_keys, job_ports
from k2trt.launch.spec import DisaggSpec, GatewayOptions, HostSlots, LaunchSpec, RoleSpec, is_loopback

GPU_RECIPES = [n for n in list_recipes() if n != "tiny-cpu"]


@pytest.fixture(scope="module")
def sparse_k2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from k2trt.checkpoint.synth import synthesize
    from k2trt.spec import preset

    return synthesize(preset("k2-instruct"), tmp_path_factory.mktemp("k2") / "k2", sparse=True, tokenizer=False)


def _gateway(recipe: str, ckpt: Path, tmp_path: Path, sets: tuple[str, ...] = ()) -> GatewayOptions:
    r = load_recipe(recipe, list(sets))
    hosts = tuple(f"n{i}" for i in range(r.cluster.nodes))
    res = build_bundle(r, ckpt, tmp_path / "b", hosts=None if recipe == "tiny-cpu" else hosts, dry_run=True)
    gw = LaunchSpec.from_dict(json.loads(res.files["launch.json"])).gateway
    assert gw is not None
    return gw


@pytest.mark.parametrize("name", GPU_RECIPES)
def test_gpu_recipes_require_a_key_for_their_all_interfaces_gateway(name: str) -> None:
    gw = gateway_options(load_recipe(name))
    assert gw is not None and gw.host == "0.0.0.0" and gw.require_key is True and gw.api_key_env == API_KEYS_ENV


def test_the_bundle_carries_the_key_sources_and_the_opt_out(sparse_k2: Path, tiny_ckpt: Path,
                                                            tmp_path: Path) -> None:
    name = "k2-h200-2x8-tp16ep8"
    gw = _gateway(name, sparse_k2, tmp_path, ("serve.gateway_api_key_file=/run/secrets/k2trt-keys",))
    assert gw.api_key_file == "/run/secrets/k2trt-keys" and gw.api_key_env == API_KEYS_ENV and gw.require_key
    opted_out = gateway_options(load_recipe(name, ["serve.gateway_auth=optional", "serve.gateway_api_key_env=null"]))
    assert opted_out is not None and opted_out.require_key is False and opted_out.api_key_env is None
    tiny = _gateway("tiny-cpu", tiny_ckpt, tmp_path)  # loopback only: keys honoured when given, not required
    assert tiny.host == "127.0.0.1" and tiny.require_key is False and tiny.api_key_env == API_KEYS_ENV
    required = gateway_options(load_recipe("tiny-cpu", ["serve.gateway_auth=required"]))
    assert required is not None and required.require_key is True
    with pytest.raises(ConfigError, match="gateway_api_key_file 'keys.txt' is not an absolute path"):
        load_recipe(name, ["serve.gateway_api_key_file=keys.txt"])
    with pytest.raises(ConfigError, match="'sometimes' is not one of auto, required, optional"):
        load_recipe(name, ["serve.gateway_auth=sometimes"])


def test_keys_come_from_the_variable_and_the_file(tmp_path: Path) -> None:
    f = tmp_path / "keys"
    f.write_text("# rotated 2026-12\nk-file-1\n\n  k-file-2 k-env-1\n")
    assert read_api_keys("KEYS", f, {"KEYS": " k-env-1\tk-env-2 "}) == ("k-env-1", "k-env-2", "k-file-1", "k-file-2")
    assert read_api_keys("KEYS", None, {}) == () and read_api_keys(None, None, {"KEYS": "x"}) == ()
    with pytest.raises(ConfigError, match="cannot read the API key file .*nope: No such file"):
        read_api_keys(None, tmp_path / "nope")
    opts = GatewayOptions(8080, "0.0.0.0", api_key_env="KEYS", api_key_file=str(tmp_path / "empty"), require_key=True)
    (tmp_path / "empty").write_text("# none yet\n")
    with pytest.raises(LaunchError, match=r"listens on 0\.0\.0\.0:8080 and requires an API key, but \$KEYS is "
                                          r"empty and .*empty holds none .*export KEYS="):
        gateway_keys(opts, {})
    assert gateway_keys(opts, {"KEYS": "k"}) == ("k",)
    assert gateway_keys(GatewayOptions(8080, api_key_env="KEYS"), {}) == ()  # not required: an open gateway
    with pytest.raises(ConfigError, match="api_key_file 'rel' is not an absolute path"):
        LaunchSpec(argv=("x",), gateway=GatewayOptions(8080, mode="passthrough", api_key_file="rel")).validate()
    with pytest.raises(ConfigError, match="api_key_env '1KEY' is not a valid variable name"):
        LaunchSpec(argv=("x",), gateway=GatewayOptions(8080, mode="passthrough", api_key_env="1KEY")).validate()


def test_loopback_addresses() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("127.1.2.3") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("::") and not is_loopback("10.0.0.5")
    assert not is_loopback("node1")


def test_every_port_the_job_binds_is_listed_per_host() -> None:
    spec = LaunchSpec(argv=("x",), http_port=8000, hosts=(HostSlots("gpu-a", 8), HostSlots("gpu-b", 8)),
                      world_size=16, env={"MASTER_PORT": "29500"},
                      gateway=GatewayOptions(8080, "0.0.0.0", mode="passthrough"))
    assert job_ports(spec) == {
        "gpu-a": [Port("HTTP port", "0.0.0.0", 8000), Port("rendezvous port (MASTER_PORT)", "0.0.0.0", 29500)],
        "localhost": [Port("gateway port", "0.0.0.0", 8080)]}
    disagg = DisaggSpec((RoleSpec("ctx0", ("x",), 8, 8001, (HostSlots("a", 8),)),),
                        (RoleSpec("gen0", ("x",), 8, 8002, (HostSlots("b", 8),)),), ("router",), 8000)
    spec = LaunchSpec(http_port=8000, disagg=disagg, gateway=GatewayOptions(8080, mode="passthrough"))
    assert job_ports(spec) == {"a": [Port("ctx0 HTTP port", "0.0.0.0", 8001)],
                               "b": [Port("gen0 HTTP port", "0.0.0.0", 8002)],
                               "localhost": [Port("router port", "0.0.0.0", 8000),
                                             Port("gateway port", "127.0.0.1", 8080)]}
