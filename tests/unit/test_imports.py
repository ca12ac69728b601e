"""Import hygiene (STYLE P12): login-node modules import with torch, triton and transformers blocked, and
`k2trt --help` lists every command without importing them."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import k2trt

ROOT = Path(k2trt.__file__).parent
# Packages/modules that must never need torch (DESIGN.md: they run on login nodes).
LIGHT = ["k2trt.spec", "k2trt.errors", "k2trt.cli", "k2trt.cli_options", "k2trt.mapping", "k2trt.layout",
         "k2trt.demo", "k2trt.sampling", "k2trt.asgi", "k2trt.train.config", "k2trt.train.pools",
         "k2trt.train.tools", "k2trt.train.corpus", "k2trt.train.render",
         "k2trt.reference.serve"]  # the reference server's argv is spelled by login-node bundle builds
LIGHT_PACKAGES = ["checkpoint", "plan", "trtllm", "launch", "commands", "chat", "gateway", "bundle", "bench"]

BLOCK = "import sys\nfor m in ('torch', 'triton', 'transformers'):\n    sys.modules[m] = None\n"


def _light_modules() -> list[str]:
    mods = [m for m in LIGHT if (ROOT / (m.split(".", 1)[1].replace(".", "/") + ".py")).exists()]
    for pkg in LIGHT_PACKAGES:
        if (ROOT / pkg).is_dir():
            mods.append(f"k2trt.{pkg}")
            mods += [f"k2trt.{pkg}.{m.name}" for m in pkgutil.iter_modules([str(ROOT / pkg)])]
    return mods


def test_light_modules_import_without_torch() -> None:
    mods = _light_modules()
    assert "k2trt.spec" in mods and "k2trt.commands.checkpoint" in mods
    code = BLOCK + "import importlib\nfor m in %r:\n    importlib.import_module(m)\n" % mods
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]


def test_help_lists_commands_without_heavy_imports() -> None:
    code = BLOCK + "from k2trt.cli import main\nmain(['--help'])\n"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr[-3000:]
    for cmd in ("synth", "inspect"):
        assert cmd in r.stdout
    from k2trt.cli import COMMANDS, LazyGroup

    # every registered command that exists on disk is listed (a typo in COMMANDS would hide it silently)
    for name, target in COMMANDS.items():
        module = target.split(":")[0]
        if (ROOT / (module.split(".", 1)[1].replace(".", "/") + ".py")).exists():
            assert LazyGroup._load(name) is not None, f"{target} does not define a click command"
            assert f"  {name}" in r.stdout


def test_errors_are_one_line(tmp_path) -> None:
    r = subprocess.run([sys.executable, "-m", "k2trt.cli", "inspect", str(tmp_path / "nope")], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 1 and "is not a directory" in r.stdout
    r = subprocess.run([sys.executable, "-m", "k2trt.cli", "synth", "--preset", "huge", "--out", str(tmp_path / "x")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "unknown preset 'huge'" in r.stderr and "Traceback" not in r.stderr
