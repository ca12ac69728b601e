"""The hand-kept part of k2trt's TensorRT-LLM knowledge: one small table per kind, every row with its source.

Everything else (fields, types, enum values, defaults, aliases, ``extra`` policy, the keys validators handle, the
``trtllm-serve`` options) is *extracted* into the generated profiles and never typed here. What lives here is what a
profile cannot say by itself:

- ``RENAMES``: spellings TensorRT-LLM used over its history and their replacement. Whether a given release rejects,
  aliases or accepts an old spelling is *not* stored: ``lint`` derives it from that release's profile (a key that is
  a field of the release is never stale; a key its validators handle is an alias; anything else is rejected and the
  message names the row's replacement).
- ``CHECKS``: cross-field rules TensorRT-LLM's validators enforce, keyed by profile.
- ``ADVISORIES``: known-bad combinations for K2 (TensorRT-LLM starts, but not as meant).
- ``RELEASE_FACTS``: facts about TensorRT-LLM's model code (routing, loaders) for ``plan/rules.py``; ``None`` means
  nobody has read that release's code for it.

Sources: ``trtllm.md`` is shared/reference/trtllm.md (its §2.2 rename table cites the PRs); a profile name means the
row was read in that release's own ``llm_args.py`` (the provenance inside the profile names file and commit).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Rename:
    """One historical spelling and what replaced it."""

    old: str
    """Dotted YAML path of the old spelling (``cuda_graph_config.padding_enabled``)."""
    new: str | None
    """Dotted YAML path that replaced it, or None when the setting was removed."""
    since: str
    """The release line in which the old spelling stopped being a field."""
    source: str
    """Where the change is documented."""
    note: str = ""
    """What a user must do besides renaming (an inverted boolean, a block instead of a flag …)."""
    cli: bool = False
    """The old spelling is a trtllm-serve option name put in the YAML, not a former LLM-API field."""
    flag: str | None = None
    """The trtllm-serve option ``note`` sends the user to; where a release's trtllm-serve lacks it (its profile's
    options say so), the fix says that instead, with ``without_flag``."""
    without_flag: str = ""
    """What to do where the release's trtllm-serve has no ``flag``."""


