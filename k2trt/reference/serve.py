"""The reference K2 server: the subset of trtllm-serve's HTTP surface that k2trt uses, over the sharded reference.

``mpirun -np N python -m k2trt.reference.serve MODEL_DIR --tp N [--ep M] [--adp] --host 127.0.0.1 --port P``
(``serve_argv`` writes that command for launchers, ``parser`` reads it; both import no torch, so a login-node bundle
build can spell it — the engine's own imports wait for ``main``).
Every rank loads its own shard (``parallel.build_rank_model``). Rank 0 serves HTTP (starlette + uvicorn) and runs
the engine thread; the other ranks follow: for each static batch rank 0 broadcasts the work, every rank runs the same
``generate`` loop in lockstep, and rank 0's tokens and stop decisions are broadcast each step.

Endpoints (trtllm-serve's, trtllm.md §1.3): ``POST /v1/completions`` (prompt as text — tokenised with special
tokens allowed, as TensorRT-LLM does — or as token ids; ``max_tokens``, ``temperature``, ``top_p``, ``top_k``,
``seed``, ``stop``, ``stop_token_ids``, ``skip_special_tokens``, ``stream`` as SSE, ``stream_options.include_usage``),
``POST /v1/chat/completions`` (K2's chat template via ``k2trt.chat``; no tool-call parsing), ``GET /v1/models``,
``GET /health``, ``GET /health_generate`` (generates one token: 200 only when that works). Generation stops on
``<|im_end|>`` and ``[EOS]``. Streamed text deltas never split a UTF-8 character and never show a prefix of a stop
string that later matches.

Requests: every sampling value is checked before it is queued (``generate.SamplingParams``: finite, in range,
representable — a seed outside ``torch.Generator``'s range, NaN/Infinity, a negative temperature are 400s; a
vanishing temperature is greedy), stop strings are bounded (``MAX_STOPS``, ``MAX_STOP_CHARS``), and the body must be
strict JSON (no ``NaN``/``Infinity`` literals). A failure
inside one request — its sampling or its text — fails that request only: a 500 (or an ``error`` event in a stream)
while the batch and the job go on. A client that disconnects cancels its request: queued, it is dropped; running,
rank 0 sees the flag between decode steps and broadcasts the row's end with the step's tokens, so every rank drops
it at the same step and the batch (and the queue behind it) moves on.

Failure policy: a rank that fails ends the job. Collectives have a timeout; rank 0 broadcasts a heartbeat while idle,
so a dead peer is noticed within seconds; an engine error on rank 0 outside a request (a collective, the forward
pass) exits the process (and with it the HTTP loop), and mpirun then takes the other ranks down.

Logs: text lines naming the rank, or (``--log-format json``, or ``K2TRT_LOG_FORMAT=json`` as the launcher exports it)
one JSON object per line carrying the job id (``K2TRT_JOB_ID``) and the rank (``k2trt.jsonlog``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import queue
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, AsyncIterator, Sequence

from k2trt.errors import ConfigError
from k2trt.jsonlog import DEFAULT_LOG_FORMAT, LOG_FORMATS, use_json_logs
from k2trt.layout import Layout
from k2trt.reference import DEFAULT_TIMEOUT_S

from k2trt.asgi import ClientGone, until_disconnect
from k2trt.sampling import SamplingValueError

if TYPE_CHECKING:
    from k2trt.reference.generate import Completion, SamplingParams
    from k2trt.reference.parallel import DistCollectives

log = logging.getLogger("k2trt.reference.serve")
HEARTBEAT_S = 2.0
MAX_STOPS, MAX_STOP_CHARS = 32, 256
"""Stop strings per request, and characters per stop string: holding back a stop string's prefix costs time
quadratic in its length at every token, so one request with a 100,000-character stop string would stall every
decode step of its batch (~0.2 s a token here)."""


# ---- text side of one request ------------------------------------------------------------------------------------

class TextStream:
    """Detokenises one request's tokens: UTF-8-safe deltas, stop strings matched and cut, their prefixes held back."""

    def __init__(self, tok: Any, stops: Sequence[str], skip_special_tokens: bool) -> None:
        self.dec = tok.incremental_decoder(skip_special_tokens=skip_special_tokens)
        self.stops = [s for s in stops if s]
        self.text, self.sent = "", 0
        self.stop_reason: str | None = None

    def feed(self, token: int) -> tuple[str, bool]:
        """Add a token; return (text safe to emit now, whether a stop string matched)."""
        self.text += self.dec.feed([token])
        hits = [(i, s) for s in self.stops if (i := self.text.find(s)) >= 0]
        if hits:
            i, s = min(hits)
            self.text, self.stop_reason = self.text[:i], s
            return self._emit(len(self.text)), True
        hold = max((k for s in self.stops for k in range(1, len(s)) if self.text.endswith(s[:k])), default=0)
        return self._emit(len(self.text) - hold), False

    def finish(self) -> str:
        if self.stop_reason is None:
            self.text += self.dec.flush()
        return self._emit(len(self.text))

    def _emit(self, upto: int) -> str:
        if upto <= self.sent:
            return ""
        out, self.sent = self.text[self.sent:upto], upto
        return out


