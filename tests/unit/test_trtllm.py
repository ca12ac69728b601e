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
from k2trt.trtllm.disagg_lint import lint_disagg_with
from k2trt.trtllm.doctor import doctor
from k2trt.trtllm.lint import generated_batch_sizes, lint, lint_text
from k2trt.trtllm.profiles import available, profile_for
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
    p = profile_for()
    assert p.version == PINNED_RELEASE and p.name == PINNED_RELEASE == "1.3.0rc24"
    assert NGC_IMAGE.endswith(":" + PINNED_RELEASE)
    assert profile_for("1.3").name == "1.3.0rc24" and profile_for("v1.3.0rc24").name == "1.3.0rc24"
    assert p.serve["config_flag"] == "--config" and p.serve["tp_flag"] == "--tp_size"
    assert "WIDEEP" in p.models["MoeConfig"]["fields"]["backend"]["type"]["vals"]  # still there at rc24
    with pytest.raises(ConfigError, match="not a TensorRT-LLM version"):
        profile_for("banana")
    one_two = profile_for("1.2")
    assert one_two.name == "1.2.1" and one_two.serve["config_flag"] == "--config"
    assert one_two.serve["yaml_merge"] == "deep" and one_two.has_tool_parser("kimi_k2")
    assert "WIDEEP" in one_two.models["MoeConfig"]["fields"]["backend"]["type"]["vals"]
    assert "num_nextn_predict_layers" in one_two.models["MTPDecodingConfig"]["fields"]
    # a release without its own profile is refused, never judged by another release's schema
    one_oh = profile_for("1.0")
    assert one_oh.name == "1.0.0" and one_oh.serve["config_flag"] == "--extra_llm_api_options"
    assert one_oh.serve["yaml_merge"] == "shallow" and not one_oh.has_tool_parser("kimi_k2")
    assert "enable_trtllm_sampler" in one_oh.fields and "sampler_type" not in one_oh.fields
    for other in ("0.20.0", "1.3.0rc7", "1.2.0", "0.21"):
        with pytest.raises(ConfigError, match="no schema profile"):
            profile_for(other)
    # main has its own profile now (raw llm_args.py@0004396…, issue 12), and only main/latest/head select it
    for alias in ("main", "latest", "head"):
        assert profile_for(alias).name == "main"
    assert profile_for("main").models["TorchLlmArgs"]["handled"]["sampler_type"]["action"] == "removed"


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
    # attention_dp_config is a strict model at rc24: an unknown key in it is rejected, not passed through
    assert _issue(lint({"attention_dp_config": {"enable_balanse": True}}),
                  "attention_dp_config.enable_balanse").severity == "error"


def test_wrong_types_ranges_and_nulls() -> None:
    res = lint({"max_batch_size": "128", "enable_attention_dp": "yes", "stream_interval": 0,
                "kv_cache_config": {"free_gpu_memory_fraction": 1.5}, "moe_config": None,
                "cuda_graph_config": {"batch_sizes": [1, "x"]}})
    # pydantic's lax mode reads "128" and "yes": TensorRT-LLM accepts them, so they are warnings, not errors
    assert _issue(res, "max_batch_size").severity == "warning" and "reads it as 128" in \
        _issue(res, "max_batch_size").message
    assert _issue(res, "enable_attention_dp").severity == "warning"
    assert "not above 0" in _issue(res, "stream_interval").message
    assert "maximum 1" in _issue(res, "kv_cache_config.free_gpu_memory_fraction").message
    assert "null" in _issue(res, "moe_config").message
    assert _issue(res, "cuda_graph_config.batch_sizes").severity == "error"
    assert lint({"cuda_graph_config": None, "max_num_tokens": 4096, "kv_cache_config": {"dtype": "fp8"}}).ok
    assert not lint({"enable_attention_dp": "maybe"}).ok and not lint({"max_batch_size": 1.5}).ok


def test_scalar_judgements_match_pydantic_lax_mode() -> None:
    """The linter's scalar rules against pydantic itself (the library TorchLlmArgs validates with)."""
    pydantic = pytest.importorskip("pydantic")
    from k2trt.trtllm.lint import _scalar

    for kind, typ in (("int", int), ("float", float), ("bool", bool), ("str", str)):
        ta = pydantic.TypeAdapter(typ)
        for v in (0, 1, 2, 1.0, 1.5, True, False, "1", "2", "1.5", "yes", "no", "x", "", None, [1]):
            try:
                ta.validate_python(v)
                accepted = True
            except pydantic.ValidationError:
                accepted = False
            error, _, _ = _scalar(v, {"k": kind})
            assert (error is None) == accepted, (kind, v, error)


