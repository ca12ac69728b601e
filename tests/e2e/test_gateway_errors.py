"""Failure paths over real HTTP: error shapes of both APIs, auth, body limit, engine down / failing / slow, and a
client disconnect cancelling the engine request (observed on the engine double, which stands in only for the
model's output; the sockets, the gateway and the SDKs are real)."""

from __future__ import annotations

import logging
import socket
import time
from pathlib import Path
from typing import Any, Iterator

import anthropic
import httpx
import openai
import pytest
from engine_double import EngineDouble, Reply

from k2trt.chat.tokenizer import K2Tokenizer
from k2trt.gateway import BackgroundGateway, GatewayConfig

pytestmark = pytest.mark.e2e

ENGINE_PORT, AUTH_PORT, DOWN_PORT, SLOW_PORT, CAP_PORT, NOTHING_PORT = 18120, 18121, 18122, 18123, 18124, 18129
KEY = "sk-k2trt-test"
MSG = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def tok(tiny_ckpt: Path) -> K2Tokenizer:
    return K2Tokenizer.from_dir(tiny_ckpt)


@pytest.fixture(scope="module")
def engine() -> Iterator[EngineDouble]:
    d = EngineDouble(port=ENGINE_PORT).start()
    yield d
    d.stop()


@pytest.fixture(scope="module")
def gw(engine: EngineDouble, tiny_ckpt: Path, tok: K2Tokenizer) -> Iterator[BackgroundGateway]:
    """API keys on, a 64 KiB body limit."""
    cfg = GatewayConfig(engine_url=engine.url, model_dir=str(tiny_ckpt), port=AUTH_PORT, api_keys=(KEY, "other"),
                        max_body_bytes=64 * 1024, model_aliases=("m",))
    with BackgroundGateway(cfg, tokenizer=tok) as g:
        yield g


@pytest.fixture(autouse=True)
def _reset(engine: EngineDouble) -> Iterator[None]:
    engine.script()
    engine.delay_s, engine.health_status = 0.0, 200
    yield
    engine.delay_s, engine.health_status = 0.0, 200


def _oai(url: str, key: str = KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=30)


def _ant(url: str, key: str = KEY) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=url, api_key=key, max_retries=0, timeout=30)