@dataclass
class Request:
    """One HTTP request on its way through the engine; events go back to its event loop."""

    prompt: list[int]
    params: SamplingParams
    text: TextStream
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    """Set when the client has gone: the engine drops the request (queued) or ends its row (running)."""

    def push(self, kind: str, payload: Any) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, (kind, payload))


# ---- engine (rank 0) and followers ---------------------------------------------------------------------------------

class Engine:
    """Rank 0's batcher: takes queued requests as static batches and drives every rank through ``generate``."""

    def __init__(self, model: Any, comm: DistCollectives | None, *, max_batch: int = 8, batch_wait_s: float = 0.02,
                 heartbeat_s: float = HEARTBEAT_S) -> None:
        self.model, self.comm = model, comm
        self.max_batch, self.batch_wait_s, self.heartbeat_s = max_batch, batch_wait_s, heartbeat_s
        self.pending: queue.Queue[Request] = queue.Queue()
        self.failed: str | None = None
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="k2trt-engine", daemon=True)

    @property
    def healthy(self) -> bool:
        return self.failed is None and self.thread.is_alive()

    def submit(self, req: Request) -> None:
        self.pending.put(req)

    def _take(self) -> list[Request]:
        """The next static batch, without requests whose client has gone; ``[]`` after an idle heartbeat."""
        while True:
            try:
                batch = [self.pending.get(timeout=self.heartbeat_s)]
            except queue.Empty:
                return []
            deadline = time.monotonic() + self.batch_wait_s
            while len(batch) < self.max_batch:
                try:
                    batch.append(self.pending.get(timeout=max(0.0, deadline - time.monotonic())))
                except queue.Empty:
                    break
            live = [r for r in batch if not r.cancelled.is_set()]
            if live:
                return live

    def _broadcast(self, cmd: dict[str, Any]) -> None:
        if self.comm is not None:
            self.comm.broadcast_object(cmd)

    def _run(self) -> None:
        try:
            while not self.stopping.is_set():
                batch = self._take()
                if not batch:
                    self._broadcast({"op": "noop"})  # heartbeat: followers' waits stay under the timeout
                    continue
                self._step(batch)
            self._broadcast({"op": "exit"})
        except BaseException as e:  # noqa: BLE001 - any failure of a collective or the model ends the job
            self.failed = f"{type(e).__name__}: {e}"
            log.error("engine failed, shutting the job down: %s", self.failed)
            sys.stderr.flush()
            os._exit(1)

    def _step(self, batch: list[Request]) -> None:
        prompts, params = [r.prompt for r in batch], [r.params for r in batch]
        self._broadcast({"op": "generate", "prompts": prompts, "params": params})

        def on_token(i: int, tok: int) -> bool:
            delta, stopped = batch[i].text.feed(tok)
            if delta:
                batch[i].push("delta", delta)
            return stopped

        from k2trt.reference.generate import generate

        def on_finish(i: int, c: Completion) -> None:
            r = batch[i]
            if c.finish_reason == "error":
                log.warning("request failed (the batch goes on): %s", c.error)
                r.push("error", c.error)
                return
            tail = r.text.finish()
            if tail:
                r.push("delta", tail)
            # trtllm-serve's stop_reason: the stop string that matched, else the stop token id, else None
            r.push("done", (c, r.text.stop_reason if r.text.stop_reason is not None else c.stop_token))

        generate(self.model, prompts, params, on_token=on_token, on_finish=on_finish,
                 agree=self.comm.broadcast if self.comm else None, cancelled=lambda i: batch[i].cancelled.is_set())


def follow(model: Any, comm: DistCollectives) -> None:
    """A follower rank: run every batch rank 0 broadcasts, in lockstep, until it says exit."""
    from k2trt.reference.generate import generate

    while True:
        cmd = comm.broadcast_object(None)
        if cmd["op"] == "exit":
            return
        if cmd["op"] == "generate":
            generate(model, cmd["prompts"], cmd["params"], agree=comm.broadcast)


