"""The checks behind ``k2trt verify``: logits of one engine or checkpoint against another, judged by thresholds.

Three comparisons, each on N seeded random prompts, every position's logits in float32:

- ``against_transformers(ckpt)``: the reference model vs transformers' DeepseekV3ForCausalLM on the same weights
  (``oracle.py`` explains how they are fed) — proves the reference model;
- ``against_layout(ckpt, layout)``: the sharded reference under real mpirun vs the unsharded one — proves a
  TensorRT-LLM Mapping layout (each rank loads only its shard);
- ``between(a, b)``: two checkpoints of the same model (FP8 source vs a BF16 conversion, or a requantised one) —
  proves a conversion. A damaged checkpoint (one scale block off) fails the default thresholds; a faithful BF16
  conversion, whose only error is one bf16 rounding per weight, passes them.

Metrics: max/mean absolute difference, relative L2 error, cosine similarity (worst position), top-1 agreement, and
KL(P_a ‖ P_b) averaged over positions.
"""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import torch
import torch.nn.functional as F

from k2trt.errors import ConfigError, LaunchError
from k2trt.layout import Layout
from k2trt.reference import DEFAULT_TIMEOUT_S
from k2trt.reference.model import AttnImpl, Transformer, load_model
from k2trt.spec import ModelSpec

Mode = Literal["transformers", "layout", "checkpoints"]


@dataclass(frozen=True)
class Thresholds:
    """Pass/fail limits; None = not checked."""

    max_abs: float | None = None
    """Largest absolute logit difference allowed."""
    max_mean_abs: float | None = None
    """Largest mean absolute logit difference allowed."""
    max_rel: float | None = None
    """Largest relative L2 error ‖a−b‖/‖a‖ allowed."""
    min_cosine: float | None = None
    """Smallest per-position cosine similarity allowed."""
    min_top1: float | None = None
    """Smallest fraction of positions whose argmax agrees."""
    max_kl: float | None = None
    """Largest mean KL(P_a ‖ P_b) in nats."""

    @classmethod
    def default(cls, mode: Mode) -> "Thresholds":
        """Same weights in float32 must agree to rounding; a conversion may move logits by its quantisation error."""
        if mode == "transformers":
            return cls(max_rel=1e-4, min_top1=0.99)
        if mode == "layout":
            return cls(max_rel=1e-5, min_top1=0.99)
        # Calibrated on the tiny K2 (its random router makes it chaotic): a faithful FP8→BF16 conversion gives
        # KL 0.001–0.003, top-1 ≥ 0.94, rel ≤ 0.08; one FP8 scale block ×4 gives KL ≥ 0.018, top-1 ≤ 0.84.
        return cls(max_rel=0.12, min_top1=0.9, max_kl=0.01)

    @classmethod
    def for_checkpoint(cls, b: str | Path) -> "Thresholds":
        """The ``checkpoints`` defaults for comparing against checkpoint ``b``: wider for 4-bit experts (NVFP4,
        W4A8, compressed-tensors INT4)."""
        q = ModelSpec.from_config(b).quantization
        if q is None or (q.target is None and not q.is_int4_source):
            return cls.default("checkpoints")
        # Calibrated on the tiny K2 (4–8 prompts × 16 tokens): a faithful NVFP4 / W4A8 requantization gives
        # KL ≤ 0.019, rel ≤ 0.19, top-1 ≥ 0.72; a transposed or row-shifted expert scale grid gives KL ≥ 0.055,
        # rel ≥ 0.33, top-1 ≤ 0.54 (tests/unit/test_requant.py). Compressed-tensors INT4 (group 32) from its block
        # FP8: KL 0.015-0.016, rel ≤ 0.18, top-1 0.64-0.69; with the nibbles of each byte swapped it fails
        # (tests/unit/test_int4.py).
        return cls(max_rel=0.26, min_top1=0.62, max_kl=0.035)

    @classmethod
    def for_pair(cls, a: str | Path, b: str | Path) -> "Thresholds":
        """The ``checkpoints`` defaults for checkpoint ``b`` converted from ``a``, per target.

        From Moonshot's INT4 (compressed-tensors) source, calibrated on the tiny K2-Thinking (8 prompts × 16
        tokens; tests/unit/test_int4.py): ``bf16`` dequantises exactly up to one BF16 rounding per weight (KL
        ≈ 1e-6, rel ≈ 0.002), so it is held tight; ``fp8-block`` (KL 0.023, rel ≈ 0.2, top-1 0.75), ``w4a8``
        (regrouped 32 → 128: KL 0.032, rel 0.25, top-1 0.65) and ``nvfp4`` (KL 0.015) share one bound that every
        misread INT4 fails (swapped nibbles, packing along the wrong axis: KL ≥ 0.36; a 128 group or transposed
        scales: KL ≥ 0.062, rel ≥ 0.35, top-1 ≤ 0.51). Any other source: ``for_checkpoint(b)``.
        """
        qa, qb = ModelSpec.from_config(a).quantization, ModelSpec.from_config(b).quantization
        if qa is None or not qa.is_int4_source:
            return cls.for_checkpoint(b)
        if qb is None:
            return cls(max_rel=0.02, min_top1=0.95, max_kl=1e-3)
        return cls(max_rel=0.3, min_top1=0.58, max_kl=0.045)

    def merged(self, **overrides: float | None) -> "Thresholds":
        import dataclasses

        return dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None})


