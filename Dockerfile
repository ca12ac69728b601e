# k2trt on TensorRT-LLM: the production image.
# The base is the pinned TensorRT-LLM release; the tag is named here once, and
# tests/unit/test_packaging.py checks it equals k2trt.trtllm.PINNED_RELEASE.
ARG TRTLLM_RELEASE=1.3.0rc24
FROM nvcr.io/nvidia/tensorrt-llm/release:${TRTLLM_RELEASE}

# K2's tokenizer loads tiktoken.model through tiktoken.load, which needs blobfile.
RUN pip install --no-cache-dir blobfile
# A multi-node instance on Kubernetes is one mpirun on the leader pod reaching its worker pods over ssh: the leader
# needs the ssh client, the workers sshd (k2trt/k8s).
RUN apt-get update \
 && apt-get install -y --no-install-recommends openssh-client openssh-server \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/k2trt
COPY pyproject.toml README.md LICENSE ./
COPY k2trt ./k2trt
# recipes/ at the repository root links to k2trt/recipes, which ships as package data
COPY plugins ./plugins
# The image's own torch, mpi4py and Open MPI stay as they are: --no-deps, then only the pure-Python deps
# TensorRT-LLM's image may lack. Never let pip replace the container's torch.
RUN pip install --no-cache-dir --no-deps . \
 && pip install --no-cache-dir click pyyaml rich tqdm jinja2 tiktoken starlette uvicorn httpx
# k2trt convert's compiled loops (numba): the image's own numba when it has one, else the newest that fits its numpy.
RUN python -c "import numba" 2>/dev/null || pip install --no-cache-dir "numba>=0.60"

ENTRYPOINT ["k2trt"]
CMD ["--help"]
