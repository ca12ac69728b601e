"""``k2trt convert --to nvfp4|w4a8 --calib-data`` on a CUDA device: the reference model measures the experts'
input amax on real prompts, the calibrated scales are written, and the result still verifies against the FP8
source. Runs only where a CUDA device exists (the CPU suite tests the weight-only path and this path's error); no
session so far was lent a device, so it has not yet run on one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("modelopt")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

from k2trt.checkpoint import names  # noqa: E402
from k2trt.checkpoint.convert import ConvertOptions, convert  # noqa: E402
from k2trt.checkpoint.synth import synthesize  # noqa: E402
from k2trt.reference.calibrate import calibrate  # noqa: E402
from k2trt.reference.verify import between  # noqa: E402
from k2trt.spec import REQUANT_TARGETS, preset  # noqa: E402

INPUT_SCALE = ".input_scale"  # the activation scale part of both 4-bit formats (checkpoint.formats)


@pytest.mark.parametrize("target", REQUANT_TARGETS)
def test_calibrated_requantization_verifies(tmp_path: Path, target: str) -> None:
    src = synthesize(preset("tiny"), tmp_path / "src", seed=0, preset_name="tiny")
    calib = tmp_path / "calib.jsonl"
    g = torch.Generator().manual_seed(1)
    calib.write_text("".join(json.dumps({"input_ids": torch.randint(1, 1000, (48,), generator=g).tolist()}) + "\n"
                             for _ in range(8)))
    amax = calibrate(src, calib)
    spec = preset("tiny")
    expected = {names.module_name(names.name_of(r, layer, e)) for layer in spec.moe_layers
                for e in range(spec.n_routed_experts) for r in ("expert_gate", "expert_up", "expert_down")}
    assert set(amax) == expected and all(v > 0 for v in amax.values())
    out = tmp_path / target
    convert(src, out, ConvertOptions(target=target, calib_amax=tuple(sorted(amax.items()))))
    weight_only = tmp_path / f"{target}-wo"
    convert(src, weight_only, ConvertOptions(target=target))
    rep = between(src, out, prompts=4)
    assert rep.passed, rep.metrics
    # calibrated activation scales are tighter than the weight-only hard bounds, never looser
    from safetensors.torch import load_file

    cal = {k: v for f in out.glob("*.safetensors") for k, v in load_file(f).items() if k.endswith(INPUT_SCALE)}
    wo = {k: v for f in weight_only.glob("*.safetensors") for k, v in load_file(f).items()
          if k.endswith(INPUT_SCALE)}
    assert cal.keys() == wo.keys() and cal
    assert all(float(cal[k].max()) <= float(wo[k].max()) * (1 + 1e-6) for k in cal)
    assert any(float(cal[k].max()) < float(wo[k].max()) for k in cal)
