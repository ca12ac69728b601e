"""aiperf as a subprocess: the argv of one point, an offline environment, running it, parsing its export.

aiperf's flag names are spelled only here (checked against aiperf 0.13 ``aiperf profile --help``). One aiperf run
per point, each in its own artifact folder, so a failed or killed point loses nothing of the others and every
point leaves aiperf's own files (``profile_export_aiperf.json``/``.csv``, per-request ``profile_export.jsonl``,
``logs/aiperf.log``) next to our ``aiperf.log`` (its console output).

Offline tokenizer: aiperf counts and synthesises tokens with a Hugging Face tokenizer. K2 ships a tiktoken BPE
that aiperf cannot load, and ``--tokenizer builtin`` downloads an encoding, so ``prepare_tokenizer`` writes an
equivalent ``tokenizer.json`` directory and aiperf gets its absolute path. aiperf treats a path as a hub id when
``HF_HUB_OFFLINE`` is set, so ``aiperf_env`` removes that variable and instead points the hub endpoint at a
closed local port: nothing can be downloaded, and anything that tries fails at once instead of hanging.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from k2trt.bench.spec import BenchSpec, Point
from k2trt.errors import ConfigError
from k2trt.fsio import atomic_dir, atomic_write_json

EXPORT_JSON = "profile_export_aiperf.json"
"""aiperf's aggregate export: one object per metric with its unit, avg and percentiles."""
SERVER_EXPORT_JSON = "server_metrics_export.json"
"""aiperf's export of the Prometheus metrics it scraped during the run (``k2trt.bench.server``)."""
CONSOLE_LOG = "aiperf.log"
"""aiperf's console output, written by k2trt into each point folder."""
DEAD_HUB = "http://127.0.0.1:9"
"""Hub endpoint given to aiperf: the discard port on loopback, refused at once, so no download can happen."""

# Flags k2trt sets itself (and their aliases): `extra_args` may not repeat them.
_RESERVED = frozenset({
    "--model", "--model-names", "-m", "--url", "-u", "--endpoint-type", "--streaming", "--isl",
    "--prompt-input-tokens-mean", "--synthetic-input-tokens-mean", "--osl", "--prompt-output-tokens-mean",
    "--output-tokens-mean", "--isl-stddev", "--osl-stddev", "--concurrency", "--request-count", "--num-requests",
    "--warmup-request-count", "--num-warmup-requests", "--tokenizer", "--artifact-dir", "--output-artifact-dir",
    "--random-seed", "--ui-type", "--ui", "--request-timeout-seconds", "--use-server-token-count",
    "--server-metrics", "--no-server-metrics", "--server-metrics-formats",
})


def aiperf_command() -> list[str]:
    """The command that starts aiperf: its console script beside this interpreter, else ``python -m aiperf``,
    else ``aiperf`` on PATH. Raises ``ConfigError`` when aiperf is not installed."""
    script = Path(sys.executable).parent / "aiperf"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    if importlib.util.find_spec("aiperf") is not None:
        return [sys.executable, "-m", "aiperf"]
    found = shutil.which("aiperf")
    if found:
        return [found]
    raise ConfigError("aiperf is not installed", "pip install 'k2trt[bench]' (or aiperf>=0.13) into this environment")