def test_enums_per_release() -> None:
    res = lint({"moe_config": {"backend": "cutlass"}})
    assert "'CUTLASS'" in _issue(res, "moe_config.backend").fix
    assert lint({"moe_config": {"backend": "WIDEEP"}}).ok
    assert lint({"sampler_type": "TRTLLMSampler"}).ok  # Union[str, SamplerType] at rc24: deprecated, accepted
    assert lint({"kv_cache_config": {"dtype": "nvfp4"}}).ok
    i = _issue(lint({"enable_trtllm_sampler": True}), "enable_trtllm_sampler")
    assert i.severity == "error" and "sampler_type" in i.fix and "TRTLLMSampler" in i.fix
    eagle = _issue(lint({"speculative_config": {"decoding_type": "Eagle", "max_draft_len": 3}}),
                   "speculative_config.decoding_type")
    assert eagle.severity == "warning" and "Eagle3" in eagle.fix  # rc24 treats Eagle as Eagle3 with a warning


def test_cuda_graph_size_rules_follow_the_release() -> None:
    both = {"cuda_graph_config": {"batch_sizes": [1, 2, 4], "max_batch_size": 8}}
    assert "max(batch_sizes)" in _issue(lint(both), "cuda_graph_config.max_batch_size").message
    gen = {"cuda_graph_config": {"batch_sizes": generated_batch_sizes(64, True), "max_batch_size": 64,
                                 "enable_padding": True}}
    assert lint(gen).ok
    assert generated_batch_sizes(128, True)[:5] == [1, 2, 4, 8, 16] and generated_batch_sizes(128, True)[-1] == 128
    assert generated_batch_sizes(300, False)[-3:] == [128, 256, 300]
    # 1.2.1 requires batch_sizes to equal its own generated list when both are set
    pow2 = generated_batch_sizes(1024, True)
    assert pow2[-3:] == [256, 512, 1024] and 136 not in pow2
    assert generated_batch_sizes(1000, True)[-3:] == [256, 512, 1000]
    assert generated_batch_sizes(1000, True, "floor")[-3:] == [128, 256, 1000]
    assert lint({"cuda_graph_config": {"batch_sizes": pow2, "max_batch_size": 1024, "enable_padding": True}},
                "1.2").ok
    off = {"cuda_graph_config": {"batch_sizes": [1, 2, 4, 8], "max_batch_size": 8}}
    assert "generate" in _issue(lint(off, "1.2"), "cuda_graph_config").message and lint(
        {"cuda_graph_config": {"batch_sizes": [1, 2, 4, 8], "max_batch_size": 8}}).ok  # rc24: max == max(list)
    # the mode discriminator rc24 fills in itself may be left out; a wrong one is rejected
    assert lint({"cuda_graph_config": {"enable_padding": True}}).ok
    assert not lint({"cuda_graph_config": {"mode": "prefill", "enable_padding": True}}).ok


def test_k2trt_warnings() -> None:
    kv = {"kv_cache_config": {"enable_block_reuse": True}}
    assert lint(kv).issues == []  # rc24's update_llm_args_with_extra_dict deep-merges kv_cache_config
    assert profile_for().merge["deep"] == ["kv_cache_config", "telemetry_config"]
    assert _issue(lint({"trust_remote_code": False}), "trust_remote_code").severity == "warning"
    assert "#9930" in _issue(lint({"moe_config": {"backend": "TRTLLM"}}), "moe_config.backend").message
    dep = _issue(lint({"speculative_config": {"decoding_type": "MTP", "num_nextn_predict_layers": 1}}),
                 "speculative_config.num_nextn_predict_layers")
    assert dep.severity == "warning" and "max_draft_len" in dep.fix
    mtp = {"speculative_config": {"decoding_type": "MTP", "max_draft_len": 3}}
    assert "num_nextn_predict_layers" in _issue(lint(mtp, "1.2"), "speculative_config.max_draft_len").fix
    assert lint(mtp).issues == []  # rc24 reads max_draft_len itself
    rev = _issue(lint({"hf_revision": "main"}), "hf_revision")  # trtllm-serve's merge renames it
    assert rev.severity == "warning" and "revision" in rev.fix
    assert lint({"torch_compile_config": {"enable_piecewise_cuda_graph": True}}).issues == []  # a field at rc24
    # rc24's before-validator stringifies env_overrides values: a number is accepted there, so only a warning
    env = _issue(lint({"env_overrides": {"NCCL_DEBUG": 1}}), "env_overrides.NCCL_DEBUG")
    assert env.severity == "warning" and "validator" in env.message
    assert not lint({"max_num_tokens": {"a": 1}}).ok  # a field without such a validator stays strict


def test_yaml_syntax_and_shape_errors() -> None:
    res = lint_text("a: [1, 2\nb: 3\n")
    assert not res.ok and "line" in res.issues[0].message
    assert "mapping" in lint_text("- 1\n- 2\n").issues[0].message
    assert lint_text("").ok


