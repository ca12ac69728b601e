"""Plain chat end to end with nothing stood in: the openai and anthropic SDKs → the gateway → the PyTorch
reference engine (``python -m k2trt.reference.serve``) serving the tiny K2 checkpoint, all on 127.0.0.1.

The tiny model's weights are random, so its text is gibberish; what is checked is the plumbing: valid responses
in both APIs, streaming equal to non-streaming under greedy sampling, token accounting within ``max_tokens``, and
the gateway's answer equal to the engine's own answer for the same K2 prompt ids.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import anthropic
import httpx
import openai
import pytest

import k2trt
from k2trt.chat.template import render_ids
from k2trt.chat.tokenizer import K2Tokenizer
from k2trt.gateway import BackgroundGateway, GatewayConfig

pytestmark = pytest.mark.e2e

SERVE_PY = Path(k2trt.__file__).parent / "reference" / "serve.py"
ENGINE_PORT, GATEWAY_PORT = 18130, 18131
MSGS = [{"role": "user", "content": "Say hello."}]


def _argv(model_dir: Path) -> list[str]:
    """The reference server's command line, spelled after its own --help (model as --model-dir, --model or a
    positional argument)."""
    base = [sys.executable, "-m", "k2trt.reference.serve"]
    env = {**os.environ, "PYTHONPATH": str(SERVE_PY.parents[2])}
    help_text = subprocess.run(base + ["--help"], capture_output=True, text=True, timeout=120, env=env).stdout
    if "--model-dir" in help_text:
        model = ["--model-dir", str(model_dir)]
    elif "--model " in help_text or "--model," in help_text:
        model = ["--model", str(model_dir)]
    else:
        model = [str(model_dir)]
    return base + model + ["--host", "127.0.0.1", "--port", str(ENGINE_PORT)]


@pytest.fixture(scope="module")
def engine_url(tiny_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if not SERVE_PY.exists():
        pytest.skip("k2trt/reference/serve.py (the reference engine's HTTP server) is not written yet")
    log = tmp_path_factory.mktemp("ref-serve") / "serve.log"
    url = f"http://127.0.0.1:{ENGINE_PORT}"
    with open(log, "wb") as out:
        proc = subprocess.Popen(_argv(tiny_ckpt), stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
                                    filter(None, [str(SERVE_PY.parents[2]), os.environ.get("PYTHONPATH")]))})
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the reference server exited with {proc.returncode}: {log.read_text()[-2000:]}")
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the reference server did not become healthy in 180 s: {log.read_text()[-2000:]}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def gateway(engine_url: str, tiny_ckpt: Path) -> Iterator[BackgroundGateway]:
    cfg = GatewayConfig(engine_url=engine_url, model_dir=str(tiny_ckpt), port=GATEWAY_PORT, read_timeout_s=120,
                        model_aliases=("m",))
    with BackgroundGateway(cfg) as gw:
        yield gw


def test_plain_chat_on_reference_engine(gateway: BackgroundGateway, engine_url: str, tiny_ckpt: Path) -> None:
    oai = openai.OpenAI(base_url=gateway.url + "/v1", api_key="x", max_retries=0, timeout=120)
    r = oai.chat.completions.create(model="m", messages=MSGS, max_tokens=8, temperature=0)  # type: ignore[arg-type]
    text = r.choices[0].message.content
    assert isinstance(text, str) and r.choices[0].finish_reason in ("stop", "length")
    assert r.usage is not None and 0 < r.usage.completion_tokens <= 8

    tok = K2Tokenizer.from_dir(tiny_ckpt)
    ids = render_ids(tok, MSGS, None, add_generation_prompt=True)
    assert r.usage.prompt_tokens == len(ids)
    direct = httpx.post(engine_url + "/v1/completions", timeout=120, json={
        "model": "m", "prompt": ids, "max_tokens": 8, "temperature": 0, "stop_token_ids": list(tok.stop_ids),
        "skip_special_tokens": False}).json()
    assert direct["choices"][0]["text"].removesuffix("<|im_end|>").removesuffix("[EOS]") == text

    stream = oai.chat.completions.create(model="m", messages=MSGS, max_tokens=8, temperature=0,  # type: ignore
                                         stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == r.usage.completion_tokens

    ant = anthropic.Anthropic(base_url=gateway.url, api_key="x", max_retries=0, timeout=120)
    m = ant.messages.create(model="m", max_tokens=8, messages=MSGS,  # type: ignore[arg-type]
                            extra_body={"temperature": 0})
    assert m.content[0].type == "text" and m.stop_reason in ("end_turn", "max_tokens")
    with ant.messages.stream(model="m", max_tokens=8, messages=MSGS,  # type: ignore[arg-type]
                             extra_body={"temperature": 0}) as s:
        assert s.get_final_message().content[0].text == m.content[0].text  # type: ignore[union-attr]
    assert httpx.get(gateway.url + "/health", timeout=10).status_code == 200
