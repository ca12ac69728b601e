"""The regression gate on synthetic results files (pure data), results.json round trips, and the CLI around it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from k2trt.bench.results import (GATE_METRICS, METRICS, BenchResult, PointResult, Regression, compare,
                                 gate_record, read_manifest, slowdown)
from k2trt.bench.spec import BenchSpec
from k2trt.cli import cli
from k2trt.errors import ConfigError

SPEC = BenchSpec.from_dict({"isl_osl": [[1024, 1024], [8192, 1024]], "concurrency": [1, 8], "gpus": 16})


def make_result(slow: float = 1.0, *, drop: tuple[int, int, int] | None = None) -> BenchResult:
    """A plausible sweep; ``slow`` = how many times slower than the reference numbers (latency ×, throughput ÷)."""
    points = []
    for p in SPEC.points():
        itl = 20.0 * (1 + p.concurrency / 16) * (1 + p.isl / 16384)
        ttft = 80.0 * p.isl / 1024 * (1 + p.concurrency / 32)
        lat = ttft + itl * (p.osl - 1)
        tok = p.concurrency * p.osl / (lat / 1000)
        m = {k: None for k in METRICS}
        for s, f in (("avg", 1.0), ("p50", 1.0), ("p90", 1.2), ("p99", 1.5)):
            m[f"ttft_ms_{s}"], m[f"itl_ms_{s}"], m[f"latency_ms_{s}"] = ttft * f * slow, itl * f * slow, lat * f * slow
        m.update(output_tok_s=tok / slow, requests_s=tok / p.osl / slow, output_tok_s_per_gpu=tok / slow / 16,
                 tok_s_per_user=1000 / (itl * slow), input_tokens=float(p.isl), output_tokens=float(p.osl))
        if p.key != drop:
            points.append(PointResult.for_point(p, ok=True, metrics=m, completed=p.requests))
    return BenchResult(spec=SPEC, points=points, provenance={"model": "kimi-k2", "endpoint": "http://h:8000"})


def test_identical_and_faster_runs_pass() -> None:
    base = make_result()
    assert compare(base, base, 0) == []
    assert compare(base, make_result(0.5), 0) == []  # twice as fast is never a regression


def test_twice_as_slow_fails_every_gate_metric_at_every_point() -> None:
    base, cur = make_result(), make_result(2.0)
    regs = compare(base, cur, 50)
    assert {(r.metric, r.point) for r in regs} == {(m, p.key) for m in GATE_METRICS for p in SPEC.points()}
    assert all(r.worse_pct == pytest.approx(100.0) for r in regs)
    assert len(compare(base, cur, 99)) == len(regs)  # any tolerance below 100 % catches a 2× slowdown
    assert compare(base, cur, 100.5) == []


def test_noise_below_tolerance_passes() -> None:
    base = make_result()
    assert compare(base, make_result(1.3), 50) == []
    assert len(compare(base, make_result(1.3), 20)) == len(GATE_METRICS) * len(SPEC.points())


def test_slowdown_is_symmetric_for_throughput_and_latency() -> None:
    assert slowdown("output_tok_s", 100.0, 50.0) == pytest.approx(2.0)
    assert slowdown("itl_ms_p50", 10.0, 20.0) == pytest.approx(2.0)
    assert slowdown("ttft_ms_p50", 10.0, 5.0) == pytest.approx(0.5)
    assert slowdown("requests_s", 3.0, 0.0) == float("inf")


def test_one_regressed_metric_is_named_with_point_and_values() -> None:
    base, cur = make_result(), make_result()
    p = cur.points[3]
    p.metrics["itl_ms_p50"] = base.points[3].metrics["itl_ms_p50"] * 2.5  # type: ignore[operator]
    regs = compare(base, cur, 50)
    assert len(regs) == 1
    r = regs[0]
    assert (r.metric, r.point) == ("itl_ms_p50", (8192, 1024, 8))
    b = base.points[3].metrics["itl_ms_p50"]
    assert r.message == (f"isl 8192 / osl 1024 @ concurrency 8: itl_ms_p50 regressed 150% "
                         f"(baseline {b:.4g} ms, current {b * 2.5:.4g} ms)")


def test_missing_or_failed_points_and_metrics() -> None:
    base = make_result()
    regs = compare(base, make_result(drop=(1024, 1024, 8)), 50)
    assert [(r.metric, r.point) for r in regs] == [("point", (1024, 1024, 8))]
    assert "in the baseline but failed or missing" in regs[0].message

    cur = make_result()
    cur.points[0].ok, cur.points[0].error = False, "aiperf exited 1"
    assert [r.metric for r in compare(base, cur, 50)] == ["point"]

    cur = make_result()
    cur.points[1].metrics["ttft_ms_p50"] = None  # e.g. streaming switched off
    regs = compare(base, cur, 50)
    assert [(r.metric, r.current) for r in regs] == [("ttft_ms_p50", None)]
    assert "ttft_ms_p50 missing" in regs[0].message

    # a failed baseline point, a metric the baseline lacks, and a point only in the current run are not judged
    base2 = make_result(drop=(8192, 1024, 8))
    base2.points[0].ok = False
    base2.points[1].metrics["itl_ms_p50"] = None
    assert compare(base2, make_result(1.2), 50) == []


def test_bad_tolerance_and_metric_names() -> None:
    base = make_result()
    with pytest.raises(ConfigError, match="non-negative percentage"):
        compare(base, base, -5)
    with pytest.raises(ConfigError, match="unknown gate metric"):
        compare(base, base, 50, ("ttft_p50",))


def test_results_round_trip_and_bad_files(tmp_path: Path) -> None:
    r = make_result(1.1)
    r.gate = gate_record(tmp_path / "b.json", 50, [Regression("itl_ms_p50", (1, 2, 3), 1.0, 2.0, 100.0)])
    path = r.write(tmp_path / "results.json")
    assert not list(tmp_path.glob(".*partial"))
    back = BenchResult.load(path)
    assert back.spec == r.spec and [p.to_dict() for p in back.points] == [p.to_dict() for p in r.points]
    assert back.gate == r.gate and not back.ok and json.loads(path.read_text())["ok"] is False

    (tmp_path / "other.json").write_text('{"schema": "something/1"}')
    with pytest.raises(ConfigError, match="is not a k2trt bench results file"):
        BenchResult.load(tmp_path / "other.json")
    (tmp_path / "trunc.json").write_text('{"schema": "k2trt.bench')
    with pytest.raises(ConfigError, match="is not a readable JSON file"):
        BenchResult.load(tmp_path / "trunc.json")
    with pytest.raises(ConfigError, match="does not exist"):
        BenchResult.load(tmp_path / "nope.json")
    bad = json.loads(path.read_text())
    del bad["points"][0]["isl"]
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(ConfigError, match="a point in results.json is malformed"):
        BenchResult.load(tmp_path / "bad.json")


def test_cli_gate_exit_status_and_messages(tmp_path: Path) -> None:
    base = make_result().write(tmp_path / "base.json")
    same = make_result(1.05).write(tmp_path / "same.json")
    slow = make_result(2.0).write(tmp_path / "slow.json")
    run = CliRunner().invoke
    ok = run(cli, ["bench", "--results", str(same), "--baseline", str(base), "--tolerance", "50"])
    assert ok.exit_code == 0 and "passed" in ok.output, ok.output
    bad = run(cli, ["bench", "--results", str(slow), "--baseline", str(base)])  # default tolerance 50
    assert bad.exit_code == 1, bad.output
    assert "FAILED, 20 regression(s)" in bad.output
    assert "isl 1024 / osl 1024 @ concurrency 1: output_tok_s regressed 100%" in bad.output
    js = run(cli, ["bench", "--results", str(slow), "--baseline", str(base), "--json"])
    gate = json.loads(js.output)
    assert js.exit_code == 1 and gate["passed"] is False and len(gate["regressions"]) == 20
    assert {r["metric"] for r in gate["regressions"]} == set(GATE_METRICS)
    only = run(cli, ["bench", "--results", str(slow), "--baseline", str(base), "--gate-metric", "itl_ms_p50",
                     "--gate-metric", "output_tok_s"])
    assert only.exit_code == 1 and "FAILED, 8 regression(s)" in only.output and "ttft" not in only.output
    missing = run(cli, ["bench", "--results", str(slow)])
    assert missing.exit_code == 2 and "--results needs --baseline" in missing.output


def test_cli_dry_run_prints_each_aiperf_argv(tmp_path: Path) -> None:
    spec = tmp_path / "recipe.yaml"
    spec.write_text("serve: {port: 8000}\nbench:\n  isl_osl: [[16, 8]]\n  concurrency: [1, 2]\n  model: tiny-k2\n")
    out = tmp_path / "out"
    r = CliRunner().invoke(cli, ["bench", "--spec", str(spec), "--endpoint", "127.0.0.1:18499/v1",
                                 "--model-dir", str(tmp_path), "--out", str(out), "--dry-run"])
    assert r.exit_code == 0, r.output
    lines = [ln for ln in r.output.splitlines() if " profile " in ln]
    assert len(lines) == 2
    assert "--url http://127.0.0.1:18499 " in lines[0] and "--concurrency 1 " in lines[0]
    assert "--concurrency 2 --request-count 16 --warmup-request-count 2 " in lines[1]
    assert f"--artifact-dir {out.absolute()}/points/isl16_osl8_c2" in lines[1]
    assert not out.exists()  # a dry run writes nothing
    js = CliRunner().invoke(cli, ["bench", "--spec", str(spec), "--out", str(out), "--dry-run", "--json"])
    plan = json.loads(js.output)
    assert [p["name"] for p in plan["points"]] == ["isl16_osl8_c1", "isl16_osl8_c2"]
    assert plan["points"][0]["argv"][plan["points"][0]["argv"].index("--model") + 1] == "tiny-k2"
    both = CliRunner().invoke(cli, ["bench", "--recipe", str(spec), "--spec", str(spec), "--out", str(out)])
    assert both.exit_code == 2 and "exactly one of --recipe and --spec" in both.output


def test_cli_dry_run_of_a_packaged_recipe(tmp_path: Path) -> None:
    """``--recipe tiny-cpu``: the sweep comes through the recipe loader, the endpoint from its serve section."""
    from k2trt.bundle.recipe import load_recipe

    r = CliRunner().invoke(cli, ["bench", "--recipe", "tiny-cpu", "--out", str(tmp_path / "o"), "--dry-run",
                                 "--json"])
    assert r.exit_code == 0, r.output
    plan = json.loads(r.output)
    rec = load_recipe("tiny-cpu")
    assert rec.bench is not None
    assert plan["spec"]["concurrency"] == rec.bench.to_dict()["concurrency"]
    argv = plan["points"][0]["argv"]
    assert argv[argv.index("--url") + 1] == f"http://127.0.0.1:{rec.serve.port}"


def test_bundle_manifest_for_the_provenance(tmp_path: Path) -> None:
    j = tmp_path / "manifest.json"
    j.write_text('{"recipe": "tiny-cpu", "files": {"config.yml": "ab12"}}')
    m = read_manifest(j)
    assert m["content"]["recipe"] == "tiny-cpu" and len(m["sha256"]) == 64 and m["path"] == str(j.absolute())
    y = tmp_path / "manifest.yaml"
    y.write_text("recipe: k2-h200-2x8-tp16ep8\ntrtllm: 1.2.0\n")
    assert read_manifest(y)["content"] == {"recipe": "k2-h200-2x8-tp16ep8", "trtllm": "1.2.0"}
    b = tmp_path / "manifest.bin"
    b.write_bytes(b"\x00\x01: [")
    assert "content" not in read_manifest(b)
    with pytest.raises(ConfigError, match="bundle manifest .* does not exist"):
        read_manifest(tmp_path / "nope.json")