def _is_openai_error(r: httpx.Response, status: int, typ: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["type"] == typ and err["message"]
    return err


def _is_anthropic_error(r: httpx.Response, status: int, typ: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["type"] == "error" and body["error"]["type"] == typ and body["error"]["message"]
    return body["error"]


def test_auth_bearer_and_x_api_key(gw: BackgroundGateway, engine: EngineDouble) -> None:
    with pytest.raises(openai.AuthenticationError) as ei:
        _oai(gw.url, "wrong").chat.completions.create(model="m", messages=MSG)  # type: ignore[arg-type]
    assert ei.value.status_code == 401 and "API key" in str(ei.value)
    with pytest.raises(anthropic.AuthenticationError) as ea:
        _ant(gw.url, "wrong").messages.create(model="m", max_tokens=4, messages=MSG)  # type: ignore[arg-type]
    assert ea.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    assert engine.records == []  # refused before reaching the engine
    engine.script(Reply("a"), Reply("b"), Reply("c"))
    r0 = _oai(gw.url).chat.completions.create(model="m", messages=MSG)  # type: ignore[arg-type]
    assert r0.choices[0].message.content == "a"
    assert _ant(gw.url, "other").messages.create(model="m", max_tokens=4,  # anthropic sends x-api-key
                                                 messages=MSG).content[0].text == "b"  # type: ignore
    r = httpx.post(gw.url + "/v1/chat/completions", headers={"x-api-key": KEY}, json={"model": "m", "messages": MSG})
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "c"
    assert httpx.get(gw.url + "/health").status_code == 200  # health needs no key
    _is_openai_error(httpx.get(gw.url + "/v1/models"), 401, "authentication_error")


def test_malformed_requests_get_4xx_in_each_shape(gw: BackgroundGateway, engine: EngineDouble) -> None:
    h = {"authorization": f"Bearer {KEY}", "content-type": "application/json"}
    chat, msgs = gw.url + "/v1/chat/completions", gw.url + "/v1/messages"
    _is_openai_error(httpx.post(chat, headers=h, content=b"{not json"), 400, "invalid_request_error")
    _is_openai_error(httpx.post(chat, headers=h, content=b"[1, 2]"), 400, "invalid_request_error")
    err = _is_openai_error(httpx.post(chat, headers=h, json={"model": "m", "messages": MSG, "n": 2}), 400,
                           "invalid_request_error")
    assert err["param"] == "n" and "n=1" in err["message"]
    err = _is_openai_error(httpx.post(chat, headers=h, json={"model": "m", "messages": []}), 400,
                           "invalid_request_error")
    assert err["param"] == "messages"
    err = _is_openai_error(httpx.post(chat, headers=h, json={"model": "m", "messages": MSG, "temperature": 9}), 400,
                           "invalid_request_error")
    assert err["param"] == "temperature"
    bad_choice = {"model": "m", "messages": MSG, "tool_choice": {"type": "function", "function": {"name": "zz"}},
                  "tools": [{"type": "function", "function": {"name": "a"}}]}
    assert "not in tools" in _is_openai_error(httpx.post(chat, headers=h, json=bad_choice), 400,
                                              "invalid_request_error")["message"]
    image = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,"}}]}]
    _is_openai_error(httpx.post(chat, headers=h, json={"model": "m", "messages": image}), 400,
                     "invalid_request_error")
    e = _is_anthropic_error(httpx.post(msgs, headers=h, json={"model": "m", "messages": MSG}), 400,
                            "invalid_request_error")
    assert "max_tokens" in e["message"]
    _is_anthropic_error(httpx.post(msgs, headers=h, json={"model": "m", "max_tokens": 5, "messages": [
        {"role": "tool", "content": "x"}]}), 400, "invalid_request_error")
    _is_anthropic_error(httpx.post(msgs, headers=h, content=b"\xff"), 400, "invalid_request_error")
    _is_anthropic_error(httpx.post(msgs + "/nope", headers=h, json={}), 404, "not_found_error")
    _is_openai_error(httpx.post(gw.url + "/v1/embeddings", headers=h, json={}), 404, "not_found_error")
    with pytest.raises(openai.BadRequestError):
        _oai(gw.url).chat.completions.create(model="m", messages=MSG, n=3)  # type: ignore[arg-type]
    with pytest.raises(anthropic.BadRequestError):
        _ant(gw.url).messages.create(model="m", max_tokens=5, messages=MSG,  # type: ignore[arg-type]
                                     tool_choice={"type": "tool", "name": "missing"})
    assert engine.records == []


def test_body_size_limit(gw: BackgroundGateway, engine: EngineDouble) -> None:
    big = [{"role": "user", "content": "x" * (100 * 1024)}]
    with pytest.raises(openai.APIStatusError) as ei:
        _oai(gw.url).chat.completions.create(model="m", messages=big)  # type: ignore[arg-type]
    assert ei.value.status_code == 413 and "limit" in str(ei.value)
    with pytest.raises(anthropic.APIStatusError) as ea:
        _ant(gw.url).messages.create(model="m", max_tokens=4, messages=big)  # type: ignore[arg-type]
    assert ea.value.status_code == 413 and ea.value.body["error"]["type"] == "request_too_large"  # type: ignore

    def chunked() -> Iterator[bytes]:  # no Content-Length: counted while it arrives
        yield b'{"model": "m", "messages": [{"role": "user", "content": "'
        for _ in range(100):
            yield b"y" * 1024
        yield b'"}]}'

    r = httpx.post(gw.url + "/v1/chat/completions", headers={"authorization": f"Bearer {KEY}"}, content=chunked())
    _is_openai_error(r, 413, "invalid_request_error")
    assert engine.records == []


def test_engine_down_is_503_in_both_shapes(tiny_ckpt: Path, tok: K2Tokenizer) -> None:
    cfg = GatewayConfig(engine_url=f"http://127.0.0.1:{NOTHING_PORT}", model_dir=str(tiny_ckpt), port=DOWN_PORT,
                        connect_timeout_s=2, model_aliases=("m",))
    with BackgroundGateway(cfg, tokenizer=tok) as g:
        with pytest.raises(openai.InternalServerError) as ei:
            _oai(g.url).chat.completions.create(model="m", messages=MSG)  # type: ignore[arg-type]
        assert ei.value.status_code == 503 and "not reachable" in str(ei.value)
        # streaming too: the failure comes before the first byte, so it is an HTTP status, not a broken stream
        r = httpx.post(g.url + "/v1/chat/completions", json={"model": "m", "messages": MSG, "stream": True})
        _is_openai_error(r, 503, "server_error")
        r = httpx.post(g.url + "/v1/messages", json={"model": "m", "max_tokens": 4, "messages": MSG, "stream": True})
        _is_anthropic_error(r, 503, "api_error")
        with pytest.raises(anthropic.InternalServerError):
            _ant(g.url).messages.create(model="m", max_tokens=4, messages=MSG)  # type: ignore[arg-type]
        h = httpx.get(g.url + "/health")
        assert h.status_code == 503 and h.json()["status"] == "unavailable"


def test_engine_unhealthy_and_slow(engine: EngineDouble, tiny_ckpt: Path, tok: K2Tokenizer) -> None:
    engine.health_status = 500
    cfg = GatewayConfig(engine_url=engine.url, model_dir=str(tiny_ckpt), port=SLOW_PORT, read_timeout_s=0.3,
                        model_aliases=("m",))
    with BackgroundGateway(cfg, tokenizer=tok) as g:
        h = httpx.get(g.url + "/health")
        assert h.status_code == 503 and "500" in h.json()["engine"]
        engine.delay_s = 0.5  # every delta takes longer than the read timeout
        engine.script(Reply("slow answer"))
        r = httpx.post(g.url + "/v1/chat/completions", json={"model": "m", "messages": MSG}, timeout=30)
        assert "within 0.3s" in _is_openai_error(r, 504, "server_error")["message"]


def test_client_disconnect_cancels_streaming_engine_request(gw: BackgroundGateway, engine: EngineDouble) -> None:
    engine.delay_s = 0.05
    engine.script(Reply("word " * 200))  # 200+ deltas: ~10 s if nobody stops it
    t0 = time.monotonic()
    with httpx.stream("POST", gw.url + "/v1/chat/completions", headers={"authorization": f"Bearer {KEY}"},
                      json={"model": "m", "messages": MSG, "stream": True}, timeout=30) as r:
        assert r.status_code == 200
        got = 0
        for line in r.iter_lines():
            got += line.startswith("data: ")
            if got >= 4:
                break  # leaving the block closes the connection
    rec = engine.wait_cancelled(timeout_s=5)
    assert not rec.completed and rec.chunks_sent < 100 and time.monotonic() - t0 < 8


def test_client_disconnect_cancels_non_streaming_engine_request(gw: BackgroundGateway, engine: EngineDouble) -> None:
    engine.delay_s = 0.05
    engine.script(Reply("word " * 200))
    for path, body in (("/v1/chat/completions", {"model": "m", "messages": MSG}),
                       ("/v1/messages", {"model": "m", "max_tokens": 9, "messages": MSG})):
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(gw.url + path, headers={"x-api-key": KEY}, json=body, timeout=0.5)
        rec = engine.wait_cancelled(timeout_s=5)
        assert not rec.completed
        engine.script(Reply("word " * 200))


def test_prompts_not_logged_unless_asked(engine: EngineDouble, tiny_ckpt: Path, tok: K2Tokenizer,
                                         caplog: pytest.LogCaptureFixture) -> None:
    secret = "my-secret-diagnosis-4711"
    for log_prompts in (False, True):
        cfg = GatewayConfig(engine_url=engine.url, model_dir=str(tiny_ckpt), port=SLOW_PORT, log_prompts=log_prompts,
                            model_aliases=("m",))
        caplog.clear()
        with caplog.at_level(logging.DEBUG, logger="k2trt.gateway"), BackgroundGateway(cfg, tokenizer=tok) as g:
            engine.script(Reply("reply-text-0815"))
            _oai(g.url).chat.completions.create(model="m", messages=[{"role": "user", "content": secret}])
        logged = "\n".join(r.getMessage() for r in caplog.records)
        assert "gateway (render mode)" in logged  # the logger was captured at all
        assert (secret in logged) == log_prompts and ("reply-text-0815" in logged) == log_prompts


def test_the_connection_cap_answers_in_each_apis_shape(engine: EngineDouble, tiny_ckpt: Path,
                                                      tok: K2Tokenizer) -> None:
    """Past ``max_connections`` a request gets a 503 both SDKs read as their API error (uvicorn's own answer was a
    plain-text "Service Unavailable"), the connection is closed, and the gateway serves again once below it."""
    cfg = GatewayConfig(engine_url=engine.url, model_dir=str(tiny_ckpt), port=CAP_PORT, max_connections=3,
                        model_aliases=("m",))
    with BackgroundGateway(cfg, tokenizer=tok) as g:
        idle = [socket.create_connection(("127.0.0.1", CAP_PORT), timeout=5) for _ in range(3)]
        try:
            time.sleep(0.3)
            r = httpx.get(g.url + "/v1/models", timeout=10)
            err = _is_openai_error(r, 503, "server_error")
            assert err["code"] == "overloaded" and "limit of 3 open connections" in err["message"]
            assert r.headers["connection"] == "close"
            _is_anthropic_error(httpx.post(g.url + "/v1/messages", json={"model": "m", "max_tokens": 4,
                                                                           "messages": MSG}, timeout=10),
                                503, "overloaded_error")
            with pytest.raises(openai.InternalServerError) as oe:
                _oai(g.url).chat.completions.create(model="m", messages=MSG)
            assert oe.value.status_code == 503 and oe.value.code == "overloaded"
            with pytest.raises(anthropic.InternalServerError) as ae:
                _ant(g.url).messages.create(model="m", max_tokens=4, messages=MSG)  # type: ignore[arg-type]
            assert ae.value.status_code == 503 and ae.value.body["error"]["type"] == "overloaded_error"  # type: ignore
        finally:
            for s in idle:
                s.close()
        time.sleep(0.3)
        engine.script(Reply("fine"))
        assert _oai(g.url).chat.completions.create(model="m", messages=MSG).choices[0].message.content == "fine"
