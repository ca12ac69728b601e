"""The trainable tiny K2: initial weights, the checkpoint role of every parameter, FP8-aware steps and export.

The model is the reference ``Transformer`` itself (``k2trt/reference/model.py``), built from a weight function
like any checkpoint; ``TrainableK2`` remembers which parameter is which checkpoint tensor (role, layer, expert),
switches gradients on for everything but the routers' ``e_score_correction_bias`` (K2's auxiliary-loss-free
balancing moves that one, see ``balance_routers``) and can *quantise in the loop*:

- ``quantize_in_loop()`` registers a parametrization on every parameter so that the forward pass sees exactly
  what the shipped checkpoint will hold: ``fp8.dequantize(*fp8.quantize(W.bf16))`` for the linear weights K2 stores
  in block FP8, ``W.bf16`` for the BF16 tensors (embeddings, norms, router, lm_head). Gradients pass straight
  through to the float32 master weights. Training ends with such steps, so the exported FP8 checkpoint *is* the
  trained model, and its exact block dequantisation is the BF16 reference that quantised variants (NVFP4, W4A8,
  and K2-Thinking's INT4 once ``k2trt convert`` writes it) are measured against.
- ``export(out)`` writes the checkpoint through ``checkpoint.synth.synthesize`` — the writer, sharding, block-FP8
  quantiser and tokenizer files every tiny K2 uses — with the master weights as the values.

Initialisation (per tensor, from ``(seed, tensor name)``, independent of construction order): linear weights
N(0, 1/fan_in), the residual-output projections (``o``, the FFNs' ``down``) further scaled by 1/sqrt(2·layers),
embeddings N(0, 1), lm_head N(0, 1/hidden), norms 1, router N(0, 1/hidden), router bias 0; then, with
``circuit``, the copying heads of ``circuit.py`` set over them.
"""

from __future__ import annotations

import math
import zlib
from pathlib import Path
import torch
from torch import nn
from torch.nn.utils import parametrize

from k2trt.checkpoint.formats import tensor_name
from k2trt.checkpoint.fp8 import dequantize, quantize
from k2trt.reference.model import Gate, Transformer
from k2trt.spec import ModelSpec, TensorInfo

Key = tuple[str, "int | None", "int | None"]  # (role, layer, expert)
_NORMS = ("input_norm", "post_norm", "q_a_norm", "kv_a_norm", "final_norm")
_RESIDUAL_OUT = ("o", "dense_down", "expert_down", "shared_down")


def initial_value(spec: ModelSpec, info: TensorInfo, seed: int) -> torch.Tensor:
    """The float32 starting value of one checkpoint tensor (module docstring)."""
    g = torch.Generator()
    g.manual_seed((seed * 1_000_003 + zlib.crc32(tensor_name(info).encode())) & 0x7FFF_FFFF_FFFF)
    shape = info.shape
    if info.role in _NORMS:
        return torch.ones(shape)
    if info.role == "router_bias":
        return torch.zeros(shape)
    if info.role == "embed":
        return torch.randn(shape, generator=g)
    std = 1 / math.sqrt(shape[-1])
    if info.role in _RESIDUAL_OUT:
        std /= math.sqrt(2 * spec.num_hidden_layers)
    return torch.randn(shape, generator=g) * std


class _Fp8Block(nn.Module):
    """What a block-FP8 checkpoint stores of ``w``, with the gradient passed straight through."""

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            q, s = quantize(w.detach().to(torch.bfloat16))
            stored = dequantize(q, s, torch.float32)
        return w + (stored - w).detach()


class _Bf16(nn.Module):
    """What a BF16 tensor of the checkpoint stores of ``w``, with the gradient passed straight through."""

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w + (w.detach().to(torch.bfloat16).float() - w).detach()


STORED_AS: dict[str, type[nn.Module]] = {"F8_E4M3": _Fp8Block, "BF16": _Bf16}
"""Checkpoint dtype → what the forward pass sees of a master weight stored that way (F32 tensors: themselves).
The hook for K2-Thinking's INT4 routed experts: once the spec's inventory can describe them and ``k2trt convert``
writes them, an INT4 group-32 round trip goes here, and ``export`` writes through that converter."""


