"""Where the kernels can run, why not, and the input checks every wrapper shares.

Triton is imported lazily (only when a kernel is first launched or ``triton_problem()`` is asked), so importing the
plugins costs nothing on a machine without Triton. The kernels run on a CUDA device, or on CPU tensors in Triton's
interpreter when ``TRITON_INTERPRET=1`` is set before Triton is first imported.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib
import os
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    import torch

try:  # inside k2trt the error belongs to its hierarchy; under trtllm-serve alone k2trt may not be installed
    from k2trt.errors import PluginUnavailable
except ImportError:

    class PluginUnavailable(RuntimeError):  # type: ignore[no-redef]
        """A custom kernel cannot run here; the message says why (same constructor as k2trt's errors)."""

        def __init__(self, message: str, hint: str | None = None) -> None:
            super().__init__(f"{message} ({hint})" if hint else message)


BLOCK = 128  # K2's FP8 block: 128×128 for weights, 1×128 for activations
FP8_MAX = 448.0  # largest finite float8_e4m3fn
ACT_SCALE_MIN = 1e-4  # activation scales are max(amax, 1e-4) / 448 (DeepSeek act_quant)


def interpreting() -> bool:
    """True when Triton kernels run in the CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


@functools.lru_cache(maxsize=None)
def _triton_import_problem() -> str | None:
    try:
        importlib.import_module("triton")
    except ImportError as e:
        return f"triton is not installed ({e}); install it with `pip install 'k2trt[plugins]'`"
    return None


def _triton_mode_problem() -> str | None:
    # Triton decides interpreted vs compiled when each @triton.jit function is defined, its own library included, so
    # the environment at the first `import triton` is what counts; a later change gives kernels that cannot run.
    import triton.language as tl

    lib_interpreted = type(tl.sigmoid).__name__ == "InterpretedFunction"
    if interpreting() and not lib_interpreted:
        return ("TRITON_INTERPRET=1 was set after triton had been imported; set it before the first `import triton` "
                "(e.g. in the environment of the process)")
    if lib_interpreted and not interpreting():
        return "triton was imported with TRITON_INTERPRET=1, which is no longer set; restore it"
    return None


def triton_problem(device: "torch.device | str | None" = None, fp8: bool = False) -> str | None:
    """Why the Triton kernels cannot run on ``device`` (None: the default CUDA device), or None if they can.

    Args:
        device: where the tensors live; CPU tensors need the interpreter.
        fp8: the kernel does FP8 ``tl.dot``, which needs compute capability ≥ 8.9 on a GPU.
    Returns:
        A one-line reason, or None.
    Example:
        ``triton_problem("cpu")`` on a laptop → ``"no CUDA device, and TRITON_INTERPRET is not 1 (…)"``; None once
        the interpreter is on.
    """
    import torch

    problem = _triton_import_problem() or _triton_mode_problem()
    if problem:
        return problem
    dev = torch.device(device) if device is not None else None
    if interpreting():
        if dev is not None and dev.type != "cpu":
            return f"TRITON_INTERPRET=1 runs kernels on CPU tensors only, got tensors on {dev}"
        return None
    if dev is None or dev.type == "cpu":
        if not torch.cuda.is_available():
            return ("no CUDA device, and TRITON_INTERPRET is not 1 (set TRITON_INTERPRET=1 before triton is "
                    "imported to run the kernels in Triton's CPU interpreter)")
        if dev is not None:
            return "the tensors are on the CPU; move them to a CUDA device or set TRITON_INTERPRET=1"
        dev = torch.device("cuda")
    if dev.type != "cuda":
        return f"Triton kernels need CUDA tensors, got {dev}"
    if fp8:
        major, minor = torch.cuda.get_device_capability(dev)
        if (major, minor) < (8, 9):
            return f"FP8 tl.dot needs compute capability 8.9+ (Ada/Hopper), this GPU is sm_{major}{minor}"
    return None


def require_triton(device: "torch.device", fp8: bool = False) -> None:
    """Raise PluginUnavailable with the reason if the kernels cannot run on ``device``."""
    problem = triton_problem(device, fp8)
    if problem:
        raise PluginUnavailable(problem, "use the op's *_reference() implementation, or run where Triton can")


_POISON: contextvars.ContextVar[bool] = contextvars.ContextVar("k2trt_plugins_poison", default=False)


@contextlib.contextmanager
def poison_outputs() -> Any:
    """Within this block every buffer the wrappers allocate (outputs and intermediates) starts as NaN (-1 for
    integers), so an element a kernel forgets to write cannot pass a comparison by inheriting stale memory."""
    token = _POISON.set(True)
    try:
        yield
    finally:
        _POISON.reset(token)


def empty(*shape: int, dtype: "torch.dtype", device: "torch.device") -> "torch.Tensor":
    """``torch.empty``, NaN/-1-filled under ``poison_outputs()``."""
    import torch

    t = torch.empty(*shape, dtype=dtype, device=device)
    if _POISON.get():
        t.fill_(float("nan") if t.is_floating_point() else -1)
    return t


def load_kernels(module: str) -> Any:
    """Import a ``_*_kernel`` module (the one place that imports triton), after checking that it can run."""
    return importlib.import_module(f"{__package__}.{module}")


# ---- input checks: ValueError naming the argument and the offending value ----------------------------------------


def check_tensor(name: str, t: Any, ndim: int | None = None, dtypes: "Sequence[torch.dtype] | None" = None,
                 shape: Sequence[int | None] | None = None, contiguous_last: bool = True) -> None:
    """Raise ValueError unless ``t`` is a tensor of ``ndim`` dims, one of ``dtypes``, matching ``shape`` (None = any),
    with unit stride on its last dimension."""
    import torch

    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
    if dtypes is not None and t.dtype not in dtypes:
        raise ValueError(f"{name} has dtype {t.dtype}, expected one of {', '.join(str(d) for d in dtypes)}")
    if shape is not None:
        want = tuple(shape)
        if len(want) != t.dim() or any(w is not None and w != s for w, s in zip(want, t.shape)):
            parts = ["*" if w is None else str(w) for w in want]
            pretty = f"({parts[0]},)" if len(parts) == 1 else f"({', '.join(parts)})"
            raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {pretty}")
    if contiguous_last and t.dim() and t.shape[-1] > 1 and t.stride(-1) != 1:
        raise ValueError(f"{name} must have stride 1 on its last dimension, got strides {t.stride()}; "
                         "call .contiguous() first")


def check_same_device(**tensors: "torch.Tensor") -> "torch.device":
    """Raise ValueError unless every tensor is on one device; return it."""
    devices = {str(t.device) for t in tensors.values()}
    if len(devices) > 1:
        where = ", ".join(f"{k}={t.device}" for k, t in tensors.items())
        raise ValueError(f"tensors are on different devices: {where}")
    return next(iter(tensors.values())).device


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())
