"""Training the tiny K2: a killed run resumes to bit-identical weights, the FP8-aware steps make the exported
checkpoint exactly the trained model, and the router bias balances load. Small configurations, real files."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from k2trt.checkpoint.reader import CheckpointReader
from k2trt.errors import ConfigError
from k2trt.reference.model import load_model
from k2trt.train.config import TrainConfig
from k2trt.train.render import workdir_tokenizer
from k2trt.train.trainer import Run, schedule
from k2trt.train.weights import stored_value

SMALL = TrainConfig(examples=24, heldout=4, steps=4, batch_tokens=1024, warmup=2, decay_steps=2, fp8_steps=2,
                    repro_steps=2, threads=1)


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return workdir_tokenizer(tmp_path_factory.mktemp("work"))


def test_schedule_is_seeded_and_covers_the_corpus() -> None:
    lengths = [(i * 37) % 300 + 20 for i in range(100)]
    cfg = dataclasses.replace(SMALL, steps=300, batch_tokens=600)
    a, b = schedule(lengths, cfg), schedule(lengths, cfg)
    assert len(a) == 300 and a == b and a != schedule(lengths, dataclasses.replace(cfg, seed=1))
    flat = [i for batch in a for i in batch]
    assert sorted(flat[:100]) == list(range(100)) == sorted(flat[100:200])  # each epoch sees every sequence once
    assert all(max(lengths[i] for i in batch) * len(batch) <= 600 or len(batch) == 1 for batch in a)


def test_killed_run_resumes_bit_identical(tok, tmp_path) -> None:
    straight = Run.start(SMALL, tok)
    losses = [straight.train_step() for _ in range(SMALL.steps)]
    assert losses[-1] < losses[0]

    first = Run.start(SMALL, tok, corpus=straight.corpus)
    for _ in range(3):  # past the start of the FP8-aware steps
        first.train_step()
    first.save(tmp_path / "state.pt")
    del first
    second = Run.start(SMALL, tok, corpus=straight.corpus)
    second.restore(tmp_path / "state.pt")
    assert second.step == 3 and second.resumed == 1
    while second.step < SMALL.steps:
        second.train_step()
    assert second.losses == losses
    a, b = straight.k2.state(), second.k2.state()
    assert all(torch.equal(a[n], b[n]) for n in a)

    other = Run.start(dataclasses.replace(SMALL, lr=1e-3), tok, corpus=straight.corpus)
    with pytest.raises(ConfigError, match="another configuration"):
        other.restore(tmp_path / "state.pt")


def test_a_run_lengthened_before_its_decay_ends_as_a_fresh_longer_run(tok, tmp_path) -> None:
    short, long = dataclasses.replace(SMALL, steps=5), dataclasses.replace(SMALL, steps=7)
    fresh = Run.start(long, tok)
    while fresh.step < long.steps:
        fresh.train_step()
    first = Run.start(short, tok, corpus=fresh.corpus)
    for _ in range(3):                                  # 5 - 2 decay steps: still at the constant rate
        first.train_step()
    first.save(tmp_path / "state.pt")
    first.train_step()
    first.save(tmp_path / "late.pt")
    resumed = Run.start(long, tok, corpus=fresh.corpus)
    resumed.restore(tmp_path / "state.pt")
    while resumed.step < long.steps:
        resumed.train_step()
    assert resumed.losses == fresh.losses
    a, b = fresh.k2.state(), resumed.k2.state()
    assert all(torch.equal(a[n], b[n]) for n in a)
    with pytest.raises(ConfigError, match="decay"):     # step 4 of the short run is already decaying
        Run.start(long, tok, corpus=fresh.corpus).restore(tmp_path / "late.pt")


def test_exported_fp8_checkpoint_is_the_trained_model(tok, tmp_path) -> None:
    run = Run.start(SMALL, tok)
    while run.step < SMALL.steps:
        run.train_step()
    assert run.k2.quantized
    out = run.k2.export(tmp_path / "ckpt")
    with CheckpointReader(out) as reader:
        for key, p in run.k2.params.items():
            info = run.k2.infos[key]
            want = stored_value(info, p)
            got = reader.get(*key, dtype=torch.float32)
            assert torch.equal(got, want), info.name
    x = torch.tensor([run.corpus.sequences[0][0][:64]])
    with torch.no_grad():
        trained = run.k2.model(x)                       # parametrized: computes with the stored values
        shipped = load_model(out, attn_impl="sdpa")(x)
    assert torch.allclose(trained, shipped, rtol=0, atol=1e-4)


def test_router_bias_moves_toward_underloaded_experts(tok) -> None:
    run = Run.start(SMALL, tok)
    e = run.k2.spec.n_routed_experts
    load = torch.zeros(e, dtype=torch.long)
    load[0] = 100                                       # expert 0 overloaded, the rest idle
    run.k2.balance_routers([load] * len(run.k2.gates), rate=0.01)
    for g in run.k2.gates:
        assert g.bias.tolist() == pytest.approx([-0.01] + [0.01] * (e - 1))