# ---- HTTP ----------------------------------------------------------------------------------------------------------

class BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class RequestFailed(Exception):
    """Generation failed for this request alone (the engine goes on)."""


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _error(status: int, message: str, param: str | None = None, kind: str = "invalid_request_error") -> Any:
    from starlette.responses import JSONResponse

    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": status}},
                        status_code=status)


def build_app(engine: Engine, tok: Any, spec: Any, model_name: str) -> Any:
    """The starlette app of rank 0."""
    from starlette.applications import Starlette
    from starlette.requests import Request as HttpRequest
    from starlette.responses import JSONResponse, Response, StreamingResponse
    from starlette.routing import Route

    from k2trt.chat.template import render_ids
    from k2trt.reference.generate import SamplingParams

    created = int(time.time())

    def sampling(body: dict[str, Any], n_prompt: int) -> tuple[SamplingParams, list[str], bool]:
        max_tokens = body.get("max_tokens", body.get("max_completion_tokens", 16))
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise BadRequest(f"max_tokens must be a positive integer, got {max_tokens!r}", "max_tokens")
        if n_prompt + max_tokens > spec.max_position_embeddings:
            raise BadRequest(f"prompt ({n_prompt} tokens) + max_tokens ({max_tokens}) exceeds the context of "
                             f"{spec.max_position_embeddings} tokens", "max_tokens")
        stop = body.get("stop") or []
        stop = [stop] if isinstance(stop, str) else stop
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise BadRequest("stop must be a string or a list of strings", "stop")
        if len(stop) > MAX_STOPS or any(len(s) > MAX_STOP_CHARS for s in stop):
            raise BadRequest(f"stop takes at most {MAX_STOPS} strings of at most {MAX_STOP_CHARS} characters",
                             "stop")
        extra = body.get("stop_token_ids") or []
        if not isinstance(extra, list):
            raise BadRequest("stop_token_ids must be a list of token ids", "stop_token_ids")
        for key in ("ignore_eos", "skip_special_tokens", "stream"):
            if not isinstance(body.get(key, False), bool):
                raise BadRequest(f"{key} must be true or false", key)
        if not isinstance(body.get("stream_options") or {}, dict):
            raise BadRequest("stream_options must be an object", "stream_options")
        # ignore_eos (benchmarks with a fixed output length) drops the model's own stop tokens; explicitly
        # requested stop_token_ids still apply, as in TensorRT-LLM and vLLM
        base = () if body.get("ignore_eos") else tuple(tok.stop_ids)
        given = {k: body[k] for k in ("temperature", "top_p", "top_k", "seed") if body.get(k) is not None}
        try:  # SamplingParams checks every value (finite, in range, representable)
            params = SamplingParams(max_tokens=max_tokens, **{"temperature": 1.0, "top_p": 1.0, "top_k": 0, **given},
                                    stop_ids=tuple(dict.fromkeys([*base, *extra])))
        except SamplingValueError as e:
            raise BadRequest(str(e), e.param) from None
        return params, stop, body.get("skip_special_tokens", True)

    def encode_text(text: str) -> list[int]:
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise BadRequest("prompt is not valid Unicode text (a lone surrogate)", "prompt") from None
        return list(tok.encode_with_specials(text))

    def check_ids(ids: Any) -> list[int]:
        if not isinstance(ids, list) or not ids or not all(isinstance(i, int) and not isinstance(i, bool)
                                                            for i in ids):
            raise BadRequest("prompt must be a non-empty string or a non-empty list of token ids", "prompt")
        bad = [i for i in ids if not 0 <= i < spec.vocab_size]
        if bad:
            raise BadRequest(f"token id {bad[0]} is outside the vocabulary (0..{spec.vocab_size - 1})", "prompt")
        return ids

    async def parse(http: HttpRequest) -> dict[str, Any]:
        try:  # strict JSON: NaN and Infinity are not numbers a client can send
            body = json.loads(await http.body(), parse_constant=_no_constant)
        except RecursionError:
            raise BadRequest("the request body nests too deeply") from None
        except ValueError as e:  # NaN/Infinity, malformed JSON, bytes that are not UTF-8
            raise BadRequest(f"the request body is not strict JSON ({str(e).splitlines()[0][:120]})") from None
        if not isinstance(body, dict):
            raise BadRequest("the request body must be a JSON object")
        return body

    def enqueue(prompt: list[int], body: dict[str, Any]) -> Request:
        if not engine.healthy:
            raise RuntimeError(engine.failed or "the engine is not running")
        params, stop, skip = sampling(body, len(prompt))
        req = Request(prompt, params, TextStream(tok, stop, skip), asyncio.get_running_loop())
        engine.submit(req)
        return req

    async def run(req: Request) -> tuple[str, Completion, Any]:
        parts: list[str] = []
        while True:
            kind, payload = await req.events.get()
            if kind == "delta":
                parts.append(payload)
            elif kind == "error":
                raise RequestFailed(payload)
            else:
                c, stop_reason = payload
                return "".join(parts), c, stop_reason

    def usage(c: Completion) -> dict[str, int]:
        return {"prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens,
                "total_tokens": c.prompt_tokens + c.completion_tokens}

    async def respond(http: HttpRequest, req: Request, head: dict[str, Any], choice: Any) -> Any:
        """A non-streamed request's response: ``head``, ``choice(text, completion, stop_reason)`` and the usage;
        500 if generation failed, 499 (and the request cancelled) if its client went first."""
        try:
            text, c, reason = await until_disconnect(http, run(req))
        except RequestFailed as e:
            return _error(500, f"generation failed: {e}", kind="internal_server_error")
        except ClientGone:
            return Response(status_code=499)
        finally:
            req.cancelled.set()  # a no-op once it finished; else the engine drops it
        return JSONResponse({**head, "choices": [choice(text, c, reason)], "usage": usage(c)})

    async def sse(req: Request, chunk: Any, final: Any, include_usage: bool) -> AsyncIterator[bytes]:
        try:
            while True:
                kind, payload = await req.events.get()
                if kind == "delta":
                    yield b"data: " + json.dumps(chunk(payload)).encode() + b"\n\n"
                    continue
                if kind == "error":
                    err = {"error": {"message": f"generation failed: {payload}", "type": "internal_server_error",
                                     "param": None, "code": 500}}
                    yield b"data: " + json.dumps(err).encode() + b"\n\ndata: [DONE]\n\n"
                    return
                c, reason = payload
                yield b"data: " + json.dumps(final(c, reason)).encode() + b"\n\n"
                if include_usage:
                    yield b"data: " + json.dumps({**chunk(None), "choices": [], "usage": usage(c)}).encode() + \
                        b"\n\n"
                yield b"data: [DONE]\n\n"
                return
        finally:  # Starlette cancels this iterator when the client disconnects: the engine drops the request
            req.cancelled.set()

    async def completions(http: HttpRequest) -> Any:
        try:
            body = await parse(http)
            p = body.get("prompt")
            if isinstance(p, list) and len(p) == 1 and isinstance(p[0], (str, list)):
                p = p[0]  # a batch of one
            ids = encode_text(p) if isinstance(p, str) and p else check_ids(p)
            req = enqueue(ids, body)
        except BadRequest as e:
            return _error(400, str(e), e.param)
        except RuntimeError as e:
            return _error(503, str(e), kind="service_unavailable")
        rid = f"cmpl-{uuid.uuid4().hex}"
        head = {"id": rid, "object": "text_completion", "created": int(time.time()), "model": model_name}
        if body.get("stream"):
            include = bool((body.get("stream_options") or {}).get("include_usage"))
            chunk = lambda d: {**head, "choices": [{"index": 0, "text": d, "finish_reason": None,  # noqa: E731
                                                    "logprobs": None}]}
            final = lambda c, r: {**head, "choices": [{"index": 0, "text": "",  # noqa: E731
                                                       "finish_reason": c.finish_reason, "stop_reason": r,
                                                       "logprobs": None}]}
            return StreamingResponse(sse(req, chunk, final, include), media_type="text/event-stream")
        return await respond(http, req, head, lambda text, c, reason: {
            "index": 0, "text": text, "finish_reason": c.finish_reason, "stop_reason": reason, "logprobs": None})

    async def chat(http: HttpRequest) -> Any:
        try:
            body = await parse(http)
            msgs = body.get("messages")
            if not isinstance(msgs, list) or not msgs:
                raise BadRequest("messages must be a non-empty list", "messages")
            try:
                ids = render_ids(tok, msgs, body.get("tools") or None)
            except Exception as e:  # noqa: BLE001 - ChatFormatError and malformed message shapes alike
                raise BadRequest(f"cannot render the messages: {e}", "messages") from None
            req = enqueue(ids, body)
        except BadRequest as e:
            return _error(400, str(e), e.param)
        except RuntimeError as e:
            return _error(503, str(e), kind="service_unavailable")
        rid = f"chatcmpl-{uuid.uuid4().hex}"
        head = {"id": rid, "created": int(time.time()), "model": model_name}
        if body.get("stream"):
            include = bool((body.get("stream_options") or {}).get("include_usage"))
            started = {"v": False}

            def chunk(d: str | None) -> dict[str, Any]:
                delta: dict[str, Any] = {"content": d}
                if not started["v"]:
                    delta["role"], started["v"] = "assistant", True
                return {**head, "object": "chat.completion.chunk",
                        "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}

            final = lambda c, r: {**head, "object": "chat.completion.chunk",  # noqa: E731
                                  "choices": [{"index": 0, "delta": {}, "finish_reason": c.finish_reason,
                                               "stop_reason": r}]}
            return StreamingResponse(sse(req, chunk, final, include), media_type="text/event-stream")
        return await respond(http, req, {**head, "object": "chat.completion"}, lambda text, c, reason: {
            "index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": c.finish_reason,
            "stop_reason": reason})

    async def models(_: HttpRequest) -> Any:
        return JSONResponse({"object": "list", "data": [{"id": model_name, "object": "model", "created": created,
                                                         "owned_by": "k2trt"}]})

    async def health(_: HttpRequest) -> Any:
        if engine.healthy:
            return JSONResponse({"status": "ok"})
        return _error(503, engine.failed or "the engine is not running", kind="service_unavailable")

    async def health_generate(_: HttpRequest) -> Any:
        try:
            req = enqueue([tok.im_end_id], {"max_tokens": 1, "temperature": 0})
            try:
                _, c, _ = await asyncio.wait_for(run(req), timeout=60)
            finally:
                req.cancelled.set()
        except (RuntimeError, RequestFailed, asyncio.TimeoutError, BadRequest) as e:
            return _error(503, f"generation failed: {e or 'timeout'}", kind="service_unavailable")
        if c.completion_tokens != 1:
            return _error(503, "generation produced no token", kind="service_unavailable")
        return JSONResponse({"status": "ok"})

    async def internal(_: HttpRequest, exc: Exception) -> Any:  # a bug: still an answer in the API's shape
        log.exception("request failed", exc_info=exc)
        return _error(500, f"internal server error: {type(exc).__name__}", kind="internal_server_error")

    return Starlette(exception_handlers={Exception: internal}, routes=[
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/health_generate", health_generate, methods=["GET"]),
    ])


# ---- process entry -------------------------------------------------------------------------------------------------

def parser() -> argparse.ArgumentParser:
    """The command line of ``python -m k2trt.reference.serve`` (``serve_argv`` writes it)."""
    ap = argparse.ArgumentParser(prog="python -m k2trt.reference.serve",
                                 description="Reference K2 server (trtllm-serve's HTTP subset); run under mpirun.")
    ap.add_argument("model_dir", help="checkpoint directory (config.json, safetensors, tokenizer)")
    ap.add_argument("--tp", type=int, default=1, help="tensor-parallel size = number of ranks")
    ap.add_argument("--ep", type=int, default=1, help="MoE expert-parallel size (moe_tp = tp / ep)")
    ap.add_argument("--adp", action="store_true", help="attention data parallelism")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--served-model-name", default=None, help="model id in /v1/models (default: MODEL_DIR)")
    ap.add_argument("--max-batch", type=int, default=8, help="requests per static batch")
    ap.add_argument("--attn-impl", choices=["naive", "absorb"], default="absorb")
    ap.add_argument("--plugins", choices=["off", "auto", "triton"], default="off",
                    help="route the MoE through k2trt's Triton kernels (auto: fall back to their torch references)")
    ap.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="collective timeout (s)")
    ap.add_argument("--log-format", choices=LOG_FORMATS, default=None,
                    help="json: one JSON object per line with the job id and this rank [default: $K2TRT_LOG_FORMAT, "
                         f"which the launcher exports, else {DEFAULT_LOG_FORMAT}]")
    return ap


