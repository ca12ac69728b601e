"""``k2trt demo``: the whole pipeline on the tiny K2, with the same code a production deployment uses.

the trained tiny K2 → inspect → convert (trtllm passthrough) → inspect → plan + build the ``tiny-cpu`` bundle →
serve it (the PyTorch reference engine under real ``mpirun``, the gateway in front) → a chat request and an agent
loop through the openai SDK → a short aiperf sweep → stop. Every step is the library call behind the matching
command; nothing here is demo-only except the choreography. Whatever happens — an error, Ctrl-C, SIGTERM — the job
is stopped and no process is left behind (checked by scanning the process table). A demo killed outright
(SIGKILL) cannot stop its detached job, which keeps the recipe's fixed ports: the next run in the same workdir
finds that job through the bundle's state file and stops it first — only processes the state file proves are that
job's (pids with their start times, the job marker). A demo still running in the workdir is refused instead
(``WORKDIR/.demo.json`` names it by pid and start time).

The agent loop is a real one: the model gets a declared tool and a question; each call it makes (K2's tool-call
grammar, parsed by the gateway) is run by the demo and its result sent back (the call's id renamed by the gateway
both ways) until the model answers; the exchange is printed and recorded as it happened, whatever the model does.
The model is ``k2trt train-tiny``'s committed checkpoint (``k2trt/data/tiny-k2``, block FP8, 16 MB), trained on
CPU to chat and call tools: it calls ``get_weather`` for the city asked about and answers from the result. It is a
16 M-parameter model and it shows: its answers can garble a copied word (``sindy`` for ``windy``: the tiny
tokenizer spells a word differently after a space, `` w|ind|y`` against ``wind|y``), and it does not yet meet its
held-out gates (``tests/e2e/test_trained_tiny_gates.py``, tools and values it never saw). The question names
Paris: the tiny tokenizer merged ``Beijing`` (and `` Beijing``) into single tokens, and the model, which copies
names piece by piece, writes a wrong argument for that one city.
"""

from __future__ import annotations

import json
import os
import signal
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from k2trt.errors import K2trtError, LaunchError

RECIPE = "tiny-cpu"
OWNER_FILE = ".demo.json"
WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather for a city.",
    "parameters": {"type": "object", "required": ["city"],
                   "properties": {"city": {"type": "string", "description": "City name"}}}}}
AGENT_QUESTION = "What's the weather like in Paris today?"
AGENT_ROUNDS = 3
"""Model turns the agent loop allows (a call, then the answer; one more in case the model calls again)."""


