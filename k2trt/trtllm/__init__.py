"""The only place TensorRT-LLM names appear: schema profiles per release, the YAML linter and writer, the
``trtllm-serve`` / ``disaggregated`` argv, and ``doctor``.

The pinned release is named once, here; the Dockerfile starts from ``NGC_IMAGE``. It is the newest release whose
CLI and YAML facts shared/reference/trtllm.md documents (the rendered 1.3.0rc7 ``trtllm-serve`` docs: ``--config``,
``--tool_parser`` with ``kimi_k2``, the main-branch ``TorchLlmArgs``), schema profile ``main``.
Imports no torch; ``doctor`` imports ``tensorrt_llm`` only when asked and only if it is installed.
"""

from __future__ import annotations

PINNED_RELEASE = "1.3.0rc7"
"""The TensorRT-LLM release k2trt targets by default."""

NGC_IMAGE = f"nvcr.io/nvidia/tensorrt-llm/release:{PINNED_RELEASE}"
"""The container image for the pinned release (Dockerfile ``FROM``)."""
