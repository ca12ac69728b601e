"""aiperf argv, environment, export parsing and the offline tokenizer directory (no processes started)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from k2trt.bench.aiperf import (DEAD_HUB, EXPORT_JSON, PointRun, aiperf_argv, aiperf_env, hf_tokenizer_config,
                                prepare_tokenizer)
from k2trt.bench.results import export_counts, metrics_from_export
from k2trt.bench.spec import BenchSpec
from k2trt.bench.sweep import PlannedPoint, _point_result, normalize_endpoint
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
    assert _opt(argv, "--ui-type") == "none" and "--no-gpu-telemetry" in argv and "--no-server-metrics" in argv
    assert _opt(argv, "--random-seed") == "0" and _opt(argv, "--request-timeout-seconds") == "600"


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
