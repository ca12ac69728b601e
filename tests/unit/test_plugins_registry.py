"""The plugin registry and how the package loads: the way ``trtllm-serve --custom_module_dirs`` imports it (parent
directory on sys.path, then the directory's name) with k2trt absent, without triton, and without a way to run the
kernels — where the reason must be reported, never swallowed. The subprocesses are real interpreters, no mocks:
blocking a module via ``sys.modules[name] = None`` is how "not installed" is reproduced."""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

if not torch.cuda.is_available():  # must precede triton's first import (see test_plugins.py)
    os.environ.setdefault("TRITON_INTERPRET", "1")
PLUGIN_DIR = Path(__file__).resolve().parents[2] / "plugins" / "k2trt_plugins"
if importlib.util.find_spec("k2trt_plugins") is None:
    sys.path.insert(0, str(PLUGIN_DIR.parent))

import k2trt_plugins as kp  # noqa: E402

from k2trt.errors import K2trtError, PluginUnavailable  # noqa: E402

# What TensorRT-LLM's import_custom_module_from_dir does with a --custom_module_dirs path (tensorrt_llm/tools/
# importlib_utils.py): put the parent directory first on sys.path and import the directory's name as a package.
LOAD = """
import importlib, json, os, sys
from pathlib import Path
{block}
d = Path({path!r})
sys.path.insert(0, str(d.parent))
m = importlib.import_module(d.name)
out = {{"triton_imported_by_import": "triton" in sys.modules}}
"""


def _run(code: str, env_drop: tuple[str, ...] = ("TRITON_INTERPRET",)) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in env_drop}
    env["CUDA_VISIBLE_DEVICES"] = ""  # the "no way to run the kernels" case even on a GPU machine
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env,
                       cwd=str(PLUGIN_DIR.parent.parent))
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_loads_as_custom_module_dir_without_k2trt_and_reports_why_kernels_cannot_run() -> None:
    code = LOAD.format(block="sys.modules['k2trt'] = None  # k2trt not installed in the serving image",
                       path=str(PLUGIN_DIR)) + """
import logging, torch
logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
out["ops"] = sorted(n for n in m.OPS
                    if hasattr(torch.ops.k2trt, n) and hasattr(torch.ops.k2trt, n + "_reference"))
out["error_module"] = m.PluginUnavailable.__module__
out["status"] = m.status("cpu")
try:
    m.get("moe_fp8", "triton", "cpu")
except m.PluginUnavailable as e:
    out["triton_error"] = str(e)
out["auto_is_reference"] = m.get("route", "auto", "cpu") is m.router.route_reference
try:
    m.implementations("triton", "cpu")
except m.PluginUnavailable as e:
    out["implementations_error"] = str(e)
logits = torch.randn(3, 384)
out["reference_op_ids"] = torch.ops.k2trt.route_reference(logits, None, 8, 1, 1, 1.0, True)[0].shape[1]
try:
    torch.ops.k2trt.route(logits, None, 8, 1, 1, 1.0, True)
except m.PluginUnavailable as e:
    out["op_error"] = str(e)
    out["op_error_args"] = len(e.args)
# the same files under a second module name must not fail on the already-registered ops
spec = importlib.util.spec_from_file_location("k2trt_plugins_again", d / "__init__.py",
                                              submodule_search_locations=[str(d)])
again = importlib.util.module_from_spec(spec); sys.modules["k2trt_plugins_again"] = again
spec.loader.exec_module(again)
out["second_copy_ops"] = len(again.OPS)
os.environ["TRITON_INTERPRET"] = "1"  # too late: triton is already imported
out["late_interpret"] = m.unavailable_reason("route", "cpu")
print(json.dumps(out))
"""
    out = _run(code)
    assert out["triton_imported_by_import"] is False  # triton stays lazy
    assert out["ops"] == sorted(kp.OPS) == ["act_quant", "fp8_gemm", "fp8_linear", "mla_decode", "moe_fp8", "route"]
    assert out["error_module"] == "k2trt_plugins._runtime"
    assert set(out["status"]) == set(kp.OPS)
    assert all("no CUDA device, and TRITON_INTERPRET is not 1" in r for r in out["status"].values())
    assert "plugin op 'moe_fp8' cannot run: no CUDA device" in out["triton_error"]
    assert "plugin op 'route' cannot run" in out["implementations_error"]
    assert out["auto_is_reference"] is True
    assert out["reference_op_ids"] == 8
    assert "no CUDA device" in out["op_error"] and "(use the op's *_reference()" in out["op_error"]
    assert out["op_error_args"] == 1  # one readable line, not a tuple
    assert out["second_copy_ops"] == len(kp.OPS)
    assert "TRITON_INTERPRET=1 was set after triton had been imported" in out["late_interpret"]


def test_without_triton_the_reason_names_the_install_and_references_still_run() -> None:
    # ... and given plugins/ itself rather than plugins/k2trt_plugins (its __init__ imports the package)
    code = LOAD.format(block="sys.modules['triton'] = None  # triton not installed",
                       path=str(PLUGIN_DIR.parent)) + """
import torch
out["name"] = m.__name__
out["reason"] = m.k2trt_plugins.unavailable_reason("mla_decode", "cpu")
ids, w = torch.ops.k2trt.route_reference(torch.randn(2, 16), None, 4, 1, 1, 1.0, True)
out["weights_sum"] = [round(float(v), 5) for v in w.sum(1)]
print(json.dumps(out))
"""
    out = _run(code, env_drop=())
    assert out["name"] == "plugins"
    assert "triton is not installed" in out["reason"] and "k2trt[plugins]" in out["reason"]
    assert out["weights_sum"] == [1.0, 1.0]


def test_registry_inside_k2trt() -> None:
    assert kp.PluginUnavailable is PluginUnavailable and issubclass(kp.PluginUnavailable, K2trtError)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    impl = kp.implementations("triton", dev)
    assert impl.route is kp.router.route and impl.mla_decode is kp.mla.mla_decode
    ref = kp.implementations("reference")
    assert ref.moe_fp8 is kp.moe.moe_fp8_reference and ref.fp8_linear is kp.fp8.fp8_linear_reference
    for name, module in kp.OPS.items():  # every op has its reference twin with the same parameters
        assert inspect.signature(getattr(module, name)).parameters.keys() == \
            inspect.signature(getattr(module, name + "_reference")).parameters.keys(), name
    with pytest.raises(ValueError, match="unknown plugin op 'topk'"):
        kp.get("topk")
    with pytest.raises(ValueError, match="impl must be 'auto', 'triton' or 'reference'"):
        kp.get("route", "cuda")
    # the device the tensors are on must be one the kernels can run on, whichever mode this process is in
    wrong, why = ("cuda:0", "runs kernels on CPU tensors only") if kp.interpreting() else ("cpu", "on the CPU")
    with pytest.raises(PluginUnavailable, match=why):
        kp.get("route", "triton", wrong)


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU the bench runs for real (tests/gpu)")
def test_bench_says_it_needs_a_gpu() -> None:
    bench = PLUGIN_DIR.parent.parent / "bench" / "bench_plugins.py"
    r = subprocess.run([sys.executable, str(bench), "--quick"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and r.stdout == ""
    assert "no CUDA device here" in r.stderr and "tests/unit/test_plugins.py" in r.stderr
