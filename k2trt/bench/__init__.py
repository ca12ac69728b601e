"""Benchmarks: aiperf sweeps against an OpenAI-compatible endpoint, results, plots, report and a regression gate.

Owns the ``bench:`` section of a recipe (``BenchSpec``), the aiperf command line (the only place aiperf's flags
are spelled), the parsing of aiperf's JSON export, ``results.json``, the PNG plots, ``REPORT.md`` and the
baseline comparison behind ``k2trt bench --baseline``.

Sits below ``bundle``: a recipe's ``bench:`` section is a ``BenchSpec``, so nothing here reads recipes (the
recipe loader does: ``k2trt.bundle.recipe.spec_from_recipe``). Imports no torch (it runs on login nodes and in
CI); matplotlib and httpx are imported inside the functions that need them, so ``k2trt --help`` stays light.
aiperf runs as a subprocess, never in-process.

- ``spec``: ``BenchSpec`` (one sweep: endpoint kind, ISL/OSL pairs, concurrency list, request counts, GPUs).
- ``aiperf``: argv per point, the offline tokenizer directory, running one point, parsing its export.
- ``sweep``: ``run_bench`` — readiness wait, the sweep with progress, results + plots + report + gate.
- ``results``: ``PointResult``, ``BenchResult`` (``results.json``), provenance, ``compare`` (the gate).
- ``plots`` / ``report``: PNGs (matplotlib, Agg) and ``REPORT.md``.
"""

from __future__ import annotations

from k2trt.bench.results import BenchResult, PointResult, Regression, compare
from k2trt.bench.spec import BenchSpec, Point
from k2trt.bench.sweep import run_bench

__all__ = ["BenchResult", "BenchSpec", "Point", "PointResult", "Regression", "compare", "run_bench"]
