"""A bundle's settings reach the job `k2trt serve` starts, under real mpirun: the logs of a ``serve.log_format: json``
job are JSON lines carrying the job id (and a rank's lines its rank) in every file, with no prompt text; the
gateway it starts has the bundle's context, served model name and limits.

The tiny K2 on the reference engine (recipe ``tiny-cpu``, tp2) logs JSON itself; tests/e2e/launch_rank_server.py
prints plain text, as TensorRT-LLM's ranks would, and the supervisor wraps its lines."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any, Iterator

import anthropic
import httpx
import openai
import pytest
from launch_helpers import ROOT, k2trt_cmd, make_bundle, procs_with, rank_server_argv, read_state, run_k2trt, \
    token, wait_for

from k2trt.bundle.build import build_bundle
from k2trt.bundle.recipe import load_recipe
from k2trt.launch.spec import LaunchSpec

pytestmark = pytest.mark.e2e
PORT, GW_PORT, MASTER_PORT, FG_PORT, KILL_PORT = 18520, 18521, 18522, 18523, 18524
MARKER = "zebra-quartz-7781"  # prompt text that must reach no log line
CONTEXT = 160  # the bundle's gateway context: far below the tiny K2's 8192 positions and the recipe's 2048
MODEL = "tiny-json"


def _lines(path: Path) -> list[dict[str, Any]]:
    out = []
    for i, line in enumerate(path.read_text().splitlines()):
        try:
            obj = json.loads(line)
        except ValueError:
            raise AssertionError(f"{path.name}:{i + 1} is not JSON: {line[:200]!r}") from None
        assert isinstance(obj, dict), f"{path.name}:{i + 1} is not a JSON object: {line[:200]!r}"
        out.append(obj)
    return out


def _log_files(bundle: Path) -> dict[str, list[dict[str, Any]]]:
    logs = bundle / "logs"
    return {p.name: _lines(p) for p in sorted(logs.iterdir()) if p.name != "serve.state.json"}


@pytest.fixture(scope="module")
def job(tiny_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, Any]]]:
    b = tmp_path_factory.mktemp("jsonlogs") / "bundle"
    r = load_recipe("tiny-cpu", [f"serve.port={PORT}", f"serve.gateway_port={GW_PORT}", "serve.log_format=json",
                                 "serve.gateway_api_key_env=null", f"serve.gateway_limits.max_context_tokens={CONTEXT}",
                                 "serve.gateway_limits.model_aliases=[m]", f"model.served_name={MODEL}"])
    build_bundle(r, tiny_ckpt, b)
    spec = LaunchSpec.load(b / "launch.json")  # ranks run this checkout, on a port no other test uses
    env = {"PYTHONPATH": str(ROOT), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(MASTER_PORT)}
    dataclasses.replace(spec, env=env, ready_timeout_s=240, stop_grace_s=5).dump(b / "launch.json")
    res = run_k2trt("serve", str(b), "--detach", "--json", timeout=300)
    try:
        assert res.returncode == 0, res.stderr[-3000:] + res.stdout[-3000:]
        yield b, json.loads(res.stdout)
    finally:
        if read_state(b).get("status") in ("starting", "ready"):
            run_k2trt("stop", str(b))
        job_id = read_state(b).get("job_id", "-")
        wait_for(lambda: not procs_with(str(b)) and not _job_procs(job_id), 20, "the job to end")


def _job_procs(job_id: str) -> list[int]:
    """Live processes carrying the job's marker in their environment."""
    found = []
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit() and f"K2TRT_JOB_ID={job_id}".encode() in (d / "environ").read_bytes():
                found.append(int(d.name))
        except OSError:
            continue
    return found


