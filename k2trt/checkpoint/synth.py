"""Synthesize a faithful K2 checkpoint from a ModelSpec: the tiny K2 the verification path runs on, or the real
1 TB layout as sparse files.

What is written (K2's file set, kimi_formats.md §2.1): ``model-{i}-of-{n}.safetensors`` shards (K2 0711's unpadded
naming, so nothing downstream may assume a naming pattern), ``model.safetensors.index.json``, ``config.json``
(K2's, via ``ModelSpec.to_config``), ``generation_config.json``, and the tokenizer (``tiktoken.model``,
``tokenizer_config.json``, ``chat_template.jinja`` from ``k2trt.chat.vocab``).

Weights are deterministic per (seed, tensor name), scaled so a forward pass gives finite, non-degenerate logits:
linear weights ~ N(0, 1/fan_in), norms ~ 1, router bias small — or supplied by the caller (``weights=``: the
trained tiny K2 goes through this same writer). FP8 tensors are quantised from BF16 with
``fp8.quantize`` so fp8 → bf16 → fp8 round-trips exactly. ``sparse=True`` writes headers only and leaves every
data region as a file hole. The directory appears under its final name only when complete.
"""

from __future__ import annotations

import math
import shutil
import zlib
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from k2trt.checkpoint import names
from k2trt.checkpoint.files import ShardWriter
from k2trt.checkpoint.formats import FORMATS, tensor_name
from k2trt.errors import CheckpointError
from k2trt.fsio import atomic_write_json
from k2trt.spec import ModelSpec, TensorInfo

if TYPE_CHECKING:
    import torch

DEFAULT_SHARDS = {"tiny": 4, "tiny-thinking": 4, "tiny-k25": 4}


def shard_name(i: int, n: int) -> str:
    """K2 0711's shard naming: ``model-1-of-61.safetensors`` (1-based, not zero-padded)."""
    return f"model-{i}-of-{n}.safetensors"


def plan_shards(tensors: list[TensorInfo], n: int) -> list[list[TensorInfo]]:
    """Split the inventory into ``n`` contiguous shards of roughly equal bytes; a weight and its scale stay
    together."""
    total = sum(t.nbytes for t in tensors)
    target = total / n
    out: list[list[TensorInfo]] = [[]]
    acc = 0
    for t in tensors:
        if acc >= target * len(out) and len(out) < n and t.scale_of is None:
            out.append([])
        out[-1].append(t)
        acc += t.nbytes
    while len(out) < n:  # fewer tensors than shards: empty shards are legal safetensors files
        out.append([])
    return out


def _generator(seed: int, name: str) -> "torch.Generator":
    import torch

    g = torch.Generator()
    g.manual_seed((seed * 1_000_003 + zlib.crc32(name.encode())) & 0x7FFF_FFFF_FFFF)
    return g


def _bf16_value(spec: ModelSpec, t: TensorInfo, seed: int) -> "torch.Tensor":
    import torch

    g = _generator(seed, tensor_name(t))
    shape = t.shape
    if t.role in ("input_norm", "post_norm", "q_a_norm", "kv_a_norm", "final_norm"):
        w = 1.0 + 0.1 * torch.randn(shape, generator=g)
    elif t.role == "router_bias":
        w = 0.05 * torch.randn(shape, generator=g)
    elif t.role == "inv_freq":
        w = torch.rand(shape, generator=g)
    elif t.role == "embed":
        w = torch.randn(shape, generator=g)
    else:  # linear [out, in]
        w = torch.randn(shape, generator=g) / shape[-1] ** 0.5
    return w


WeightSource = Callable[[TensorInfo], "torch.Tensor"]
"""The full-precision value of one (non-scale) tensor, e.g. a trained model's parameter (``k2trt.train``)."""


def tensor_values(spec: ModelSpec, seed: int, weights: WeightSource | None = None) -> "Any":
    """Yield (TensorInfo, tensor) for every tensor of ``spec`` in inventory order (quantized weights with their
    scales: FP8 from the BF16 value, compressed-tensors INT4 by its format row's ``encode``).

    Values are the seeded random ones, or ``weights(info)`` when given (``info`` at its logical, unpacked shape);
    either way they are stored in the checkpoint's own format."""
    import torch

    from k2trt.checkpoint.fp8 import quantize

    pending: dict[str, torch.Tensor] = {}  # a quantized weight's other parts, by TensorInfo.name
    for t in spec.tensors():
        if t.scale_of is not None:
            yield t, pending.pop(t.name)
            continue
        # a packed 4-bit weight part stores [out, in / packed]; its value is drawn at the logical [out, in]
        logical = replace(t, shape=(*t.shape[:-1], t.shape[-1] * t.packed)) if t.packed > 1 else t
        w = _bf16_value(spec, logical, seed) if weights is None else weights(logical).detach().float()
        if t.dtype == "F8_E4M3":
            q, s = quantize(w.to(torch.bfloat16))
            pending[f"{t.name}.scale"] = s
            yield t, q
        elif t.fmt not in (None, "bf16"):
            f = FORMATS[t.fmt]
            parts = f.encode(w, {}) if f.encode is not None else []
            pending.update((f"{t.name}.{p.part}", x) for p, x in zip(f.parts[1:], parts[1:]))
            yield t, parts[0]
        elif t.dtype == "F32":
            yield t, w.to(torch.float32)
        else:
            yield t, w.to(torch.bfloat16)


def tensor_bytes(x: "torch.Tensor") -> memoryview:
    """The raw little-endian bytes of a tensor, as safetensors stores them."""
    import torch

    return memoryview(x.contiguous().view(torch.uint8).numpy()).cast("B")


