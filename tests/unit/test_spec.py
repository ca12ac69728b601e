"""ModelSpec: config parsing, validation, presets and the tensor inventory against the real K2 numbers."""

from __future__ import annotations

import dataclasses
import json

import pytest

from k2trt.checkpoint.formats import inventory
from k2trt.errors import ConfigError
from k2trt.spec import PRESETS, ModelSpec, preset, scale_shape


def test_k2_instruct_inventory_matches_the_real_checkpoint() -> None:
    # kimi_formats.md §2.1/§2.2: 139,644 tensors, 1,026,470,731,056 elements (inv_freq and scales included)
    spec = preset("k2-instruct")
    ts = spec.tensors()
    assert len(ts) == 139_644
    assert sum(t.numel for t in ts) == 1_026_470_731_056
    assert len({t.name for t in ts}) == len(ts)
    by_name = inventory(spec)  # the same tensors under their Hugging Face names (checkpoint.formats spells them)
    assert len(by_name) == len(ts)
    kv_a = by_name["model.layers.0.self_attn.kv_a_proj_with_mqa.weight"]
    assert kv_a.shape == (576, 7168) and kv_a.dtype == "F8_E4M3"
    assert by_name["model.layers.0.self_attn.kv_a_proj_with_mqa.weight_scale_inv"].shape == (5, 56)
    assert by_name["model.layers.60.mlp.experts.383.down_proj.weight_scale_inv"].shape == (56, 16)
    assert by_name["model.layers.1.mlp.gate.weight"].dtype == "BF16"
    assert by_name["model.layers.1.mlp.gate.e_score_correction_bias"].dtype == "F32"
    assert by_name["model.layers.0.mlp.gate_proj.weight"].shape == (18432, 7168)
    assert "model.layers.0.mlp.gate.weight" not in by_name  # layer 0 is dense
    assert "model.layers.61.input_layernorm.weight" not in by_name  # no MTP layer


def test_k2_parameter_and_byte_math() -> None:
    spec = preset("k2-instruct")
    assert round(spec.param_count() / 1e9, 1) == 1026.4  # k2_numbers.md §0
    assert round(spec.active_param_count() / 1e9, 1) == 31.7
    assert round(spec.active_param_count(include_embedding=True) / 1e9, 1) == 32.9
    b = spec.bytes_by_dtype()
    assert round(b["F8_E4M3"] / 1e9, 1) == 1023.9
    assert round(b["F32"] / 1e9, 2) == 0.25
    assert round(spec.checkpoint_bytes() / 2**30, 1) == 958.5  # 958.5 GiB on disk (§2.1)


def test_yarn_softmax_scale() -> None:
    # kimi_formats.md §1.2: 0711 ≈ 0.130861, 0905 ≈ 0.144680
    assert preset("k2-instruct").softmax_scale == pytest.approx(0.130861, abs=1e-6)
    assert preset("k2-instruct-0905").softmax_scale == pytest.approx(0.144680, abs=1e-6)
    assert preset("k2-instruct-0905").max_position_embeddings == 262144


def test_tiny_has_k2_structure() -> None:
    t = preset("tiny")
    k2 = preset("k2-instruct")
    assert t.first_k_dense_replace == 1 and t.num_hidden_layers >= 3
    assert t.n_routed_experts >= 16 and t.n_shared_experts == 1 and t.n_group == 1
    assert t.q_lora_rank and t.kv_lora_rank
    assert t.topk_method == k2.topk_method and t.scoring_func == k2.scoring_func
    assert (t.qk_nope_head_dim, t.qk_rope_head_dim, t.v_head_dim) == (128, 64, 128)
    ragged = [x for x in t.tensors() if x.is_fp8 and any(d % 128 for d in x.shape)]
    assert ragged, "the tiny K2 must exercise partial 128-blocks"
    assert {x.role for x in ragged} == {"kv_a"}
    assert t.vocab_size - 256 == t.bos_token_id  # K2's special-token layout: 256 reserved ids after the ranks


def test_round_trip_through_config_json(tmp_path) -> None:
    for name in PRESETS:
        spec = preset(name)
        (tmp_path / "config.json").write_text(json.dumps(spec.to_config()))
        again = ModelSpec.from_config(tmp_path)
        assert again == dataclasses.replace(spec, rotary_inv_freq_tensors=False)
        assert again.to_config() == spec.to_config()


def test_deepseek_v3_model_type_is_accepted() -> None:
    cfg = preset("tiny").to_config() | {"model_type": "deepseek_v3"}
    assert ModelSpec.from_config(cfg).model_type == "deepseek_v3"


@pytest.mark.parametrize("change, needle", [
    ({"model_type": "llama"}, "model_type 'llama' is not supported"),
    ({"n_group": 3}, "not divisible by n_group 3"),
    ({"n_group": 4, "topk_group": 5}, "topk_group 5 > n_group 4"),
    ({"n_group": 4, "topk_group": 1, "num_experts_per_tok": 8}, "exceeds the 4 experts"),
    ({"hidden_size": 0}, "hidden_size must be a positive integer"),
    ({"qk_rope_head_dim": 63}, "must be even"),
    ({"scoring_func": "relu"}, "scoring_func"),
])
def test_inconsistent_configs_are_rejected(change, needle) -> None:
    cfg = preset("tiny").to_config() | change
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        ModelSpec.from_config(cfg)


def test_missing_field_and_bad_json(tmp_path) -> None:
    cfg = preset("tiny").to_config()
    del cfg["kv_lora_rank"]
    with pytest.raises(ConfigError, match="missing field 'kv_lora_rank'"):
        ModelSpec.from_config(cfg)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="invalid JSON"):
        ModelSpec.from_config(tmp_path)
    with pytest.raises(ConfigError, match="no config.json"):
        ModelSpec.from_config(tmp_path / "nowhere")


def test_bf16_spec_has_no_scales() -> None:
    bf16 = preset("tiny").with_quantization(None)
    assert not any(t.scale_of for t in bf16.tensors())
    assert "quantization_config" not in bf16.to_config()


def test_scale_shape_uses_ceil() -> None:
    assert scale_shape((576, 7168)) == (5, 56)
    assert scale_shape((128, 129)) == (1, 2)