def test_the_bundles_gateway_settings_reach_the_running_gateway(job: tuple[Path, dict[str, Any]]) -> None:
    bundle, res = job
    assert res["gateway_url"] == f"http://127.0.0.1:{GW_PORT}"
    gw = LaunchSpec.load(bundle / "launch.json").gateway
    assert gw is not None and gw.limits.max_context_tokens == CONTEXT and gw.served_model_name == MODEL
    oai = openai.OpenAI(base_url=f"{res['gateway_url']}/v1", api_key="none", max_retries=0, timeout=120)
    assert [m.id for m in oai.models.list().data] == [MODEL]  # model.served_name
    long = [{"role": "user", "content": f"{MARKER} " + "hello " * 400}]
    with pytest.raises(openai.BadRequestError) as e:  # serve.gateway_limits.max_context_tokens, not the model's
        oai.chat.completions.create(model=MODEL, messages=long, max_tokens=4)  # type: ignore[arg-type]
    assert e.value.code == "context_length_exceeded" and f"{CONTEXT}" in str(e.value.message)
    ant = anthropic.Anthropic(base_url=res["gateway_url"], api_key="none", max_retries=0, timeout=120)
    with pytest.raises(anthropic.BadRequestError):
        ant.messages.create(model="m", max_tokens=4, messages=long)  # type: ignore[arg-type]  # an alias
    out = oai.chat.completions.create(model="m", max_tokens=4, temperature=0,
                                      messages=[{"role": "user", "content": f"Say {MARKER}."}])
    assert out.usage is not None and out.usage.completion_tokens >= 1
    stream = oai.chat.completions.create(model=MODEL, max_tokens=4, temperature=0, stream=True,
                                         messages=[{"role": "user", "content": f"Repeat {MARKER}."}])
    assert sum(1 for _ in stream) >= 1
    r = httpx.post(f"{res['gateway_url']}/v1/chat/completions", timeout=30,
                   json={"model": "other", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 404  # the aliases are the bundle's: "m" is one, "other" is not


def test_every_line_of_every_log_is_json_with_the_job_id_and_rank(job: tuple[Path, dict[str, Any]]) -> None:
    bundle, _ = job
    stop = run_k2trt("stop", str(bundle), "--json")
    assert stop.returncode == 0, stop.stderr
    job_id = read_state(bundle)["job_id"]
    files = _log_files(bundle)
    assert {"server.rank0.log", "server.rank1.log", "supervisor.log", "watchdog.log"} <= set(files), list(files)
    for name, lines in files.items():
        for obj in lines:
            assert obj.get("job_id") == job_id, (name, obj)
            assert MARKER not in json.dumps(obj, ensure_ascii=False), (name, obj)
        if name.startswith("server.rank"):
            rank = int(name[len("server.rank"):-len(".log")])
            assert lines and all(o.get("rank") == rank for o in lines), name
            # the rank logged JSON itself (its loading line), not only through the supervisor's wrapping
            assert any(o.get("component") == "engine" and "loaded its" in o["msg"] for o in lines), name
    sup = files["supervisor.log"]
    launcher = [o for o in sup if o.get("component") == "launcher"]
    assert any(o["msg"].startswith("ready: ") for o in launcher) and any(o.get("status") == "stopped" for o in sup)
    requests = [o for o in sup if o.get("component") == "gateway" and "request_id" in o]
    assert sorted(o["status"] for o in requests) == [200, 200, 400, 400, 404], requests
    assert {o["api"] for o in requests} == {"openai", "anthropic"} and all(o["model"] == MODEL for o in requests)


def test_a_foreground_job_logs_json_and_wraps_what_ranks_print_as_text(tmp_path: Path) -> None:
    """``k2trt serve --log-format json`` in the foreground: the rank program prints plain text (as TensorRT-LLM's
    would), so the supervisor wraps each line with the job id, rank and stream; stderr carries JSON only."""
    tok = token()
    b = make_bundle(tmp_path / "b", argv=rank_server_argv(FG_PORT, tok), world_size=2, http_port=FG_PORT)
    proc = subprocess.Popen(k2trt_cmd("serve", str(b), "--log-format", "json"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        wait_for(lambda: read_state(b).get("status") == "ready", 120, "the job to be ready")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, out + err
    job_id = read_state(b)["job_id"]
    shown = [json.loads(line) for line in err.splitlines()]  # every stderr line is JSON
    assert shown and all(o["job_id"] == job_id for o in shown)
    for rank in (0, 1):
        lines = _lines(b / "logs" / f"server.rank{rank}.log")
        up = [o for o in lines if o["msg"].startswith(f"rank {rank} up on ")]
        assert up and up[0]["rank"] == rank and up[0]["logger"] == "k2trt.launch.output" and up[0]["job_id"] == job_id
        assert up[0]["stream"] == "stdout" and up[0] in shown
    assert any(o.get("component") == "launcher" and o["msg"] == f"ready: http://127.0.0.1:{FG_PORT}" for o in shown)
    assert all(o["job_id"] == job_id for lines in _log_files(b).values() for o in lines)
    assert procs_with(tok) == []


def test_the_watchdogs_line_is_json_when_it_ends_a_job(tmp_path: Path) -> None:
    tok = token()
    b = make_bundle(tmp_path / "b", argv=rank_server_argv(KILL_PORT, tok), world_size=2, http_port=KILL_PORT,
                    log_format="json")
    r = run_k2trt("serve", str(b), "--detach", "--json")
    assert r.returncode == 0, r.stderr
    try:
        os.kill(json.loads(r.stdout)["supervisor_pid"], signal.SIGKILL)
        wait_for(lambda: not procs_with(tok), 20, "the ranks to follow their supervisor")
        wait_for(lambda: (b / "logs" / "watchdog.log").read_text(), 10, "the watchdog's line")
    finally:
        run_k2trt("stop", str(b))
    (line,) = _lines(b / "logs" / "watchdog.log")
    assert line["component"] == "watchdog" and line["job_id"] == read_state(b)["job_id"] and line["killed"] >= 2
    assert all(o["job_id"] == line["job_id"] for lines in _log_files(b).values() for o in lines)
