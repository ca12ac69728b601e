"""The presets' config.json files: K2's own, verbatim from the published checkpoints, and the tiny counterparts the
verification path runs on. Data only (``k2trt.spec.preset`` turns a row into a ModelSpec); no imports from k2trt.

=====================  ==================================================================================
preset                 what it is
=====================  ==================================================================================
``k2-instruct``        Kimi-K2-Instruct 0711: 128K context, every linear in 128×128 block FP8
``k2-instruct-0905``   0905: 256K context (YaRN factor 64)
``k2-thinking``        Kimi-K2-Thinking: 0905's dimensions, routed experts INT4 (compressed-tensors
                       ``pack-quantized``, symmetric, group 32), everything else BF16
``tiny``               K2's structure at CPU scale, block FP8
``tiny-thinking``      the tiny K2 with K2-Thinking's INT4 experts
``k2.5``               K2.5 / K2.6: K2-Thinking's language model under ``text_config`` plus a vision tower
``tiny-k25``           the tiny K2.5: tiny-thinking's text model and a 2-block vision tower (carried, not run)
=====================  ==================================================================================

The INT4 ``quantization_config`` is the one K2-Thinking ships (docs/reference/k2_int4.md §2).
"""

from __future__ import annotations

import copy
from typing import Any

# Kimi-K2-Instruct (0711) config.json, verbatim (kimi_formats.md §1.1).
_K2_0711: dict[str, Any] = {
    "architectures": ["DeepseekV3ForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "auto_map": {
        "AutoConfig": "configuration_deepseek.DeepseekV3Config",
        "AutoModel": "modeling_deepseek.DeepseekV3Model",
        "AutoModelForCausalLM": "modeling_deepseek.DeepseekV3ForCausalLM",
    },
    "aux_loss_alpha": 0.001,
    "bos_token_id": 163584,
    "eos_token_id": 163585,
    "first_k_dense_replace": 1,
    "hidden_act": "silu",
    "hidden_size": 7168,
    "initializer_range": 0.02,
    "intermediate_size": 18432,
    "kv_lora_rank": 512,
    "max_position_embeddings": 131072,
    "model_type": "kimi_k2",
    "moe_intermediate_size": 2048,
    "moe_layer_freq": 1,
    "n_group": 1,
    "n_routed_experts": 384,
    "n_shared_experts": 1,
    "norm_topk_prob": True,
    "num_attention_heads": 64,
    "num_experts_per_tok": 8,
    "num_hidden_layers": 61,
    "num_key_value_heads": 64,
    "num_nextn_predict_layers": 0,
    "pretraining_tp": 1,
    "q_lora_rank": 1536,
    "qk_nope_head_dim": 128,
    "qk_rope_head_dim": 64,
    "quantization_config": {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                            "weight_block_size": [128, 128]},
    "rms_norm_eps": 1e-06,
    "rope_theta": 50000.0,
    "routed_scaling_factor": 2.827,
    "rope_scaling": {"beta_fast": 1.0, "beta_slow": 1.0, "factor": 32.0, "mscale": 1.0, "mscale_all_dim": 1.0,
                     "original_max_position_embeddings": 4096, "type": "yarn"},
    "scoring_func": "sigmoid",
    "seq_aux": True,
    "tie_word_embeddings": False,
    "topk_group": 1,
    "topk_method": "noaux_tc",
    "torch_dtype": "bfloat16",
    "transformers_version": "4.48.3",
    "use_cache": True,
    "v_head_dim": 128,
    "vocab_size": 163840,
}

# 0905: 256K context via YaRN factor 64 (kimi_formats.md §1.3); everything else as 0711.
_K2_0905 = {**copy.deepcopy(_K2_0711), "max_position_embeddings": 262144}
_K2_0905["rope_scaling"] = {**_K2_0711["rope_scaling"], "factor": 64.0}

