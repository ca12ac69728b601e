"""Shared fixtures.

``family_dir``: ``family_dir(name)`` is a tokenizer-only model directory of a K2 chat family (K2's tokenizer files
with the family's template and think tokens), made once per family per session; read-only like ``tiny_ckpt``.

``tiny_ckpt``: the tiny K2 checkpoint (``k2trt.spec.preset("tiny")``: K2's structure at CPU scale — MLA, 1 dense +
2 MoE layers, 16 experts top-4, block-FP8 with a ragged kv_a_proj, K2's tokenizer and chat template), synthesized
once per test session with seed 0 into a temporary directory. Treat it as read-only: copy it (shutil.copytree)
before damaging or converting it in place.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from k2trt.checkpoint.synth import synthesize
    from k2trt.spec import preset

    return synthesize(preset("tiny"), tmp_path_factory.mktemp("tiny-k2") / "tiny", seed=0, preset_name="tiny")


@pytest.fixture(scope="session")
def family_dir(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    from k2trt.chat import vocab
    from k2trt.chat.thinking import write_family_files

    made: dict[str, Path] = {}

    def make(family: str) -> Path:
        if family not in made:
            d = tmp_path_factory.mktemp(family)
            vocab.write_tokenizer_files(d)
            write_family_files(d, family)
            made[family] = d
        return made[family]

    return make


@pytest.fixture(scope="module")
def single_thread():
    """Run a module's torch work on one thread (restored afterwards): on a few shared cores, torch's default
    thread pool oversubscribes them and halves throughput. Use with ``pytest.mark.usefixtures("single_thread")``."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
