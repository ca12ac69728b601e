"""Lets ``trtllm-serve --custom_module_dirs …/plugins`` work as well as ``…/plugins/k2trt_plugins``.

TensorRT-LLM imports a custom module directory as a package named after the directory. Without this file, pointing
it at ``plugins/`` would import an empty namespace package and register nothing, silently. The package itself is
``k2trt_plugins`` (see README.md); prefer passing its directory, whose name cannot collide with another ``plugins``.
"""

from __future__ import annotations

from . import k2trt_plugins  # noqa: F401  (registers torch.ops.k2trt.*)
