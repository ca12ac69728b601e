"""k2trt: Kimi K2 from its Hugging Face block-FP8 checkpoint to a benchmarked TensorRT-LLM service.

The package imports nothing heavy at import time: `k2trt --help` must work on a login node without torch.
"""

__version__ = "0.1.0"
