"""The PyTorch reference K2: the verification path's engine (DESIGN.md).

Owns ``model.py`` (one readable file: the forward pass; weights come from ``checkpoint.reader``),
``generate.py`` (sampling and generation), ``parallel.py`` (each rank's shard under torch.distributed/gloo, launched
by mpirun), ``verify.py`` (the checks behind ``k2trt verify``) and ``serve.py`` (the reference HTTP server).
Modules here import torch; nothing on a login-node path (spec, mapping, plan, trtllm, launch, commands) may import
them at module level.
"""
