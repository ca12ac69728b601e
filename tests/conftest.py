"""Shared fixtures.

``tiny_ckpt``: the tiny K2 checkpoint (``k2trt.spec.preset("tiny")``: K2's structure at CPU scale — MLA, 1 dense +
2 MoE layers, 16 experts top-4, block-FP8 with a ragged kv_a_proj, K2's tokenizer and chat template), synthesized
once per test session with seed 0 into a temporary directory. Treat it as read-only: copy it (shutil.copytree)
before damaging or converting it in place.
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from k2trt.checkpoint.synth import synthesize
    from k2trt.spec import preset

    return synthesize(preset("tiny"), tmp_path_factory.mktemp("tiny-k2") / "tiny", seed=0, preset_name="tiny")


@pytest.fixture(scope="module")
def single_thread():
    """Run a module's torch work on one thread (restored afterwards): on a few shared cores, torch's default
    thread pool oversubscribes them and halves throughput. Use with ``pytest.mark.usefixtures("single_thread")``."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
