"""Read K2 weights, whole or as one rank's slice, straight from the safetensors shards.

``CheckpointReader.get(role, layer, expert, rows=..., cols=...)`` returns a dequantised tensor. It opens each shard
with safetensors' ``safe_open`` and takes only the requested rows/columns with ``get_slice``, so a rank never
materialises weights it does not hold. For a block-FP8 weight the read is widened to the enclosing 128×128 blocks
(the scale of a block applies to all its elements), the matching rows/columns of ``weight_scale_inv`` are read,
the block is dequantised with ``k2trt.checkpoint.fp8.dequantize`` and then cropped to the request. NVFP4 / W4A8
experts (``k2trt convert --to nvfp4|w4a8``) are read the same way, widened to whole scale groups
(``k2trt.checkpoint.requant.read_quantized``).

Every read is recorded in ``reads`` (name, shape read) and ``bytes_read``, which is how the tests prove that no rank
of a sharded job loads a full copy of a sharded tensor.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from k2trt.checkpoint import files, names
from k2trt.checkpoint.fp8 import BLOCK, dequantize
from k2trt.errors import CheckpointError

if TYPE_CHECKING:
    import torch

Span = tuple[int, int]  # [start, stop) along one axis


@dataclass
class CheckpointReader:
    """Lazy reader of one checkpoint directory. Use as a context manager or call ``close()``.

    Example:
        ``with CheckpointReader(d) as r: w = r.get("q_b", layer=0, rows=(0, 384))``
    """

    model_dir: Path
    locations: dict[str, files.TensorEntry] = field(default_factory=dict)
    reads: list[tuple[str, tuple[int, ...]]] = field(default_factory=list)
    bytes_read: int = 0
    _handles: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.model_dir = Path(self.model_dir)
        if not self.locations:
            self.locations = files.tensor_locations(self.model_dir)
        if not self.locations:
            raise CheckpointError(f"{self.model_dir}: no tensors in any *.safetensors file",
                                  "point at a checkpoint directory")

    def __enter__(self) -> "CheckpointReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._handles.clear()

    def has(self, role: str, layer: int | None = None, expert: int | None = None) -> bool:
        return names.name_of(role, layer, expert) in self.locations

    def shape(self, role: str, layer: int | None = None, expert: int | None = None) -> tuple[int, ...]:
        return self._entry(names.name_of(role, layer, expert)).shape

    def _entry(self, name: str) -> files.TensorEntry:
        try:
            return self.locations[name]
        except KeyError:
            raise CheckpointError(f"{self.model_dir}: tensor {name!r} is missing",
                                  "the checkpoint is incomplete; re-download or re-convert it") from None

    def _slice(self, name: str, rows: Span | None, cols: Span | None) -> "torch.Tensor":
        from safetensors import safe_open

        entry = self._entry(name)
        if entry.file not in self._handles:
            self._handles[entry.file] = safe_open(str(self.model_dir / entry.file), framework="pt")
        if len(entry.shape) == 0:  # NVFP4's per-tensor weight_scale_2
            t = self._handles[entry.file].get_tensor(name)
            self.reads.append((name, ()))
            self.bytes_read += t.element_size()
            return t
        sl = self._handles[entry.file].get_slice(name)
        if len(entry.shape) == 1:
            r0, r1 = rows or (0, entry.shape[0])
            t = sl[r0:r1]
        else:
            r0, r1 = rows or (0, entry.shape[0])
            c0, c1 = cols or (0, entry.shape[1])
            t = sl[r0:r1, c0:c1]
        self.reads.append((name, tuple(t.shape)))
        self.bytes_read += t.numel() * t.element_size()
        return t

    def get(self, role: str, layer: int | None = None, expert: int | None = None, *, rows: Span | None = None,
            cols: Span | None = None, dtype: "torch.dtype | None" = None) -> "torch.Tensor":
        """The tensor of ``role`` (rows/cols: half-open spans; None = all), dequantised when FP8, NVFP4 or W4A8.

        Args:
            role: a role of ``k2trt.checkpoint.names`` ("q_b", "expert_down", ...).
            rows, cols: the slice to read along axis 0 / 1.
            dtype: result dtype (default float32).
        Returns:
            The (sliced) tensor in ``dtype``.
        """
        import torch

        dtype = dtype or torch.float32
        name = names.name_of(role, layer, expert)
        entry = self._entry(name)
        scale = names.scale_name(name)
        if entry.dtype in ("U8", "I8"):  # NVFP4 / W4A8 experts of a requantized checkpoint
            from k2trt.checkpoint.requant import read_quantized

            return read_quantized(self._slice, name, entry.shape, entry.dtype, self.locations.__contains__,
                                  rows, cols).to(dtype)
        if entry.dtype != "F8_E4M3":
            return self._slice(name, rows, cols).to(dtype)
        if scale not in self.locations:
            raise CheckpointError(f"{self.model_dir}: FP8 tensor {name!r} has no {scale!r}",
                                  "the checkpoint is incomplete; re-download the shard holding it")
        m, n = entry.shape
        r0, r1 = rows or (0, m)
        c0, c1 = cols or (0, n)
        # widen to whole blocks: [rb0, rb1) × [cb0, cb1) in elements, block indices br0.. / bc0..
        br0, br1 = r0 // BLOCK, -(-r1 // BLOCK)
        bc0, bc1 = c0 // BLOCK, -(-c1 // BLOCK)
        w = self._slice(name, (br0 * BLOCK, min(br1 * BLOCK, m)), (bc0 * BLOCK, min(bc1 * BLOCK, n)))
        s = self._slice(scale, (br0, br1), (bc0, bc1))
        full = dequantize(w, s, torch.float32)
        out = full[r0 - br0 * BLOCK: r1 - br0 * BLOCK, c0 - bc0 * BLOCK: c1 - bc0 * BLOCK]
        return out.to(dtype).contiguous()
