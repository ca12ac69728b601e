"""k2trt.trtllm: release profiles, the YAML linter (one test per error class), serve/disaggregated argv, config
writing, doctor and the `k2trt config` / `k2trt doctor` commands."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from k2trt.cli import cli
from k2trt.errors import ConfigError
from k2trt.trtllm import NGC_IMAGE, PINNED_RELEASE
from k2trt.trtllm.disagg import RoleServers, disagg_config, router_argv
from k2trt.trtllm.doctor import doctor
from k2trt.trtllm.lint import generated_batch_sizes, lint, lint_text
from k2trt.trtllm.profiles import profile_for
from k2trt.trtllm.render import EngineOptions, llm_options, serve_argv, write_config

# The shape of Moonshot's deploy-guide heredoc: the stale cuda_graph_config.padding_enabled key.
MOONSHOT_STYLE = textwrap.dedent("""\
    cuda_graph_config:
      padding_enabled: true
      batch_sizes: [1, 2, 4, 8, 16, 32, 64, 128]
    print_iter_log: true
    enable_attention_dp: false
    """)


def _issue(res, path):  # type: ignore[no-untyped-def]
    hits = [i for i in res.issues if i.path == path]
    assert hits, (path, [str(i) for i in res.issues])
    return hits[0]


def test_profiles_resolve_versions() -> None:
    assert profile_for().version == PINNED_RELEASE and profile_for().name == "main"
    assert NGC_IMAGE.endswith(":" + PINNED_RELEASE)
    assert profile_for("1.0.0rc4").name == "1.0" and profile_for("1.1.0").name == "1.0"
    assert profile_for("1.2.1").name == "1.2" and profile_for("1.3.0rc21").name == "main"
    assert profile_for("1.2").serve["config_flag"] == "--config"
    assert profile_for("1.0").serve["config_flag"] == "--extra_llm_api_options"
    assert "WIDEEP" in profile_for("1.2").fields["moe_config"]["fields"]["backend"]["values"]
    assert "WIDEEP" not in profile_for("main").fields["moe_config"]["fields"]["backend"]["values"]
    with pytest.raises(ConfigError, match="not a TensorRT-LLM version"):
        profile_for("banana")
    with pytest.raises(ConfigError, match="predates"):
        profile_for("0.20.0")


def test_stale_key_gets_its_new_spelling() -> None:
    res = lint_text(MOONSHOT_STYLE)
    i = _issue(res, "cuda_graph_config.padding_enabled")
    assert i.severity == "error" and "cuda_graph_config.enable_padding" in i.fix and not res.ok
    for key, new in [("pytorch_backend_config", "disable_overlap_scheduler"), ("kv_cache_dtype", "kv_cache_config.dtype"),
                     ("use_cuda_graph", "cuda_graph_config")]:
        assert new in _issue(lint({key: True}), key).fix


def test_unknown_keys_with_did_you_mean() -> None:
    res = lint({"max_batch_sise": 8, "kv_cache_config": {"free_gpu_mem_fraction": 0.9}})
    assert "max_batch_size" in _issue(res, "max_batch_sise").fix
    assert "free_gpu_memory_fraction" in _issue(res, "kv_cache_config.free_gpu_mem_fraction").fix
    assert "valid keys" in _issue(lint({"zzz": 1}), "zzz").fix


def test_wrong_types_ranges_and_nulls() -> None:
    res = lint({"max_batch_size": "128", "enable_attention_dp": "yes", "stream_interval": 0,
                "kv_cache_config": {"free_gpu_memory_fraction": 1.5}, "moe_config": None,
                "cuda_graph_config": {"batch_sizes": [1, "2"]}})
    assert "expected int" in _issue(res, "max_batch_size").message
    assert "expected bool" in _issue(res, "enable_attention_dp").message
    assert "minimum 1" in _issue(res, "stream_interval").message
    assert "maximum 1.0" in _issue(res, "kv_cache_config.free_gpu_memory_fraction").message
    assert "null" in _issue(res, "moe_config").message
    assert "list[int]" in _issue(res, "cuda_graph_config.batch_sizes").message
    assert lint({"cuda_graph_config": None, "max_num_tokens": 4096, "kv_cache_config": {"dtype": "fp8"}}).ok
    assert not lint({"max_batch_size": True}).ok  # a bool is not an int


def test_enums_per_release() -> None:
    res = lint({"moe_config": {"backend": "cutlass"}})
    assert "'CUTLASS'" in _issue(res, "moe_config.backend").fix
    assert lint({"moe_config": {"backend": "WIDEEP"}}, "1.2").ok
    i = _issue(lint({"moe_config": {"backend": "WIDEEP"}}, "main"), "moe_config.backend")
    assert i.severity == "error" and "CUTEDSL" in i.fix
    assert not lint({"sampler_type": "TRTLLMSampler"}, "main").ok and lint({"sampler_type": "TRTLLMSampler"}, "1.2").ok
    assert not lint({"kv_cache_config": {"dtype": "nvfp4"}}, "1.0").ok
    assert lint({"kv_cache_config": {"dtype": "nvfp4"}}, "main").ok
    assert not lint({"enable_trtllm_sampler": True}, "1.2").ok and lint({"enable_trtllm_sampler": True}, "1.0").ok


def test_cuda_graph_size_rules_follow_the_release() -> None:
    both = {"cuda_graph_config": {"batch_sizes": [1, 2, 4], "max_batch_size": 8}}
    assert not lint(both, "main").ok and not lint(both, "1.2").ok
    gen = {"cuda_graph_config": {"batch_sizes": generated_batch_sizes(64, True), "max_batch_size": 64,
                                 "enable_padding": True}}
    assert lint(gen, "1.2").ok and lint(gen, "main").ok
    assert generated_batch_sizes(128, True)[:5] == [1, 2, 4, 8, 16] and generated_batch_sizes(128, True)[-1] == 128
    assert generated_batch_sizes(300, False)[-3:] == [128, 256, 300]


def test_k2trt_warnings() -> None:
    kv = {"kv_cache_config": {"enable_block_reuse": True}}
    i = _issue(lint(kv, "1.2"), "kv_cache_config")
    assert i.severity == "warning" and "free_gpu_memory_fraction" in i.fix
    assert lint(kv, "main").issues == []  # main deep-merges kv_cache_config
    assert _issue(lint({"trust_remote_code": False}), "trust_remote_code").severity == "warning"
    assert "#9930" in _issue(lint({"moe_config": {"backend": "TRTLLM"}}), "moe_config.backend").message
    dep = _issue(lint({"speculative_config": {"decoding_type": "MTP", "num_nextn_predict_layers": 1}}, "main"),
                 "speculative_config.num_nextn_predict_layers")
    assert dep.severity == "warning" and "max_draft_len" in dep.fix


def test_yaml_syntax_and_shape_errors() -> None:
    res = lint_text("a: [1, 2\nb: 3\n")
    assert not res.ok and "line" in res.issues[0].message
    assert "mapping" in lint_text("- 1\n- 2\n").issues[0].message
    assert lint_text("").ok


def test_rendered_options_lint_clean_on_every_release() -> None:
    for v in ("1.0", "1.2", "main"):
        for adp in (False, True):
            for role in (None, "context", "generation"):
                doc = llm_options(EngineOptions(moe_backend="CUTLASS", adp_balance=True), adp=adp, kv_dtype="fp8",
                                  max_seq_len=131072, role=role, version=v)
                res = lint(doc, v)
                assert res.ok and not res.issues, (v, adp, role, [str(i) for i in res.issues])
    doc = llm_options(EngineOptions(extra={"kv_cache_config": {"tokens_per_block": 64}}), adp=False, kv_dtype="bf16",
                      max_seq_len=8192)
    assert doc["kv_cache_config"] == {"free_gpu_memory_fraction": 0.9, "enable_block_reuse": True, "dtype": "auto",
                                      "tokens_per_block": 64}


def test_prometheus_endpoint_is_switched_on_by_default() -> None:
    """trtllm-serve mounts /prometheus/metrics only with return_perf_metrics (what k2trt bench scrapes)."""
    on = llm_options(EngineOptions(), adp=False, kv_dtype="fp8", max_seq_len=8192)
    off = llm_options(EngineOptions(prometheus=False), adp=False, kv_dtype="fp8", max_seq_len=8192)
    assert on["return_perf_metrics"] is True and "return_perf_metrics" not in off
    assert on["enable_iter_perf_stats"] is True  # the KV-cache and queue gauges come from iteration stats


def test_serve_argv_per_release() -> None:
    base = dict(config_path="/b/config.yml", tp=16, ep=8, gpus_per_node=8, tool_parser=True)
    main = serve_argv("/m", **base)  # type: ignore[arg-type]
    assert main[:3] == ["trtllm-serve", "serve", "/m"] and "--model" not in main
    assert main[main.index("--host") + 1] == "0.0.0.0" and "--trust_remote_code" in main
    assert main[main.index("--tp_size") + 1] == "16" and main[main.index("--ep_size") + 1] == "8"
    assert main[main.index("--gpus_per_node") + 1] == "8"
    assert main[main.index("--config") + 1] == "/b/config.yml" and main[-2:] == ["--tool_parser", "kimi_k2"]
    v12 = serve_argv("/m", version="1.2.0", **base)  # type: ignore[arg-type]
    assert "--config" in v12 and "--tool_parser" not in v12  # kimi_k2 landed after 1.2 branched
    v10 = serve_argv("/m", version="1.0", **base)  # type: ignore[arg-type]
    assert "--extra_llm_api_options" in v10 and "--config" not in v10 and "--tool_parser" not in v10


def test_disaggregated_router_config() -> None:
    d = disagg_config(RoleServers(("h1:8001", "h2:8001"), 8), RoleServers(("h3:8002",), 16), port=9000)
    assert d["context_servers"]["num_instances"] == 2 and d["context_servers"]["urls"] == ["h1:8001", "h2:8001"]
    assert d["generation_servers"]["tensor_parallel_size"] == 16 and d["port"] == 9000
    assert router_argv("/b/disagg.yml") == ["trtllm-serve", "disaggregated", "-c", "/b/disagg.yml"]
    with pytest.raises(ConfigError, match="host:port"):
        disagg_config(RoleServers(("h1",), 8), RoleServers(("h3:8002",), 8))
    with pytest.raises(ConfigError, match="at least one context"):
        disagg_config(RoleServers((), 8), RoleServers(("h3:8002",), 8))


def test_write_config_lints_first_and_is_atomic(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    with pytest.raises(ConfigError, match="refusing to write"):
        write_config(bad, {"cuda_graph_config": {"padding_enabled": True}})
    assert not bad.exists() and list(tmp_path.iterdir()) == []
    good = tmp_path / "good.yml"
    write_config(good, {"max_batch_size": 8}, header="hello")
    assert good.read_text().startswith("# hello\n") and lint_text(good.read_text()).ok


def test_doctor_without_tensorrt_llm() -> None:
    rep = doctor({"max_batch_size": 8})
    assert not rep.installed and "not installed" in rep.message and rep.lint is not None and rep.ok
    assert doctor({"max_batch_sise": 8}).ok is False


def test_doctor_uses_tensorrt_llms_own_validation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Test double: TensorRT-LLM cannot be installed here, so a stand-in package with the same import path and a
    strict TorchLlmArgs exercises doctor's native path (version pick-up and validation errors)."""
    pkg = tmp_path / "tensorrt_llm"
    (pkg / "llmapi").mkdir(parents=True)
    (pkg / "__init__.py").write_text("__version__ = '1.2.0'\n")
    (pkg / "llmapi" / "__init__.py").write_text("")
    (pkg / "llmapi" / "llm_args.py").write_text(textwrap.dedent("""\
        class TorchLlmArgs:
            KNOWN = {'model', 'skip_tokenizer_init', 'max_batch_size', 'sampler_type'}
            def __init__(self, **kw):
                bad = set(kw) - self.KNOWN
                if bad:
                    raise ValueError(f"Extra inputs are not permitted: {sorted(bad)}")
        """))
    monkeypatch.syspath_prepend(str(tmp_path))
    for m in [m for m in sys.modules if m.startswith("tensorrt_llm")]:
        monkeypatch.delitem(sys.modules, m)
    monkeypatch.setattr(sys, "modules", dict(sys.modules))  # the stand-in's imports vanish with the test
    rep = doctor({"max_batch_size": 8}, model="/m")
    assert rep.installed and rep.version == "1.2.0" and rep.native_ok and rep.lint.profile == "1.2"  # type: ignore[union-attr]
    assert any("differs" in n for n in rep.notes)
    rep = doctor({"max_batch_size": 8, "enable_attention_dp": True})
    assert rep.native_ok is False and "Extra inputs" in (rep.native_error or "") and not rep.ok


def test_config_check_command(tmp_path: Path) -> None:
    f = tmp_path / "moonshot.yml"
    f.write_text(MOONSHOT_STYLE)
    r = CliRunner().invoke(cli, ["config", "check", str(f)])
    assert r.exit_code == 1 and "enable_padding" in r.output
    r = CliRunner().invoke(cli, ["config", "check", str(f), "--json", "--trtllm", "1.2"])
    d = json.loads(r.output)
    assert r.exit_code == 1 and d["profile"] == "1.2" and d["issues"][0]["path"] == "cuda_graph_config.padding_enabled"
    f.write_text("cuda_graph_config:\n  enable_padding: true\n")
    r = CliRunner().invoke(cli, ["config", "check", str(f)])
    assert r.exit_code == 0 and "clean" in r.output
    r = CliRunner().invoke(cli, ["doctor", str(f), "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["installed"] is False
