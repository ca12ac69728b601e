"""Packaging facts that live in two places stay equal: the Dockerfile's base image tag and the pinned TRT-LLM
release; recipes and schema profiles ship inside the package."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

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


def test_pyproject_reads_without_deprecation_warnings_at_the_declared_setuptools_floor() -> None:
    """The installed setuptools reads pyproject.toml exactly as a build does; the build-system floor is the first
    release that understands the SPDX ``license`` string (76 rejects it, 77+ read it)."""
    import warnings

    import setuptools
    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution

    floor = re.search(r'"setuptools>=(\d+)"', (REPO / "pyproject.toml").read_text())
    assert floor is not None and int(floor.group(1)) >= 77
    if int(setuptools.__version__.split(".")[0]) < 77:
        pytest.skip(f"setuptools {setuptools.__version__} here predates the declared floor")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dist = apply_configuration(Distribution(), REPO / "pyproject.toml")
    assert [str(w.message).splitlines()[0] for w in caught if "setuptools" in type(w.message).__module__] == []
    assert dist.metadata.license_expression == "Apache-2.0" and dist.metadata.license_files == ["LICENSE"]


def test_the_project_image_is_named_once_and_carries_sshd() -> None:
    """k2trt's own image (what Kubernetes pods run) is named by ``trtllm.deploy.project_image`` from the pinned
    release the Dockerfile builds on; the image has the ssh client (the leader's mpirun) and sshd (the workers)."""
    from k2trt.trtllm.deploy import project_image

    text = (REPO / "Dockerfile").read_text()
    assert re.search(r"apt-get install .*openssh-client openssh-server", text)
    assert project_image() == f"k2trt:{k2trt.__version__}-trtllm{trtllm.PINNED_RELEASE}"
    assert project_image("1.2.0") == f"k2trt:{k2trt.__version__}-trtllm1.2.0"
    readme = (REPO / "README.md").read_text()
    assert "docker build -t k2trt:<k2trt version>-trtllm<release>" in readme