def aiperf_version() -> str | None:
    """The installed aiperf version, or None when it is not importable here."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("aiperf")
    except PackageNotFoundError:
        return None


def aiperf_env(scratch: Path | None = None, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment aiperf runs in: offline by construction, and with its scratch files kept in ``scratch``.

    Args:
        scratch: directory for aiperf's memory-mapped dataset files (default: the system temp directory).
        base: environment to start from (default ``os.environ``).
    """
    env = dict(os.environ if base is None else base)
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):  # makes aiperf read a local path as a hub id
        env.pop(var, None)
    env["HF_ENDPOINT"] = DEAD_HUB
    env["HF_HUB_DISABLE_TELEMETRY"] = "1"
    env["HF_HUB_DISABLE_IMPLICIT_TOKEN"] = "1"
    # The content-addressed dataset cache under ~/.cache has no eviction; every point regenerates its prompts.
    env["AIPERF_DATASET_MMAP_CACHE_ENABLED"] = "false"
    if scratch is not None:
        env["AIPERF_DATASET_MMAP_BASE_PATH"] = str(scratch)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def aiperf_argv(spec: BenchSpec, point: Point, *, url: str, model: str, tokenizer_dir: str | Path,
                artifact_dir: str | Path, command: list[str] | None = None,
                server_metrics: tuple[str, ...] | None = ()) -> list[str]:
    """The argv (a list, never a shell string) of one aiperf ``profile`` run.

    Args:
        spec: the sweep (endpoint kind, streaming, seed, timeouts, extra arguments).
        point: ISL/OSL, concurrency, request and warm-up counts of this run.
        url: the server's base URL, e.g. ``http://127.0.0.1:8000`` (aiperf appends ``/v1/...``).
        model: served model name sent in each request.
        tokenizer_dir: a local Hugging Face tokenizer directory (``prepare_tokenizer``); made absolute.
        artifact_dir: this point's folder.
        command: how to start aiperf (default ``aiperf_command()``).
        server_metrics: Prometheus endpoints to scrape besides ``url``'s own ``/metrics`` (which aiperf always
            scrapes, falling back to ``/prometheus/metrics`` for trtllm-serve); ``None`` scrapes nothing.

    Returns:
        The argv.

    Example:
        >>> aiperf_argv(BenchSpec(isl_osl=((16, 8),), concurrency=(2,)), BenchSpec().points()[0],
        ...             url="http://127.0.0.1:8000", model="m", tokenizer_dir="/t", artifact_dir="/a",
        ...             command=["aiperf"])[:3]
        ['aiperf', 'profile', '--model']
    """
    for arg in spec.extra_args:
        flag = arg.split("=", 1)[0]
        if flag in _RESERVED:
            raise ConfigError(f"bench.extra_args repeats {flag}, which k2trt sets from the bench spec",
                              "set it through its bench key instead (isl_osl, concurrency, model, seed, ...)")
    argv = [*(command or aiperf_command()), "profile",
            "--model", model,
            "--url", url.rstrip("/"),
            "--endpoint-type", spec.endpoint,
            *(["--streaming"] if spec.streaming else []),
            "--isl", str(point.isl), "--isl-stddev", "0",
            "--osl", str(point.osl), "--osl-stddev", "0",
            "--concurrency", str(point.concurrency),
            "--request-count", str(point.requests),
            *(["--warmup-request-count", str(point.warmup)] if point.warmup > 0 else []),
            "--tokenizer", str(Path(tokenizer_dir).absolute()),
            "--random-seed", str(spec.seed),
            "--request-timeout-seconds", f"{spec.request_timeout_s:g}",
            *(["--extra-inputs", "ignore_eos:true"] if spec.ignore_eos else []),
            *(["--use-server-token-count"] if spec.server_token_count else []),
            # No TTY UI, no DCGM scrape (a client host has no GPU)
            "--ui-type", "none", "--no-gpu-telemetry",
            *_server_metrics_args(url, server_metrics),
            "--artifact-dir", str(Path(artifact_dir).absolute()),
            *spec.extra_args]
    return argv


def _server_metrics_args(url: str, extra: tuple[str, ...] | None) -> list[str]:
    """aiperf scrapes ``<url>/metrics`` whenever server metrics are on; ``extra`` URLs come on top, once each.
    The JSON export is what ``k2trt.bench.server`` reads, so it is asked for explicitly."""
    if extra is None:
        return ["--no-server-metrics"]
    own = url.rstrip("/") + "/metrics"
    urls = [u for u in dict.fromkeys(u.rstrip("/") for u in extra) if u != own]
    return [*(["--server-metrics", *urls] if urls else []), "--server-metrics-formats", "json", "csv"]


@dataclass(frozen=True)
class PointRun:
    """How one aiperf process ended."""

    returncode: int | None
    """Exit status; None when it was killed on timeout."""
    elapsed_s: float
    """Wall time of the whole aiperf run, start-up included."""
    log: Path
    """aiperf's console output."""

    @property
    def timed_out(self) -> bool:
        """The run was killed at ``point_timeout_s``."""
        return self.returncode is None


def run_point(argv: list[str], artifact_dir: Path, *, timeout_s: float, env: dict[str, str]) -> PointRun:
    """Run one aiperf process to completion (or kill it with its children at ``timeout_s``).

    aiperf starts a tree of service processes, so it runs in its own session and is stopped as a process group;
    a KeyboardInterrupt stops the group too before propagating, leaving nothing behind.
    """
    artifact_dir.mkdir(parents=True, exist_ok=True)
    log = artifact_dir / CONSOLE_LOG
    t0 = time.monotonic()
    # aiperf is in its own session, so a SIGTERM meant for us would not reach it: while it runs, SIGTERM
    # becomes SystemExit here (main thread only), which stops the group below; the old handler comes back after.
    main = threading.current_thread() is threading.main_thread()
    old = signal.signal(signal.SIGTERM, _exit_on_sigterm) if main else None
    try:
        with open(log, "wb") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                    start_new_session=True)
            try:
                rc: int | None = proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                _stop_group(proc)
                rc = None
            except BaseException:
                _stop_group(proc)
                raise
    finally:
        if main:
            signal.signal(signal.SIGTERM, old if old is not None else signal.SIG_DFL)
    return PointRun(rc, time.monotonic() - t0, log)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _stop_group(proc: subprocess.Popen[bytes], grace_s: float = 10.0) -> None:
    """SIGTERM aiperf's process group, then SIGKILL whatever is left after ``grace_s``."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        try:  # the leader is gone; its children may not be
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return


def log_tail(path: Path, lines: int = 8) -> str:
    """The last ``lines`` non-empty lines of a log, for error messages."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join([ln for ln in text.splitlines() if ln.strip()][-lines:])


