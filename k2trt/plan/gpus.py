"""GPU catalog: memory, usable memory, HBM bandwidth, FP8/FP4 support and dense TFLOPS, NVLink.

Every number names its source (shared/reference/k2_numbers.md §E1 collects them). "Usable" is what the framework can
allocate: the measured PyTorch figure where one is known (H200/H20-141: 139.7 GiB), otherwise the nominal figure
× 0.99 — the same ratio as that measurement (141 → 139.7) — which is an assumption and says so.
"""

from __future__ import annotations

from dataclasses import dataclass

from k2trt.errors import PlanError

GiB = 2**30
RESERVE_GIB = 8.0
"""Activation / CUDA-graph / workspace reserve per GPU (k2_numbers.md E2 assumption; see plan.memory)."""


@dataclass(frozen=True)
class Gpu:
    """One GPU kind."""

    key: str
    """Short name used on the command line (``h200``)."""
    name: str
    """Marketing name."""
    memory_gb: float
    """Nominal HBM capacity as marketed (these "GB" are close to GiB: 141 GB reports 139.7 GiB)."""
    usable_gib: float
    """Memory a process can allocate, GiB."""
    hbm_tbps: float
    """HBM bandwidth, TB/s (10^12 bytes/s)."""
    fp8: bool
    """FP8 tensor cores (block-FP8 K2 runs natively)."""
    fp4: bool
    """FP4 tensor cores (NVFP4 checkpoints)."""
    fp8_tflops: float
    """Dense FP8 TFLOPS (0 when unsupported)."""
    fp4_tflops: float
    """Dense FP4 TFLOPS (0 when unsupported)."""
    bf16_tflops: float
    """Dense BF16 TFLOPS."""
    nvlink_gbps: float
    """NVLink bandwidth per GPU, GB/s bidirectional."""
    nvlink_domain: int = 8
    """GPUs in one NVLink domain (8 for HGX boards, 72 for GB200 NVL72)."""
    source: str = ""
    """Where the numbers come from."""
    reserve_gib: float = RESERVE_GIB
    """Default activation/CUDA-graph/workspace reserve per device, GiB (k2_numbers E2 assumption)."""
    reference_only: bool = False
    """Runs only k2trt's reference engine (CPU ranks), which dequantises FP8/FP4 at load: no tensor-core rules."""


CATALOG: dict[str, Gpu] = {g.key: g for g in (
    # k2_numbers E1: page "NVIDIA H200 GPU Specifications and Features" (H100/H200 table); TRT-LLM perf-overview.md.
    # BF16 989 TF dense is half the FP8 figure on Hopper (same datasheet). Usable: 80 × 0.99 (assumption).
    Gpu("h100", "H100 SXM 80GB", 80, 79.2, 3.35, True, False, 1979, 0, 989, 900, 8,
        "k2_numbers E1 (H100/H200 datasheet table); usable = 0.99 × nominal (assumption)"),
    # k2_numbers E1: 141 GB HBM3e, 4.8 TB/s, 900 GB/s NVLink; 139.7 GiB as reported by PyTorch (vllm issue #31273).
    Gpu("h200", "H200 SXM 141GB", 141, 139.7, 4.8, True, False, 1979, 0, 989, 900, 8,
        "k2_numbers E1 (H200 datasheet; vllm #31273 for 139.7 GiB usable)"),
    # k2_numbers E1: H20 96 GB HBM3, 4.0 TB/s, ~296 TF FP8 (148 TF FP16), 900 GB/s (willitrunai; TRT-LLM DS-V3 README).
    Gpu("h20", "H20 96GB", 96, 95.0, 4.0, True, False, 296, 0, 148, 900, 8,
        "k2_numbers E1 (H20 96 GB page; TRT-LLM deepseek_v3 README); usable = 0.99 × nominal (assumption)"),
    # k2_numbers E1: "a 141 GB variant also exists"; vllm #31273 reports 139.72 GiB capacity on a 141 GB H20.
    # Bandwidth 4.8 TB/s assumed from its H200-class HBM3e stacks (no datasheet in the fact sheets).
    Gpu("h20-141", "H20 141GB", 141, 139.7, 4.8, True, False, 296, 0, 148, 900, 8,
        "k2_numbers E1 (vllm #31273: 139.72 GiB); bandwidth assumed equal to H200"),
    # k2_numbers E1: HGX B200 180 GB usable (192 physical), 8 TB/s, 4.5 PF FP8, 9 PF FP4, NVLink 5 1.8 TB/s.
    Gpu("b200", "B200 (HGX) 180GB", 180, 178.2, 8.0, True, True, 4500, 9000, 2250, 1800, 8,
        "k2_numbers E1 (Vultr HGX B200 overview; Lockwood 'B200'); usable = 0.99 × 180 (assumption)"),
    # k2_numbers E1: GB200 NVL72 ~186-192 GB HBM3e per GPU, 8 TB/s, 5 PF FP8, 10 PF FP4, 72-GPU NVLink domain.
    Gpu("gb200", "GB200 (NVL72) 186GB", 186, 184.1, 8.0, True, True, 5000, 10000, 2500, 1800, 72,
        "k2_numbers E1 (Lockwood GB200 table; TRT-LLM perf-overview.md); usable = 0.99 × 186 (assumption)"),
    # NVIDIA A100 80GB SXM datasheet: 2.039 TB/s HBM2e, 312 TF BF16 dense, NVLink 3 600 GB/s, no FP8 tensor cores.
    Gpu("a100", "A100 SXM 80GB", 80, 79.2, 2.039, False, False, 0, 0, 312, 600, 8,
        "NVIDIA A100 80GB datasheet; usable = 0.99 × nominal (assumption)"),
)}

# A CPU rank of the reference engine (verification path): 8 GiB per rank and ~20 GB/s memory bandwidth per rank are
# assumptions for a shared CI machine; FP8 weights are dequantised at load, so the plan only sizes memory.
CATALOG["cpu"] = Gpu("cpu", "CPU rank (reference engine)", 8, 8.0, 0.02, False, False, 0, 0, 0.1, 10, 64,
                     "assumption: CI machine rank", reserve_gib=0.5, reference_only=True)

ALIASES = {"h100-80": "h100", "h200-141": "h200", "h20-96": "h20", "a100-80": "a100"}
DEFAULT_GPU = "h200"  # what k2trt plans for when not told (`k2trt plan --gpu`, a recipe's cluster.gpu)


def gpu(key: str) -> Gpu:
    """The catalog entry for ``key`` (case-insensitive; ``h20-96`` and friends accepted).

    Example: ``gpu("H200").usable_gib`` → 139.7.
    """
    k = key.lower()
    k = ALIASES.get(k, k)
    if k not in CATALOG:
        raise PlanError(f"unknown GPU {key!r}", f"choose one of {', '.join(CATALOG)}")
    return CATALOG[k]
