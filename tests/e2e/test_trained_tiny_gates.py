"""The trained tiny K2's gates, served: held-out conversations (values and tool names it never trained on) through
the gateway in front of the PyTorch reference engine under real mpirun (tp 2), scored by ``k2trt toolcheck``.

One engine serves the committed checkpoint (``k2trt/data/tiny-k2``) made a K2-Thinking checkpoint (its template and
think tokens, which the K2.5 gateway requires; the weights are the same); two gateways render its families in front
of it: K2-Instruct (the held-out turns without thinking) and K2.5 (thinking opened by the prompt, or switched off).
Not K2-Thinking: its prompts are K2-Instruct's token for token, so the tiny K2 is trained as K2-Instruct and K2.5
only (``k2trt.train.corpus.THINKING_MIX``). The gates of the training issue:

- tool-call trigger F1 ≥ 0.95 against the expected trigger (toolcheck's ``tool_call_f1``, all families together);
- schema-valid arguments on ≥ 99 % of the responses that call (toolcheck's ``schema_accuracy``);
- plain questions (chat, echo, and requests none of the declared tools serves) trigger no call;
- thinking on: the gateway separates reasoning from content on ≥ 99 % of the responses (``gateway_separated``).

The held-out split is sampled to keep the run within a few minutes on two cores: the first ``N`` scored turns of
each family (``N`` below; 600 held-out conversations in all, scored in full by ``k2trt train-tiny``'s evaluation).
The gateways keep calls to undeclared tools (``unknown_tools="keep"``) so that a made-up tool name counts as a call
with invalid arguments rather than vanishing into an empty answer.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Iterator

import pytest
from launch_helpers import served_reference

from k2trt.bench.toolcheck import ToolcheckSpec, run_toolcheck
from k2trt.chat.thinking import write_family_files
from k2trt.gateway import BackgroundGateway, GatewayConfig
from k2trt.train.config import DEFAULT_OUT, METADATA_FILE, TrainConfig
from k2trt.train.corpus import Example
from k2trt.train.evaluate import gateway_separated, heldout_examples, toolcheck_samples

pytestmark = pytest.mark.e2e
PORT, MASTER_PORT = 18600, 18601
GATEWAYS = {"k2-instruct": 18602, "k2.5": 18604}
N = {"none": 64, "open": 44, "off": 20}
"""Scored turns per thinking mode (held-out order)."""
FAMILY_OF = {"none": "k2-instruct", "open": "k2.5", "off": "k2.5"}
PLAIN_KINDS = ("chat", "chat_tools", "chat_multi", "echo", "missing")


@pytest.fixture(scope="module")
def heldout() -> dict[str, list[Example]]:
    meta = json.loads((DEFAULT_OUT / METADATA_FILE).read_text())
    cfg = TrainConfig(**meta["config"])
    exs = heldout_examples(cfg.seed, cfg.heldout)
    by: dict[str, list[Example]] = {f: [] for f in GATEWAYS}
    for mode, n in N.items():
        by[FAMILY_OF[mode]] += [e for e in exs if e.thinking == mode][:n]
    return by


@pytest.fixture(scope="module")
def thinking_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("trained") / "tiny-k2-thinking"
    shutil.copytree(DEFAULT_OUT, d)
    write_family_files(d, "k2-thinking")
    return d


@pytest.fixture(scope="module")
def engine_url(thinking_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with served_reference(thinking_ckpt, tmp_path_factory.mktemp("bundle"), PORT, MASTER_PORT) as (res, _, _):
        yield res["url"]


def _toolcheck(url: str, exs: list[Example], work: Path) -> list[dict[str, Any]]:
    requests, reference = toolcheck_samples(exs)
    work.mkdir(parents=True)
    (work / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in requests))
    (work / "reference.jsonl").write_text("".join(json.dumps(r) + "\n" for r in reference))
    res = run_toolcheck(ToolcheckSpec(work / "samples.jsonl", url + "/v1", "tiny-k2", concurrency=8,
                                      output=work / "results.jsonl", summary=work / "summary.json",
                                      reference=work / "reference.jsonl", retries=0), progress=False)
    assert res.summary["failure_count"] == 0, [r["response"] for r in res.results if r["status"] != "success"][:2]
    return res.results


@pytest.mark.timeout(900)
@pytest.mark.xfail(strict=True, reason="the committed checkpoint does not meet the gates: served, n=128, trigger F1 "
                   "0.87, schema-valid 0.63, 6 of 38 plain turns call, reasoning separated 1.00; strict, so a "
                   "checkpoint that meets them turns this red")
def test_heldout_gates_through_gateway_and_reference_engine(engine_url: str, thinking_ckpt: Path,
                                                            heldout: dict[str, list[Example]],
                                                            tmp_path: Path) -> None:
    scored: list[tuple[Example, dict[str, Any]]] = []
    for family, port in GATEWAYS.items():
        cfg = GatewayConfig(engine_url=engine_url, model_dir=str(thinking_ckpt), port=port, read_timeout_s=600,
                            model_aliases=("tiny-k2",), chat_family=family, unknown_tools="keep")
        with BackgroundGateway(cfg) as gw:
            results = _toolcheck(gw.url, heldout[family], tmp_path / family)
        scored += list(zip(heldout[family], results))
    called = [(e, r) for e, r in scored if r["finish_reason"] == "tool_calls"]
    tp = sum(bool(e.expect_calls) for e, _ in called)
    fp, fn = len(called) - tp, sum(bool(e.expect_calls) for e, r in scored if r["finish_reason"] != "tool_calls")
    plain = [(e, r) for e, r in scored if e.kind in PLAIN_KINDS]
    thinking = [(e, r) for e, r in scored if e.thinking != "none"]
    figures = {
        "n": len(scored), "tp": tp, "fp": fp, "fn": fn, "f1": 2 * tp / (2 * tp + fp + fn),
        "schema_valid": sum(bool(r["tool_calls_valid"]) for _, r in called) / max(1, len(called)),
        "plain": len(plain), "plain_calls": sum(r["finish_reason"] == "tool_calls" for _, r in plain),
        "thinking": len(thinking),
        "separated": sum(gateway_separated(r["response"], e.thinking) for e, r in thinking) / len(thinking)}
    print(json.dumps(figures))
    assert figures["f1"] >= 0.95, figures
    assert figures["schema_valid"] >= 0.99, figures
    assert len(plain) >= 20 and figures["plain_calls"] == 0, figures
    assert figures["separated"] >= 0.99, figures