# Tiny K2: the same structure at CPU scale. Dimensions are chosen so every tensor shards on 128-element FP8
# blocks up to TP8 with MoE-TP2 (q_b 16×192/8 = 384, kv_b 16×256/8 = 512, o 16×128/8 = 256, dense FFN 1024/8 = 128,
# expert FFN 256/2 = 128) while kv_a_proj_with_mqa keeps a ragged 320 = 2.5 × 128 rows.
TINY_BPE_RANKS = 1024
_TINY = {
    **copy.deepcopy(_K2_0711),
    "vocab_size": TINY_BPE_RANKS + 256,
    "bos_token_id": TINY_BPE_RANKS,
    "eos_token_id": TINY_BPE_RANKS + 1,
    "hidden_size": 256,
    "intermediate_size": 1024,
    "moe_intermediate_size": 256,
    "num_hidden_layers": 3,
    "num_attention_heads": 16,
    "num_key_value_heads": 16,
    "q_lora_rank": 256,
    "kv_lora_rank": 256,
    "n_routed_experts": 16,
    "num_experts_per_tok": 4,
    "routed_scaling_factor": 2.827,
    "max_position_embeddings": 8192,
    "rope_scaling": {"beta_fast": 1.0, "beta_slow": 1.0, "factor": 32.0, "mscale": 1.0, "mscale_all_dim": 1.0,
                     "original_max_position_embeddings": 256, "type": "yarn"},
}

# Kimi-K2-Thinking's quantization_config (docs/reference/k2_int4.md §2): one config group, symmetric INT4 per 32
# inputs, on every Linear the ignore list does not name — the routed experts.
K2_THINKING_QUANT: dict[str, Any] = {
    "config_groups": {"group_0": {
        "input_activations": None, "output_activations": None, "targets": ["Linear"],
        "weights": {"actorder": None, "block_structure": None, "dynamic": False, "group_size": 32, "num_bits": 4,
                    "observer": "minmax", "observer_kwargs": {}, "strategy": "group", "symmetric": True,
                    "type": "int"}}},
    "format": "pack-quantized",
    "ignore": ["lm_head", "re:.*self_attn.*", "re:.*shared_experts.*", "re:.*mlp\\.(gate|up|gate_up|down)_proj.*"],
    "kv_cache_scheme": None,
    "quant_method": "compressed-tensors",
    "quantization_status": "compressed",
}

# K2-Thinking: 0905's dimensions and 256K context, INT4 routed experts.
_K2_THINKING = {**copy.deepcopy(_K2_0905), "quantization_config": copy.deepcopy(K2_THINKING_QUANT)}
_TINY_THINKING = {**copy.deepcopy(_TINY), "quantization_config": copy.deepcopy(K2_THINKING_QUANT)}

# K2.5 / K2.6: KimiK25ForConditionalGeneration, the language model (K2-Thinking's dimensions and INT4 experts) under
# text_config, a MoonViT vision tower (~0.4 B parameters: 27 blocks of width 1152) and a 2×2-merge projector
# (docs/reference/k2_int4.md §1). The vision_config fields are what synth and inspect use; the real file has more.
K25_IGNORE = ["re:.*self_attn.*", "re:.*shared_experts.*", "re:.*mlp\\.(gate|up|gate_up|down)_proj.*",
              "re:.*lm_head.*", "re:vision_tower.*", "re:mm_projector.*"]


def _k25(text: dict[str, Any], vision: dict[str, Any]) -> dict[str, Any]:
    t = copy.deepcopy(text)
    t.pop("architectures", None)
    t.pop("auto_map", None)
    t["quantization_config"] = {**copy.deepcopy(K2_THINKING_QUANT), "ignore": list(K25_IGNORE)}
    return {"architectures": ["KimiK25ForConditionalGeneration"], "model_type": "kimi_k25", "text_config": t,
            "vision_config": vision, "torch_dtype": "bfloat16"}


_K25 = _k25(_K2_0905, {"hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 27,
                       "num_attention_heads": 16, "patch_size": 14, "merge_kernel_size": [2, 2]})
_TINY_K25 = _k25(_TINY, {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                         "num_attention_heads": 4, "patch_size": 14, "merge_kernel_size": [2, 2]})

PRESETS: dict[str, tuple[dict[str, Any], bool]] = {
    # name -> (config.json, checkpoint stores rotary_emb.inv_freq)
    "k2-instruct": (_K2_0711, True),
    "k2-instruct-0905": (_K2_0905, False),
    "k2-thinking": (_K2_THINKING, False),
    "tiny": (_TINY, False),
    "tiny-thinking": (_TINY_THINKING, False),
    "k2.5": (_K25, False),
    "tiny-k25": (_TINY_K25, False),
}