RENAMES: tuple[Rename, ...] = (
    # 0.20 → 0.21: PyTorchConfig's flat CUDA-graph keys became one block (trtllm.md §2.2).
    Rename("use_cuda_graph", "cuda_graph_config", "0.21", "trtllm.md §2.2",
           "true becomes a cuda_graph_config block ({} for defaults); false becomes cuda_graph_config: null"),
    Rename("cuda_graph_batch_sizes", "cuda_graph_config.batch_sizes", "0.21", "trtllm.md §2.2"),
    Rename("cuda_graph_max_batch_size", "cuda_graph_config.max_batch_size", "0.21", "trtllm.md §2.2"),
    Rename("cuda_graph_padding_enabled", "cuda_graph_config.enable_padding", "0.21", "trtllm.md §2.2"),
    # PR #5795/#6003 (Jul 2025, marked breaking): the short-lived block spelling.
    Rename("cuda_graph_config.padding_enabled", "cuda_graph_config.enable_padding", "1.0", "trtllm.md §2.2"),
    # pytorch_backend_config was flattened into the top level; overlap scheduling flipped its sense.
    Rename("pytorch_backend_config", None, "0.21", "trtllm.md §2.2",
           "its keys are top-level fields now; enable_overlap_scheduler became disable_overlap_scheduler"),
    Rename("pytorch_backend_config.enable_overlap_scheduler", "disable_overlap_scheduler", "0.21", "trtllm.md §2.2",
           "inverted: enable_overlap_scheduler: true is disable_overlap_scheduler: false"),
    Rename("enable_overlap_scheduler", "disable_overlap_scheduler", "0.21", "trtllm.md §2.2",
           "inverted: enable_overlap_scheduler: true is disable_overlap_scheduler: false"),
    # 0.20 flat MoE keys became moe_config (trtllm.md §2.2).
    Rename("moe_backend", "moe_config.backend", "0.21", "trtllm.md §2.2"),
    Rename("moe_max_num_tokens", "moe_config.max_num_tokens", "0.21", "trtllm.md §2.2"),
    Rename("moe_load_balancer", "moe_config.load_balancer", "0.21", "trtllm.md §2.2"),
    # KV-cache dtype lives in kv_cache_config (the DeepSeek README still shows the top-level key).
    Rename("kv_cache_dtype", "kv_cache_config.dtype", "0.21", "trtllm.md §2.2"),
    # MTP: the 1.2-era field, renamed on main (a deprecated alias there).
    Rename("speculative_config.num_nextn_predict_layers", "speculative_config.max_draft_len", "main",
           "trtllm.md §2.2"),
    # Samplers: the 1.0 booleans became one enum field.
    Rename("enable_trtllm_sampler", "sampler_type", "1.1", "trtllm.md §2.2",
           "enable_trtllm_sampler: true is sampler_type: TRTLLMSampler"),
    # (main then removed sampler_type itself: _TORCH_LLMARGS_REMOVED_ARG_CHECKS in main's llm_args.py, extracted
    # into the main profile as a "removed" key; lint says so when it points an old spelling at sampler_type.)
    Rename("enable_mixed_sampler", None, "1.1", "trtllm.md §2.2"),
    # Piecewise CUDA graphs moved out of torch_compile_config (the 1.4.0rc1 documentation calls the old names
    # deprecated aliases: features/torch_compile_and_piecewise_cuda_graph).
    Rename("torch_compile_config.enable_piecewise_cuda_graph", "prefill_cuda_graph_backend", "main",
           "TensorRT-LLM docs 1.4.0rc1, Torch Compile & Prefill CUDA Graph", "true is prefill_cuda_graph_backend: piecewise"),
    Rename("torch_compile_config.capture_num_tokens", "prefill_capture_num_tokens", "main",
           "TensorRT-LLM docs 1.4.0rc1, Torch Compile & Prefill CUDA Graph"),
    # trtllm-serve option names put in the YAML: the YAML key is the LLM-API field, not the flag.
    Rename("tp_size", "tensor_parallel_size", "1.0", "trtllm-serve --tp_size → TorchLlmArgs.tensor_parallel_size", cli=True),
    Rename("pp_size", "pipeline_parallel_size", "1.0", "trtllm-serve --pp_size → TorchLlmArgs.pipeline_parallel_size", cli=True),
    Rename("ep_size", "moe_expert_parallel_size", "1.0",
           "trtllm-serve --ep_size → TorchLlmArgs.moe_expert_parallel_size", cli=True),
    Rename("cluster_size", "moe_cluster_parallel_size", "1.0",
           "trtllm-serve --cluster_size → TorchLlmArgs.moe_cluster_parallel_size", cli=True),
    Rename("kv_cache_free_gpu_memory_fraction", "kv_cache_config.free_gpu_memory_fraction", "1.0",
           "trtllm-serve --kv_cache_free_gpu_memory_fraction → KvCacheConfig(free_gpu_memory_fraction=…)", cli=True),
    Rename("free_gpu_memory_fraction", "kv_cache_config.free_gpu_memory_fraction", "1.0",
           "trtllm-serve --free_gpu_memory_fraction → KvCacheConfig(free_gpu_memory_fraction=…)", cli=True),
    Rename("extra_llm_api_options", None, "1.0", "trtllm-serve option, not an LLM-API field",
           "pass the file with --config/--extra_llm_api_options instead of naming it inside the YAML", cli=True),
    Rename("tool_parser", None, "1.2", "trtllm-serve --tool_parser (a CLI option, not an LLM-API field)",
           "pass --tool_parser on the trtllm-serve command line", cli=True, flag="--tool_parser",
           without_flag="k2trt's gateway parses K2 tool calls where trtllm-serve cannot"),
    Rename("log_level", None, "1.0", "trtllm-serve --log_level (a CLI option, not an LLM-API field)",
           "pass --log_level on the trtllm-serve command line", cli=True, flag="--log_level"),
    Rename("hf_revision", "revision", "1.0", "trtllm-serve --hf_revision → TorchLlmArgs.revision", cli=True),
    # Read in 1.3.0rc24's llm_args.py (the validators that handle old names):
    Rename("kv_cache_config.block_reuse_config.block_reuse_policy", "kv_cache_config.block_reuse_config.policy",
           "1.3", "1.3.0rc24 llm_args.py, BlockReuseConfig before-validator (raises on the old key)"),
    Rename("mtp_eagle_one_model", "speculative_config.mtp_eagle_one_model", "1.0",
           "MTPDecodingConfig field (1.3.0rc24 llm_args.py); not a top-level LLM-API field"),
    Rename("num_nextn_predict_layers", "speculative_config.max_draft_len", "1.0",
           "MTPDecodingConfig (1.3.0rc24 llm_args.py: the old MTP count, remapped to max_draft_len)",
           "it belongs inside speculative_config with decoding_type: MTP"),
    Rename("enable_block_reuse", "kv_cache_config.enable_block_reuse", "1.0",
           "trtllm-serve maps its --enable_block_reuse flag to kv_cache_config (1.3.0rc24 "
           "update_llm_args_with_extra_dict)", cli=True),
)


