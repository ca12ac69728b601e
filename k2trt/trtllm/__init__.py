"""The only place TensorRT-LLM names appear: schema profiles per release (``profiles``), the YAML linter
(``lint``) and writer (``render``), the ``trtllm-serve`` and disaggregated router argv (``render``, ``disagg``), how
a deployment's ranks are started and checked (``deploy``: the launcher wrapper, version probe, container image) and
``doctor``.

The pinned release is named once, here; the Dockerfile starts from ``NGC_IMAGE``. It is the newest release whose
own source k2trt could read at a known commit: TensorRT-LLM's published 1.3.0rc24 documentation renders that
release's ``llm_args.py`` (Sphinx viewcode) and ``trtllm-serve`` options (sphinx-click), built from commit 1cef02e;
its schema profile is ``profiles/1.3.0rc24.json`` (provenance inside). 1.3.0rc7, pinned before, has no rendered
``llm_args.py``, so its schema could not be established.
Imports no torch; ``doctor`` imports ``tensorrt_llm`` only when asked and only if it is installed.
"""

from __future__ import annotations

PINNED_RELEASE = "1.3.0rc24"
"""The TensorRT-LLM release k2trt targets by default."""

NGC_REPO = "nvcr.io/nvidia/tensorrt-llm/release"
"""NVIDIA's container repository with one image per TensorRT-LLM release."""

NGC_IMAGE = f"{NGC_REPO}:{PINNED_RELEASE}"
"""The container image for the pinned release (Dockerfile ``FROM``)."""
