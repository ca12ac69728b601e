"""Recipes and bundles: ``recipe`` (the deployment schema and loader, fields parsed once into typed values) and
``build`` (inspect → plan → write a self-describing bundle: config.yml, launch.json, hostfile, launch.sh,
manifest.json, PLAN.md).

Imports no torch: bundles are built on login nodes. Depends on plan/, trtllm/ (every TensorRT-LLM name and argv),
launch/ (the launch spec), bench/ (a recipe's ``bench:`` section), checkpoint/ (inspect) and the reference
server's torch-free argv (``k2trt.reference.serve.serve_argv``) — never the reverse.
"""