@dataclass(frozen=True)
class ValueRename:
    """A value a release dropped from (or deprecated in) a Literal, and what replaces it."""

    path: str
    old: Any
    new: str
    source: str
    warned_in: tuple[str, ...] = ()
    """Profiles that still accept ``old`` but log a warning for it (their own validator says so)."""


VALUE_RENAMES: tuple[ValueRename, ...] = (
    ValueRename("moe_config.backend", "WIDEEP", "CUTEDSL (the wide-EP K2 example's backend)",
                "trtllm.md §2.2 (removed on main; 1.3.0rc24 still lists it)"),
    ValueRename("sampler_type", "TRTLLMSampler", "auto or TorchSampler",
                "1.3.0rc24 llm_args.py: sampler_type is deprecated, TRTLLMSampler to be removed in 1.4"),
    # The from_dict dispatch keys of 1.2.1 became the Literal values of 1.3 (each release's own llm_args.py).
    ValueRename("speculative_config.decoding_type", "DraftTarget", "Draft_Target",
                "1.2.1 DecodingBaseConfig.from_dict key 'DraftTarget'; 1.3.0rc24 Literal 'Draft_Target'"),
    ValueRename("speculative_config.decoding_type", "Draft_Target", "DraftTarget",
                "1.3.0rc24 Literal 'Draft_Target'; 1.2.1 DecodingBaseConfig.from_dict key 'DraftTarget'"),
    ValueRename("speculative_config.decoding_type", "UserProvided", "User_Provided",
                "1.2.1 DecodingBaseConfig.from_dict key 'UserProvided'; 1.3.0rc24 Literal 'User_Provided'"),
    ValueRename("speculative_config.decoding_type", "User_Provided", "UserProvided",
                "1.3.0rc24 Literal 'User_Provided'; 1.2.1 DecodingBaseConfig.from_dict key 'UserProvided'"),
    ValueRename("speculative_config.decoding_type", "Eagle", "Eagle3",
                "1.3.0rc24 llm_args.py, TorchLlmArgs.validate_speculative_config: 'Eagle' is treated as 'Eagle3' "
                "on the PyTorch backend, with a warning", warned_in=("1.3.0rc24",)),
)


CHECKS: dict[str, dict[str, Any]] = {
    # What happens when both cuda_graph_config.batch_sizes and max_batch_size are given, read in each release's
    # llm_args.py. "max": max_batch_size must equal max(batch_sizes) (1.3.0rc24 BaseCudaGraphConfig validator);
    # "generated_ceil" / "generated_floor": batch_sizes must equal the list the release's
    # CudaGraphConfig._generate_cuda_graph_batch_sizes makes (its powers of two stop below 2**ceil(log2 max) in
    # 1.2.1 and 2**floor(log2 max) in 1.0.0; TorchLlmArgs.validate_cuda_graph_config). No row: not checked.
    # main: the same rule in BaseCudaGraphConfig.validate_base_cuda_graph_config (llm_args.py@0004396).
    "cuda_graph_both_sizes": {"1.0.0": "generated_floor", "1.2.1": "generated_ceil", "1.3.0rc24": "max",
                              "main": "max"},
    # 1.2.1 MTPDecodingConfig.from_dict and TorchLlmArgs.validate_speculative_config (1.0.0:
    # BaseLlmArgs.validate_speculative_config) set max_draft_len = num_nextn_predict_layers (default 1): a YAML
    # max_draft_len alone is silently replaced.
    "mtp_draft_len_from_nextn": {"1.0.0": True, "1.2.1": True},
    # main TorchLlmArgs.normalize_prefill_cuda_graph_config (after-validator, llm_args.py@0004396): the deprecated
    # torch_compile_config.enable_piecewise_cuda_graph / capture_num_tokens are moved to prefill_cuda_graph_backend:
    # piecewise / prefill_capture_num_tokens with a warning; it raises when enable_piecewise_cuda_graph is true and
    # prefill_cuda_graph_backend is set to something else, when both bucket lists are set and differ, and for a
    # breakable prefill graph with a torch_compile_config or LoRA. 1.3.0rc24 and older have neither prefill field.
    "prefill_cuda_graph_legacy": {"main": True},
    # main AttentionDpConfig.validate_attention_dp_config: with enable_balance, batching_wait_iters and timeout_iters
    # must be >= 0. (Not read in the older releases' validators: no row.)
    "attention_dp_balance_iters": {"main": True},
}


