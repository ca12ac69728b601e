"""``trtllm-serve disaggregated``: the router YAML and its argv (trtllm.md §1.2).

The router config lists the context and generation servers by ``host:port`` URL (their count must equal
``num_instances``); each worker is an ordinary ``trtllm-serve serve`` with a per-role extra-llm-api YAML carrying
``cache_transceiver_config`` (render.llm_options with ``role``). The router is started with
``trtllm-serve disaggregated -c disagg.yaml``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from k2trt.errors import ConfigError
from k2trt.trtllm.render import SERVE_EXE


@dataclass(frozen=True)
class RoleServers:
    """One role's servers: their URLs and per-instance parallel sizes."""

    urls: tuple[str, ...]
    """``host:port`` of each instance."""
    tp: int
    """Tensor-parallel size of each instance."""
    pp: int = 1
    """Pipeline stages of each instance."""


def disagg_config(ctx: RoleServers, gen: RoleServers, *, hostname: str = "0.0.0.0", port: int = 8000,
                  router: str = "round_robin") -> dict[str, Any]:
    """The router YAML as a dict.

    Example: ``disagg_config(RoleServers(("h1:8001",), 8), RoleServers(("h2:8002",), 8))["context_servers"]``.
    """
    for role, s in (("context", ctx), ("generation", gen)):
        if not s.urls:
            raise ConfigError(f"disaggregated serving needs at least one {role} server")
        for u in s.urls:
            host, _, p = u.rpartition(":")
            if not host or not p.isdigit():
                raise ConfigError(f"{role} server {u!r} is not host:port")

    def section(s: RoleServers) -> dict[str, Any]:
        return {"num_instances": len(s.urls), "urls": list(s.urls), "tensor_parallel_size": s.tp,
                "pipeline_parallel_size": s.pp, "router": {"type": router}}

    # No ``backend`` key: the router reads any top-level key it has no parameter for as an LLM-API argument of both
    # roles, and ``backend`` is a deprecated one in every profile (the PyTorch backend is TorchLlmArgs' only value).
    return {"hostname": hostname, "port": port, "context_servers": section(ctx), "generation_servers": section(gen)}


def router_argv(config_path: str) -> list[str]:
    """``trtllm-serve disaggregated -c PATH``."""
    return [SERVE_EXE, "disaggregated", "-c", config_path]