def synthesize(spec: ModelSpec, out_dir: str | Path, *, seed: int = 0, shards: int | None = None,
               sparse: bool = False, force: bool = False, progress: bool = False,
               preset_name: str | None = None, tokenizer: bool = True, weights: WeightSource | None = None) -> Path:
    """Write a K2-format checkpoint for ``spec`` to ``out_dir``.

    Args:
        spec: the model (``k2trt.spec.preset("tiny")`` for the verification path).
        out_dir: destination; must not exist (or be empty) unless ``force``.
        seed: weights are a pure function of (seed, tensor name).
        shards: number of safetensors files (default 4 for tiny, else 1 per layer like K2 0711's 61).
        sparse: headers only, data regions left as holes (the full-size presets on a laptop).
        force: replace a non-empty ``out_dir``.
        progress: show a byte progress bar.
        tokenizer: also write the tokenizer and chat template files.
        weights: the value of each tensor instead of seeded random ones (the trained tiny K2); ``seed`` then
            only picks the tokenizer's BPE tie-break.
    Returns:
        The checkpoint directory.
    Example:
        ``synthesize(preset("tiny"), "/tmp/tiny-k2", seed=0)``
    """
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        if not force:
            raise CheckpointError(f"{out} is not empty", "choose another --out or pass --force")
    tmp = out.with_name(f".{out.name}.partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        _write_all(spec, tmp, seed, shards, sparse, progress, preset_name, weights)
        if tokenizer:
            _write_tokenizer(spec, tmp, seed)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def _write_all(spec: ModelSpec, tmp: Path, seed: int, shards: int | None, sparse: bool, progress: bool,
               preset_name: str | None, weights: WeightSource | None = None) -> None:
    from tqdm import tqdm

    q4 = spec.quantization is not None and spec.quantization.target is not None
    if q4 and not sparse:
        raise CheckpointError(f"synth writes {spec.quantization.target} layouts only as --sparse headers",
                              f"synthesize the FP8 model, then k2trt convert SRC DST --to {spec.quantization.target}")
    tensors = spec.tensors()
    prefix = names.TEXT_PREFIX if spec.multimodal is not None else ""  # K2.5 nests the language model
    hf = [prefix + tensor_name(t) for t in tensors]
    n = shards or DEFAULT_SHARDS.get(preset_name or "", max(1, spec.num_hidden_layers))
    groups = plan_shards(tensors, n)
    vision = names.vision_tensors(spec.multimodal["vision_config"], spec.hidden_size) if spec.multimodal else []
    weight_map: dict[str, str] = {}
    total = sum(t.nbytes for t in tensors)
    bar = tqdm(total=total, unit="B", unit_scale=True, desc="synth", disable=not progress or sparse)
    values = None if sparse else tensor_values(spec, seed, weights)
    at = 0
    for i, group in enumerate(groups, 1):
        fname = shard_name(i, n)
        group_names = hf[at: at + len(group)]
        at += len(group)
        extra = vision if i == n else []  # the vision tower rides in the last shard
        with ShardWriter(tmp / fname, [(nm, t.dtype, t.shape) for nm, t in zip(group_names, group)]
                         + [(nm, "BF16", shape) for nm, shape in extra], preallocate=not sparse) as w:
            for nm, t in zip(group_names, group):
                weight_map[nm] = fname
                if values is not None:
                    info, x = next(values)
                    assert info == t  # internal invariant: same inventory order
                    w.write(nm, tensor_bytes(x))
                    bar.update(t.nbytes)
            for nm, shape in extra:
                weight_map[nm] = fname
                if not sparse:
                    w.write(nm, tensor_bytes(_vision_value(nm, shape, seed)))
            w.commit(sparse=sparse)
    bar.close()
    total += sum(2 * math.prod(shape) for _nm, shape in vision)
    atomic_write_json(tmp / names.INDEX_FILE, {"metadata": {"total_size": total}, "weight_map": weight_map})
    if not q4:
        atomic_write_json(tmp / "config.json", spec.to_multimodal_config())
        return
    # a ModelOpt layout: TensorRT-LLM reads hf_quant_config.json before config.json
    from k2trt.checkpoint import quantcfg

    assert spec.quantization is not None
    hq = quantcfg.hf_quant_config(spec, spec.quantization.kv_cache_quant_algo == "FP8")
    for fname, obj in quantcfg.metadata_files(spec, hq).items():
        atomic_write_json(tmp / fname, obj)
    atomic_write_json(tmp / "config.json", quantcfg.config_json(spec, hq))


def _vision_value(name: str, shape: tuple[int, ...], seed: int) -> "torch.Tensor":
    import torch

    g = _generator(seed, name)
    if len(shape) == 1:
        return (1.0 + 0.1 * torch.randn(shape, generator=g)).to(torch.bfloat16)
    return (torch.randn(shape, generator=g) / shape[-1] ** 0.5).to(torch.bfloat16)


def _write_tokenizer(spec: ModelSpec, out: Path, seed: int) -> None:
    from k2trt.chat import vocab

    n_ranks = spec.vocab_size - len_reserved()
    # The embedded corpus learns ~1.5K ranks; a full-size vocabulary (163,584 ranks) is padded with filler tokens.
    vocab.write_tokenizer_files(out, n_ranks=n_ranks, seed=seed, pad=n_ranks > 1024)
    im_end = n_ranks + 2  # <|im_end|> sits at BOS + 2 in K2's layout (kimi_formats.md §3.3)
    gen = {"bos_token_id": spec.bos_token_id, "eos_token_id": [im_end, spec.eos_token_id],
           "max_length": spec.max_position_embeddings}
    atomic_write_json(out / "generation_config.json", gen)


def len_reserved() -> int:
    """K2 reserves 256 ids after its BPE ranks for special tokens."""
    return 256
