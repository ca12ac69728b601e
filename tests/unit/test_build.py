"""k2trt build: inspect → plan → a complete, atomic, self-describing bundle — and refusals that leave nothing.

Uses the real tiny checkpoint (conftest ``tiny_ckpt``) for the reference-engine recipe, and a header-only sparse K2
checkpoint (``synthesize(..., sparse=True, tokenizer=False)``: real safetensors headers, data as file holes) for the
GPU recipes, since no GPU or TensorRT-LLM exists here; their bundles are checked as files, not launched."""

from __future__ import annotations

import json
import sys
import shutil
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from k2trt.bundle.build import build_bundle
from k2trt.bundle.recipe import list_recipes, load_recipe
from k2trt.cli import cli
from k2trt.errors import CheckpointError, ConfigError, PlanError
from k2trt.launch.preflight import manifest_hash
from k2trt.launch.spec import LaunchSpec
from k2trt.trtllm.lint import lint_text

FILES = {"config.yml", "launch.json", "hostfile", "launch.sh", "manifest.json", "PLAN.md"}


@pytest.fixture(scope="module")
def sparse_k2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from k2trt.checkpoint.synth import synthesize
    from k2trt.spec import preset

    return synthesize(preset("k2-instruct"), tmp_path_factory.mktemp("k2") / "k2", sparse=True, tokenizer=False)


