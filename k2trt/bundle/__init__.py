"""Recipes and bundles: ``recipe`` (the deployment schema and loader) and ``build`` (inspect → plan → write a
self-describing bundle: config.yml, launch.json, hostfile, launch.sh, manifest.json, PLAN.md).

Imports no torch: bundles are built on login nodes. Depends on plan/, trtllm/ and launch/ (never the reverse).
"""