def serve_argv(model_dir: str, layout: Layout, *, host: str, port: int, plugins: str = "off",
               served_model_name: str | None = None) -> tuple[str, ...]:
    """The command every rank of a reference server runs under mpirun, spelled for :func:`parser`.

    Args:
        model_dir: checkpoint directory.
        layout: TP (the world), MoE expert parallelism and attention-DP; the reference engine has no pipeline.
        host, port: where rank 0 serves HTTP.
        plugins: ``off``, ``auto`` or ``triton`` (the MoE through k2trt's kernels).
        served_model_name: the model id clients use (None: the checkpoint path).
    Returns:
        The argv, starting with the interpreter running this code (it has k2trt and torch; a bare ``python`` on
        PATH may be another one).
    Raises:
        ConfigError: the layout has pipeline stages.
    Example:
        >>> serve_argv("/m", Layout(2), host="127.0.0.1", port=8000)[3:7]
        ('/m', '--tp', '2', '--ep')
    """
    if layout.pp != 1:
        raise ConfigError(f"layout {layout}: the reference engine does not run pipeline stages",
                          "drop pp<N> (tp is the whole world of the reference engine)")
    a = [sys.executable, "-m", "k2trt.reference.serve", model_dir, "--tp", str(layout.tp),
         "--ep", str(layout.mapping().ep)]
    a += ["--adp"] if layout.adp else []
    a += ["--plugins", plugins] if plugins != "off" else []
    a += ["--host", host, "--port", str(port)]
    a += ["--served-model-name", served_model_name] if served_model_name else []
    return tuple(a)


