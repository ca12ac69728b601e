"""transformers' ``DeepseekV3ForCausalLM`` as an independent oracle for the reference model.

Nobody on this project wrote it, which is the point. Two facts shape how it is loaded (platform_notes.md):
- transformers has no ``kimi_k2`` model type, so the config is loaded as ``deepseek_v3`` (Moonshot's own advice for
  engines that do not know the type) — the architecture is the same ``DeepseekV3ForCausalLM``;
- its FP8 block loader infers the block from the scale grid and silently mis-dequantises K2's ragged tensors
  (kv_a_proj_with_mqa's 576 or the tiny model's 320 rows). So the oracle never sees FP8: every weight is dequantised
  by ``k2trt.checkpoint.fp8`` (which honours 128×128 blocks and crops partial edges) into a float copy under the
  checkpoint's own tensor names, and transformers' own loader maps those names onto its modules (fusing experts).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from k2trt.checkpoint import names
from k2trt.errors import CheckpointError, ConfigError


def write_float_copy(src: str | Path, out: str | Path, dtype: torch.dtype = torch.float32) -> Path:
    """A one-file ``dtype`` copy of checkpoint ``src`` (FP8 dequantised, scales and inv_freq dropped) with a
    ``deepseek_v3`` config.json, for transformers to load. Returns ``out``."""
    from safetensors.torch import save_file

    from k2trt.checkpoint.reader import CheckpointReader

    src, out = Path(src), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state: dict[str, torch.Tensor] = {}
    with CheckpointReader(src) as reader:
        for name in reader.locations:
            parsed = names.parse(name)
            if parsed is None or parsed.is_scale or parsed.role in names.IGNORED_ROLES:
                continue
            keep = torch.float32 if parsed.role == "router_bias" else dtype
            state[name] = reader.get(parsed.role, parsed.layer, parsed.expert, dtype=keep).contiguous()
    save_file(state, str(out / "model.safetensors"))
    cfg = json.loads((src / "config.json").read_text())
    cfg["model_type"] = "deepseek_v3"  # transformers knows no kimi_k2 (see module docstring)
    for key in ("quantization_config", "auto_map"):
        cfg.pop(key, None)
    cfg["torch_dtype"] = str(dtype).removeprefix("torch.")
    (out / "config.json").write_text(json.dumps(cfg, indent=1))
    return out


def load_transformers(src: str | Path, work_dir: str | Path, dtype: torch.dtype = torch.float32) -> Any:
    """transformers' DeepseekV3ForCausalLM holding checkpoint ``src``'s weights (dequantised by k2trt).

    Raises CheckpointError if transformers reports a missing or unexpected weight (a silent random init would
    make the comparison meaningless).
    """
    try:
        from transformers import DeepseekV3ForCausalLM
    except ImportError as e:
        raise ConfigError(f"transformers with DeepseekV3ForCausalLM is needed as the oracle ({e})",
                          "pip install 'transformers>=4.56'") from None
    float_dir = write_float_copy(src, work_dir, dtype)
    model, info = DeepseekV3ForCausalLM.from_pretrained(float_dir, dtype=dtype, attn_implementation="eager",
                                                        output_loading_info=True)
    missing = [k for k in info.get("missing_keys", []) if "inv_freq" not in k]
    if missing or info.get("unexpected_keys") or info.get("mismatched_keys"):
        raise CheckpointError(f"transformers did not load every weight of {src}: missing {missing[:3]}, "
                              f"unexpected {list(info.get('unexpected_keys', []))[:3]}, "
                              f"mismatched {list(info.get('mismatched_keys', []))[:3]}",
                              "the checkpoint does not match its config.json")
    return model.eval()

