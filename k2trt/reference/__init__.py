"""The PyTorch reference K2: the verification path's engine (DESIGN.md).

Owns ``model.py`` (one readable file: the forward pass; weights come from ``checkpoint.reader``),
``generate.py`` (sampling and generation), ``parallel.py`` (each rank's shard under torch.distributed/gloo, launched
by mpirun), ``verify.py`` (the checks behind ``k2trt verify``), ``oracle.py`` (transformers' DeepseekV3 as an
independent oracle), ``plugins.py`` (the Triton kernels in the forward pass), ``calibrate.py`` (activation amax for
``convert --calib-data``) and ``serve.py`` (the reference HTTP server). It reads checkpoints only through
``checkpoint.reader``; ``checkpoint`` never imports this package.
Modules here import torch, except ``serve``'s module level (its argv and parser are spelled on login nodes by the
bundle builder; the engine imports wait for ``main``); nothing else on a login-node path (spec, mapping, plan,
trtllm, launch, bundle, commands) may import them at module level.
"""

DEFAULT_TIMEOUT_S = 120.0
"""Collective timeout of the reference engine's ranks: a dead peer ends the job instead of hanging it."""
