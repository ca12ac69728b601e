"""The reference server under real ``mpirun -np 2`` (tp2) on the tiny K2, spoken to over real HTTP with httpx and the
openai SDK: readiness, completions (text and token ids, streamed and not), chat, stop strings, static batching, and
the failure policy (killing one rank takes the whole job down)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

import k2trt
from k2trt.chat.tokenizer import K2Tokenizer
from k2trt.reference.generate import SamplingParams, generate
from k2trt.reference.model import load_model
from k2trt.reference.parallel import mpirun_command
from launch_helpers import stop_group

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("single_thread")]
PORT, MASTER_PORT = 18330, 18331
BASE = f"http://127.0.0.1:{PORT}"
ROOT = os.path.dirname(os.path.dirname(k2trt.__file__))


@pytest.fixture(scope="module")
def server(tiny_ckpt, tmp_path_factory):
    logf = open(tmp_path_factory.mktemp("srv") / "server.log", "w+")
    rank = [sys.executable, "-m", "k2trt.reference.serve", str(tiny_ckpt), "--tp", "2", "--host", "127.0.0.1",
            "--port", str(PORT), "--served-model-name", "tiny-k2"]
    argv, environ = mpirun_command(2, rank, env={"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(MASTER_PORT),
                                                 "PYTHONPATH": ROOT})
    proc = subprocess.Popen(argv, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True, env=environ)
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, _log(logf)
            try:
                if httpx.get(f"{BASE}/health_generate", timeout=30).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "server not ready in 180 s\n" + _log(logf)
            time.sleep(1)
        yield proc
    finally:
        stop_group(proc)
        logf.close()


def _log(f) -> str:
    f.flush()
    f.seek(0)
    return f.read()[-4000:]


@pytest.fixture(scope="module")
def ref(tiny_ckpt):
    return load_model(tiny_ckpt), K2Tokenizer.from_dir(tiny_ckpt)


def expected(ref, ids: list[int], n: int):
    """(text, Completion) of a greedy request, computed in this process by the unsharded model."""
    model, tok = ref
    c = generate(model, [ids], SamplingParams(max_tokens=n, stop_ids=tok.stop_ids))[0]
    return tok.decode(c.tokens, skip_special_tokens=True), c


def sse(body: dict) -> tuple[list[dict], bool]:
    chunks, done = [], False
    with httpx.stream("POST", f"{BASE}/v1/completions", json=body, timeout=60) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if not line:
                continue
            assert line.startswith("data: ")
            if line == "data: [DONE]":
                done = True
                continue
            chunks.append(json.loads(line[6:]))
    return chunks, done


def test_models_and_health(server) -> None:
    r = httpx.get(f"{BASE}/v1/models", timeout=10).json()
    assert [m["id"] for m in r["data"]] == ["tiny-k2"]
    assert httpx.get(f"{BASE}/health", timeout=10).status_code == 200


def test_completion_from_ids_matches_the_reference_model(server, ref) -> None:
    ids = [5, 77, 300, 901, 12]
    want, c = expected(ref, ids, 8)
    r = httpx.post(f"{BASE}/v1/completions", json={"prompt": ids, "max_tokens": 8, "temperature": 0},
                   timeout=60).json()
    choice = r["choices"][0]
    assert choice["text"] == want
    assert choice["finish_reason"] == c.finish_reason
    assert r["usage"] == {"prompt_tokens": 5, "completion_tokens": c.completion_tokens,
                          "total_tokens": 5 + c.completion_tokens}

    chunks, done = sse({"prompt": ids, "max_tokens": 8, "temperature": 0, "stream": True,
                        "stream_options": {"include_usage": True}})
    assert done
    text = "".join(c["choices"][0]["text"] for c in chunks if c["choices"])
    assert text == want  # deltas concatenate to the whole text: no character was split or lost
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == choice["finish_reason"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == r["usage"]


def test_ignore_eos_gives_exactly_max_tokens(server, ref) -> None:
    _, tok = ref
    for ids in ([5, 77, 300], [tok.im_end_id], [901, 12, 44, 8]):
        body = {"prompt": ids, "max_tokens": 12, "temperature": 1.0, "seed": 7, "ignore_eos": True}
        r = httpx.post(f"{BASE}/v1/completions", json=body, timeout=60).json()
        assert r["usage"]["completion_tokens"] == 12 and r["choices"][0]["finish_reason"] == "length"
    bad = httpx.post(f"{BASE}/v1/completions", json={"prompt": [5], "ignore_eos": "yes"}, timeout=60)
    assert bad.status_code == 400 and "ignore_eos" in bad.text


def test_text_prompt_allows_special_tokens(server, ref) -> None:
    _, tok = ref
    prompt = "hello<|im_end|>"
    ids = tok.encode_with_specials(prompt)
    assert tok.im_end_id in ids
    want, _ = expected(ref, ids, 6)
    client = openai.OpenAI(base_url=f"{BASE}/v1", api_key="none")
    r = client.completions.create(model="tiny-k2", prompt=prompt, max_tokens=6, temperature=0)
    assert r.choices[0].text == want and r.usage.prompt_tokens == len(ids)
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="tiny-k2", prompt=prompt, max_tokens=6, temperature=0, stream=True) if c.choices)
    assert streamed == want


def test_stop_string_cuts_and_reports(server, ref) -> None:
    ids = [9, 8, 7, 6, 5, 4]
    full, _ = expected(ref, ids, 12)
    stop = next(full[i:i + 2] for i in range(2, len(full) - 2) if full[i:i + 2].strip() and "\ufffd" not in
                full[i:i + 2])
    body = {"prompt": ids, "max_tokens": 12, "temperature": 0, "stop": [stop]}
    r = httpx.post(f"{BASE}/v1/completions", json=body, timeout=60).json()["choices"][0]
    assert r["text"] == full[:full.find(stop)] and r["finish_reason"] == "stop" and r["stop_reason"] == stop
    chunks, _ = sse({**body, "stream": True})
    assert "".join(c["choices"][0]["text"] for c in chunks) == r["text"]


def test_chat_with_openai_sdk(server, ref) -> None:
    from k2trt.chat.template import render_ids

    _, tok = ref
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "héllo wörld"}]
    want, _ = expected(ref, render_ids(tok, messages), 7)
    client = openai.OpenAI(base_url=f"{BASE}/v1", api_key="none")
    r = client.chat.completions.create(model="tiny-k2", messages=messages, max_tokens=7, temperature=0)
    assert r.choices[0].message.role == "assistant" and r.choices[0].message.content == want
    assert r.usage.prompt_tokens == len(render_ids(tok, messages))
    parts = [c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="tiny-k2", messages=messages, max_tokens=7, temperature=0, stream=True) if c.choices]
    assert "".join(parts) == want


def test_concurrent_requests_batch_and_match(server, ref) -> None:
    prompts = [[11, 12, 13], [400, 2, 3, 4, 5, 6, 7], [1000]]
    with ThreadPoolExecutor(3) as pool:
        texts = list(pool.map(lambda p: httpx.post(f"{BASE}/v1/completions", json={
            "prompt": p, "max_tokens": 5, "temperature": 0}, timeout=60).json()["choices"][0]["text"], prompts))
    assert texts == [expected(ref, p, 5)[0] for p in prompts]


def test_seeded_sampling_is_reproducible(server) -> None:
    body = {"prompt": [3, 4, 5], "max_tokens": 6, "temperature": 1.0, "top_p": 0.9, "seed": 123}
    a = httpx.post(f"{BASE}/v1/completions", json=body, timeout=60).json()["choices"][0]["text"]
    b = httpx.post(f"{BASE}/v1/completions", json=body, timeout=60).json()["choices"][0]["text"]
    assert a == b


def test_bad_requests_are_400(server) -> None:
    for body, param in (({"prompt": [], "max_tokens": 3}, "prompt"), ({"prompt": [99999]}, "prompt"),
                        ({"prompt": [1], "max_tokens": 0}, "max_tokens"), ({"prompt": [1], "stop": [3]}, "stop")):
        r = httpx.post(f"{BASE}/v1/completions", json=body, timeout=30)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, body


def test_killing_a_rank_ends_the_job(server) -> None:
    """Last on purpose: it takes the server down."""
    out = subprocess.run(["ps", "-o", "pid=,args=", "--ppid", str(server.pid)], capture_output=True, text=True)
    ranks = [int(line.split()[0]) for line in out.stdout.splitlines() if "k2trt.reference.serve" in line]
    assert len(ranks) == 2, out.stdout
    os.kill(max(ranks), signal.SIGKILL)  # the later-started rank; either one must bring the job down
    server.wait(timeout=60)
    assert server.returncode != 0
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{BASE}/health", timeout=5)
