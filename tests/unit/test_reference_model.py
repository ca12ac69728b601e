"""The reference K2 against an oracle nobody here wrote: transformers' DeepseekV3ForCausalLM.

transformers has no ``kimi_k2`` model type, so the oracle loads the tiny K2's config as ``deepseek_v3`` (same
architecture) and gets weights dequantised by k2trt, because its own FP8 loader mis-dequantises K2's ragged blocks
(platform_notes.md). Everything runs in float32 on real safetensors files.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from k2trt.checkpoint.synth import synthesize
from k2trt.reference.generate import SamplingParams, generate, sample_row
from k2trt.reference.model import Transformer, load_model, rope_inv_freq
from k2trt.reference.oracle import load_transformers
from k2trt.checkpoint.reader import CheckpointReader
from k2trt.spec import preset

REL_TOL = 1e-4

pytestmark = pytest.mark.usefixtures("single_thread")


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def prompts(vocab: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    # lengths straddle nothing and everything: 1 token, short, and past YaRN's original context (256)
    return [torch.randint(0, vocab, (1, n), generator=g) for n in (1, 7, 33, 300)]


@pytest.fixture(scope="module")
def hf(tiny_ckpt, tmp_path_factory):
    return load_transformers(tiny_ckpt, tmp_path_factory.mktemp("hf32"))


@pytest.fixture(scope="module")
def models(tiny_ckpt):
    return {impl: load_model(tiny_ckpt, attn_impl=impl) for impl in ("naive", "absorb", "sdpa")}


@pytest.mark.parametrize("impl", ["naive", "absorb", "sdpa"])
def test_logits_match_transformers(models, hf, impl) -> None:
    for x in prompts(models[impl].spec.vocab_size):
        with torch.no_grad():
            want = hf(x).logits.float()
        got = models[impl](x)
        assert got.shape == want.shape
        assert rel_err(got, want) <= REL_TOL, (impl, x.shape)
        assert torch.equal(got.argmax(-1), want.argmax(-1))


def test_incremental_decode_equals_full_recompute(models, hf) -> None:
    x = prompts(models["absorb"].spec.vocab_size, seed=1)[2]          # [1, 33]
    with torch.no_grad():
        want = hf(x).logits.float()
    for impl, m in models.items():
        full = m(x)
        cache = m.new_cache(1)
        steps = [m(x[:, :20], cache)] + [m(x[:, i:i + 1], cache) for i in range(20, x.shape[1])]
        inc = torch.cat(steps, dim=1)
        assert cache.length == x.shape[1]
        assert rel_err(inc, full) <= 1e-5, impl
        assert rel_err(inc, want) <= REL_TOL, impl


def test_left_padded_batch_equals_single_rows(models) -> None:
    m = models["absorb"]
    a, b = [p[0].tolist() for p in prompts(m.spec.vocab_size, seed=2)[1:3]]  # 7 and 33 tokens
    batch = torch.tensor([[0] * (len(b) - len(a)) + a, b])
    cache = m.new_cache(2, pad=[len(b) - len(a), 0])
    out = m(batch, cache)
    assert rel_err(out[0, -len(a):], m(torch.tensor([a]))[0]) <= 1e-5
    assert rel_err(out[1], m(torch.tensor([b]))[0]) <= 1e-5
    nxt = torch.tensor([[5], [9]])
    step = m(nxt, cache)
    assert rel_err(step[0, -1], m(torch.tensor([a + [5]]))[0, -1]) <= 1e-5
    assert rel_err(step[1, -1], m(torch.tensor([b + [9]]))[0, -1]) <= 1e-5


def test_greedy_generation_matches_transformers_generate(models, hf) -> None:
    x = prompts(models["absorb"].spec.vocab_size, seed=3)[1]
    with torch.no_grad():
        want = hf.generate(x, max_new_tokens=8, do_sample=False, min_new_tokens=8)[0, x.shape[1]:].tolist()
    for m in models.values():
        got = generate(m, [x[0].tolist()], SamplingParams(max_tokens=8))[0]
        assert got.tokens == want and got.finish_reason == "length" and got.completion_tokens == 8


def test_stop_tokens_and_batching(models) -> None:
    m = models["absorb"]
    p = prompts(m.spec.vocab_size, seed=4)
    free = generate(m, [p[1][0].tolist()], SamplingParams(max_tokens=6))[0].tokens
    stop = free[2]
    first = free.index(stop)  # the stop token may also occur earlier
    res = generate(m, [p[1][0].tolist(), p[2][0].tolist()],
                   [SamplingParams(max_tokens=6, stop_ids=(stop,)), SamplingParams(max_tokens=4)])
    assert res[0].tokens == free[:first] and res[0].finish_reason == "stop"
    assert res[0].completion_tokens == first + 1
    alone = generate(m, [p[2][0].tolist()], SamplingParams(max_tokens=4))[0]
    assert res[1].tokens == alone.tokens and res[1].finish_reason == "length"


def test_sampling_is_seeded_and_top_p_narrows() -> None:
    logits = torch.tensor([2.0, 1.9, 0.5, -1.0, -3.0])
    g = lambda s: torch.Generator().manual_seed(s)  # noqa: E731
    draws = [sample_row(logits, 1.0, 1.0, g(7)) for _ in range(3)]
    assert len(set(draws)) == 1
    many = {sample_row(logits, 1.0, 1.0, g(s)) for s in range(200)}
    assert many >= {0, 1, 2}
    # top_p 0.5 keeps only the two most likely tokens (their mass is ≥ 0.5, the first alone is not)
    nucleus = {sample_row(logits, 1.0, 0.5, g(s)) for s in range(200)}
    assert nucleus == {0, 1}
    assert {sample_row(logits, 1.0, 1e-6, g(s)) for s in range(20)} == {0}
    assert sample_row(logits, 0.0, 1.0, None) == 0


def test_group_limited_routing_matches_transformers(tmp_path) -> None:
    spec = dataclasses.replace(preset("tiny"), n_group=4, topk_group=2)
    spec.validate()
    ckpt = synthesize(spec, tmp_path / "grouped", seed=3, preset_name="tiny", tokenizer=False)
    hf = load_transformers(ckpt, tmp_path / "hf")
    model = load_model(ckpt)
    assert model.spec.n_group == 4 and model.spec.topk_group == 2
    ungrouped = load_model(ckpt, spec=dataclasses.replace(spec, n_group=1, topk_group=1))
    differs = False
    for x in prompts(spec.vocab_size, seed=5)[:3]:
        with torch.no_grad():
            want = hf(x).logits.float()
        assert rel_err(model(x), want) <= REL_TOL
        differs |= rel_err(ungrouped(x), want) > 1e-3
    assert differs, "group-limited selection never changed a routing decision: the test cannot fail"


def test_bf16_checkpoint_matches_transformers(tmp_path) -> None:
    spec = preset("tiny").with_quantization(None)
    ckpt = synthesize(spec, tmp_path / "bf16", seed=0, preset_name="tiny", tokenizer=False)
    hf = load_transformers(ckpt, tmp_path / "hf")
    model = load_model(ckpt, attn_impl="naive")
    x = prompts(spec.vocab_size, seed=6)[2]
    with torch.no_grad():
        want = hf(x).logits.float()
    assert rel_err(model(x), want) <= REL_TOL


def test_sliced_fp8_reads_equal_full_dequantisation(tiny_ckpt) -> None:
    with CheckpointReader(tiny_ckpt) as r:
        full = r.get("kv_a", 0)                                      # ragged: 320 rows = 2.5 blocks
        assert torch.equal(r.get("kv_a", 0, rows=(100, 300), cols=(5, 250)), full[100:300, 5:250])
        assert torch.equal(r.get("kv_a", 0, rows=(256, 320)), full[256:320])
        r.reads.clear()
        r.get("q_b", 1, rows=(384, 768))
        assert dict(r.reads)["model.layers.1.self_attn.q_b_proj.weight"] == (384, 256)


def test_yarn_frequencies_are_corrected() -> None:
    spec = preset("tiny")
    inv, mult = rope_inv_freq(spec)
    plain, _ = rope_inv_freq(dataclasses.replace(spec, rope_scaling=None))
    # high-frequency dims are kept, low-frequency dims are divided by the YaRN factor
    assert torch.isclose(inv[0], plain[0]) and torch.isclose(inv[-1], plain[-1] / spec.yarn["factor"])
    assert mult == 1.0
    assert spec.softmax_scale > spec.qk_head_dim ** -0.5


def test_attn_impl_is_checked(tiny_ckpt) -> None:
    with pytest.raises(ValueError, match="attn_impl"):
        Transformer(preset("tiny"), lambda *a: torch.zeros(1), attn_impl="flash")  # type: ignore[arg-type]