@dataclass
class Report:
    """The outcome of one verification."""

    mode: Mode
    subject: str
    reference: str
    metrics: dict[str, float]
    thresholds: dict[str, float | None]
    failures: list[str] = field(default_factory=list)
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}


def logit_metrics(ref: torch.Tensor, got: torch.Tensor) -> dict[str, float]:
    """Metrics of ``got`` against ``ref``, both ``[..., V]`` float logits."""
    a = ref.reshape(-1, ref.shape[-1]).double()
    b = got.reshape(-1, got.shape[-1]).double()
    diff = (a - b).abs()
    kl = F.kl_div(F.log_softmax(b, -1), F.log_softmax(a, -1), log_target=True, reduction="none").sum(-1)
    return {
        "max_abs": float(diff.max()),
        "mean_abs": float(diff.mean()),
        "rel": float((a - b).norm() / a.norm()),
        "cosine": float(F.cosine_similarity(a, b, dim=-1).min()),
        "top1": float((a.argmax(-1) == b.argmax(-1)).double().mean()),
        "kl": float(kl.clamp_min(0).mean()),
        "positions": float(a.shape[0]),
    }


def judge(metrics: dict[str, float], t: Thresholds) -> list[str]:
    """Human-readable reasons the metrics fail the thresholds (empty: pass)."""
    checks = [("max_abs", t.max_abs, "max_abs", "<="), ("mean_abs", t.max_mean_abs, "max_mean_abs", "<="),
              ("rel", t.max_rel, "max_rel", "<="), ("kl", t.max_kl, "max_kl", "<="),
              ("cosine", t.min_cosine, "min_cosine", ">="), ("top1", t.min_top1, "min_top1", ">=")]
    out = []
    for key, limit, name, op in checks:
        if limit is None:
            continue
        v = metrics[key]
        ok = v <= limit if op == "<=" else v >= limit
        if not ok:
            out.append(f"{key} {v:.3g} is not {op} {name} {limit:g}")
    return out


def random_prompts(vocab: int, n: int, length: int, seed: int) -> torch.Tensor:
    """``[n, length]`` seeded random token ids."""
    if n < 1 or length < 1:
        raise ConfigError(f"need at least one prompt of at least one token (got {n} × {length})")
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (n, length), generator=g)


def _run(fn: Callable[[torch.Tensor], torch.Tensor], prompts: torch.Tensor, progress: bool, desc: str
         ) -> torch.Tensor:
    from tqdm import tqdm

    return torch.stack([fn(p[None])[0] for p in tqdm(prompts, desc=desc, disable=not progress, leave=False)])


def against_transformers(ckpt: str | Path, *, prompts: int = 4, length: int = 16, seed: int = 0,
                         attn_impl: AttnImpl = "absorb", thresholds: Thresholds | None = None,
                         progress: bool = False) -> Report:
    """The reference model vs transformers' DeepseekV3ForCausalLM on checkpoint ``ckpt`` (float32)."""
    from k2trt.reference.oracle import load_transformers

    model = load_model(ckpt, attn_impl=attn_impl)
    x = random_prompts(model.spec.vocab_size, prompts, length, seed)
    with tempfile.TemporaryDirectory(prefix="k2trt-oracle-") as work:
        hf = load_transformers(ckpt, work)
        with torch.no_grad():
            want = _run(lambda t: hf(t).logits.float(), x, progress, "transformers")
    got = _run(model, x, progress, "reference")
    t = thresholds or Thresholds.default("transformers")
    m = logit_metrics(want, got)
    return Report("transformers", f"reference ({attn_impl})", "transformers DeepseekV3ForCausalLM", m,
                  asdict(t), judge(m, t), {"checkpoint": str(ckpt), "prompts": prompts, "length": length})


