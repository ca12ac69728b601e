"""Calibration for ``k2trt convert --to nvfp4|w4a8 --calib-data``: the routed experts' activation amax, measured by
running the reference model on a CUDA device.

Calibration runs a model, so it lives here, above ``checkpoint``: the command layer calls ``calibrate`` and hands
its result to the converter as ``ConvertOptions.calib_amax``. Without it the converter uses the weight-only hard
bounds of ``checkpoint.quant4.activation_bounds`` (no activation can clip; coarser than calibrated scales).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from k2trt.checkpoint import names
from k2trt.errors import CheckpointError


def calibrate(src: str | Path, calib_data: str | Path, *, device: str = "cuda", max_prompts: int = 64,
              max_len: int = 512) -> dict[str, float]:
    """Measure the routed experts' input amax on ``calib_data`` with the reference model on a CUDA device.

    Every expert sees every calibration token (its input is hooked at the MoE, as modelopt's DeepSeek PTQ routes
    all tokens to all experts), so no expert is left uncalibrated.

    Args:
        src: the checkpoint to convert (block FP8 or BF16).
        calib_data: JSON lines, each ``{"input_ids": [...]}`` or ``{"text": "..."}`` (tokenized with the
            checkpoint's tokenizer).
        device: a CUDA device.
        max_prompts, max_len: how many prompts, and tokens of each, to run.
    Returns:
        ``{module name: amax}`` for every expert gate/up/down; pass ``tuple(sorted(d.items()))`` as
        ``ConvertOptions.calib_amax``. Raises CheckpointError when no CUDA device is present (the weight-only path
        needs none).
    Example:
        ``ConvertOptions(target="nvfp4", calib_amax=tuple(sorted(calibrate(src, "calib.jsonl").items())))``
    """
    import torch

    if not device.startswith("cuda") or not torch.cuda.is_available():
        raise CheckpointError(
            f"--calib-data needs a CUDA device, but torch.cuda.is_available() is False here (torch "
            f"{torch.__version__}, CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')})",
            "run on a GPU node, or drop --calib-data to use the weight-only activation bounds")
    from k2trt.checkpoint.reader import weight_fn
    from k2trt.reference.model import Transformer
    from k2trt.spec import ModelSpec

    spec = ModelSpec.from_config(src)
    prompts = _calib_prompts(Path(src), Path(calib_data), max_prompts, max_len)
    model = Transformer(spec, weight_fn(src, torch.bfloat16)).to(device).eval()
    amax: dict[str, float] = {}

    def hook(layer: int) -> Any:
        def pre(mod: Any, args: tuple[Any, ...]) -> None:
            x = args[0].reshape(-1, args[0].shape[-1])                          # [M, D]
            xa = float(x.abs().max())
            for e, mlp in zip(mod.expert_ids, mod.experts):
                a = torch.nn.functional.silu(x @ mlp.w1.T) * (x @ mlp.w3.T)     # [M, F]
                for role, v in (("expert_gate", xa), ("expert_up", xa), ("expert_down", float(a.abs().max()))):
                    m = names.module_name(names.name_of(role, layer, e))
                    amax[m] = max(amax.get(m, 0.0), v)
        return pre

    for i, blk in enumerate(model.layers):
        if blk.is_moe:
            blk.ffn.register_forward_pre_hook(hook(i))
    with torch.no_grad():
        for ids in prompts:
            model(torch.tensor([ids], device=device))
    return amax


def _calib_prompts(src: Path, path: Path, n: int, max_len: int) -> list[list[int]]:
    if not path.is_file():
        raise CheckpointError(f"--calib-data {path} is not a file", "pass a JSON-lines file of prompts")
    out: list[list[int]] = []
    tok = None
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{path}:{i}: not JSON ({e.msg})", 'each line: {"text": …} or {"input_ids": […]}')
        if "input_ids" in rec:
            ids = [int(t) for t in rec["input_ids"]]
        else:
            if tok is None:
                from k2trt.chat.tokenizer import K2Tokenizer

                tok = K2Tokenizer.from_dir(src)
            ids = tok.encode(str(rec.get("text", "")))
        if ids:
            out.append(ids[:max_len])
        if len(out) >= n:
            break
    if not out:
        raise CheckpointError(f"{path}: no prompts", 'each line: {"text": …} or {"input_ids": […]}')
    return out