def test_rendered_options_lint_clean_on_every_release() -> None:
    for v in available():
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
    prof = profile_for()
    for flag in main:  # every option the argv uses is one rc24's trtllm-serve has (as a name or an alias)
        if flag.startswith("--"):
            assert prof.option(flag) == flag, flag
    v12 = serve_argv("/m", version="1.2", **base)  # type: ignore[arg-type]
    assert "--config" in v12 and v12[-2:] == ["--tool_parser", "kimi_k2"]  # 1.2.1's choices include kimi_k2
    v10 = serve_argv("/m", version="1.0", **base)  # type: ignore[arg-type]
    assert "--extra_llm_api_options" in v10 and "--tool_parser" not in v10  # 1.0.0 has no --tool_parser
    assert all(profile_for("1.0").option(f) == f for f in v10 if f.startswith("--"))
    with pytest.raises(ConfigError, match="no schema profile"):
        serve_argv("/m", version="0.21", **base)  # type: ignore[arg-type]


def test_disaggregated_router_config() -> None:
    d = disagg_config(RoleServers(("h1:8001", "h2:8001"), 8), RoleServers(("h3:8002",), 16), port=9000)
    assert d["context_servers"]["num_instances"] == 2 and d["context_servers"]["urls"] == ["h1:8001", "h2:8001"]
    assert d["generation_servers"]["tensor_parallel_size"] == 16 and d["port"] == 9000
    assert router_argv("/b/disagg.yml") == ["trtllm-serve", "disaggregated", "-c", "/b/disagg.yml"]
    with pytest.raises(ConfigError, match="host:port"):
        disagg_config(RoleServers(("h1",), 8), RoleServers(("h3:8002",), 8))
    with pytest.raises(ConfigError, match="at least one context"):
        disagg_config(RoleServers((), 8), RoleServers(("h3:8002",), 8))


@pytest.mark.parametrize("version", available())
def test_the_router_config_draws_no_deprecation_warning(version: str) -> None:
    """Every profile accepts the router config as written with no warning about its keys (where a release's
    disagg_utils.py was not read, the one warning left says so)."""
    res = lint_disagg_with(disagg_config(RoleServers(("h1:8001",), 8), RoleServers(("h2:8002",), 8)),
                           profile_for(version))
    assert res.ok and [i for i in res.issues if i.path != "<file>"] == [], res.issues
    assert all("not established" in i.message for i in res.issues)


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


def test_config_check_command(tmp_path: Path) -> None:
    f = tmp_path / "moonshot.yml"
    f.write_text(MOONSHOT_STYLE)
    r = CliRunner().invoke(cli, ["config", "check", str(f)])
    assert r.exit_code == 1 and "enable_padding" in r.output
    r = CliRunner().invoke(cli, ["config", "check", str(f), "--json", "--trtllm", "1.3"])
    d = json.loads(r.output)
    assert r.exit_code == 1 and d["profile"] == "1.3.0rc24" and d["issues"][0]["path"] == \
        "cuda_graph_config.padding_enabled"
    r = CliRunner().invoke(cli, ["config", "check", str(f), "--trtllm", "0.21"])
    assert r.exit_code != 0 and "no schema profile" in str(r.exception)
    f.write_text("cuda_graph_config:\n  enable_padding: true\n")
    r = CliRunner().invoke(cli, ["config", "check", str(f)])
    assert r.exit_code == 0 and "clean" in r.output
    r = CliRunner().invoke(cli, ["doctor", str(f), "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["installed"] is False


def test_config_profiles_command() -> None:
    r = CliRunner().invoke(cli, ["config", "profiles"])
    assert r.exit_code == 0 and "1.3.0rc24" in r.output and "(pinned)" in r.output
    assert "NVIDIA/TensorRT-LLM:1.3.0rc24/_modules/tensorrt_llm/llmapi/llm_args.html@32b086cd086c" in r.output
    d = json.loads(CliRunner().invoke(cli, ["config", "profiles", "--json"]).output)
    counts = {p["name"]: p["counts"]["models"] for p in d["profiles"]}
    assert d["pinned"] == PINNED_RELEASE and counts == {"1.0.0": 18, "1.2.1": 25, "1.3.0rc24": 48, "main": 52}


def test_w4a8_is_refused_on_every_profile_with_the_reason_that_profile_has() -> None:
    """Issue 12 item 4: main's loader keeps the global MIXED_PRECISION that DeepseekV3DecoderLayer asserts on (read:
    not loadable); the releases' own loaders were not readable (not established). Both refuse; the messages differ."""
    from k2trt.layout import Layout
    from k2trt.plan.planner import Cluster, PlanRequest, plan_layout, resolve_spec
    from k2trt.plan.gpus import gpu
    from k2trt.trtllm import known
    from k2trt.trtllm.profiles import available

    w4a8, _ = resolve_spec(None, "k2-instruct", "w4a8")
    for release in available():
        lp = plan_layout(PlanRequest(w4a8, Cluster(gpu("h200"), 1, 8), 32768, release=release),
                         Layout.parse("tp8ep8adp"))
        msg = next(f.message for f in lp.findings if f.rule == "w4a8-not-loadable")
        assert not lp.ok and "MIXED_PRECISION is ambiguous" in msg and "model_config.py@008e0af8980f" in msg
        if release == "main":
            assert known.release_fact(release, "w4a8_mixed_precision") is False and "main does not load it" in msg
        else:
            assert known.release_fact(release, "w4a8_mixed_precision") is None and "not established" in msg