@dataclass
class DemoResult:
    """What the demo did: per-step timings and facts, and where its files are."""

    workdir: str
    steps: list[dict[str, Any]] = field(default_factory=list)
    paths: dict[str, str] = field(default_factory=dict)
    ok: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "workdir": self.workdir, "paths": self.paths, "steps": self.steps}


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM stops the demo the way Ctrl-C does, so the cleanup below always runs."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"received {signal.Signals(signum).name}")

    try:
        old = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def run_demo(workdir: str | Path, *, bench: bool = True, baseline: str | Path | None = None,
             tolerance: float | None = None, hold_s: float = 0.0,
             echo: Callable[[str], None] = print) -> DemoResult:
    """Run the pipeline in ``workdir`` (replacing an earlier demo's files there).

    Args:
        workdir: where the checkpoint, bundle, logs and benchmark go.
        bench: run the aiperf sweep of the recipe's ``bench:`` section.
        baseline: a results.json to gate the benchmark against; ``tolerance`` in percent.
        hold_s: keep the service up this long at the end (to try it by hand; Ctrl-C ends it early).
        echo: progress lines.
    Returns:
        The DemoResult. Raises K2trtError (one line) when a step fails; the job is stopped either way.
    Example:
        ``run_demo("k2trt-demo")``
    """
    work = Path(workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    res = DemoResult(str(work))
    state_path: Path | None = None
    _claim(work, echo)
    with _sigterm_as_interrupt():
        try:
            ckpt, served = _prepare(work, res, echo)
            bundle = _build(work, served, res, echo)
            state_path = bundle / "logs" / "serve.state.json"
            urls = _serve(bundle, res, echo)
            _requests(urls["gateway"], res, echo)
            if bench:
                _bench(urls["gateway"], served, work, res, echo, baseline, tolerance)
            if hold_s > 0:
                echo(f"serving for {hold_s:.0f} s: OpenAI base URL {urls['gateway']}/v1, Anthropic base URL "
                     f"{urls['gateway']} (Ctrl-C stops)")
                time.sleep(hold_s)
        except BaseException:
            res.ok = False
            raise
        finally:
            try:
                if state_path is not None:
                    _stop(state_path, res, echo)
            finally:
                (work / OWNER_FILE).unlink(missing_ok=True)
    return res


def _claim(work: Path, echo: Callable[[str], None]) -> None:
    """Take ``work`` for this run: refuse while another demo runs there; stop the job a killed one left behind."""
    from k2trt.fsio import atomic_write_json
    from k2trt.launch import procs
    from k2trt.launch.state import STATE_FILE, job_processes, read_state, stop, supervisor_of

    owner = work / OWNER_FILE
    if owner.is_file():
        try:
            data = json.loads(owner.read_text())
        except (OSError, ValueError):
            data = {}
        pid = data.get("pid")
        if isinstance(pid, int) and pid != os.getpid() and procs.is_process(pid, data.get("start")):
            raise LaunchError(f"another k2trt demo (pid {pid}) is running in {work}",
                              "wait for it to finish, or give this one another --workdir")
    state_path = work / "bundle" / "logs" / STATE_FILE
    if state_path.is_file():
        try:
            data = read_state(state_path)
        except LaunchError:
            data = {}
        sup = supervisor_of(data)
        if sup is not None or job_processes(data):
            stop(state_path)
            echo(f"stopped the job an earlier demo left running (supervisor pid {data.get('supervisor_pid')})")
    atomic_write_json(owner, {"pid": os.getpid(), "start": procs.start_time(os.getpid())})


@contextmanager
def _step(res: DemoResult, name: str, echo: Callable[[str], None]) -> Iterator[dict[str, Any]]:
    info: dict[str, Any] = {"step": name}
    echo(f"▶ {name}")
    t = time.monotonic()
    try:
        yield info
    finally:
        info["seconds"] = round(time.monotonic() - t, 2)
        res.steps.append(info)
        detail = ", ".join(f"{k}={v}" for k, v in info.items() if k not in ("step", "seconds", "reply", "transcript"))
        echo(f"  done in {info['seconds']:.1f} s{': ' + detail if detail else ''}")


def _prepare(work: Path, res: DemoResult, echo: Callable[[str], None]) -> tuple[Path, Path]:
    from k2trt.checkpoint.convert import ConvertOptions, convert
    from k2trt.checkpoint.inspect import inspect_checkpoint
    from k2trt.fsio import atomic_dir, atomic_write
    from k2trt.train.config import DEFAULT_OUT, METADATA_FILE

    ckpt = work / "tiny-k2"
    with _step(res, "take the trained tiny K2 (k2trt train-tiny's committed checkpoint)", echo) as info:
        with atomic_dir(ckpt) as stage:
            for f in sorted(DEFAULT_OUT.iterdir()):
                atomic_write(stage / f.name, f.read_bytes())
        meta = json.loads((ckpt / METADATA_FILE).read_text())
        info.update(params=meta["model"]["params"], trained_steps=meta["run"]["steps"], source=str(DEFAULT_OUT))
    with _step(res, "inspect it", echo) as info:
        _inspect_ok(inspect_checkpoint(ckpt), info)
    served = work / "tiny-k2-trtllm"
    with _step(res, "convert --to trtllm (the directory trtllm-serve would load)", echo) as info:
        out = convert(ckpt, served, ConvertOptions(target="trtllm", force=True))
        info.update(state=out.state, shards=out.shards_written + out.shards_skipped)
    with _step(res, "inspect the converted checkpoint", echo) as info:
        _inspect_ok(inspect_checkpoint(served), info)
    res.paths.update(checkpoint=str(ckpt), converted=str(served))
    return ckpt, served


def _inspect_ok(rep: Any, info: dict[str, Any]) -> None:
    info.update(tensors=rep.tensors, problems=sum(p.severity != "info" for p in rep.problems))
    if not rep.ok:
        first = next(p for p in rep.problems if p.severity in ("error", "warning"))
        raise K2trtError(f"inspect found problems in {rep.model_dir}: {first.where}: {first.message}")


def _build(work: Path, served: Path, res: DemoResult, echo: Callable[[str], None]) -> Path:
    from k2trt.bundle.build import build_bundle
    from k2trt.bundle.recipe import load_recipe

    bundle = work / "bundle"
    with _step(res, f"plan and build the {RECIPE} bundle", echo) as info:
        # the demo's gateway listens on loopback and its clients send no key: a key exported for another
        # gateway ($K2TRT_GATEWAY_API_KEYS) must not lock the demo's own requests out
        out = build_bundle(load_recipe(RECIPE, ["serve.gateway_api_key_env=null"]), served, bundle, force=True)
        info.update(files=len(out.files))
    res.paths.update(bundle=str(bundle), plan=str(bundle / "PLAN.md"), logs=str(bundle / "logs"))
    return bundle


def _serve(bundle: Path, res: DemoResult, echo: Callable[[str], None]) -> dict[str, str]:
    from k2trt.launch.runner import serve

    with _step(res, "serve: reference engine under mpirun, gateway in front", echo) as info:
        out = serve(bundle, detach=True, echo=None, progress=False)
        if out.get("status") != "ready":
            tail = "; ".join(out.get("tail", [])[-3:])
            raise LaunchError(f"the engine did not become ready: {out.get('message')}"
                              + (f" (last lines: {tail})" if tail else ""), f"logs in {bundle / 'logs'}")
        info.update(engine=out["url"], gateway=out.get("gateway_url"))
    if not out.get("gateway_url"):
        raise LaunchError("the bundle started no gateway", f"rebuild it from the {RECIPE} recipe")
    return {"engine": out["url"], "gateway": out["gateway_url"]}


def _requests(gateway: str, res: DemoResult, echo: Callable[[str], None]) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=f"{gateway}/v1", api_key="demo", timeout=120, max_retries=0)
    model = client.models.list().data[0].id
    with _step(res, "chat request (openai SDK, streaming)", echo) as info:
        parts = []
        stream = client.chat.completions.create(
            model=model, stream=True, max_tokens=24, temperature=0.0,
            messages=[{"role": "user", "content": "Say hello in one short sentence."}])
        finish = None
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                parts.append(chunk.choices[0].delta.content)
            if chunk.choices and chunk.choices[0].finish_reason:
                finish = chunk.choices[0].finish_reason
        info.update(finish_reason=finish, chars=len("".join(parts)), reply="".join(parts))
    with _step(res, "agent loop: the model calls the declared tool, the demo runs it, the model answers", echo) \
            as info:
        info.update(_agent_loop(client, model, echo))