def test_tiny_cpu_bundle(tiny_ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    r = CliRunner().invoke(cli, ["build", "--recipe", "tiny-cpu", "--checkpoint", str(tiny_ckpt), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert {p.name for p in out.iterdir()} == FILES
    spec = LaunchSpec.load(out / "launch.json")
    assert spec.engine == "reference" and spec.world_size == 2 and spec.http_port == 18000
    assert list(spec.argv) == [sys.executable, "-m", "k2trt.reference.serve", str(tiny_ckpt.resolve()), "--tp", "2",
                               "--ep", "1", "--host", "127.0.0.1", "--port", "18000"]
    assert (out / "hostfile").read_text() == "localhost slots=2\n" and spec.hostfile == "hostfile"
    man = json.loads((out / "manifest.json").read_text())
    assert man["checkpoint_manifest_sha256"] == manifest_hash(str(tiny_ckpt.resolve())) == spec.model_manifest_sha256
    assert man["k2trt_version"] and man["trtllm_pinned"] and man["recipe"]["name"] == "tiny-cpu"
    assert man["plan"]["server"]["ok"] is True
    # the tiny model's load estimate is seconds: the readiness wait is the floor
    assert 0 < man["plan"]["server"]["memory"]["load_s"] < 60 and spec.ready_timeout_s == 600
    assert lint_text((out / "config.yml").read_text()).ok
    assert "| tp2 |" in (out / "PLAN.md").read_text()
    assert (out / "launch.sh").stat().st_mode & 0o111 and "k2trt serve" in (out / "launch.sh").read_text()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging leftovers


def test_rebuild_needs_force_and_never_clobbers_other_dirs(tiny_ckpt: Path, tmp_path: Path) -> None:
    r = load_recipe("tiny-cpu")
    out = tmp_path / "b"
    build_bundle(r, tiny_ckpt, out)
    with pytest.raises(ConfigError, match="--force"):
        build_bundle(r, tiny_ckpt, out)
    build_bundle(load_recipe("tiny-cpu", ["serve.port=18002"]), tiny_ckpt, out, force=True)
    assert LaunchSpec.load(out / "launch.json").http_port == 18002
    other = tmp_path / "other"
    other.mkdir()
    (other / "precious.txt").write_text("x")
    with pytest.raises(ConfigError, match="not a k2trt bundle"):
        build_bundle(r, tiny_ckpt, other, force=True)
    assert (other / "precious.txt").read_text() == "x"


def test_dry_run_writes_nothing(tiny_ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "dry"
    r = CliRunner().invoke(cli, ["build", "--recipe", "tiny-cpu", "--checkpoint", str(tiny_ckpt), "--out", str(out),
                                 "--dry-run"])
    assert r.exit_code == 0 and "would write" in r.output and "max_seq_len: 2048" in r.output
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_refuses_when_it_does_not_fit(tiny_ckpt: Path, tmp_path: Path) -> None:
    with pytest.raises(PlanError, match="does not fit.*less than one"):
        build_bundle(load_recipe("tiny-cpu", ["context=400000000"]), tiny_ckpt, tmp_path / "x")
    with pytest.raises(PlanError, match="cuts a 128"):  # tiny's 256-wide experts split 4 ways → 64 columns
        build_bundle(load_recipe("tiny-cpu", ["layout=tp4", "cluster.gpus_per_node=4"]), tiny_ckpt, tmp_path / "x")
    assert list(tmp_path.iterdir()) == []


def test_refuses_a_broken_or_mismatched_checkpoint(tiny_ckpt: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny_ckpt, broken)
    next(broken.glob("*.safetensors")).unlink()
    with pytest.raises(CheckpointError, match="checkpoint error"):
        build_bundle(load_recipe("tiny-cpu"), broken, tmp_path / "x")
    with pytest.raises(CheckpointError, match="needs nvfp4 weights.*k2trt convert"):
        build_bundle(load_recipe("tiny-cpu", ["model.weights=nvfp4"]), tiny_ckpt, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_gpu_recipe_bundle(sparse_k2: Path, tmp_path: Path) -> None:
    out = tmp_path / "k2"
    res = build_bundle(load_recipe("k2-h200-2x8-tp16ep8"), sparse_k2, out, hosts=("gpu-a", "gpu-b"))
    spec = LaunchSpec.load(out / "launch.json")
    argv = list(spec.argv)
    assert argv[:4] == ["trtllm-llmapi-launch", "trtllm-serve", "serve", str(sparse_k2.resolve())]
    assert argv[argv.index("--config") + 1] == str(out.resolve() / "config.yml")
    assert spec.world_size == 16 and spec.ssh_port == 2233 and spec.gpu_kind == "H200"
    assert spec.engine_version == json.loads((out / "manifest.json").read_text())["trtllm_version"]
    assert spec.slurm.container_image and spec.slurm.container_image.endswith(spec.engine_version or "")
    assert (out / "hostfile").read_text() == "gpu-a slots=8\ngpu-b slots=8\n"
    assert "-p 2233" in (out / "launch.sh").read_text()
    assert res.plans[0][1].layouts[0].memory.weights_max > 60 * 2**30  # type: ignore[union-attr]
    assert "few-heads" not in (out / "PLAN.md").read_text() and "4 attention heads per rank" in \
        (out / "PLAN.md").read_text()


def test_disaggregated_bundle(sparse_k2: Path, tmp_path: Path) -> None:
    out = tmp_path / "dis"
    build_bundle(load_recipe("k2-h200-disagg"), sparse_k2, out, hosts=("a", "b", "c", "d"))
    assert {"ctx.yml", "gen.yml", "disagg.yml"} <= {p.name for p in out.iterdir()}
    spec = LaunchSpec.load(out / "launch.json")
    assert spec.argv == () and spec.disagg is not None
    (ctx,), (gen,) = spec.disagg.ctx, spec.disagg.gen
    assert [h.name for h in ctx.hosts] == ["a", "b"] and [h.name for h in gen.hosts] == ["c", "d"]
    assert "ctx.yml" in ctx.argv[ctx.argv.index("--config") + 1]
    assert spec.disagg.router_argv[:3] == ("trtllm-serve", "disaggregated", "-c")
    disagg = (out / "disagg.yml").read_text()
    assert "- a:8001" in disagg and "- c:8002" in disagg
    # the readiness wait comes from the slower role's load estimate (twice it), not a fixed hour
    loads = [p["memory"]["load_s"] for p in json.loads((out / "manifest.json").read_text())["plan"].values()]
    assert len(loads) == 2 and abs(spec.ready_timeout_s - 2 * max(loads)) <= 1 and spec.ready_timeout_s != 3600
    ctx_yml = (out / "ctx.yml").read_text()
    assert "cuda_graph_config: null" in ctx_yml and "cache_transceiver_config" in ctx_yml
    assert lint_text(ctx_yml).ok and lint_text((out / "gen.yml").read_text()).ok


def test_the_router_config_is_linted_as_the_release_reads_it(sparse_k2: Path, tmp_path: Path) -> None:
    """disagg.yml is judged like the workers' YAML: its notes land in PLAN.md, and a router config the release
    rejects (an IPv6 host: TensorRT-LLM splits each URL on ':' into one host and one port) refuses the build."""
    res = build_bundle(load_recipe("k2-h200-disagg"), sparse_k2, tmp_path / "ok", hosts=("a", "b", "c", "d"))
    assert any(n.startswith("config router: ") for n in res.notes), res.notes
    assert "config router: " in (tmp_path / "ok" / "PLAN.md").read_text()
    for version in (None, "main"):  # judged by the pinned release, and fully where disagg_utils.py was read
        sets = [] if version is None else [f"serve.trtllm={version}"]
        with pytest.raises(ConfigError, match=r"router config \(disagg.yml\) fails the lint: .*context_servers"
                                              r"\.urls\[0\]: 'fd00::a:8001' is not host:port"):
            build_bundle(load_recipe("k2-h200-disagg", sets), sparse_k2, tmp_path / "bad",
                         hosts=("fd00::a", "fd00::b", "fd00::c", "fd00::d"))
        assert not (tmp_path / "bad").exists()


def test_reference_plugins_reach_the_engine_argv(tiny_ckpt: Path, tmp_path: Path) -> None:
    res_dir = tmp_path / "b"
    build_bundle(load_recipe("tiny-cpu", ["serve.plugins=triton"]), tiny_ckpt, res_dir)
    argv = list(LaunchSpec.load(res_dir / "launch.json").argv)
    assert argv[argv.index("--plugins") + 1] == "triton"
    with pytest.raises(ConfigError, match="serve.plugins applies to the reference engine only"):
        load_recipe("k2-h200-2x8-tp16ep8", ["serve.plugins=auto"])
    with pytest.raises(ConfigError):
        load_recipe("tiny-cpu", ["serve.plugins=cuda"])


def test_engine_argv_is_spelled_by_the_engine_entry_point(tiny_ckpt: Path, tmp_path: Path) -> None:
    """The reference rank command comes from ``k2trt.reference.serve`` and parses back with that module's own
    parser (so a renamed flag cannot drift); the reference engine refuses pipeline stages it cannot run."""
    from k2trt.layout import Layout
    from k2trt.reference.serve import parser

    r = load_recipe("tiny-cpu", ["serve.plugins=auto", "model.served_name=tiny", "layout=tp2ep2adp"])
    argv = build_bundle(r, tiny_ckpt, tmp_path / "b", dry_run=True).files["launch.json"]
    argv = json.loads(argv)["argv"]
    assert argv[:3] == [sys.executable, "-m", "k2trt.reference.serve"]
    a = parser().parse_args(argv[3:])
    assert (a.model_dir, a.tp, a.ep, a.adp, a.plugins, a.served_model_name, a.host, a.port) == (
        str(tiny_ckpt.resolve()), 2, 2, True, "auto", "tiny", "127.0.0.1", 18000)
    with pytest.raises(ConfigError, match="does not run pipeline stages"):
        build_bundle(load_recipe("tiny-cpu", ["layout=tp1pp2"]), tiny_ckpt, tmp_path / "pp", dry_run=True)
    assert Layout.parse("tp1pp2").world_size == 2


@pytest.fixture(scope="module")
def format_ckpts(sparse_k2: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A header-only full-size K2 per weight format the packaged recipes need (as ``convert --to`` writes it)."""
    from k2trt.checkpoint.synth import synthesize
    from k2trt.spec import Quantization, preset

    out = {"fp8_block": sparse_k2}
    for fmt in ("nvfp4", "w4a8"):
        spec = preset("k2-instruct").with_quantization(Quantization.requant(fmt))
        out[fmt] = synthesize(spec, tmp_path_factory.mktemp(fmt) / "k2", sparse=True, tokenizer=False,
                              preset_name="k2-instruct")
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", list_recipes())
def test_plan_recipe_plans_exactly_what_build_checks(name: str, tiny_ckpt: Path, format_ckpts: dict[str, Path]) -> None:
    """``k2trt plan --recipe R`` gives the plan ``k2trt build --recipe R`` writes into its bundle, for every
    packaged recipe: cluster, context, KV, release and every layout verdict (per-GPU bytes, KV capacity, roofline,
    findings). Only the checkpoint totals may differ: the recipe's preset lists K2-Instruct's 61 never-loaded
    ``rotary_emb.inv_freq`` tensors, which the synthesized (and any converted) checkpoint does not have."""
    r = load_recipe(name)
    ckpt = tiny_ckpt if r.model.preset == "tiny" else format_ckpts[r.model.weights or "fp8_block"]
    out = CliRunner().invoke(cli, ["plan", "--recipe", name, "--json"])
    planned = json.loads(out.output)
    assert planned["recipe"] == name
    if out.exit_code == 1:  # a recipe the pinned release cannot serve: build refuses with the reasons plan shows
        reasons = [f["message"] for p in planned["plans"].values() for f in p["layouts"][0]["findings"]
                   if f["severity"] == "error"]
        with pytest.raises(PlanError) as refused:
            build_bundle(r, ckpt, ckpt.parent / "unused", dry_run=True)
        assert reasons and all(m in str(refused.value) for m in reasons)
        return
    assert out.exit_code == 0, out.output
    res = build_bundle(r, ckpt, ckpt.parent / "unused", dry_run=True)
    built = res.to_dict()["plans"]
    assert json.loads(res.files["manifest.json"])["plan"] == {role: p["layouts"][0] for role, p in built.items()}
    assert planned["plans"].keys() == built.keys()

    def plan_part(p: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in p.items() if k not in ("tensors", "checkpoint_gib")}

    for role, p in built.items():
        assert plan_part(planned["plans"][role]) == plan_part(p) and p["layouts"][0]["ok"]


@pytest.mark.parametrize("name", ["tiny-cpu", "k2-h200-disagg"])
def test_plan_recipe_with_the_checkpoint_is_the_build_plan(name: str, tiny_ckpt: Path, sparse_k2: Path) -> None:
    """With ``--checkpoint`` the plan is build's to the byte, checkpoint totals included."""
    r = load_recipe(name)
    ckpt = tiny_ckpt if r.model.preset == "tiny" else sparse_k2
    built = build_bundle(r, ckpt, ckpt.parent / "unused", dry_run=True).to_dict()["plans"]
    out = CliRunner().invoke(cli, ["plan", "--recipe", name, "--checkpoint", str(ckpt), "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output) == {"recipe": name, "plans": built}


def test_plan_recipe_takes_changes_through_set_only(tiny_ckpt: Path) -> None:
    r = CliRunner().invoke(cli, ["plan", "--recipe", "tiny-cpu", "--nodes", "2"])
    assert r.exit_code == 2 and "--nodes: the recipe decides this" in r.output and "--set" in r.output
    r = CliRunner().invoke(cli, ["plan", "--recipe", "tiny-cpu", "--set", "context=400000000"])
    assert r.exit_code == 1 and "less than one" in r.output  # the plan build would refuse, shown, exit 1
    r = CliRunner().invoke(cli, ["plan", "--set", "context=4"])
    assert r.exit_code == 2 and "give --recipe" in r.output
