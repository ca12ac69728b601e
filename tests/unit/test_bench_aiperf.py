"""aiperf argv, environment, export parsing and the offline tokenizer directory (no processes started)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from k2trt.bench.aiperf import (DEAD_HUB, EXPORT_JSON, SERVER_EXPORT_JSON, PointRun, aiperf_argv, aiperf_env,
                                hf_tokenizer_config, prepare_tokenizer)
from k2trt.bench.results import PointResult, export_counts, metrics_from_export
from k2trt.bench.spec import BenchSpec
from k2trt.bench.sweep import PlannedPoint, _point_result, normalize_endpoint
from k2trt.bundle.recipe import load_recipe
from k2trt.errors import ConfigError

TINY = BenchSpec.from_dict({"endpoint": "completions", "isl_osl": [[16, 8]], "concurrency": [1, 2],
                            "request_multiplier": 3, "model": "tiny-k2"})


def _argv(spec: BenchSpec, i: int = 1, **kw: str) -> list[str]:
    args = {"url": "http://127.0.0.1:8000/", "model": "tiny k2", "tokenizer_dir": "tok", "artifact_dir": "out/p"}
    args.update(kw)
    return aiperf_argv(spec, spec.points()[i], command=["aiperf"], **args)  # type: ignore[arg-type]


def _opt(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def test_argv_of_a_point() -> None:
    argv = _argv(TINY)
    assert argv[:2] == ["aiperf", "profile"]
    assert _opt(argv, "--model") == "tiny k2"  # one element: never a shell string
    assert _opt(argv, "--url") == "http://127.0.0.1:8000"
    assert _opt(argv, "--endpoint-type") == "completions" and "--streaming" in argv
    assert (_opt(argv, "--isl"), _opt(argv, "--osl"), _opt(argv, "--isl-stddev"), _opt(argv, "--osl-stddev")) \
        == ("16", "8", "0", "0")
    assert (_opt(argv, "--concurrency"), _opt(argv, "--request-count"), _opt(argv, "--warmup-request-count")) \
        == ("2", "6", "2")
    assert _opt(argv, "--extra-inputs") == "ignore_eos:true" and "--use-server-token-count" in argv
    assert Path(_opt(argv, "--tokenizer")).is_absolute() and Path(_opt(argv, "--artifact-dir")).is_absolute()
    assert _opt(argv, "--ui-type") == "none" and "--no-gpu-telemetry" in argv
    assert _opt(argv, "--random-seed") == "0" and _opt(argv, "--request-timeout-seconds") == "600"
    # server metrics on: aiperf scrapes the endpoint's own /metrics; k2trt asks for the JSON export it reads
    assert "--no-server-metrics" not in argv and "--server-metrics" not in argv
    assert argv[argv.index("--server-metrics-formats") + 1:][:2] == ["json", "csv"]


def test_argv_server_metrics() -> None:
    engine = "http://10.0.0.1:8000/prometheus/metrics"
    argv = _argv(TINY, server_metrics=(engine, engine + "/", "http://127.0.0.1:8000/metrics"))  # type: ignore
    i = argv.index("--server-metrics")
    assert argv[i + 1:i + 3] == [engine, "--server-metrics-formats"]  # once, and never the endpoint's own again
    off = _argv(TINY, server_metrics=None)  # type: ignore[arg-type]
    assert "--no-server-metrics" in off and "--server-metrics" not in off and "--server-metrics-formats" not in off
    with pytest.raises(ConfigError, match="bench.extra_args repeats --server-metrics"):
        _argv(BenchSpec.from_dict({"extra_args": ["--server-metrics", "http://x"]}), 0)


def test_argv_follows_the_switches() -> None:
    s = BenchSpec.from_dict({"endpoint": "chat", "streaming": False, "warmup": 0, "ignore_eos": False,
                             "server_token_count": False, "seed": 7, "extra_args": ["--workers-max", "4"]})
    argv = _argv(s, 0)
    assert _opt(argv, "--endpoint-type") == "chat" and _opt(argv, "--random-seed") == "7"
    for absent in ("--streaming", "--warmup-request-count", "--extra-inputs", "--use-server-token-count"):
        assert absent not in argv
    assert argv[-2:] == ["--workers-max", "4"]


@pytest.mark.parametrize("extra", [["--concurrency", "4"], ["--artifact-dir=/x"], ["-m", "other"]])
def test_extra_args_may_not_override_the_spec(extra: list[str]) -> None:
    with pytest.raises(ConfigError, match="bench.extra_args repeats"):
        _argv(BenchSpec.from_dict({"extra_args": extra}), 0)


def test_env_is_offline_without_hf_hub_offline(tmp_path: Path) -> None:
    env = aiperf_env(tmp_path, base={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PATH": "/bin",
                                     "HF_ENDPOINT": "https://hf-mirror.example"})
    assert "HF_HUB_OFFLINE" not in env and "TRANSFORMERS_OFFLINE" not in env  # aiperf reads paths as hub ids then
    assert env["HF_ENDPOINT"] == DEAD_HUB and env["PATH"] == "/bin"
    assert env["AIPERF_DATASET_MMAP_BASE_PATH"] == str(tmp_path)
    assert env["AIPERF_DATASET_MMAP_CACHE_ENABLED"] == "false"


@pytest.mark.parametrize("raw, url", [("127.0.0.1:8000", "http://127.0.0.1:8000"),
                                      ("http://h:1/v1/", "http://h:1"), ("https://h/api", "https://h/api")])
def test_normalize_endpoint(raw: str, url: str) -> None:
    assert normalize_endpoint(raw) == url


def _dist(avg: float) -> dict[str, float]:
    return {"avg": avg, "p50": avg * 0.95, "p90": avg * 1.2, "p99": avg * 1.5, "min": avg * 0.5,
            "max": avg * 2, "std": 0.1}


# The shape of aiperf 0.13's profile_export_aiperf.json (keys and units as it writes them).
EXPORT = {
    "schema_version": "1.0", "aiperf_version": "0.13.0",
    "request_throughput": {"unit": "requests/sec", "avg": 4.0},
    "output_token_throughput": {"unit": "tokens/sec", "avg": 512.0},
    "time_to_first_token": {"unit": "ms", **_dist(40.0)},
    "inter_token_latency": {"unit": "ms", **_dist(8.0)},
    "request_latency": {"unit": "ms", **_dist(1000.0)},
    "input_sequence_length": {"unit": "tokens", **_dist(1024.0)},
    "output_sequence_length": {"unit": "tokens", **_dist(128.0)},
    "request_count": {"unit": "requests", "avg": 64.0},
    "error_summary": [],
}


def _series(stats: dict[str, float], **labels: str) -> dict[str, object]:
    return {"endpoint_url": "x", "labels": labels, "stats": stats}


def _hist(count: int, total: float, p50: float, p99: float, **labels: str) -> dict[str, object]:
    return {"type": "histogram", "series": [_series({"count": count, "sum": total, "avg": total / count,
                                                     "p50_estimate": p50, "p99_estimate": p99}, **labels)]}


# The shape of aiperf 0.13's server_metrics_export.json (a real run's keys: counters without _total, histogram
# stats with *_estimate percentiles), here with the gateway's and TensorRT-LLM's metrics.
SERVER_EXPORT = {
    "schema_version": "1.1", "aiperf_version": "0.13.0",
    "summary": {"endpoints_configured": ["http://127.0.0.1:18564/metrics",
                                         "http://127.0.0.1:18563/prometheus/metrics"],
                "endpoints_successful": ["http://127.0.0.1:18564/metrics",
                                         "http://127.0.0.1:18563/prometheus/metrics"]},
    "metrics": {
        "k2trt_gateway_requests": {"type": "counter", "series": [
            _series({"total": 5.0, "rate": 2.0}, api="openai", model="m", status="200"),
            _series({"total": 1.0, "rate": 0.4}, api="openai", model="m", status="499")]},
        "k2trt_gateway_time_to_first_token_seconds": _hist(5, 0.5, 0.09, 0.2, api="openai", model="m"),
        "k2trt_gateway_inter_token_latency_seconds": {"type": "histogram", "series": [
            _series({"count": 3, "sum": 0.03, "p50_estimate": 0.01}, api="openai", model="m"),
            _series({"count": 1, "sum": 0.05, "p50_estimate": 0.05}, api="anthropic", model="m")]},
        "k2trt_gateway_request_duration_seconds": _hist(5, 2.0, 0.4, 0.45, api="openai", model="m"),
        "k2trt_gateway_prompt_tokens": {"type": "counter", "series": [_series({"total": 336.0})]},
        "k2trt_gateway_completion_tokens": {"type": "counter", "series": [_series({"total": 40.0})]},
        "k2trt_gateway_inflight_requests": {"type": "gauge", "series": [_series({"avg": 0.6, "max": 2.0})]},
        "trtllm_request_success": {"type": "counter", "series": [
            _series({"total": 4.0}, finished_reason="length"), _series({"total": 2.0}, finished_reason="stop")]},
        "trtllm_time_to_first_token_seconds": _hist(6, 0.3, 0.04, 0.09, model_name="undefined"),
        "trtllm_e2e_request_latency_seconds": _hist(6, 3.0, 0.5, 0.7, model_name="undefined"),
        "trtllm_generation_tokens": {"type": "counter", "series": [_series({"total": 48.0})]},
        "trtllm_kv_cache_utilization": {"type": "gauge", "series": [_series({"avg": 0.1, "max": 0.25})]},
        "vllm:num_requests_running": {"type": "gauge", "series": [_series({"max": 9.0})]},
    },
}


def test_server_figures_from_an_aiperf_server_export() -> None:
    from k2trt.bench.server import summarize

    s = summarize(SERVER_EXPORT)
    g, e = s["gateway"], s["engine"]
    assert g["requests"] == 5.0  # completed: the duration histogram's count (the 499 is not one)
    assert g["ttft_ms_avg"] == pytest.approx(100.0) and g["ttft_ms_p50"] == pytest.approx(90.0)
    assert g["itl_ms_avg"] == pytest.approx(20.0)  # (0.03 + 0.05) / 4 requests, two series summed
    assert g["latency_ms_p99"] == pytest.approx(450.0) and g["latency_ms_avg"] == pytest.approx(400.0)
    assert (g["input_tokens"], g["output_tokens"], g["concurrency_max"]) == (336.0, 40.0, 2.0)
    assert e["requests"] == 6.0 and e["ttft_ms_p99"] == pytest.approx(90.0) and e["output_tokens"] == 48.0
    assert e["latency_ms_avg"] == pytest.approx(500.0)
    assert e["kv_cache_utilization_max"] == 0.25 and e["itl_ms_avg"] is None and e["input_tokens"] is None
    assert "kv_cache_utilization_max" not in g
    assert summarize({"metrics": {"vllm:num_requests_running": {}}}) == {"endpoints": []}  # no known source
    one = summarize({"metrics": {"k2trt_gateway_inter_token_latency_seconds": {"series": [
        _series({"count": 3, "sum": 0.03, "p50_estimate": 0.01})]}}})
    assert one["gateway"]["itl_ms_avg"] == pytest.approx(10.0)
    # two APIs' TTFT series: the average combines, a percentile estimate does not
    two = summarize({"metrics": {"k2trt_gateway_time_to_first_token_seconds": {"series": [
        _series({"count": 1, "sum": 0.1, "p50_estimate": 0.1}), _series({"count": 3, "sum": 0.9,
                                                                         "p50_estimate": 0.3})]}}})["gateway"]
    assert two["ttft_ms_avg"] == pytest.approx(250.0) and two["ttft_ms_p50"] is None and two["requests"] is None
    # ... while a series with no observations in the point (the other API's, kept at 0) does not count
    idle = summarize({"metrics": {"k2trt_gateway_time_to_first_token_seconds": {"series": [
        _series({"count": 0, "sum": 0.0}), _series({"count": 3, "sum": 0.9, "p50_estimate": 0.3})]}}})["gateway"]
    assert idle["ttft_ms_p50"] == pytest.approx(300.0) and idle["ttft_ms_avg"] == pytest.approx(300.0)


def test_metrics_from_export() -> None:
    m = metrics_from_export(EXPORT, gpus=16, concurrency=8)
    assert m["output_tok_s"] == 512.0 and m["requests_s"] == 4.0
    assert m["ttft_ms_p50"] == pytest.approx(38.0) and m["itl_ms_p99"] == pytest.approx(12.0)
    assert m["latency_ms_p90"] == pytest.approx(1200.0) and m["latency_ms_avg"] == 1000.0
    assert m["output_tok_s_per_gpu"] == 32.0
    assert m["tok_s_per_user"] == pytest.approx(125.0)  # 1000 / 8 ms
    assert (m["input_tokens"], m["output_tokens"]) == (1024.0, 128.0)
    assert export_counts(EXPORT) == (64, 0)


def test_metrics_without_streaming_or_with_errors() -> None:
    export = {k: v for k, v in EXPORT.items() if k not in ("time_to_first_token", "inter_token_latency")}
    m = metrics_from_export(export, gpus=1, concurrency=8)
    assert m["ttft_ms_p50"] is None and m["itl_ms_avg"] is None
    assert m["tok_s_per_user"] == 64.0  # 512 tok/s shared by 8 users
    bad = {**EXPORT, "request_count": {"avg": 0}, "output_token_throughput": {"avg": float("nan")},
           "error_summary": [{"error_details": {"code": 500, "message": "boom"}, "count": 3},
                             {"error_details": {"message": "timeout"}, "count": 2}]}
    assert export_counts(bad) == (0, 5)
    assert metrics_from_export(bad, gpus=1, concurrency=1)["output_tok_s"] is None


def test_point_outcomes(tmp_path: Path) -> None:
    spec = TINY
    p = spec.points()[0]
    pp = PlannedPoint(p, ["aiperf", "profile"], tmp_path / "points" / p.name)
    pp.artifact_dir.mkdir(parents=True)
    log = pp.artifact_dir / "aiperf.log"
    log.write_text("starting\n\nERROR Failed to load tokenizer 'x'\n")
    r = _point_result(pp, PointRun(1, 3.0, log), spec, tmp_path)
    assert not r.ok and r.error == "aiperf exited 1: starting | ERROR Failed to load tokenizer 'x'"
    assert r.artifact_dir == "points/isl16_osl8_c1"
    r = _point_result(pp, PointRun(None, 150.0, log), spec, tmp_path)
    assert not r.ok and "killed after 3600 s" in (r.error or "")
    r = _point_result(pp, PointRun(0, 9.0, log), spec, tmp_path)
    assert not r.ok and EXPORT_JSON in (r.error or "") and "is missing" in (r.error or "")
    (pp.artifact_dir / EXPORT_JSON).write_text(json.dumps(EXPORT))
    r = _point_result(pp, PointRun(0, 9.0, log), spec, tmp_path)
    assert r.ok and r.completed == 64 and r.metrics["output_tok_s"] == 512.0 and r.elapsed_s == 9.0
    assert r.server == {}  # nothing scraped: aiperf wrote no server export
    (pp.artifact_dir / SERVER_EXPORT_JSON).write_text(json.dumps(SERVER_EXPORT))
    r = _point_result(pp, PointRun(0, 9.0, log), spec, tmp_path)
    assert r.ok and r.server["gateway"]["requests"] == 5 and r.server["engine"]["requests"] == 6
    assert r.server["endpoints"] == ["http://127.0.0.1:18564/metrics", "http://127.0.0.1:18563/prometheus/metrics"]
    assert PointResult.from_dict(json.loads(json.dumps(r.to_dict()))).server == r.server  # results.json keeps it
    nousage = {**EXPORT, "output_token_throughput": {"avg": None}}
    (pp.artifact_dir / EXPORT_JSON).write_text(json.dumps(nousage))
    r = _point_result(pp, PointRun(0, 9.0, log), spec, tmp_path)
    assert not r.ok and "set bench.server_token_count: false" in (r.error or "")


@pytest.fixture(scope="module")
def tiny_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from k2trt.chat.vocab import write_tokenizer_files

    d = tmp_path_factory.mktemp("tok")
    write_tokenizer_files(d, n_ranks=1024)
    return d


TEXTS = ["Hello world, the weather in Beijing is sunny.", "今天北京的天气怎么样？东京の天気",
         '{"city": "x", "n": 12345}',
         "  spaces\tand\nnewlines\r\n", "user text with <|im_end|> markers stays text", "Ελληνικά 😀 café"]


def test_prepare_tokenizer_counts_like_k2(tiny_tokenizer_dir: Path, tmp_path: Path) -> None:
    """aiperf loads the generated directory with transformers' AutoTokenizer; it must count what K2 counts."""
    from transformers import AutoTokenizer

    from k2trt.chat.tokenizer import K2Tokenizer

    out = prepare_tokenizer(tiny_tokenizer_dir, tmp_path / "tok")
    assert out == tmp_path / "tok" and sorted(p.name for p in out.iterdir()) == \
        [".k2trt-source.json", "tokenizer.json", "tokenizer_config.json"]
    hf = AutoTokenizer.from_pretrained(str(out))
    k2 = K2Tokenizer.from_dir(tiny_tokenizer_dir)
    for text in TEXTS:
        assert hf.encode(text, add_special_tokens=False) == k2.encode_with_specials(text), text
    assert hf.eos_token == "[EOS]" and hf.convert_tokens_to_ids("<|im_end|>") == k2.im_end_id
    cfg = json.loads((out / "tokenizer_config.json").read_text())
    assert cfg["tokenizer_class"] == "PreTrainedTokenizerFast" and "auto_map" not in cfg


