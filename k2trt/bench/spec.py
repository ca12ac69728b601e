"""``BenchSpec``: one benchmark sweep, as written in a recipe's ``bench:`` section.

The conventions follow the published serving benchmarks (TensorRT-LLM's aiperf scripts, Dynamo's perf recipes):
fixed ISL/OSL per point with ``ignore_eos`` so every request generates exactly OSL tokens, a warm-up of about one
request per concurrent slot, and 5–10 × concurrency measured requests per point. The YAML keys are the field
names below; ``BenchSpec.from_dict`` rejects anything else with a did-you-mean.

Example (a recipe's ``bench:`` section)::

    bench:
      endpoint: chat
      streaming: true
      isl_osl: [[1024, 1024], [8192, 1024]]
      concurrency: [1, 2, 4, 8, 16, 32, 64, 128, 256]
      request_multiplier: 8
      gpus: 16
      model: kimi-k2
"""

from __future__ import annotations

import difflib
import math
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any, Literal, Mapping, get_args

from k2trt.errors import ConfigError

EndpointKind = Literal["chat", "completions"]
ENDPOINT_KINDS: tuple[str, ...] = get_args(EndpointKind)


@dataclass(frozen=True)
class Point:
    """One measured point of a sweep: a fixed ISL/OSL at a fixed concurrency."""

    isl: int
    osl: int
    concurrency: int
    requests: int
    warmup: int

    @property
    def key(self) -> tuple[int, int, int]:
        """``(isl, osl, concurrency)``: how results and baselines are matched."""
        return (self.isl, self.osl, self.concurrency)

    @property
    def name(self) -> str:
        """Folder name of this point's artifacts, e.g. ``isl1024_osl1024_c8``."""
        return f"isl{self.isl}_osl{self.osl}_c{self.concurrency}"


@dataclass(frozen=True)
class BenchSpec:
    """A sweep over ISL/OSL pairs × concurrency levels against one OpenAI-compatible endpoint."""

    endpoint: EndpointKind = "chat"
    """API to drive: ``chat`` (``/v1/chat/completions``) or ``completions`` (``/v1/completions``)."""
    streaming: bool = True
    """Stream responses (SSE). Needed for TTFT and inter-token latency; without it only end-to-end latency exists."""
    isl_osl: tuple[tuple[int, int], ...] = ((1024, 1024),)
    """(input tokens, output tokens) pairs; each pair is swept over every concurrency level."""
    concurrency: tuple[int, ...] = (1, 4, 16, 64)
    """Concurrent requests kept in flight, one point per value (ascending)."""
    request_multiplier: int = 8
    """Measured requests per point = request_multiplier × concurrency (the field's convention is 5–10)."""
    warmup: int | None = None
    """Warm-up requests per point, excluded from the metrics; None = one per concurrent slot (= concurrency)."""
    gpus: int = 1
    """GPUs serving the endpoint; output tokens/s is divided by this for the per-GPU figures."""
    model: str | None = None
    """Served model name sent in requests; None = the first model the endpoint lists at ``/v1/models``."""
    seed: int = 0
    """Random seed of the synthetic prompts, so two runs send the same requests."""
    ignore_eos: bool = True
    """Ask the server to ignore end-of-sequence so every request generates exactly OSL tokens."""
    server_token_count: bool = True
    """Count tokens from the server's ``usage`` fields instead of re-tokenising the returned text (the model's
    tokenizer still generates the prompts). Turn off only for a server that reports no usage."""
    request_timeout_s: float = 600.0
    """Seconds one request may take before it counts as failed."""
    point_timeout_s: float = 3600.0
    """Seconds one point (one aiperf run, start-up included) may take before it is killed and marked failed."""
    ready_timeout_s: float = 300.0
    """Seconds to wait for ``/v1/models`` to list the model before the sweep starts."""
    extra_args: tuple[str, ...] = ()
    """Further aiperf ``profile`` arguments appended to every point, verbatim (no shell)."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Cross-field checks; raises ``ConfigError`` naming the field and the fix."""
        if self.endpoint not in ENDPOINT_KINDS:
            raise ConfigError(f"bench.endpoint={self.endpoint!r} is not one of {', '.join(ENDPOINT_KINDS)}")
        if not self.isl_osl:
            raise ConfigError("bench.isl_osl is empty", "give at least one [isl, osl] pair, e.g. [[1024, 1024]]")
        for isl, osl in self.isl_osl:
            if isl < 1 or osl < 1:
                raise ConfigError(f"bench.isl_osl has [{isl}, {osl}]", "both lengths must be at least 1 token")
        if len(set(self.isl_osl)) != len(self.isl_osl):
            raise ConfigError("bench.isl_osl lists a pair twice", "remove the duplicate pair")
        if not self.concurrency:
            raise ConfigError("bench.concurrency is empty", "give at least one level, e.g. [1, 4, 16]")
        if any(c < 1 for c in self.concurrency):
            raise ConfigError(f"bench.concurrency={list(self.concurrency)} has a value below 1")
        if list(self.concurrency) != sorted(set(self.concurrency)):
            raise ConfigError(f"bench.concurrency={list(self.concurrency)} is not strictly ascending",
                              "list each level once, smallest first")
        for name in ("request_multiplier", "gpus"):
            if getattr(self, name) < 1:
                raise ConfigError(f"bench.{name}={getattr(self, name)} must be at least 1")
        if self.warmup is not None and self.warmup < 0:
            raise ConfigError(f"bench.warmup={self.warmup} is negative", "use 0 for no warm-up or null for auto")
        for name in ("request_timeout_s", "point_timeout_s", "ready_timeout_s"):
            v = getattr(self, name)
            if not (v > 0 and math.isfinite(v)):
                raise ConfigError(f"bench.{name}={v} must be a positive number of seconds")
        if self.model is not None and not self.model.strip():
            raise ConfigError("bench.model is empty", "give the served model name or leave it out (auto)")

    def points(self) -> list[Point]:
        """Every point of the sweep: ISL/OSL pairs in recipe order, concurrency ascending within each."""
        return [Point(isl, osl, c, self.request_multiplier * c, c if self.warmup is None else self.warmup)
                for isl, osl in self.isl_osl for c in self.concurrency]

    def to_dict(self) -> dict[str, Any]:
        """The YAML/JSON form (lists, not tuples); ``BenchSpec.from_dict(s.to_dict()) == s``."""
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "isl_osl":
                v = [list(p) for p in v]
            elif isinstance(v, tuple):
                v = list(v)
            out[f.name] = v
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, *, where: str = "bench") -> "BenchSpec":
        """Build a spec from a recipe's ``bench:`` mapping, rejecting unknown keys and wrong types.

        Args:
            data: the mapping (``None`` or ``{}`` gives the defaults).
            where: how the section is named in error messages (e.g. ``recipes/tiny-cpu.yaml: bench``).

        Returns:
            The validated ``BenchSpec``.

        Example:
            >>> BenchSpec.from_dict({"isl_osl": [[16, 8]], "concurrency": [1, 2]}).points()[1].requests
            16
        """
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise ConfigError(f"{where} must be a mapping of keys to values, not {type(data).__name__}")
        known = {f.name: f for f in fields(cls)}
        for key in data:
            if key not in known:
                close = difflib.get_close_matches(str(key), list(known), n=1)
                hint = f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(known)}"
                raise ConfigError(f"{where}: unknown key {key!r}", hint)
        kw: dict[str, Any] = {}
        for key, value in data.items():
            kw[key] = _convert(key, value, known[key].default, where)
        return cls(**kw)


