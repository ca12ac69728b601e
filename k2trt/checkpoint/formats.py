"""The table of storage formats of a linear weight: how each stored part is named, and how it is read back.

One row per format, keyed like ``spec.LINEAR_FORMATS`` (which owns the geometry: each part's dtype and shape and
the slice of the weight one stored element covers). A row here adds the Hugging Face suffix of every part and the
math that turns the (sliced) parts back into float32 weights — and, for formats ``k2trt convert`` can write, the
math that encodes a float32 weight into them:

=======  ==========================================================  ===========================================
format   parts (suffix after the module name)                        decode / encode
=======  ==========================================================  ===========================================
bf16     ``weight`` (BF16; F16/F32 read the same way)               cast / round to bfloat16
fp8      ``weight`` F8_E4M3, ``weight_scale_inv`` F32 per 128×128     ``fp8.dequantize_rows`` / ``fp8.quantize``
nvfp4    ``weight`` U8 (2 codes/byte), ``weight_scale`` e4m3 per 16,  ``quant4`` (modelopt's NVFP4 arithmetic)
         ``weight_scale_2`` F32 [], ``input_scale`` F32 []
int4     ``weight`` I8 (2 codes/byte), ``weight_scale_inv`` F32 per   ``quant4`` (W4A8_CUSTOM layout)
         128, ``input_scale`` F32 [1]
ct-int4  ``weight_packed`` I32 (8 codes/word), ``weight_scale`` BF16    ``quant4`` (compressed-tensors
         per 32, ``weight_shape`` I64 [2] (the declared [out, in])     ``pack-quantized``; K2-Thinking, K2.5/K2.6)
=======  ==========================================================  ===========================================

A source format is its geometry in ``spec.LINEAR_FORMATS``, one row here (its suffixes and a decode function),
and a ``spec.QUANT_LAYOUTS`` row for the checkpoints that use it (which roles carry it; ``ModelSpec.from_config``
maps their ``quantization_config`` there) — ``ct-int4`` is exactly that. The reader, inspect, plan, verify and every target then handle it (a format
without ``encode`` can be read and converted from, not written). ``stored`` tells a weight's format from the
tensors present, so one checkpoint may mix formats (W4A8: INT4 experts, block-FP8 attention).

torch (and modelopt, for the 4-bit math) is imported inside the decode/encode functions only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from k2trt.checkpoint import names
from k2trt.checkpoint.files import TensorEntry
from k2trt.errors import CheckpointError
from k2trt.spec import LINEAR_FORMATS, LINEAR_ROLES, LinearFormat, ModelSpec, Part, TensorInfo

if TYPE_CHECKING:
    import torch

Parts = dict[str, "torch.Tensor"]
FLOAT_DTYPES = ("BF16", "F16", "F32")


@dataclass(frozen=True)
class StorageFormat:
    """One row: a format's geometry (from spec), the HF suffix of each part, and its math.

    ``decode(parts)`` gets the stored parts of one weight — each sliced to the same widened range of the weight,
    per-tensor parts whole — and returns that range as float32 ``[rows, cols]``. ``encode(w, extra)`` returns the
    parts (in geometry order) for a float32 weight; ``extra`` carries what a format needs beyond the weight
    (``scale_2`` shared by an NVFP4 gate/up pair, the activation ``input_scale``).
    """

    geometry: LinearFormat
    suffixes: dict[str, str]
    decode: Callable[[Parts], "torch.Tensor"]
    needs: tuple[str, ...]
    """The parts ``decode`` reads."""
    encode: Callable[["torch.Tensor", dict[str, Any]], "list[torch.Tensor]"] | None = None
    weight_dtypes: tuple[str, ...] = ()
    """Stored dtypes of the weight part that identify this format (default: the geometry's)."""
    nibbles: str | None = None
    """For a 4-bit format whose ``weight`` part holds two codes per byte (the even column low, in file order) and
    whose ``scale`` part one scale per group of a row, with ``decode == code × scale``: how a nibble encodes its
    code, ``"offset"`` (``code + 8``, compressed-tensors) or ``"signed"`` (two's complement, W4A8). Block-FP8
    encoding then reads the packed bytes directly (``kernels.quantize_packed_rows``)."""

    @property
    def name(self) -> str:
        return self.geometry.name

    @property
    def parts(self) -> tuple[Part, ...]:
        return self.geometry.parts

    def identifies(self, dtype: str) -> bool:
        return dtype in (self.weight_dtypes or (self.parts[0].dtype,))

    def part_name(self, module: str, part: str) -> str:
        """``module`` + this format's suffix of ``part``: ``….q_b_proj`` + scale → ``….q_b_proj.weight_scale_inv``."""
        return f"{module}.{self.suffixes[part]}"


# ---- the math of each row (torch imported on use) ------------------------------------------------------------

def _decode_ct_int4(p: Parts) -> "torch.Tensor":
    from k2trt.checkpoint.quant4 import dequantize_ct_int4

    return dequantize_ct_int4(p["weight"], p["scale"])


def _encode_ct_int4(w: "torch.Tensor", _extra: dict[str, Any]) -> "list[torch.Tensor]":
    from k2trt.checkpoint.quant4 import quantize_ct_int4

    return list(quantize_ct_int4(w))


def _decode_float(p: Parts) -> "torch.Tensor":
    import torch

    return p["weight"].to(torch.float32)


def _encode_bf16(w: "torch.Tensor", _extra: dict[str, Any]) -> "list[torch.Tensor]":
    import torch

    return [w.to(torch.bfloat16)]


def _decode_fp8(p: Parts) -> "torch.Tensor":
    """``fp8.dequantize`` to float32, through the per-block lookup table (the same product, several times faster
    than torch's fp8 cast)."""
    import numpy as np
    import torch

    from k2trt.checkpoint.fp8 import check_scale_shape, dequantize_rows

    w, s = p["weight"], p["scale"]
    check_scale_shape("weight", tuple(w.shape), tuple(s.shape))
    out = np.empty(tuple(w.shape), dtype=np.float32)
    dequantize_rows(w.contiguous().view(torch.uint8).numpy(), s.to(torch.float32).contiguous().numpy(), 0, out)
    return torch.from_numpy(out)


def _encode_fp8(w: "torch.Tensor", _extra: dict[str, Any]) -> "list[torch.Tensor]":
    from k2trt.checkpoint.fp8 import quantize

    return list(quantize(w))


def _decode_nvfp4(p: Parts) -> "torch.Tensor":
    from k2trt.checkpoint.quant4 import dequantize_nvfp4

    return dequantize_nvfp4(p["weight"], p["scale"], p["scale_2"])


def _encode_nvfp4(w: "torch.Tensor", extra: dict[str, Any]) -> "list[torch.Tensor]":
    from k2trt.checkpoint.quant4 import quantize_nvfp4

    q, s, s2 = quantize_nvfp4(w, extra.get("scale_2"))
    return [q, s, s2, extra["input_scale"]]


def _decode_int4(p: Parts) -> "torch.Tensor":
    from k2trt.checkpoint.quant4 import dequantize_w4a8

    return dequantize_w4a8(p["weight"], p["scale"])


def _encode_int4(w: "torch.Tensor", extra: dict[str, Any]) -> "list[torch.Tensor]":
    from k2trt.checkpoint.quant4 import quantize_w4a8

    q, s = quantize_w4a8(w)
    return [q, s, extra["input_scale"]]


FORMATS: dict[str, StorageFormat] = {f.name: f for f in (
    StorageFormat(LINEAR_FORMATS["fp8"], {"weight": "weight", "scale": "weight_scale_inv"}, _decode_fp8,
                  ("weight", "scale"), _encode_fp8),
    StorageFormat(LINEAR_FORMATS["nvfp4"], {"weight": "weight", "scale": "weight_scale",
                                            "scale_2": "weight_scale_2", "input_scale": "input_scale"},
                  _decode_nvfp4, ("weight", "scale", "scale_2"), _encode_nvfp4),
    StorageFormat(LINEAR_FORMATS["int4"], {"weight": "weight", "scale": "weight_scale_inv",
                                           "input_scale": "input_scale"},
                  _decode_int4, ("weight", "scale"), _encode_int4, nibbles="signed"),
    StorageFormat(LINEAR_FORMATS["ct-int4"], {"weight": "weight_packed", "scale": "weight_scale",
                                              "shape": "weight_shape"},
                  _decode_ct_int4, ("weight", "scale"), _encode_ct_int4, nibbles="offset"),
    StorageFormat(LINEAR_FORMATS["bf16"], {"weight": "weight"}, _decode_float, ("weight",), _encode_bf16,
                  FLOAT_DTYPES),
)}
"""Every storage format, in detection order."""


# ---- names and detection -----------------------------------------------------------------------------------------

def tensor_name(t: TensorInfo) -> str:
    """The Hugging Face name of an inventory tensor (``spec.tensors()`` entries carry roles, not names).

    Example: the ``scale`` part of an fp8 ``q_b`` at layer 1 → ``model.layers.1.self_attn.q_b_proj.weight_scale_inv``.
    """
    name = names.name_of(t.role, t.layer, t.expert)
    if t.fmt is None:
        return name
    return FORMATS[t.fmt].part_name(names.module_name(name), t.part)


def inventory(spec: ModelSpec) -> dict[str, TensorInfo]:
    """Every tensor ``spec``'s checkpoint holds, by Hugging Face name, in inventory order (embed, layers, lm_head).

    Example: ``inventory(preset("k2-instruct"))["model.layers.0.self_attn.kv_a_proj_with_mqa.weight_scale_inv"]
    .shape`` → ``(5, 56)``.
    """
    out: dict[str, TensorInfo] = {}
    last: tuple[str, int | None, int | None] | None = None
    module = ""
    for t in spec.tensors():  # 139,644 tensors for K2: each module's name is spelled once for all its parts
        if t.fmt is None:
            out[names.name_of(t.role, t.layer, t.expert)] = t
            continue
        if (t.role, t.layer, t.expert) != last:
            last = (t.role, t.layer, t.expert)
            module = names.module_name(names.name_of(*last))
        out[FORMATS[t.fmt].part_name(module, t.part)] = t
    return out


@dataclass(frozen=True, slots=True)
class Stored:
    """A linear weight as a checkpoint stores it: its name (``….weight``, whatever the stored suffix), format,
    logical ``[out, in]`` shape and part entries."""

    name: str
    fmt: StorageFormat
    shape: tuple[int, int]
    parts: dict[str, TensorEntry]

    @property
    def weight(self) -> TensorEntry:
        return self.parts["weight"]


WEIGHT_SUFFIXES = tuple(sorted({"." + f.suffixes["weight"] for f in FORMATS.values()}))
"""How the weight part of any format's linear ends (``.weight``; compressed-tensors INT4's ``.weight_packed``)."""


def weight_name_of(stored_name: str) -> str | None:
    """The logical ``….weight`` name of a stored weight part's name, or None when it is not one."""
    for sfx in WEIGHT_SUFFIXES:
        if stored_name.endswith(sfx):
            return stored_name[: -len(sfx)] + ".weight"
    return None


def is_linear(role: str | None) -> bool:
    """Whether ``role`` is a 2-D linear weight (stored in one of the formats) rather than a norm/embed/router."""
    return role in LINEAR_ROLES


def stored(entries: dict[str, TensorEntry], weight_name: str, required: bool = True) -> Stored | None:
    """How the linear weight ``weight_name`` (``….weight``) is stored in ``entries`` (name → entry).

    The format is the first row whose weight part is present with one of its dtypes. Returns None when the weight
    is absent and not ``required``; raises CheckpointError (naming the tensor and the fix) when it is absent and
    required, or when a part its format needs is missing.
    """
    module = names.module_name(weight_name)
    for f in FORMATS.values():
        e = entries.get(weight_name if f.suffixes["weight"] == "weight" else f.part_name(module, "weight"))
        if e is None or not f.identifies(e.dtype):
            continue
        parts = {"weight": e}
        for p in f.parts[1:]:
            pe = entries.get(f.part_name(module, p.part))
            if pe is None:
                if p.part in f.needs:
                    missing = f.part_name(module, p.part)
                    raise CheckpointError(f"{e.name} in {e.file} is {f.name.upper()} but has no {missing}",
                                          "the weight is unusable without it; re-download or re-convert the shard")
                continue
            parts[p.part] = pe
        per = f.parts[0].per or (1, 1)
        if len(e.shape) != 2:
            raise CheckpointError(f"{e.name} in {e.file} is a {f.name} tensor of shape {list(e.shape)}, not 2-D",
                                  "linear weights are 2-D; check the checkpoint")
        return Stored(weight_name, f, (e.shape[0] * per[0], e.shape[1] * per[1]), parts)
    if required:
        raise CheckpointError(f"tensor {weight_name!r} is missing",
                              "the checkpoint is incomplete; re-download or re-convert it")
    return None
