"""TensorRT-LLM's Prometheus surface: where ``trtllm-serve`` serves it and the metric names k2trt reads.

``trtllm-serve`` mounts Prometheus at ``/prometheus/metrics`` only when the extra-llm-api YAML sets
``return_perf_metrics: true`` (``tensorrt_llm/serve/openai_server.py``: ``register_routes`` → ``mount_metrics``,
NVIDIA/TensorRT-LLM@00057725d9a6591f033e44f31c219e2426827bb7); its own ``/metrics`` is JSON iteration stats
(reference/trtllm.md §1.3). k2trt's bundles set the key (``render.EngineOptions.prometheus``). The names are
``tensorrt_llm/metrics/collector.py`` (``MetricsCollector``,
NVIDIA/TensorRT-LLM@050f80def8df236e326949c8bd9dee10fd896a83), labels ``model_name`` and ``engine_type``;
per-request histograms and token counters come from finished requests (each series created at the first request
that touches it), the gauges from iteration stats (``enable_iter_perf_stats``). The set depends on the release: a
name a release lacks is simply absent from the scrape.
"""

from __future__ import annotations

PROMETHEUS_PATH = "/prometheus/metrics"
"""trtllm-serve's Prometheus endpoint (with ``return_perf_metrics: true``)."""

TIME_TO_FIRST_TOKEN = "trtllm_time_to_first_token_seconds"
"""Histogram, per request."""
TIME_PER_OUTPUT_TOKEN = "trtllm_time_per_output_token_seconds"
"""Histogram, per request: the engine's inter-token latency."""
E2E_REQUEST_LATENCY = "trtllm_e2e_request_latency_seconds"
"""Histogram, per request."""
PROMPT_TOKENS = "trtllm_prompt_tokens_total"
"""Counter of prompt tokens processed."""
GENERATION_TOKENS = "trtllm_generation_tokens_total"
"""Counter of generated tokens."""
NUM_REQUESTS_RUNNING = "trtllm_num_requests_running"
"""Gauge (iteration stats)."""
KV_CACHE_UTILIZATION = "trtllm_kv_cache_utilization"
"""Gauge in [0, 1] (iteration stats)."""