def _convert(key: str, value: Any, default: Any, where: str) -> Any:
    """Check and convert one YAML value to the field's type (YAML gives lists, ints for floats, etc.)."""
    def bad(expected: str) -> ConfigError:
        return ConfigError(f"{where}.{key}={value!r} is not {expected}")

    if default is MISSING:  # every field has a default; kept for safety if one is added without
        raise bad("settable")
    if key == "isl_osl":
        if not isinstance(value, (list, tuple)):
            raise bad("a list of [isl, osl] pairs")
        pairs = []
        for item in value:
            if isinstance(item, Mapping) and set(item) == {"isl", "osl"}:
                item = (item["isl"], item["osl"])
            if not (isinstance(item, (list, tuple)) and len(item) == 2 and all(_is_int(x) for x in item)):
                raise bad("a list of [isl, osl] integer pairs (or {isl: N, osl: M} mappings)")
            pairs.append((int(item[0]), int(item[1])))
        return tuple(pairs)
    if key == "concurrency":
        if _is_int(value):
            return (int(value),)
        if not (isinstance(value, (list, tuple)) and all(_is_int(x) for x in value)):
            raise bad("a list of integers")
        return tuple(int(x) for x in value)
    if key == "extra_args":
        if isinstance(value, str):
            raise bad("a list of strings (one argument each, no shell quoting)")
        if not (isinstance(value, (list, tuple)) and all(isinstance(x, (str, int, float)) for x in value)):
            raise bad("a list of strings")
        return tuple(str(x) for x in value)
    if key in ("model",):
        if value is not None and not isinstance(value, str):
            raise bad("a string or null")
        return value
    if key == "warmup":
        if value is not None and not _is_int(value):
            raise bad("an integer or null")
        return None if value is None else int(value)
    if key == "endpoint":
        if value not in ENDPOINT_KINDS:
            raise ConfigError(f"{where}.endpoint={value!r} is not one of {', '.join(ENDPOINT_KINDS)}")
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if isinstance(default, int):
        if not _is_int(value):
            raise bad("an integer")
        return int(value)
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a number")
        return float(value)
    return value


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def load_bench_section(path: str | Path, *, recipe: bool = False) -> BenchSpec:
    """Read the ``bench:`` section of a YAML file (a recipe, or a file holding only that section).

    Args:
        path: the YAML file.
        recipe: the file is a whole recipe: it must have a ``bench:`` key, and its other sections (owned by other
            schemas) are not read here. Otherwise a file without ``bench:`` is taken as the section itself.

    Returns:
        The validated ``BenchSpec``.
    """
    import yaml

    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{p} does not exist", "pass a YAML file with a bench: section") from None
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{p} is not readable YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p} does not hold a YAML mapping", "write a bench: section (see k2trt bench --help)")
    if "bench" in data:
        return BenchSpec.from_dict(data["bench"], where=f"{p}: bench")
    if recipe:
        raise ConfigError(f"recipe {p} has no bench: section", "add one (see k2trt bench --help) or use --spec")
    return BenchSpec.from_dict(data, where=str(p))
