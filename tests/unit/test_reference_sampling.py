"""The reference engine's sampler and generation loop against hostile values: a vanishing temperature is greedy,
values the sampler cannot represent are refused by name, a failure inside one row ends that row only, and a
cancelled row stops between decode steps while the rest of the batch goes on (real tiny-K2 weights)."""

from __future__ import annotations

import math

import pytest
import torch

from k2trt.reference.generate import SamplingParams, generate, sample_row
from k2trt.reference.model import load_model
from k2trt.sampling import SamplingValueError

pytestmark = pytest.mark.usefixtures("single_thread")
PROMPTS = [[5, 77, 300, 901], [12, 13]]


@pytest.fixture(scope="module")
def model(tiny_ckpt):
    return load_model(tiny_ckpt)


def test_vanishing_temperature_is_greedy(model) -> None:
    logits = torch.tensor([2.0, 1.9, 0.5, -1.0, -3.0])
    for t in (1e-300, 5e-324, 1e-6):
        assert sample_row(logits, t, 1.0, torch.Generator().manual_seed(1)) == 0
    greedy = generate(model, [PROMPTS[0]], SamplingParams(max_tokens=6))[0].tokens
    tiny = generate(model, [PROMPTS[0]], SamplingParams(max_tokens=6, temperature=1e-300, seed=3))[0]
    assert tiny.tokens == greedy and tiny.finish_reason == "length"


@pytest.mark.parametrize("field, value", [
    ("temperature", math.nan), ("temperature", math.inf), ("temperature", -0.5), ("temperature", "hot"),
    ("top_p", 0.0), ("top_p", 1.5), ("top_p", math.nan), ("top_k", -1), ("top_k", 2.5), ("top_k", True),
    ("seed", 2**64), ("seed", -(2**63) - 1), ("seed", 1.5), ("seed", "7"), ("max_tokens", -1),
    ("stop_ids", ("x",)), ("stop_ids", (-3,)), ("stop_ids", [1]),
])
def test_unrepresentable_sampling_values_are_refused_by_name(field: str, value: object) -> None:
    with pytest.raises(SamplingValueError) as ei:
        SamplingParams(**{field: value})  # type: ignore[arg-type]
    assert ei.value.param == {"stop_ids": "stop_token_ids"}.get(field, field)
    # the generator's whole range is accepted
    for seed in (0, 2**64 - 1, -(2**63)):
        SamplingParams(temperature=1.0, seed=seed)


def test_a_failing_row_fails_alone(model) -> None:
    alone = generate(model, [PROMPTS[1]], SamplingParams(max_tokens=5))[0]
    finished: list[int] = []

    def on_token(row: int, tok: int) -> bool:
        if row == 0:
            raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "a broken detokeniser")
        return False

    res = generate(model, PROMPTS, SamplingParams(max_tokens=5), on_token=on_token,
                   on_finish=lambda i, c: finished.append(i))
    assert res[0].finish_reason == "error" and "UnicodeDecodeError" in (res[0].error or "")
    assert res[0].tokens == [] and res[0].completion_tokens == 0
    assert res[1].tokens == alone.tokens and res[1].finish_reason == "length"
    assert sorted(finished) == [0, 1]


def test_cancelled_row_stops_between_steps(model) -> None:
    alone = generate(model, [PROMPTS[1]], SamplingParams(max_tokens=8))[0]
    seen: list[int] = []

    def on_token(row: int, tok: int) -> bool:
        seen.append(row)
        return False

    res = generate(model, PROMPTS, SamplingParams(max_tokens=8), on_token=on_token,
                   cancelled=lambda row: row == 0 and seen.count(0) >= 3)
    assert res[0].finish_reason == "cancelled" and len(res[0].tokens) == 3 and res[0].completion_tokens == 3
    assert res[1].tokens == alone.tokens and res[1].finish_reason == "length"
    assert seen.count(0) == 3  # nothing was generated for the row after it was cancelled
