"""What decides a training run of the tiny K2 (``TrainConfig``) and where it keeps its files (``RunOptions``).

No torch here: the CLI reads its defaults from these dataclasses (STYLE P2) and ``k2trt --help`` must stay light.
The defaults are the run that produced the committed checkpoint (``DEFAULT_OUT``); its ``training.json`` records
them, and the reproduction test re-runs its first steps from there.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import k2trt

METADATA_FILE = "training.json"
"""The run's record inside the checkpoint directory."""
STATE_FILE = "state.pt"
"""The resumable training state inside the work directory."""
TOKENIZER_SEED = 0
"""BPE tie-break seed of the tiny tokenizer every tiny K2 ships (``synth``'s default)."""
DEFAULT_OUT = Path(k2trt.__file__).parent / "data" / "tiny-k2"
"""Where the trained tiny K2 is committed (package data: it installs with k2trt)."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides the trained weights (paths and logging are ``RunOptions``)."""

    seed: int = 0
    """Seed of the corpus, the initial weights and the batch schedule."""
    examples: int = 24_000
    """Training conversations."""
    heldout: int = 600
    """Held-out conversations the gates score (values and tool names never trained on)."""
    steps: int = 2_100
    """Optimizer steps (the committed run: 2,100 steps of 2,048 padded tokens, about 0.4 epochs of the corpus)."""
    batch_tokens: int = 2_048
    """Padded tokens per batch at most."""
    max_len: int = 1_024
    """Longer training sequences are left out (counted in the metadata)."""
    lr: float = 3e-3
    """Learning rate after the warm-up."""
    warmup: int = 100
    """Linear warm-up steps."""
    decay_steps: int = 300
    """Final steps over which the learning rate falls linearly to ``min_lr``. Before them it does not depend on
    ``steps``, so a run still short of its decay can be resumed with more (or fewer) steps and ends exactly as a
    fresh run of the new length would."""
    min_lr: float = 1e-4
    """Learning rate at the last step."""
    weight_decay: float = 0.1
    """AdamW decay on the weight matrices (not on norms)."""
    grad_clip: float = 1.0
    """Global gradient-norm clip."""
    context_weight: float = 0.25
    """Loss weight of the tokens the model does not generate (prompts, tool results; its own turns weigh 1): they
    teach the JSON, the template and, above all, copying names and values, in the compute already spent."""
    fp8_steps: int = 150
    """Final steps computed with the checkpoint's stored (block-FP8 / BF16) weights (within the decay)."""
    bias_rate: float = 1e-3
    """Router-bias balancing step per optimizer step."""
    threads: int = 2
    """torch CPU threads (fixed: the result depends on it)."""
    bf16: bool = False
    """BF16 autocast for the forward pass (float32 master weights and optimizer). Off: a CPU without BF16
    instructions (AVX2-only AMD EPYC here) emulates it at ~16x the float32 step time (65 s vs 4 s a step)."""
    copy_circuit: bool = True
    """Start from the hand-wired copying heads (``circuit.py``): without them the run never learned to copy a
    held-out name or value."""
    repro_steps: int = 3
    """Losses of this many first steps go into the metadata for the reproduction test."""

    def digest(self) -> str:
        """A short hash of every field."""
        return hashlib.sha256(json.dumps(dataclasses.asdict(self), sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class RunOptions:
    """Where a run keeps its state and how it reports (nothing here changes the weights)."""

    workdir: Path = Path("runs/train-tiny")
    """Resumable state (``state.pt``), ``train.log`` and the tokenizer the corpus is encoded with."""
    save_every_s: float = 300.0
    """Seconds between saves of the resumable state."""
    log_every: int = 10
    """Steps between progress lines."""
    restart: bool = False
    """Discard a saved state instead of resuming from it."""
    evaluate: bool = True
    """Score the held-out gates on the exported checkpoint and record them in ``training.json``."""