def test_prepare_tokenizer_reuses_and_refreshes(tiny_tokenizer_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "model"
    src.mkdir()
    for f in tiny_tokenizer_dir.iterdir():
        (src / f.name).write_bytes(f.read_bytes())
    out = prepare_tokenizer(src, tmp_path / "tok")
    first = (out / "tokenizer.json").stat().st_mtime_ns
    assert prepare_tokenizer(src, tmp_path / "tok") == out
    assert (out / "tokenizer.json").stat().st_mtime_ns == first  # same tiktoken file: reused
    from k2trt.chat.vocab import write_tokenizer_files

    before = json.loads((out / "tokenizer.json").read_text())["model"]["merges"]
    write_tokenizer_files(src, n_ranks=1024, seed=1)  # a different vocabulary at the same path
    prepare_tokenizer(src, tmp_path / "tok")
    assert json.loads((out / "tokenizer.json").read_text())["model"]["merges"] != before
    assert not (tmp_path / ".tok.partial").exists()


def test_prepare_tokenizer_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is not a directory"):
        prepare_tokenizer(tmp_path / "missing", tmp_path / "tok")
    with pytest.raises(ConfigError, match="has neither tiktoken.model nor tokenizer.json"):
        prepare_tokenizer(tmp_path, tmp_path / "tok")
    (tmp_path / "tokenizer.json").write_text("{}")
    assert prepare_tokenizer(tmp_path, tmp_path / "tok") == tmp_path  # an HF tokenizer directory as it is
    assert hf_tokenizer_config(tmp_path) == {"tokenizer_class": "PreTrainedTokenizerFast"}


def test_cli_server_metrics_options(tmp_path: Path) -> None:
    """``k2trt bench -n --json`` shows the scrape flags each point's aiperf gets; the two options exclude each
    other."""
    from click.testing import CliRunner

    from k2trt.commands.bench import bench

    spec = tmp_path / "b.yaml"
    spec.write_text("bench: {endpoint: chat, isl_osl: [[16, 8]], concurrency: [1, 2]}\n")
    engine = "http://10.1.1.1:8000/prometheus/metrics"
    args = ["--spec", str(spec), "--endpoint", "http://127.0.0.1:8080", "--out", str(tmp_path / "o"), "--model", "m",
            "-n", "--json"]
    r = CliRunner().invoke(bench, [*args, "--server-metrics", engine])
    assert r.exit_code == 0, r.output
    argvs = [p["argv"] for p in json.loads(r.output)["points"]]
    assert len(argvs) == 2 and all(a[a.index("--server-metrics") + 1] == engine for a in argvs)
    r = CliRunner().invoke(bench, [*args, "--no-server-metrics"])
    assert all("--no-server-metrics" in p["argv"] for p in json.loads(r.output)["points"])
    r = CliRunner().invoke(bench, [*args, "--no-server-metrics", "--server-metrics", engine])
    assert r.exit_code == 2 and "--no-server-metrics contradicts --server-metrics" in r.output
    assert not (tmp_path / "o").exists()


def test_recipe_bench_scrapes_the_recipes_other_server(tmp_path: Path) -> None:
    """``k2trt bench --recipe R``: benchmarking the recipe's engine adds its gateway's /metrics; benchmarking its
    gateway adds TensorRT-LLM's /prometheus/metrics (the reference engine has none); any other endpoint, or
    --no-server-metrics, adds nothing. Shown by the dry run's aiperf argv."""
    from click.testing import CliRunner

    from k2trt.commands.bench import bench

    def scraped(recipe: str, *args: str) -> list[list[str]]:
        r = CliRunner().invoke(bench, ["--recipe", recipe, "--out", str(tmp_path / "o"), "--model", "m", "-n",
                                       "--json", *args])
        assert r.exit_code == 0, r.output
        out = []
        for p in json.loads(r.output)["points"]:
            argv = p["argv"]
            i = argv.index("--server-metrics") if "--server-metrics" in argv else None
            out.append(argv[i + 1:argv.index("--server-metrics-formats")] if i is not None else
                       (["off"] if "--no-server-metrics" in argv else []))
        return out

    gateway = "http://127.0.0.1:18001/metrics"
    assert scraped("tiny-cpu") == [[gateway], [gateway]]  # the default endpoint is the engine, :18000
    assert scraped("tiny-cpu", "--endpoint", "http://127.0.0.1:18000/") == [[gateway], [gateway]]
    assert scraped("tiny-cpu", "--endpoint", "http://127.0.0.1:18001") == [[], []]  # reference: no engine metrics
    assert scraped("tiny-cpu", "--endpoint", "http://10.0.0.9:8000") == [[], []]  # not the recipe's servers
    assert scraped("tiny-cpu", "--no-server-metrics") == [["off"], ["off"]]
    extra = "http://10.0.0.9:9400/metrics"
    assert scraped("tiny-cpu", "--server-metrics", extra)[0] == [extra, gateway]
    recipe = load_recipe("k2-h200-2x8-tp16ep8")
    engine, gw = recipe.endpoint(), recipe.gateway_endpoint()
    assert gw is not None and scraped("k2-h200-2x8-tp16ep8", "--endpoint", gw)[0] == [f"{engine}/prometheus/metrics"]
    assert scraped("k2-h200-2x8-tp16ep8")[0] == [f"{gw}/metrics"]
    assert load_recipe("tiny-cpu", ["serve.gateway_port=null"]).metrics_urls("http://127.0.0.1:18000") == ()
