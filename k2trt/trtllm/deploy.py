"""Starting TensorRT-LLM on a cluster, in its own words: the per-rank command, the version probe, the container image,
the environment its ranks read.

The bundle builder decides what a deployment is (k2trt's recipe, layout, hosts); this module spells how each rank of
a TensorRT-LLM instance is started and checked, so that no TensorRT-LLM name appears outside ``k2trt/trtllm/``.

Facts relied on (shared/reference/trtllm.md):

- §3.1: ``trtllm-llmapi-launch`` (a bash script shipped with TensorRT-LLM) wraps every MPI rank of a multi-node
  ``trtllm-serve``: rank 0 runs the server, the others become MPI workers; without it only one node serves.
- The installed release is ``tensorrt_llm.__version__``; preflight compares it on every node with the bundle's.
- NGC publishes one image per release, ``nvcr.io/nvidia/tensorrt-llm/release:<version>`` (``NGC_REPO``).

k2trt's own image (the repository's ``Dockerfile``: that release image plus k2trt and sshd) is named here too,
``project_image``: Kubernetes pods and the README's ``docker build -t`` use the same name.
"""

from __future__ import annotations

from k2trt import __version__
from k2trt.layout import Layout
from k2trt.trtllm import NGC_REPO, PINNED_RELEASE
from k2trt.trtllm.render import serve_argv

LLMAPI_LAUNCH = "trtllm-llmapi-launch"
"""The wrapper every rank of a TensorRT-LLM instance runs under (trtllm.md §3.1)."""
VERSION_PROBE = ("python3", "-c", "import tensorrt_llm; print(tensorrt_llm.__version__)")
"""A command that prints the TensorRT-LLM version installed on a node (run by preflight over ssh)."""
ENV_FORWARD = ("NCCL_*", "UCX_*", "HF_*", "TRTLLM_*", "TLLM_*")
"""Launching-environment variables (``PREFIX_*`` patterns) every rank gets: TensorRT-LLM's own switches
(``TRTLLM_*``, ``TLLM_*``), those of the libraries it runs its collectives and KV transfers on (NCCL, UCX), and Hugging
Face's (model loading). The launcher's default ``env_forward`` (``k2trt.launch.spec.DEFAULT_ENV_FORWARD``)."""
EPLB_SHM_VAR, EPLB_SHM_DEFAULT = "TRTLLM_EPLB_SHM_NAME", "moe_shared"
"""The variable naming the /dev/shm segments online EPLB shares expert weights through, and its default (trtllm.md
§3.4: segments ``/dev/shm/moe_shared_*`` outlive a crash)."""


def container_image(version: str) -> str:
    """The NGC image of a release, e.g. ``nvcr.io/nvidia/tensorrt-llm/release:1.3.0rc7`` (Slurm/pyxis, Dockerfile)."""
    return f"{NGC_REPO}:{version}"


PROJECT_IMAGE_REPO = "k2trt"
"""Repository name of the image built from k2trt's Dockerfile; a cluster pushes it to its registry and names the
full reference in a recipe's ``k8s.image``."""


def project_image(version: str | None = None) -> str:
    """The image built from k2trt's Dockerfile for a release: ``k2trt:<k2trt version>-trtllm<release>``.

    Args:
        version: the TensorRT-LLM release the image is built on (the Dockerfile's ``TRTLLM_RELEASE`` build
            argument); None: the pinned one.
    Returns:
        The image reference, the tag the README's ``docker build -t`` gives.
    Example:
        >>> project_image("1.3.0rc24")
        'k2trt:0.1.0-trtllm1.3.0rc24'
    """
    return f"{PROJECT_IMAGE_REPO}:{__version__.replace('+', '-')}-trtllm{version or PINNED_RELEASE}"


def rank_argv(model_dir: str, layout: Layout, *, config_path: str, gpus_per_node: int, host: str, port: int,
              tool_parser: bool, version: str | None = None, server_role: str | None = None) -> tuple[str, ...]:
    """The command every rank of one TensorRT-LLM instance runs: ``trtllm-llmapi-launch trtllm-serve serve …``.

    Args:
        model_dir: checkpoint directory as every node sees it.
        layout: the instance's parallel layout (its resolved expert-parallel size is passed explicitly).
        config_path: the extra-llm-api YAML.
        gpus_per_node, host, port: placement and the HTTP address of rank 0.
        tool_parser: ask for K2's tool parser (only where the release has one).
        version: the TensorRT-LLM release the argv is spelled for (None: the pinned one).
        server_role: ``context`` / ``generation`` for a disaggregated worker, else None.
    Returns:
        The argv as a tuple.
    Example:
        >>> rank_argv("/m", Layout(16, 8), config_path="c.yml", gpus_per_node=8, host="0.0.0.0", port=8000,
        ...           tool_parser=True)[:3]
        ('trtllm-llmapi-launch', 'trtllm-serve', 'serve')
    """
    m = layout.mapping(gpus_per_node)
    inner = serve_argv(model_dir, config_path=config_path, tp=layout.tp, ep=m.ep, pp=layout.pp,
                       gpus_per_node=gpus_per_node, host=host, port=port, tool_parser=tool_parser,
                       server_role=server_role, version=version)
    return (LLMAPI_LAUNCH, *inner)
