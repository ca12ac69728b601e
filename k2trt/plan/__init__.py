"""Planning: GPU catalog, exact per-GPU memory, KV capacity, roofline, layout enumeration and warning rules.

Owns: ``gpus`` (datasheet numbers with sources), ``memory`` (weights per rank from the tensor inventory through
:mod:`k2trt.mapping`, KV bytes/token, capacity), ``roofline`` (batch-1 decode and prefill bounds), ``rules`` (the
warning table) and ``planner`` (ties them together, enumerates and ranks layouts, renders tables). A layout itself
is :class:`k2trt.layout.Layout`, shared with recipes and the reference engine. Imports no torch and no
TensorRT-LLM names: plans run on login nodes.
"""