def layout_argv(ckpt: str | Path, layout: Layout, out: str | Path, *, np: int | None = None, master_port: int = 0,
                seed: int = 0, attn_impl: AttnImpl = "absorb", timeout_s: float = DEFAULT_TIMEOUT_S
                ) -> tuple[list[str], dict[str, str]]:
    """(mpirun argv, environment) of a sharded check (``np`` defaults to the layout's tp; it must equal it)."""
    from k2trt.reference.parallel import check_argv, free_port, mpirun_command

    np = np or layout.tp
    if np != layout.tp:
        raise ConfigError(f"layout {layout} runs on {layout.tp} ranks, not --np {np}", f"use --np {layout.tp}")
    # TMPDIR: Open MPI's session files live and go with the check's own directory (killed runs left theirs in /tmp)
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(master_port or free_port()), "TMPDIR": str(out)}
    return mpirun_command(np, check_argv(ckpt, layout, out, seed=seed, attn_impl=attn_impl, timeout_s=timeout_s),
                          env=env)


def _cause(output: str) -> str:
    """The line of a failed mpirun's output that names the cause: a rank's last exception line, else the last line
    with words in it (Open MPI closes its report with a banner of dashes)."""
    lines = [x.strip() for x in output.splitlines() if any(ch.isalnum() for ch in x)]
    errors = [x for x in lines if re.match(r"^[\w.]*(Error|Exception|Interrupt)\b", x)]
    return ((errors or lines or ["no output"])[-1])[:300]


def against_layout(ckpt: str | Path, layout: Layout, *, np: int | None = None, master_port: int = 0, seed: int = 0,
                   attn_impl: AttnImpl = "absorb", thresholds: Thresholds | None = None,
                   timeout_s: float = 600.0) -> Report:
    """The sharded reference (real mpirun, one process per rank) vs the unsharded one on ``ckpt``."""
    with tempfile.TemporaryDirectory(prefix="k2trt-layout-") as out:
        argv, environ = layout_argv(ckpt, layout, out, np=np, master_port=master_port, seed=seed,
                                    attn_impl=attn_impl)
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, env=environ)
        except subprocess.TimeoutExpired:
            raise LaunchError(f"the sharded check of {layout} did not finish in {timeout_s:.0f}s",
                              "a rank hung; rerun and read its output") from None
        if r.returncode != 0:
            raise LaunchError(f"mpirun for layout {layout} exited {r.returncode}: {_cause(r.stderr or r.stdout)}",
                              "run the printed --dry-run command by hand to see every rank's output")
        got = torch.load(Path(out) / "logits.pt")
        reads = [json.loads(p.read_text()) for p in sorted(Path(out).glob("reads-*.json"))]
    model = load_model(ckpt, attn_impl=attn_impl)
    want = model(got["tokens"], model.new_cache(len(got["pad"]), got["pad"]))
    keep = torch.ones_like(got["tokens"], dtype=torch.bool)
    for i, p in enumerate(got["pad"]):
        keep[i, :p] = False  # left-padding positions carry no meaning
    t = thresholds or Thresholds.default("layout")
    m = logit_metrics(want[keep], got["logits"][keep])
    return Report("layout", f"sharded {layout}", "unsharded reference", m, asdict(t), judge(m, t),
                  {"checkpoint": str(ckpt), "bytes_read_per_rank": [x["bytes_read"] for x in reads]})


def _same_model(a: ModelSpec, b: ModelSpec) -> None:
    import dataclasses

    if dataclasses.replace(a, quantization=None, model_type="x") != dataclasses.replace(b, quantization=None,
                                                                                         model_type="x"):
        raise ConfigError("the two checkpoints are not the same model (their config.json dimensions differ)",
                          "compare a checkpoint with its own conversion")


def between(a: str | Path, b: str | Path, *, prompts: int = 8, length: int = 16, seed: int = 0,
            attn_impl: AttnImpl = "absorb", thresholds: Thresholds | None = None, progress: bool = False
            ) -> Report:
    """Checkpoint ``b`` (e.g. a conversion) vs checkpoint ``a`` (its source), same prompts, float32 compute."""
    sa, sb = ModelSpec.from_config(a), ModelSpec.from_config(b)
    _same_model(sa, sb)
    ma: Transformer = load_model(a, attn_impl=attn_impl)
    x = random_prompts(sa.vocab_size, prompts, length, seed)
    want = _run(ma, x, progress, "A")
    del ma
    got = _run(load_model(b, attn_impl=attn_impl), x, progress, "B")
    t = thresholds or Thresholds.for_pair(a, b)
    m = logit_metrics(want, got)
    return Report("checkpoints", str(b), str(a), m, asdict(t), judge(m, t),
                  {"a_quantization": sa.quantization.describe() if sa.quantization else "bf16",
                   "b_quantization": sb.quantization.describe() if sb.quantization else "bf16"})
