"""Tool-call accuracy of any OpenAI-compatible endpoint, in the K2 Vendor Verifier's formats (``k2trt toolcheck``).

Compatible with MoonshotAI/K2-Vendor-Verifier ``tool_calls_eval.py`` (read at commit 0bc5061, 2026-02-14), so a
result can be set beside the published ones:

- **Input**: one complete OpenAI ``chat.completions`` request body per JSON line; ``data_index`` is the 1-based line
  number (blank lines are skipped but keep their number); a message role ``_input`` becomes ``system``; ``model``
  is replaced by ``--model``; ``--temperature``/``--max-tokens`` override the request's; a streamed request gets
  ``stream_options.include_usage``. ``hash`` = MD5 of the prepared request (``json.dumps(sort_keys=True,
  ensure_ascii=False)``), which ``--incremental`` uses to keep earlier successful results.
- **Per request** (``results.jsonl``, sorted by ``data_index``, one line each): ``data_index, request, extra_body,
  response, status, finish_reason, tool_calls_valid, last_run_at, duration_ms, hash``. ``response`` is the SDK's
  ``model_dump()`` of the completion; a streamed one is folded into the same shape (content, ``reasoning_content``,
  tool calls by index, ``finish_reason`` defaulting to ``stop``, usage); a failure is ``{error_type, error_message,
  error}`` with ``status: failed``.
- **Validity**: only for ``finish_reason == "tool_calls"`` with calls: every call must name a tool of the request
  whose ``parameters`` is a non-empty schema, its arguments must decode as JSON (a dict is taken as is) and pass
  ``jsonschema.validate`` — otherwise ``false``. (As the verifier does, a tool declared with an empty or missing
  ``parameters`` makes its calls invalid, and ``tool_calls`` without calls counts as a schema error.)
- **Summary** (``summary.json``): ``model, success_count, failure_count, finish_stop, finish_tool_calls,
  finish_others, finish_others_detail, schema_validation_error_count, successful_tool_call_count, usage
  {prompt_tokens, completion_tokens, total_tokens}, eval_started_at, eval_finished_at, eval_duration_ms`` — the
  verifier's keys — plus the README's metrics: ``schema_accuracy`` = successful tool calls / ``finish_tool_calls``,
  and, given ``--reference`` (the official results file), ``tool_call_precision``, ``tool_call_recall``,
  ``tool_call_f1`` from TP (both finish with ``tool_calls``), FP, FN, TN joined on ``data_index`` (a failed request
  counts as not calling a tool). Published pass lines: F1 ≥ 0.80 (K2-0905), ≥ 0.73 (K2-Thinking).
- **Sending**: at most ``--concurrency`` requests in flight; rate limits (429), 503, connection errors and timeouts
  are retried with exponential backoff (2 s doubling, capped at 60 s, +0–25 % jitter) up to ``--retries`` times
  (``-1``: forever, the verifier's behaviour); other errors fail the request. Each result is appended to the
  results file as it completes, so an interrupted run resumes with ``--incremental``; the sorted file and the
  summary are then written atomically.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
import random
import re
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

from k2trt.errors import ConfigError
from k2trt.fsio import atomic_write

RETRY_BASE_S = 2.0
RETRY_CAP_S = 60.0
SUMMARY_COUNTS = ("success_count", "failure_count", "finish_stop", "finish_tool_calls", "finish_others",
                  "schema_validation_error_count", "successful_tool_call_count")
METRICS = SUMMARY_COUNTS + ("schema_accuracy", "tool_call_precision", "tool_call_recall", "tool_call_f1")
"""Summary numbers a ``--gate`` can name."""


@dataclass(frozen=True)
class Gate:
    """One threshold: ``metric >= value`` or ``metric <= value``."""
    metric: str
    op: str
    value: float

    @classmethod
    def parse(cls, text: str) -> "Gate":
        """``"tool_call_f1>=0.73"``, ``"schema_accuracy>=95%"``, ``"failure_count<=0"``.

        Raises:
            ConfigError: not of that form, or an unknown metric.
        """
        m = re.fullmatch(r"\s*([a-z0-9_]+)\s*(>=|<=)\s*([0-9]*\.?[0-9]+)\s*(%?)\s*", text)
        if not m:
            raise ConfigError(f"--gate {text!r} is not METRIC>=VALUE or METRIC<=VALUE",
                              "for example --gate tool_call_f1>=0.73")
        if m[1] not in METRICS:
            raise ConfigError(f"--gate names unknown metric {m[1]!r}", f"use one of {', '.join(METRICS)}")
        return cls(m[1], m[2], float(m[3]) / (100 if m[4] else 1))

    def check(self, summary: dict[str, Any]) -> str | None:
        """``None`` when met, else one line naming the failure."""
        got = summary.get(self.metric)
        if got is None:
            return f"{self.metric} is not available (tool_call_* need --reference)"
        ok = got >= self.value if self.op == ">=" else got <= self.value
        return None if ok else f"{self.metric} = {got:.4g}, gate {self.op} {self.value:g}"


@dataclass(frozen=True)
class ToolcheckSpec:
    """One ``k2trt toolcheck`` run."""
    samples: Path
    """Requests, one JSON object per line (the verifier's ``samples.jsonl``)."""
    base_url: str
    """The endpoint's OpenAI base URL, e.g. ``http://127.0.0.1:8080/v1``."""
    model: str
    """``model`` sent with every request."""
    api_key: str | None = None
    concurrency: int = 5
    output: Path = Path("results.jsonl")
    summary: Path = Path("summary.json")
    timeout_s: float = 600.0
    retries: int = 8
    """Retries of a retryable failure; -1 retries forever (the verifier's behaviour)."""
    extra_body: dict[str, Any] = field(default_factory=dict)
    temperature: float | None = None
    max_tokens: int | None = None
    incremental: bool = False
    reference: Path | None = None
    """The official results file, for trigger precision/recall/F1."""
    gates: tuple[Gate, ...] = ()
    retry_base_s: float = RETRY_BASE_S

    def validate(self) -> "ToolcheckSpec":
        """Check the settings; raise ``ConfigError`` naming the bad one."""
        if not self.samples.is_file():
            raise ConfigError(f"{self.samples} does not exist", "pass the verifier's samples.jsonl")
        if not re.match(r"https?://", self.base_url):
            raise ConfigError(f"--base-url {self.base_url!r} is not an http(s) URL", "e.g. http://127.0.0.1:8080/v1")
        if self.concurrency < 1 or self.timeout_s <= 0 or self.retries < -1:
            raise ConfigError("--concurrency ≥ 1, --timeout > 0 and --retries ≥ -1 are required")
        if self.temperature is not None and not 0 <= self.temperature <= 2:
            raise ConfigError(f"--temperature {self.temperature} is outside [0, 2]")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ConfigError(f"--max-tokens {self.max_tokens} must be positive")
        if self.reference is not None and not self.reference.is_file():
            raise ConfigError(f"--reference {self.reference} does not exist", "pass the official results.jsonl")
        return self


@dataclass(frozen=True)
class Sample:
    data_index: int
    raw: dict[str, Any]
    prepared: dict[str, Any]
    hash: str


def request_hash(prepared: dict[str, Any]) -> str:
    """The verifier's stable request hash (MD5 of the sorted-key JSON)."""
    return hashlib.md5(json.dumps(prepared, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


def prepare_request(raw: dict[str, Any], spec: ToolcheckSpec) -> dict[str, Any]:
    """The request as sent (module docstring)."""
    req = json.loads(json.dumps(raw))  # a deep copy: the raw request keeps its _input roles
    for m in req.get("messages") or []:
        if isinstance(m, dict) and m.get("role") == "_input":
            m["role"] = "system"
    req["model"] = spec.model
    if spec.temperature is not None:
        req["temperature"] = spec.temperature
    if spec.max_tokens is not None:
        req["max_tokens"] = spec.max_tokens
    if req.get("stream"):
        so = req.get("stream_options") if isinstance(req.get("stream_options"), dict) else {}
        req["stream_options"] = {**so, "include_usage": so.get("include_usage", True)}
    return req


def read_samples(spec: ToolcheckSpec) -> list[Sample]:
    """The samples file as prepared requests.

    Raises:
        ConfigError: a line is not a JSON object (names the line).
    """
    out = []
    for n, line in enumerate(spec.samples.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
        except ValueError as e:
            raise ConfigError(f"{spec.samples}:{n} is not JSON ({e})", "one request body per line") from None
        if not isinstance(raw, dict) or not isinstance(raw.get("messages"), list):
            raise ConfigError(f"{spec.samples}:{n} is not a chat request (no messages list)")
        prepared = prepare_request(raw, spec)
        out.append(Sample(n, raw, prepared, request_hash(prepared)))
    return out


def validate_tool_call(call: dict[str, Any], tools: list[dict[str, Any]]) -> bool:
    """Whether one tool call names a declared tool and its arguments pass that tool's JSON schema."""
    import jsonschema

    try:
        name = call["function"]["name"]
        schema = next((t["function"]["parameters"] for t in tools if t["function"]["name"] == name), None)
        if not schema:
            return False
        args = call["function"]["arguments"]
        if isinstance(args, str):
            args = json.loads(args)
        jsonschema.validate(instance=args, schema=schema)
        return True
    except (KeyError, TypeError, ValueError, jsonschema.ValidationError, jsonschema.SchemaError):
        return False


def judge(response: dict[str, Any] | None, tools: list[dict[str, Any]]) -> tuple[str | None, bool | None]:
    """``(finish_reason, tool_calls_valid)`` of one response, as the verifier computes them."""
    choices = (response or {}).get("choices") or []
    if not choices:
        return None, None
    choice = choices[0]
    reason = choice.get("finish_reason")
    valid = None
    if reason == "tool_calls":
        calls = (choice.get("message") or {}).get("tool_calls") or []
        if calls:
            valid = all(validate_tool_call(c, tools) for c in calls)
    return reason, valid


def summarize(results: list[dict[str, Any]], model: str, *, started_at: str | None = None,
              finished_at: str | None = None, duration_ms: int | None = None,
              reference: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The verifier's summary of result lines, plus ``schema_accuracy`` and, with ``reference``, trigger
    precision/recall/F1 (module docstring).

    Example:
        >>> summarize([{"status": "success", "finish_reason": "tool_calls", "tool_calls_valid": True}], "m")[
        ...     "schema_accuracy"]
        1.0
    """
    s: dict[str, Any] = {"model": model, **{k: 0 for k in SUMMARY_COUNTS[:5]}, "finish_others_detail": {},
                         "schema_validation_error_count": 0, "successful_tool_call_count": 0,
                         "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
                         "eval_started_at": started_at, "eval_finished_at": finished_at,
                         "eval_duration_ms": duration_ms}
    for r in results:
        u = (r.get("response") or {}).get("usage")
        if isinstance(u, dict):
            for k in s["usage"]:
                if isinstance(u.get(k), int):
                    s["usage"][k] += u[k]
        s["success_count" if r.get("status") == "success" else "failure_count"] += 1
        fr = r.get("finish_reason")
        if fr == "stop":
            s["finish_stop"] += 1
        elif fr == "tool_calls":
            s["finish_tool_calls"] += 1
            s["successful_tool_call_count" if r.get("tool_calls_valid") else "schema_validation_error_count"] += 1
        elif fr:
            s["finish_others"] += 1
            s["finish_others_detail"][fr] = s["finish_others_detail"].get(fr, 0) + 1
    s["schema_accuracy"] = (s["successful_tool_call_count"] / s["finish_tool_calls"]
                            if s["finish_tool_calls"] else None)
    if reference is not None:
        s.update(trigger_metrics(results, reference))
    return s


def trigger_metrics(results: list[dict[str, Any]], reference: list[dict[str, Any]]) -> dict[str, Any]:
    """Tool-call trigger agreement with the official results, joined on ``data_index``."""
    official = {r["data_index"]: r.get("finish_reason") == "tool_calls" for r in reference if "data_index" in r}
    tp = fp = fn = tn = 0
    for r in results:
        if r.get("data_index") not in official:
            continue
        ours, theirs = r.get("finish_reason") == "tool_calls", official[r["data_index"]]
        tp += ours and theirs
        fp += ours and not theirs
        fn += theirs and not ours
        tn += not ours and not theirs
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    f1 = (2 * precision * recall / (precision + recall) if precision and recall else
          (0.0 if precision is not None and recall is not None else None))
    return {"tool_call_precision": precision, "tool_call_recall": recall, "tool_call_f1": f1,
            "trigger_confusion": {"tp": tp, "fp": fp, "fn": fn, "tn": tn,
                                  "joined": tp + fp + fn + tn, "reference": len(official)}}


def read_results(path: Path) -> list[dict[str, Any]]:
    """Result lines of a results file (unparseable lines skipped, as the verifier does)."""
    out = []
    for line in path.read_text(encoding="utf-8").splitlines() if path.is_file() else []:
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict):
            out.append(obj)
    return out


def _error(e: BaseException) -> dict[str, str]:
    return {"error_type": type(e).__name__, "error_message": str(e), "error": str(e)}


def _retryable(e: BaseException) -> bool:
    import httpx
    import openai

    if isinstance(e, openai.APIStatusError):
        return e.status_code in (429, 503)
    return isinstance(e, (openai.APIConnectionError, openai.APITimeoutError, httpx.TransportError))


def _fold_stream(events: list[Any], model: str) -> dict[str, Any]:
    """A streamed completion folded into the non-streamed response shape (the verifier's accumulation)."""
    rid = created = finish = usage = None
    content: list[str] = []
    thought: list[str] = []
    calls: dict[int, dict[str, Any]] = {}
    for ev in events:
        rid, created = ev.id or rid, ev.created or created
        if getattr(ev, "usage", None):
            usage = ev.usage.model_dump()
        if not ev.choices:
            continue
        c = ev.choices[0]
        d = c.delta
        if d is not None:
            content.append(d.content or "")
            thought.append(getattr(d, "reasoning_content", None) or "")
            for t in d.tool_calls or []:
                call = calls.setdefault(t.index or 0, {"id": t.id, "type": t.type or "function",
                                                       "function": {"name": "", "arguments": ""}})
                if t.function is not None:
                    call["function"]["name"] = t.function.name or call["function"]["name"]
                    call["function"]["arguments"] += t.function.arguments or ""
        finish = c.finish_reason or finish
    msg: dict[str, Any] = {"role": "assistant", "content": "".join(content),
                           "tool_calls": list(calls.values()) or None}
    if "".join(thought):
        msg["reasoning_content"] = "".join(thought)
    return {"id": rid, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": msg, "finish_reason": finish or "stop"}], "usage": usage}


class _Runner:
    def __init__(self, spec: ToolcheckSpec, on_done: Callable[[], None]) -> None:
        import openai

        self.spec = spec
        self.client = openai.AsyncOpenAI(base_url=spec.base_url, api_key=spec.api_key or "none",
                                         timeout=spec.timeout_s, max_retries=0)
        self.sem = asyncio.Semaphore(spec.concurrency)
        self.on_done = on_done
        self.lock = asyncio.Lock()
        self.params = frozenset(inspect.signature(self.client.chat.completions.create).parameters) - {
            "extra_body", "extra_headers", "extra_query", "timeout"}

    async def _once(self, req: dict[str, Any]) -> dict[str, Any]:
        create = self.client.chat.completions.create
        # fields the SDK does not know (engine extensions in a sample) travel in the body, as --extra-body does
        known = {k: v for k, v in req.items() if k in self.params}
        extra = {**{k: v for k, v in req.items() if k not in self.params}, **self.spec.extra_body}
        if req.get("stream"):
            stream = await create(**known, extra_body=extra or None)
            return _fold_stream([ev async for ev in stream], req.get("model", ""))
        return (await create(**known, extra_body=extra or None)).model_dump()

    async def send(self, req: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        attempt = 0
        while True:
            try:
                async with self.sem:
                    return "success", await self._once(req)
            except Exception as e:  # every failure becomes a result line; only transient ones are retried
                if not _retryable(e) or (0 <= self.spec.retries <= attempt):
                    return "failed", _error(e)
                delay = min(self.spec.retry_base_s * 2 ** attempt, RETRY_CAP_S)
                attempt += 1
                await asyncio.sleep(delay * (1 + random.uniform(0, 0.25)))

    async def process(self, s: Sample, out: Any) -> dict[str, Any]:
        t0 = time.time()
        status, response = await self.send(s.prepared)
        reason, valid = judge(response, s.raw.get("tools") or [])
        result = {"data_index": s.data_index, "request": s.prepared, "extra_body": self.spec.extra_body,
                  "response": response, "status": status, "finish_reason": reason, "tool_calls_valid": valid,
                  "last_run_at": datetime.now().isoformat(), "duration_ms": int((time.time() - t0) * 1000),
                  "hash": s.hash}
        async with self.lock:  # appended at once, so an interrupted run resumes from what finished
            out.write(json.dumps(result, ensure_ascii=False) + "\n")
            out.flush()
        self.on_done()
        return result


@dataclass
class ToolcheckResult:
    summary: dict[str, Any]
    results: list[dict[str, Any]]
    gate_failures: list[str]
    reused: int = 0
    """Earlier successful results kept by ``--incremental``."""

    @property
    def ok(self) -> bool:
        return not self.gate_failures


def _dedup_sorted(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    latest: dict[int, dict[str, Any]] = {}
    for r in results:
        k = r.get("data_index", 0)
        if k not in latest or str(r.get("last_run_at") or "") > str(latest[k].get("last_run_at") or ""):
            latest[k] = r
    return [latest[k] for k in sorted(latest)]


async def _run(spec: ToolcheckSpec, samples: list[Sample], progress: bool) -> tuple[list[dict[str, Any]], int]:
    from tqdm import tqdm

    kept: list[dict[str, Any]] = []
    if spec.incremental:
        done = {r.get("hash"): r for r in read_results(spec.output) if r.get("status") == "success"}
        kept = [done[s.hash] for s in samples if s.hash in done]
        samples = [s for s in samples if s.hash not in done]
    spec.output.parent.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=len(samples), desc="toolcheck", unit="req", disable=not progress)
    runner = _Runner(spec, lambda: bar.update(1))
    try:
        with open(spec.output, "a" if spec.incremental else "w", encoding="utf-8") as out:
            fresh = await asyncio.gather(*(runner.process(s, out) for s in samples))
    finally:
        bar.close()
        await runner.client.close()
    return kept + list(fresh), len(kept)


def run_toolcheck(spec: ToolcheckSpec, *, progress: bool = True) -> ToolcheckResult:
    """Send every sample, write ``results.jsonl`` and ``summary.json`` in the verifier's formats, apply the gates.

    Args:
        spec: the run (validated here).
        progress: show a progress bar on stderr.

    Returns:
        The summary, the sorted results and the failed gates (empty when all pass).

    Raises:
        ConfigError: bad settings or a bad samples/reference file.

    Example:
        >>> run_toolcheck(ToolcheckSpec(Path("samples.jsonl"), "http://127.0.0.1:8080/v1", "kimi-k2"))  # doctest: +SKIP
    """
    spec.validate()
    samples = read_samples(spec)
    reference = read_results(spec.reference) if spec.reference else None
    t0, started = time.time(), datetime.now().isoformat()
    results, reused = asyncio.run(_run(spec, samples, progress))
    results = _dedup_sorted(results)
    atomic_write(spec.output, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in results))
    summary = summarize(results, spec.model, started_at=started, finished_at=datetime.now().isoformat(),
                        duration_ms=int((time.time() - t0) * 1000), reference=reference)
    atomic_write(spec.summary, json.dumps(summary, ensure_ascii=False, indent=4) + "\n")
    failures = [msg for g in spec.gates if (msg := g.check(summary))]
    return ToolcheckResult(summary, results, failures, reused)