def _setup_logging(requested: str | None, rank: int) -> str:
    """Log as ``requested`` (else as the launcher's ``K2TRT_LOG_FORMAT`` says): JSON lines carrying the job id
    (``K2TRT_JOB_ID``) and this rank, or text lines naming the rank. Returns the format used."""
    from k2trt.launch.mpi import JOB_ID_VAR, LOG_FORMAT_VAR

    fmt = requested or os.environ.get(LOG_FORMAT_VAR) or DEFAULT_LOG_FORMAT
    if fmt == "json":
        job_id = os.environ.get(JOB_ID_VAR)
        use_json_logs(logging.INFO, static={**({"job_id": job_id} if job_id else {}), "rank": rank,
                                            "component": "engine"})
        return fmt
    logging.basicConfig(level=logging.INFO, format="%(asctime)s rank%(rank)s %(levelname)s %(message)s")
    old = logging.getLogRecordFactory()

    def factory(*args: Any, **kw: Any) -> logging.LogRecord:
        rec = old(*args, **kw)
        rec.rank = rank
        return rec

    logging.setLogRecordFactory(factory)
    return "text"


def main(argv: Sequence[str] | None = None) -> int:
    import torch

    from k2trt.reference.parallel import DistCollectives, build_rank_model, env_rank, init_distributed

    a = parser().parse_args(argv)
    rank, world, _ = env_rank()
    log_format = _setup_logging(a.log_format, rank)
    layout = Layout(a.tp, a.ep, adp=a.adp)
    if world != layout.tp:
        log.error("layout %s needs %d ranks but the job has %d (launch with mpirun -np %d)", layout, layout.tp,
                  world, layout.tp)
        return 2
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    init_distributed(rank, world, a.timeout)
    comm = DistCollectives(rank, world) if world > 1 else None
    t0 = time.monotonic()
    model, _ = build_rank_model(Path(a.model_dir), layout, rank, comm, attn_impl=a.attn_impl)
    if a.plugins != "off":
        from k2trt.reference.plugins import use_plugins

        log.info("plugins (%s): %s", a.plugins, use_plugins(model, a.plugins))
    log.info("rank %d/%d loaded its %s shard in %.1fs", rank, world, layout, time.monotonic() - t0)
    if rank != 0:
        assert comm is not None
        follow(model, comm)
        return 0
    from k2trt.chat.tokenizer import K2Tokenizer

    import uvicorn

    tok = K2Tokenizer.from_dir(a.model_dir)
    engine = Engine(model, comm, max_batch=a.max_batch)
    engine.thread.start()
    app = build_app(engine, tok, model.spec, a.served_model_name or a.model_dir)
    # as JSON, uvicorn keeps the handlers _setup_logging installed (its own config would print text)
    quiet: dict[str, Any] = {"log_config": None, "access_log": False} if log_format == "json" else {}
    server = uvicorn.Server(uvicorn.Config(app, host=a.host, port=a.port, log_level="warning", **quiet))
    log.info("serving %s on http://%s:%d", layout, a.host, a.port)
    server.run()
    engine.stopping.set()
    engine.thread.join(timeout=engine.heartbeat_s * 3)
    return 0


if __name__ == "__main__":
    sys.exit(main())