class TrainableK2:
    """The reference Transformer with its parameters keyed by checkpoint role (module docstring).

    Example:
        >>> k2 = TrainableK2(preset("tiny"), seed=0)                  # doctest: +SKIP
        >>> k2.model(torch.tensor([[1, 2, 3]])).sum().backward()    # doctest: +SKIP
    """

    def __init__(self, spec: ModelSpec, seed: int, attn_impl: str = "sdpa", *, circuit: bool = False) -> None:
        self.spec = spec
        infos = {(t.role, t.layer, t.expert): t for t in spec.tensors() if t.scale_of is None}
        made: dict[Key, torch.Tensor] = {}

        def get(role: str, layer: int | None, expert: int | None) -> torch.Tensor:
            made[(role, layer, expert)] = initial_value(spec, infos[(role, layer, expert)], seed)
            return made[(role, layer, expert)]

        self.model = Transformer(spec, get, attn_impl=attn_impl)  # type: ignore[arg-type]
        by_ptr = {t.data_ptr(): k for k, t in made.items()}
        self.params: dict[Key, nn.Parameter] = {}
        self._owner: dict[Key, tuple[nn.Module, str]] = {}
        for mod_name, mod in self.model.named_modules():
            for attr, p in mod.named_parameters(recurse=False):
                key = by_ptr[p.data_ptr()]
                self.params[key], self._owner[key] = p, (mod, attr)
        self.infos = {k: infos[k] for k in self.params}
        # Hugging Face names key the seeds, the optimizer's order and the saved state: fixed across spec changes
        self._names = {k: tensor_name(self.infos[k]) for k in self.params}
        self.gates = [m for m in self.model.modules() if isinstance(m, Gate)]
        for key, p in self.params.items():
            p.requires_grad_(key[0] != "router_bias")
        self.quantized = False
        if circuit:  # the hand-wired copying heads (circuit.py), over the random values
            from k2trt.train.circuit import wire

            wire(self.model, spec)

    def names(self) -> list[str]:
        """Checkpoint tensor names of the parameters, in a fixed order (the optimizer's)."""
        return [self._names[k] for k in self.keys()]

    def keys(self) -> list[Key]:
        return sorted(self.params, key=lambda k: self._names[k])

    def trainable(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """(decayed matrices, undecayed norms) in ``keys()`` order; router biases are not trained by gradient."""
        mats, flat = [], []
        for k in self.keys():
            if k[0] == "router_bias":
                continue
            (flat if k[0] in _NORMS else mats).append(self.params[k])
        return mats, flat

    def quantize_in_loop(self) -> None:
        """From now on the forward pass computes with the checkpoint's stored values (module docstring)."""
        if self.quantized:
            return
        for key, (mod, attr) in self._owner.items():
            stored = STORED_AS.get(self.infos[key].dtype)
            if stored is not None:
                parametrize.register_parametrization(mod, attr, stored())
        self.quantized = True

    @torch.no_grad()
    def balance_routers(self, loads: list[torch.Tensor], rate: float) -> None:
        """K2's auxiliary-loss-free balancing (DeepSeek-V3 §2.1.2): each router's bias rises by ``rate`` for an
        under-loaded expert and falls by ``rate`` for an over-loaded one. ``loads[i]``: tokens per expert [E]."""
        for gate, load in zip(self.gates, loads):
            assert gate.bias is not None  # noaux_tc routers always have one
            gate.bias += rate * torch.sign(load.float().mean() - load.float())

    def state(self) -> dict[str, torch.Tensor]:
        """Master weights by checkpoint tensor name (float32 copies)."""
        return {self._names[k]: self.params[k].detach().clone() for k in self.keys()}

    @torch.no_grad()
    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        by_name = {self._names[k]: k for k in self.params}
        if set(state) != set(by_name):
            raise ValueError("the saved state does not hold this model's tensors")
        for name, value in state.items():
            self.params[by_name[name]].copy_(value)

    def export(self, out_dir: str | Path, *, tokenizer_seed: int = 0, force: bool = True) -> Path:
        """Write the tiny K2 checkpoint (block FP8, K2's tokenizer files with the think tokens registered, as the
        corpus was tokenised, and K2-Instruct's chat template) from the master weights.

        Args:
            out_dir: the checkpoint directory (replaced when ``force``).
            tokenizer_seed: the tiny tokenizer's BPE tie-break seed (the one the corpus was tokenised with).
        Returns:
            The directory.
        """
        from k2trt.chat.thinking import register_thinking_tokens
        from k2trt.checkpoint.synth import synthesize

        by_key = {self.infos[k]: self.params[k] for k in self.params}
        out = synthesize(self.spec, out_dir, seed=tokenizer_seed, force=force, preset_name="tiny",
                         weights=lambda info: by_key[info])
        register_thinking_tokens(out)
        return out


def stored_value(info: TensorInfo, w: torch.Tensor) -> torch.Tensor:
    """The float32 value a checkpoint of ``info``'s dtype holds for the master weight ``w``."""
    if info.dtype == "F8_E4M3":
        return dequantize(*quantize(w.detach().to(torch.bfloat16)), torch.float32)
    if info.dtype == "BF16":
        return w.detach().to(torch.bfloat16).float()
    return w.detach().float()

