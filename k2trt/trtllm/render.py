"""Write the extra-llm-api YAML for a deployment, and the ``trtllm-serve`` argv around it.

``EngineOptions`` holds k2trt's engine knobs under k2trt names (a recipe's ``serve.options``); ``llm_options``
turns them into TensorRT-LLM's YAML keys for one release. Everything that TensorRT-LLM can take from either the CLI
or the YAML goes in the YAML (one place, and the YAML wins anyway — trtllm.md §2.4), except the parallel sizes,
host/port and model, which the argv states explicitly. ``write_config`` lints before writing and writes atomically.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from k2trt.errors import ConfigError
from k2trt.fsio import atomic_write
from k2trt.trtllm.lint import LintResult, lint
from k2trt.trtllm.profiles import profile_for

SERVE_EXE = "trtllm-serve"
TOOL_PARSER = "kimi_k2"
TRUST_REMOTE_CODE_FLAG = "--trust_remote_code"
"""``trtllm-serve serve``'s switch that lets K2's config and tokenizer code load (always on)."""
TOOL_PARSER_ARGS = ("--tool_parser", TOOL_PARSER)
"""``trtllm-serve serve``'s K2 tool-call parser (where the release has it)."""
KV_FRACTION = 0.9
"""KvCacheConfig.free_gpu_memory_fraction default (trtllm.md §2.3): the planner's and the recipes' default too."""
SERVER_ROLES = {"ctx": "context", "gen": "generation"}
"""k2trt's disaggregated role keys → TensorRT-LLM's server roles (``--server_role``, per-role YAML)."""
DEFAULT_TRANSCEIVER = "UCX"
"""``cache_transceiver_config.backend`` unless a recipe names another KV transfer backend."""


@dataclass(frozen=True)
class EngineOptions:
    """Engine knobs of a deployment, in k2trt's words (rendered to TensorRT-LLM keys per release)."""

    kv_fraction: float = KV_FRACTION
    """Share of free GPU memory (after weights and activations) for the KV cache (TensorRT-LLM default 0.9)."""
    block_reuse: bool = True
    """Prefix (KV block) reuse; supported for MLA on SM90/100/120."""
    max_batch_size: int = 128
    """Largest running batch."""
    max_num_tokens: int = 8192
    """Token budget of one engine step (prefill chunk + decodes)."""
    cuda_graph_batch_size: int = 128
    """Largest batch captured in a CUDA graph; 0 disables CUDA graphs."""
    cuda_graph_padding: bool = True
    """Pad batches up to the next captured size."""
    moe_backend: str | None = None
    """MoE kernel family (CUTLASS on Hopper FP8); None leaves the release default."""
    stream_interval: int = 10
    """Iterations between streamed chunks (raise for large batches)."""
    iter_log: bool = False
    """Per-iteration log lines."""
    iter_stats: bool = True
    """Keep per-iteration stats: GET /metrics (JSON) and the KV-cache and queue gauges of the Prometheus endpoint."""
    prometheus: bool = True
    """Serve Prometheus metrics at ``/prometheus/metrics`` (``return_perf_metrics``; ``metrics.PROMETHEUS_PATH``),
    which ``k2trt bench`` scrapes beside the gateway's ``/metrics``."""
    chunked_prefill: bool = False
    """Split long prompts across steps."""
    adp_balance: bool = False
    """Attention-DP load balancing across ranks (attention_dp_config.enable_balance)."""
    tokenizer_mode: str | None = None
    """``slow`` keeps K2's tiktoken tokenizer from a broken fast conversion under transformers ≥ 5."""
    extra: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    """Raw extra-llm-api keys (TensorRT-LLM spelling) merged last; linted like the rest."""


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def llm_options(opts: EngineOptions, *, adp: bool, kv_dtype: str, max_seq_len: int, role: str | None = None,
                transceiver: str = DEFAULT_TRANSCEIVER, version: str | None = None) -> dict[str, Any]:
    """The extra-llm-api dict for one instance (``role``: None, or a ``SERVER_ROLES`` value for disaggregation).

    Example: ``llm_options(EngineOptions(), adp=False, kv_dtype="fp8", max_seq_len=131072)["kv_cache_config"]``
    → ``{"free_gpu_memory_fraction": 0.9, "enable_block_reuse": True, "dtype": "fp8"}``.
    """
    prof = profile_for(version)
    d: dict[str, Any] = {
        "trust_remote_code": True,
        "enable_attention_dp": adp,
        "max_batch_size": opts.max_batch_size,
        "max_num_tokens": opts.max_num_tokens,
        "max_seq_len": max_seq_len,
        "kv_cache_config": {"free_gpu_memory_fraction": opts.kv_fraction, "enable_block_reuse": opts.block_reuse,
                            "dtype": "fp8" if kv_dtype == "fp8" else "auto"},
    }
    if opts.cuda_graph_batch_size and role != "context":
        d["cuda_graph_config"] = {"enable_padding": opts.cuda_graph_padding,
                                  "max_batch_size": opts.cuda_graph_batch_size}
    else:
        d["cuda_graph_config"] = None  # context-only servers run prefill, which CUDA graphs do not cover
    if opts.moe_backend:
        d["moe_config"] = {"backend": opts.moe_backend}
    if adp and opts.adp_balance and "attention_dp_config" in prof.fields:
        d["attention_dp_config"] = {"enable_balance": True}
    if opts.chunked_prefill:
        d["enable_chunked_prefill"] = True
    d["stream_interval"] = opts.stream_interval
    d["print_iter_log"] = opts.iter_log
    if opts.iter_stats:
        d["enable_iter_perf_stats"] = True
    if opts.prometheus and "return_perf_metrics" in prof.fields:  # releases before the Prometheus route lack it
        d["return_perf_metrics"] = True
    if opts.tokenizer_mode:
        d["tokenizer_mode"] = opts.tokenizer_mode
    if role is not None:
        d["cache_transceiver_config"] = {"backend": transceiver}
        if role == "context":
            d["disable_overlap_scheduler"] = True
    return _deep_merge(d, opts.extra)


