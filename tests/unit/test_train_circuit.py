"""The hand-wired copying circuit (``k2trt/train/circuit.py``): the tiny K2 copies repeated random strings before
any training step, and its previous-token head holds over the corpus's longest sequences."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from k2trt.reference.model import apply_rope
from k2trt.train.circuit import width
from k2trt.train.render import tiny_spec
from k2trt.train.weights import TrainableK2


def _repeats(seed: int, rows: int = 12, width_: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of a random 8-32-token string repeated three times; the mask marks the tokens a copier can predict."""
    rng = random.Random(seed)
    toks, mask = torch.zeros(rows, width_, dtype=torch.long), torch.zeros(rows, width_, dtype=torch.bool)
    for b in range(rows):
        n = rng.randint(8, 32)
        s = [rng.randrange(10, 910) for _ in range(n)]
        ids = ([1] + s * 3)[:width_]
        toks[b, :len(ids)] = torch.tensor(ids)
        mask[b, n + 2:len(ids)] = True
    return toks, mask


def _copy_accuracy(k2: TrainableK2) -> float:
    toks, mask = _repeats(7)
    with torch.no_grad():
        logits = k2.model(toks)
    pred, nxt = logits[:, :-1].argmax(-1)[mask[:, 1:]], toks[:, 1:][mask[:, 1:]]
    return float((pred == nxt).float().mean())


@pytest.fixture(scope="module")
def wired() -> TrainableK2:
    return TrainableK2(tiny_spec(), 0, circuit=True)


def test_the_wired_model_copies_before_training_and_the_random_one_does_not(wired: TrainableK2) -> None:
    assert _copy_accuracy(wired) >= 0.8
    assert _copy_accuracy(TrainableK2(tiny_spec(), 0)) <= 0.05


def test_previous_token_head_over_the_longest_training_sequence(wired: TrainableK2) -> None:
    """Layer 0, head 0 puts most of each query's attention on the position before it, up to 1,024 tokens (the
    corpus's ``max_len``): the rope score's later peaks stay well below the first."""
    spec, m = tiny_spec(), wired.model
    n, r, c, s = spec.qk_nope_head_dim, spec.qk_rope_head_dim, spec.kv_lora_rank, 1024
    at = m.layers[0].attn
    with torch.no_grad():
        x = m.layers[0].attn_norm(F.embedding(torch.randint(10, 900, (s,), generator=torch.Generator().manual_seed(3)),
                                              m.embed))
        q = F.linear(at.q_norm(F.linear(x, at.wq_a)), at.wq_b).view(s, -1, n + r)[:, 0, n:]
        k_pe = F.linear(x, at.wkv_a)[:, c:]
        f = torch.arange(s).float()[:, None] * m.inv_freq
        cos, sin = f.cos() * m.rope_mult, f.sin() * m.rope_mult
        scores = (apply_rope(q, cos, sin) @ apply_rope(k_pe, cos, sin).T) * spec.softmax_scale
        probs = scores.masked_fill(torch.ones(s, s, dtype=torch.bool).triu(1), float("-inf")).softmax(-1)
    prev = probs[torch.arange(1, s), torch.arange(s - 1)]
    assert float(prev.mean()) >= 0.85 and float(prev.min()) >= 0.5
    assert width(spec) == 127
