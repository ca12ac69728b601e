"""LaunchSpec (the build→launch contract): JSON round-trip, strict keys and types, validation, field docs."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
from pathlib import Path

import pytest

from k2trt.errors import ConfigError
from k2trt.launch import spec as spec_mod
from k2trt.launch.spec import DisaggSpec, HostSlots, LaunchSpec, RoleSpec, SlurmOptions


def _full_spec() -> LaunchSpec:
    return LaunchSpec(
        engine="trtllm", argv=("trtllm-llmapi-launch", "trtllm-serve", "serve", "/m"), world_size=16,
        hosts=(HostSlots("a", 8), HostSlots("b", 8)), ssh_port=2233, ssh_args=("-i", "/k"),
        env={"TRTLLM_DG_ENABLED": "1"}, mpi_args=("--mca", "btl_tcp_if_include", "eth0"), http_port=8000,
        ready_timeout_s=1800.5, slurm=SlurmOptions(partition="gpu", container_mounts=("/m:/m",)),
        model_dir="/m", model_manifest_sha256="ab" * 32, engine_version="1.2.0", engine_version_probe=("v",),
        gpus_per_node=8, gpu_kind="H200", eplb=True, shm_min_bytes=1 << 30)


def test_round_trip_through_json_text(tmp_path: Path) -> None:
    s = _full_spec()
    assert LaunchSpec.from_dict(json.loads(json.dumps(s.to_dict()))) == s
    path = s.dump(tmp_path / "b" / "launch.json")
    assert LaunchSpec.load(path) == s
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # temp file renamed away
    disagg = LaunchSpec(disagg=DisaggSpec(ctx=(RoleSpec("ctx0", ("c",), 1, 8001),),
                                          gen=(RoleSpec("gen0", ("g",), 2, 8002, hosts=(HostSlots("n2", 2),)),),
                                          router_argv=("r", "-c", "d.yaml"), router_port=8000))
    back = LaunchSpec.from_dict(json.loads(json.dumps(disagg.to_dict())))
    assert back == disagg and back.validate().base_url() == "http://127.0.0.1:8000"


@pytest.mark.parametrize("data,match", [
    ({"wrld_size": 2}, "unknown key 'wrld_size' (did you mean 'world_size'?)"),
    ({"world_size": "2"}, "launch.world_size: expected int"),
    ({"world_size": True}, "launch.world_size: expected int"),
    ({"engine": "vllm"}, "launch.engine: 'vllm' is not one of"),
    ({"hosts": [{"name": "a", "slot": 8}]}, "launch.hosts[0]: unknown key 'slot' (did you mean 'slots'?)"),
    ({"argv": "python x.py"}, "launch.argv: expected a list"),
    ({"slurm": {"partion": "x"}}, "did you mean 'partition'"),
])
def test_bad_json_is_a_one_line_config_error(data: dict, match: str) -> None:
    with pytest.raises(ConfigError) as e:
        LaunchSpec.from_dict(data)
    assert match in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("kwargs,match", [
    ({"argv": ()}, "empty argv"),
    ({"argv": ("x",), "world_size": 16, "hosts": (HostSlots("a", 8),)}, "16 ranks but only 8 slots"),
    ({"argv": ("x",), "http_port": 70000}, "http_port 70000"),
    ({"argv": ("x",), "ready_paths": ("health",)}, "must be non-empty URL paths"),
    ({"argv": ("x",), "env": {"1BAD": "x"}}, "not a valid variable name"),
    ({"argv": ("x",), "schema_version": 99}, "newer than this k2trt"),
    ({"argv": ("x",), "disagg": DisaggSpec((RoleSpec("a", ("c",), 1, 9001),), (RoleSpec("a", ("g",), 1, 9002),),
                                           ("r",), 9000)}, "empty argv"),
    ({"disagg": DisaggSpec((RoleSpec("a", ("c",), 1, 9001),), (RoleSpec("a", ("g",), 1, 9002),), ("r",), 9000)},
     "unique"),
    ({"disagg": DisaggSpec((RoleSpec("a", ("c",), 1, 9001),), (RoleSpec("b", ("g",), 1, 9001),), ("r",), 9000)},
     "collide"),
])
def test_validate_rejects_inconsistent_specs(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        LaunchSpec(**kwargs).validate()


def test_oversubscribe_allows_more_local_ranks_than_slots_only_without_hosts() -> None:
    LaunchSpec(argv=("x",), world_size=4, oversubscribe=True).validate()
    with pytest.raises(ConfigError):
        LaunchSpec(argv=("x",), world_size=4, hosts=(HostSlots("a", 2),), oversubscribe=True).validate()


def test_probe_address_and_url() -> None:
    assert LaunchSpec(argv=("x",)).base_url() == "http://127.0.0.1:8000"
    s = LaunchSpec(argv=("x",), world_size=2, hosts=(HostSlots("n1", 1), HostSlots("n2", 1)), http_port=9)
    assert s.base_url() == "http://n1:9"
    assert dataclasses.replace(s, probe_host="10.0.0.5").base_url() == "http://10.0.0.5:9"


def test_load_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        LaunchSpec.load(tmp_path / "launch.json")
    (tmp_path / "launch.json").write_text("{nope")
    with pytest.raises(ConfigError, match="not valid JSON"):
        LaunchSpec.load(tmp_path / "launch.json")


def test_every_field_has_a_docstring() -> None:
    """STYLE P1: each dataclass field in spec.py is followed by its docstring."""
    tree = ast.parse(inspect.getsource(spec_mod))
    missing, seen = [], 0
    for cls in (n for n in tree.body if isinstance(n, ast.ClassDef)):
        body = cls.body
        for i, node in enumerate(body):
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                seen += 1
                nxt = body[i + 1] if i + 1 < len(body) else None
                if not (isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                        and isinstance(nxt.value.value, str) and nxt.value.value.strip()):
                    missing.append(f"{cls.name}.{node.target.id}")
    assert seen >= 40 and missing == []
