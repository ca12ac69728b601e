"""Checkpoint toolkit: safetensors headers and index (files), HF tensor names (names), block-FP8 math (fp8),
the tiny-K2 synthesizer (synth), inspection (inspect) and conversion (convert).

Owns every HF tensor name. Modules here import torch inside functions only, so headers can be read on a login node.
"""
