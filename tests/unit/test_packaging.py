"""Packaging facts that live in two places stay equal: the Dockerfile's base image tag and the pinned TRT-LLM
release; recipes and schema profiles ship inside the package."""

from __future__ import annotations

import re
from pathlib import Path

import k2trt
from k2trt import trtllm

REPO = Path(k2trt.__file__).resolve().parent.parent


def test_dockerfile_pins_the_release_k2trt_targets() -> None:
    text = (REPO / "Dockerfile").read_text()
    tags = re.findall(r"^ARG TRTLLM_RELEASE=(\S+)$", text, re.M)
    assert tags == [trtllm.PINNED_RELEASE]
    assert "FROM nvcr.io/nvidia/tensorrt-llm/release:${TRTLLM_RELEASE}" in text
    assert "blobfile" in text and 'ENTRYPOINT ["k2trt"]' in text
    assert trtllm.NGC_IMAGE == f"nvcr.io/nvidia/tensorrt-llm/release:{trtllm.PINNED_RELEASE}"


def test_recipes_and_profiles_are_package_data() -> None:
    pkg = Path(k2trt.__file__).parent
    assert (pkg / "recipes" / "tiny-cpu.yaml").is_file()
    assert list((pkg / "trtllm" / "profiles").glob("*.json"))
    pyproject = (REPO / "pyproject.toml").read_text()
    assert '"recipes/*.yaml"' in pyproject and '"trtllm/profiles/*.json"' in pyproject
