"""Planning: GPU catalog, exact per-GPU memory, KV capacity, roofline, layout enumeration and warning rules.

Owns: ``gpus`` (datasheet numbers with sources), ``layout`` (the ``tp16ep8adp`` syntax and enumeration),
``memory`` (weights per rank from the tensor inventory through :mod:`k2trt.mapping`, KV bytes/token, capacity),
``roofline`` (batch-1 decode and prefill bounds), ``rules`` (the warning table) and ``planner`` (ties them
together, ranks layouts, renders tables). Imports no torch and no TensorRT-LLM names: plans run on login nodes.
"""
