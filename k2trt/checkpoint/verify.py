"""``convert --verify``: re-read every output tensor of a finished conversion and check it against the source.

One check per op kind, each by a different path from the converter's:

- ``copy``: byte for byte (a hard-linked shard is the source file itself);
- ``dequant`` of block FP8: equal to ``fp8.dequantize(weight, scale, bfloat16)`` on the whole tensor (the converter
  uses 128-row chunks and a lookup table); from other formats: the format row's decode, rounded to BF16;
- ``quant``: weight and scales equal to ``fp8.quantize`` of the whole source tensor;
- ``nvfp4`` / ``int4``: every element within its format's rounding bound of the source weight (NVFP4: one e2m1
  unit, ``weight_scale · weight_scale_2``; INT4: half a group scale), and gate/up sharing ``weight_scale_2`` /
  ``input_scale`` (TensorRT-LLM fuses them). A transposed or mis-blocked scale breaks the bound;
- ``ct-int4`` (compressed-tensors, symmetric): every element within half a group scale of the source, plus the
  BF16 rounding of that scale (the group's largest magnitude sits at 7.5 steps and rounds onto the code 7 or -8),
  and ``weight_shape`` the source's shape.

Then, once every value is right, the structure: each shard's header lists exactly the planned tensors in order,
every file's size and hash match the manifest, and the index matches the plan. Raises CheckpointError naming
the first bad tensor or file.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from k2trt.checkpoint import files, formats, names
from k2trt.checkpoint.files import CHUNK, TensorEntry
from k2trt.checkpoint.manifest import Manifest, file_matches
from k2trt.checkpoint.plan import Op, Plan, ShardPlan
from k2trt.checkpoint.reader import CheckpointReader
from k2trt.errors import CheckpointError
from k2trt.spec import CT_INT4_GROUP, NVFP4_GROUP, W4A8_GROUP

if TYPE_CHECKING:
    import torch

_FIX = "the output is corrupt; convert again with --force"


def verify_output(plan: Plan, *, progress: bool = False) -> dict[str, Any]:
    """Check the finished conversion ``plan`` wrote (see the module docstring).

    Returns ``{"tensors", "bytes", "files_hashed", "seconds", "max_rel_error"}`` (``max_rel_error`` per 4-bit
    kind: the worst ‖dequantised − source‖ / ‖source‖ of a weight).
    Example: ``verify_output(plan_conversion(src, dst, ConvertOptions(target="bf16")))["tensors"]``.
    """
    from tqdm import tqdm

    t0 = time.monotonic()
    man = Manifest.load(plan.dst)
    if man is None or not man.complete or man.plan_digest != plan.digest():
        raise CheckpointError(f"{plan.dst}: holds no finished conversion of {plan.src} to {plan.options.target}",
                              "run the conversion (without --dry-run) first")
    idx = files.read_index(plan.dst)
    if idx is None or idx["weight_map"] != plan.weight_map:
        raise CheckpointError(f"{plan.dst}: the index does not match the converted shards",
                              "convert again with --force")
    bar = tqdm(total=plan.out_bytes, unit="B", unit_scale=True, unit_divisor=1024, desc="verify",
               disable=not progress)
    lock = threading.Lock()
    worst: dict[str, float] = {}
    src, out = CheckpointReader(plan.src, plan.entries), CheckpointReader(plan.dst)
    try:
        def one(sp: ShardPlan) -> int:
            n = _verify_shard(plan, sp, src, out, worst, lock)
            with lock:
                bar.update(sp.out_size)
            return n

        import torch

        old = torch.get_num_threads()
        torch.set_num_threads(1)  # the pool is the parallelism (see convert._torch_threads)
        try:
            with ThreadPoolExecutor(max(1, plan.options.workers)) as pool:
                counts = list(pool.map(one, plan.shards))  # every tensor's value first: what, then how
                list(pool.map(lambda sp: _verify_layout(plan, man, sp), plan.shards))
        finally:
            torch.set_num_threads(old)
    finally:
        bar.close()
        src.close()
        out.close()
    hashed = 0
    for name, rec in sorted(man.files.items()):
        if not file_matches(plan.dst / name, rec, check_hash=False):
            raise CheckpointError(f"{plan.dst / name}: size differs from the manifest",
                                  "the output was changed after conversion; convert again with --force")
        if rec.blake3 is not None:
            if name not in {sp.name for sp in plan.shards} and files.hash_file(plan.dst / name) != rec.blake3:
                raise CheckpointError(f"{plan.dst / name}: its hash differs from the manifest",
                                      "convert again with --force")
            hashed += 1
    return {"tensors": sum(counts), "bytes": plan.out_bytes, "files_hashed": hashed,
            "seconds": round(time.monotonic() - t0, 3), "max_rel_error": worst}


def _verify_shard(plan: Plan, sp: ShardPlan, src: CheckpointReader, out: CheckpointReader,
                  worst: dict[str, float], lock: threading.Lock) -> int:
    """Every output tensor of one shard against the source; returns how many."""
    path = plan.dst / sp.name
    linked = os.path.samefile(plan.src / sp.name, path)
    n = 0
    for op in sp.ops:
        if op.kind == "drop":
            continue
        got = [out.entry(name) for name, _d, _s in op.outputs]
        if op.kind == "copy":
            if not linked:
                _same_bytes(src, op.src, out, got[0])
        elif op.kind in ("nvfp4", "int4", "ct-int4"):
            rel = _within_bound(op, src, out, plan)
            with lock:
                worst[op.kind] = max(worst.get(op.kind, 0.0), rel)
        else:
            for want, e in zip(_exact(op, src), got):
                _same_tensor(want, out.tensor(e), e)
        n += len(got)
    return n


def _verify_layout(plan: Plan, man: Manifest, sp: ShardPlan) -> None:
    """The shard's header lists exactly the planned tensors in order, and its hash is the manifest's."""
    path = plan.dst / sp.name
    hdr = files.read_header(path)
    if [(e.name, e.dtype, e.shape) for e in sorted(hdr.tensors.values(), key=lambda e: e.begin)] != sp.out_tensors:
        raise CheckpointError(f"{path}: its tensors differ from what the conversion should have written",
                              "convert again with --force")
    rec = man.files[sp.name]
    if rec.blake3 is not None and files.hash_file(path) != rec.blake3:
        raise CheckpointError(f"{path}: its hash differs from the manifest", "convert again with --force")


def _exact(op: Op, src: CheckpointReader) -> "list[torch.Tensor]":
    """What a dequant/quant op must have written, computed on the whole tensor."""
    import torch

    from k2trt.checkpoint.fp8 import dequantize, quantize

    st = op.stored
    assert st is not None
    if op.kind == "dequant":
        if st.fmt.name == "fp8":
            return [dequantize(src.tensor(st.weight), src.tensor(st.parts["scale"]), torch.bfloat16)]
        return [src.decode(st).to(torch.bfloat16)]
    w = src.tensor(st.weight) if st.fmt.name == "bf16" else src.decode(st)
    return list(quantize(w))


def _within_bound(op: Op, src: CheckpointReader, out: CheckpointReader, plan: Plan) -> float:
    """Check a 4-bit expert against its source weight; return its relative error."""
    import torch

    st = op.stored
    assert st is not None
    w = src.decode(st)
    ost = formats.stored(out.locations, st.name)
    assert ost is not None
    got = out.decode(ost)
    module = names.module_name(st.name)

    def part(p: str) -> "torch.Tensor":
        return out.tensor(ost.parts[p])

    def bad(what: str, why: str) -> CheckpointError:
        return CheckpointError(f"{plan.dst}: {what} {why}", "re-run the conversion (delete DST or pass --force)")

    if op.kind == "nvfp4":
        step = (part("scale").float() * part("scale_2")).repeat_interleave(NVFP4_GROUP, 1)
    elif op.kind == "ct-int4":
        if part("shape").tolist() != list(st.shape):
            raise bad(ost.fmt.part_name(module, "shape"), f"is not the weight's shape {list(st.shape)}")
        # BF16-rounding a scale can put a group's largest value 7.5 / (1 - 2^-8) ≈ 7.53 steps out: 0.53 past code 7
        step = (0.5 + 2**-4) * part("scale").float().repeat_interleave(CT_INT4_GROUP, 1)
    else:
        step = 0.5 * part("scale").repeat_interleave(W4A8_GROUP, 1) * (1 + 2**-7)
    if ((got - w).abs() > step + 1e-7).any():
        raise bad(st.name, f"is off its source by more than the {op.kind} rounding bound (scale layout?)")
    fused = [p for p in ("scale_2", "input_scale") if p in ost.parts]  # the per-tensor scales a format has
    if op.role == "expert_up" and fused:
        gate = formats.stored(out.locations, names.name_of("expert_gate", op.layer, op.expert))
        assert gate is not None
        for p in fused:
            if not torch.equal(part(p), out.tensor(gate.parts[p])):
                raise bad(ost.fmt.part_name(module, p), "differs from the gate's (TensorRT-LLM fuses gate and up)")
    return float((got - w).norm() / max(float(w.norm()), 1e-30))


def _same_bytes(a: CheckpointReader, ea: TensorEntry, b: CheckpointReader, eb: TensorEntry) -> None:
    for off in range(0, ea.nbytes, CHUNK):
        k = min(CHUNK, ea.nbytes - off)
        if not (a.raw(ea, off, k) == b.raw(eb, off, k)).all():
            raise CheckpointError(f"{eb.file}: tensor {eb.name} differs from the source near byte {off}", _FIX)


def _same_tensor(want: "torch.Tensor", got: "torch.Tensor", e: TensorEntry) -> None:
    import torch

    if want.shape != got.shape or not torch.equal(want.contiguous().view(torch.uint8), got.view(torch.uint8)):
        diff = (want.float() - got.float()).abs().max().item() if want.shape == got.shape else float("nan")
        raise CheckpointError(f"{e.file}: tensor {e.name} differs from the source (max abs diff {diff:.3g})", _FIX)