def run_tool(name: str, arguments: str) -> dict[str, Any]:
    """The demo's tool: a made-up weather report, the same for the same city (no network)."""
    try:
        args = json.loads(arguments)
    except ValueError:
        return {"error": f"arguments are not JSON: {arguments!r}"}
    city = args.get("city") if isinstance(args, dict) else None
    if name != WEATHER_TOOL["function"]["name"] or not isinstance(city, str):
        return {"error": f"unknown tool or arguments: {name}({arguments})"}
    h = zlib.crc32(city.strip().lower().encode())
    return {"temperature": h % 30 - 2, "condition": ("sunny", "cloudy", "rainy", "windy")[h // 30 % 4]}


def _agent_loop(client: Any, model: str, echo: Callable[[str], None]) -> dict[str, Any]:
    """Up to ``AGENT_ROUNDS`` model turns: each call is run and its result sent back, until the model answers."""
    messages: list[dict[str, Any]] = [{"role": "user", "content": AGENT_QUESTION}]
    echo(f"    user: {AGENT_QUESTION}   [tools: {WEATHER_TOOL['function']['name']}]")
    calls_made, answer, usage = 0, None, 0
    for _ in range(AGENT_ROUNDS):
        r = client.chat.completions.create(model=model, messages=messages, tools=[WEATHER_TOOL], tool_choice="auto",
                                           max_tokens=96, temperature=0.0)
        msg = r.choices[0].message
        usage += r.usage.prompt_tokens if r.usage else 0
        calls = msg.tool_calls or []
        messages.append(msg.model_dump(exclude_none=True, include={"role", "content", "tool_calls"}))
        if not calls:
            answer = msg.content or ""
            echo(f"    assistant: {answer or '(an empty reply)'}")
            break
        for c in calls:
            calls_made += 1
            echo(f"    assistant → {c.function.name}({c.function.arguments})   [id {c.id}]")
            result = json.dumps(run_tool(c.function.name, c.function.arguments))
            echo(f"    tool {c.function.name} → {result}")
            messages.append({"role": "tool", "tool_call_id": c.id, "content": result})
    results = [m["content"] for m in messages if m["role"] == "tool"]
    grounded = bool(answer) and any(str(v) in answer for res in results for v in json.loads(res).values())
    return {"tool_calls": calls_made, "answered": answer is not None, "grounded": grounded, "usage": usage,
            "reply": answer, "transcript": messages}


def _bench(gateway: str, served: Path, work: Path, res: DemoResult, echo: Callable[[str], None],
           baseline: str | Path | None, tolerance: float | None) -> None:
    from k2trt.bench.sweep import run_bench
    from k2trt.bundle.recipe import spec_from_recipe

    spec, _ = spec_from_recipe(RECIPE)
    out = work / "bench"
    kw: dict[str, Any] = {} if tolerance is None else {"tolerance": tolerance}
    with _step(res, "bench: aiperf sweep through the gateway", echo) as info:
        r = run_bench(spec, gateway, out, model_dir=served, baseline=baseline, force=True, progress=False,
                      manifest=work / "bundle" / "manifest.json", **kw)
        info.update(points=len(r.points), ok=r.ok)
        best = max((p for p in r.points if p.ok), key=lambda p: p.metrics.get("output_tok_s") or 0, default=None)
        if best is not None:
            info.update(best_output_tok_s=best.metrics.get("output_tok_s"))
    res.paths.update(bench=str(out), report=str(out / "REPORT.md"))
    if not r.ok:
        regs = (r.gate or {}).get("regressions") or []
        why = regs[0] if regs else next((p.error for p in r.points if not p.ok), "a point failed")
        raise K2trtError(f"benchmark failed: {why}", f"see {out / 'REPORT.md'}")


def _stop(state_path: Path, res: DemoResult, echo: Callable[[str], None]) -> None:
    from k2trt.launch.state import stop

    if not state_path.is_file():
        return
    with _step(res, "stop everything", echo) as info:
        out = stop(state_path)  # raises LaunchError naming any process of the job that survived
        info.update(stopped=out["stopped"], leftover=len(out["leftover"]))