def dump_yaml(doc: dict[str, Any], header: str = "") -> str:
    """YAML text with a comment header, keys in insertion order (stable for golden files)."""
    head = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines())
    return head + yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)


def write_config(path: Path, doc: dict[str, Any], version: str | None = None, header: str = "") -> LintResult:
    """Lint ``doc`` for the release, then write it atomically. Raises ConfigError (nothing written) on lint errors."""
    res = lint(doc, version)
    if not res.ok:
        raise ConfigError(f"refusing to write {path}: {res.errors[0]}",
                          f"{len(res.errors)} lint error(s); run k2trt config check")
    atomic_write(path, dump_yaml(doc, header), perm=0o644)
    return res


def serve_argv(model_dir: str, *, config_path: str, tp: int, ep: int, pp: int = 1, gpus_per_node: int = 8,
               host: str = "0.0.0.0", port: int = 8000, tool_parser: bool = False,
               server_role: str | None = None, version: str | None = None) -> list[str]:
    """The ``trtllm-serve serve`` argv for one release.

    Model positional, ``--trust_remote_code`` always, parallel sizes and ``--gpus_per_node`` explicit (the default
    is the launching process's GPU count), ``--config`` or ``--extra_llm_api_options`` by release, and
    ``--tool_parser kimi_k2`` only when asked for and present in the release.

    Example: ``serve_argv("/m", config_path="c.yml", tp=16, ep=8)[:4]`` → ``["trtllm-serve", "serve", "/m", "--host"]``.
    """
    prof = profile_for(version)
    s = prof.serve
    argv = [SERVE_EXE, "serve", model_dir, "--host", host, "--port", str(port), "--backend", "pytorch",
            s["tp_flag"], str(tp), s["pp_flag"], str(pp), s["ep_flag"], str(ep),
            "--gpus_per_node", str(gpus_per_node), TRUST_REMOTE_CODE_FLAG, s["config_flag"], config_path]
    if tool_parser and prof.has_tool_parser(TOOL_PARSER):
        argv += TOOL_PARSER_ARGS
    if server_role:
        argv += ["--server_role", server_role.upper()]
    return argv


def tool_parser_available(version: str | None = None) -> bool:
    """Whether the release's trtllm-serve has ``--tool_parser kimi_k2`` (else the gateway parses tool calls)."""
    return profile_for(version).has_tool_parser(TOOL_PARSER)