def read_export(artifact_dir: Path) -> dict[str, Any]:
    """aiperf's aggregate JSON export of one point; ``ConfigError`` when it is missing or not JSON."""
    path = artifact_dir / EXPORT_JSON
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path} is missing", "aiperf did not finish; see aiperf.log beside it") from None
    except ValueError as e:
        raise ConfigError(f"{path} is not JSON ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} is not an aiperf export (top level is not an object)")
    return data


def read_server_export(artifact_dir: Path) -> dict[str, Any] | None:
    """aiperf's server-metrics export of one point, or ``None`` when it scraped nothing (no reachable Prometheus
    endpoint: aiperf then writes no file) or the file is unreadable."""
    try:
        data = json.loads((artifact_dir / SERVER_EXPORT_JSON).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# --- the offline tokenizer directory -------------------------------------------------------------------------

TOKENIZER_STAMP = ".k2trt-source.json"
"""Written beside a generated tokenizer.json: the digest of the tiktoken file it was made from."""


def prepare_tokenizer(model_dir: str | Path, dest: str | Path) -> Path:
    """A local Hugging Face tokenizer directory that counts tokens exactly like the model's own tokenizer.

    A model directory with K2's ``tiktoken.model`` gets an equivalent ``tokenizer.json`` +
    ``tokenizer_config.json`` written to ``dest`` (reused when ``dest`` was made from the same file); a directory
    that already holds a ``tokenizer.json`` and no tiktoken file is used as it is.

    Args:
        model_dir: the checkpoint (or tokenizer) directory.
        dest: where to write the generated directory.

    Returns:
        The directory to pass to aiperf's ``--tokenizer``.
    """
    src = Path(model_dir)
    if not src.is_dir():
        raise ConfigError(f"--model-dir {src} is not a directory",
                          "pass the checkpoint directory holding the model's tokenizer files")
    tik = src / "tiktoken.model"
    if not tik.is_file():
        if (src / "tokenizer.json").is_file():
            return src
        raise ConfigError(f"{src} has neither tiktoken.model nor tokenizer.json",
                          "pass the checkpoint directory (it ships the model's tokenizer)")
    digest = hashlib.sha256(tik.read_bytes()).hexdigest()
    out = Path(dest)
    stamp = out / TOKENIZER_STAMP
    try:
        if json.loads(stamp.read_text()).get("tiktoken_sha256") == digest and (out / "tokenizer.json").is_file():
            return out
    except (OSError, ValueError):
        pass
    from k2trt.chat.vocab import write_hf_tokenizer_json

    with atomic_dir(out) as stage:
        write_hf_tokenizer_json(stage, model_dir=src)
        atomic_write_json(stage / "tokenizer_config.json", hf_tokenizer_config(src))
        atomic_write_json(stage / TOKENIZER_STAMP, {"source": str(tik.absolute()), "tiktoken_sha256": digest},
                          indent=None)
    return out


# tokenizer_config.json keys that describe the vocabulary; the rest (the tiktoken class, auto_map naming the
# model's remote code, the chat template) would make transformers look for code the directory does not hold.
_CONFIG_KEYS = ("added_tokens_decoder", "additional_special_tokens", "bos_token", "eos_token", "pad_token",
                "unk_token", "clean_up_tokenization_spaces", "model_max_length")


def hf_tokenizer_config(model_dir: Path) -> dict[str, Any]:
    """The ``tokenizer_config.json`` beside the generated ``tokenizer.json``: the model's special tokens, loaded
    by transformers' generic fast tokenizer class."""
    try:
        cfg = json.loads((model_dir / "tokenizer_config.json").read_text())
    except FileNotFoundError:
        cfg = {}
    except ValueError as e:
        raise ConfigError(f"{model_dir / 'tokenizer_config.json'} is not JSON ({e})") from None
    out = {k: cfg[k] for k in _CONFIG_KEYS if k in cfg}
    out["tokenizer_class"] = "PreTrainedTokenizerFast"
    return out
