"""Launching and supervising a served engine on one or many nodes.

Owns: the build→launch contract (``spec.LaunchSpec``, stored as ``BUNDLE/launch.json``), host lists
(``hosts``), mpirun argv per MPI flavour (``mpi``), the Slurm batch script (``slurm``), preflight checks
(``preflight``), process-group supervision with readiness, teardown and detach (``process``), the watchdog that
ends a job whose supervisor was killed (``watchdog``), the state file behind ``status`` / ``stop`` (``state``), and the
job's JSON log lines (``joblog``).

Must not import torch (it runs on login nodes) and must not spell TensorRT-LLM flags: the per-rank argv of the
engine arrives ready-made in the spec, written by the bundle builder.
"""

from __future__ import annotations