@dataclass(frozen=True)
class Advisory:
    """A combination TensorRT-LLM accepts that does not do what a K2 deployment wants."""

    path: str
    value: Any
    message: str
    fix: str
    source: str


ADVISORIES: tuple[Advisory, ...] = (
    Advisory("moe_config.backend", "TRTLLM", "TRTLLM (trtllm-gen) MoE gave gibberish with K2 NVFP4 on B200",
             "prefer CUTLASS (Hopper) or CUTEDSL/DEEPGEMM", "NVIDIA/TensorRT-LLM issue #9930 (open)"),
    Advisory("trust_remote_code", False, "false here overrides --trust_remote_code (the YAML wins), and K2's config "
             "and tokenizer need remote code", "remove the key or set it true", "trtllm.md §5 (model_type kimi_k2)"),
)


RELEASE_FACTS: dict[str, dict[str, Any]] = {
    # Facts about a release's model code (not its config schema) that plan/rules.py acts on. Keys:
    #   routing_unfused_k2: K2's n_group=1/topk_group=1 routing takes the unfused PyTorch fallback (trtllm.md §5:
    #     an early-2026 routing.py does; PR #13032/#13186, Apr 2026, loosened it).
    #   fused_routing_limit: (experts, top-k) above which the fused noaux_tc kernel is not used (trtllm.md §5).
    #   w4a8_mixed_precision: the DeepseekV3 decoder loads a MIXED_PRECISION (W4A8 MoE) checkpoint.
    # A key absent for a release means nobody has read that release's model code for it: the rules then say
    # nothing rather than borrow another release's answer. Neither the 1.0.0, 1.2.1 nor 1.3.0rc24 documentation
    # renders tensorrt_llm/_torch (routing.py, model_config.py, modeling_deepseekv3.py), and no stored copy of those
    # files is tied to their release commits, so they have no row.
    "main": {
        # Read on main (W4A8_EVIDENCE): ModelConfig._build_modelopt_quant_config at model_config.py@008e0af8 keeps
        # QuantAlgo("MIXED_PRECISION") as the global quant_config (the quant_cfg.json layers go to the per-layer
        # dict only), and DeepseekV3DecoderLayer.__init__ asserts the global algo is not MIXED_PRECISION.
        "w4a8_mixed_precision": False,
    },
}


W4A8_EVIDENCE = ("DeepseekV3DecoderLayer.__init__ takes _get_decoder_layer_quant_config(model_config, layer_idx) "
                 "(the checkpoint's global quant_config for every layer not excluded) and asserts `assert "
                 "(quant_config.quant_algo is not QuantAlgo.MIXED_PRECISION), \"MIXED_PRECISION is ambiguous\"` "
                 "(NVIDIA/TensorRT-LLM tensorrt_llm/_torch/models/modeling_deepseekv3.py@a43cf9e363d5); main's "
                 "loader keeps hf_quant_config.json's MIXED_PRECISION as that global algo, as the enum "
                 "(`QuantAlgo(json_quant_configs['quant_algo'])`, _torch/model_config.py@008e0af8980f), so the "
                 "assert fires; an older loader (model_config.py@1a0dc5f70054) stored the raw string, which the "
                 "identity test lets through")
"""The source lines behind the W4A8 refusal. main: not loadable (the loader and the assert above). 1.0.0, 1.2.1,
1.3.0rc24: not established: their model_config.py and modeling_deepseekv3.py were not readable at the release
commits, and the two stored loaders decide the question in opposite ways. The checkpoint metadata k2trt writes is
the one TensorRT-LLM's own recipe writes (examples/quantization/quantize_mixed_precision_moe.py): changing it would
not help, since that recipe's global ``MIXED_PRECISION`` is exactly what the assert rejects."""


def release_fact(profile: str | None, key: str) -> Any:
    """A ``RELEASE_FACTS`` entry for a profile (None when unknown or the profile is not listed)."""
    return RELEASE_FACTS.get(profile or "", {}).get(key)


def check(profile: str, key: str) -> Any:
    """The ``CHECKS`` value for a profile (None when that release has no row: nothing is borrowed)."""
    return CHECKS[key].get(profile)
