"""Sampling-parameter rules shared by the gateway (both APIs) and the reference engine: a value a client sends is
finite, in range and representable before anything computes with it.

Why one module: the same request value passes the gateway and then the engine; both must agree on what "greedy" and
"a valid seed" mean, or a value the gateway lets through can still break the engine's sampler (a temperature of
1e-300 divides float32 logits into infinities; a seed beyond 64 bits overflows ``torch.Generator.manual_seed``).

- ``GREEDY_BELOW``: a temperature under 1e-5 samples greedily — vLLM's ``_SAMPLING_EPS`` (vllm-project/vllm
  ``vllm/v1/sample/sampler.py`` @3e342658: temperatures below it are greedy and never divide the logits).
- ``ENGINE_SEEDS``: the range ``torch.Generator.manual_seed`` accepts (−2⁶³ … 2⁶⁴−1, negatives wrap); the reference
  engine refuses anything outside it with a 400.
- ``API_SEEDS``: what the gateway forwards (0 … 2⁶³−1, a non-negative signed 64-bit integer, which every engine's
  seed type holds); ``INT32_MAX``: the largest ``top_k``/``max_tokens`` it forwards (an engine's int32 fields).

Torch-free: the gateway imports it on login nodes.
"""

from __future__ import annotations

import math
from typing import Any

GREEDY_BELOW = 1e-5
ENGINE_SEEDS = (-(2**63), 2**64 - 1)
API_SEEDS = (0, 2**63 - 1)
INT32_MAX = 2**31 - 1


class SamplingValueError(ValueError):
    """A sampling parameter that is missing its type, range or finiteness; ``param`` names the field."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


def number(value: Any, name: str, lo: float, hi: float = math.inf, *, lo_open: bool = False) -> float:
    """``value`` as a finite float in ``[lo, hi]`` (``(lo, hi]`` with ``lo_open``).

    Args:
        value: the client's value (a JSON number; booleans are not numbers here).
        name: the field, for the message and ``param``.
        lo, hi: the inclusive range (``hi`` may be ``inf``: any finite number above ``lo``).
        lo_open: exclude ``lo`` itself.

    Returns:
        The value as a float.

    Raises:
        SamplingValueError: not a number, not finite (NaN, ±Infinity, 1e400) or out of range.

    Example:
        >>> number(0.7, "temperature", 0, 2)
        0.7
    """
    ok = not isinstance(value, bool) and isinstance(value, (int, float))
    v = float(value) if ok and (isinstance(value, float) or abs(value) < 2**1000) else math.nan
    if not ok or not math.isfinite(v) or v > hi or (v <= lo if lo_open else v < lo):
        span = f"{'(' if lo_open else '['}{lo:g}, {hi:g}]" if math.isfinite(hi) else \
            f"{'>' if lo_open else '≥'} {lo:g}"
        raise SamplingValueError(f"{name} must be a finite number {'in ' if math.isfinite(hi) else ''}{span}, "
                                 f"got {_show(value)}", name)
    return v


def integer(value: Any, name: str, lo: int, hi: int | None = None) -> int:
    """``value`` as an integer in ``[lo, hi]`` (no upper bound when ``hi`` is None).

    Raises:
        SamplingValueError: not an integer (``1.0``, ``true`` and ``"3"`` are not) or out of range.

    Example:
        >>> integer(7, "seed", *API_SEEDS)
        7
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < lo or (hi is not None and value > hi):
        span = f"in [{lo}, {hi}]" if hi is not None else f"≥ {lo}"
        raise SamplingValueError(f"{name} must be an integer {span}, got {_show(value)}", name)
    return value


def temperature(value: float) -> float:
    """The temperature to sample with: ``0.0`` (greedy) below ``GREEDY_BELOW``, else ``value``.

    Example:
        >>> temperature(1e-300), temperature(0.6)
        (0.0, 0.6)
    """
    return 0.0 if value < GREEDY_BELOW else value


def _show(value: Any) -> str:
    # a client's value in a one-line message: bounded, and repr keeps lone surrogates printable
    try:
        text = repr(value)
    except ValueError:  # an integer beyond Python's digit limit for str()
        return "an integer too long to show"
    return text if len(text) <= 40 else text[:37] + "..."
