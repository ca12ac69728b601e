"""``k2trt doctor`` and ``k2trt config check --trtllm installed`` on a node where ``tensorrt_llm`` imports.

Test double: TensorRT-LLM cannot be installed here (no GPU, no wheel for this platform), so each test builds a small
stand-in package named ``tensorrt_llm`` whose ``llmapi/llm_args.py`` holds real pydantic models shaped like
TensorRT-LLM's (a forbid-extra base, a Literal MoE backend, a discriminated speculative union, a before-validator
that remaps a deprecated MTP key). Doctor extracts the live schema from it with the same extraction the packaged
profiles come from, reports drift against the packaged profile, and validates with the stand-in's ``TorchLlmArgs``.
"""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from k2trt.cli import cli
from k2trt.errors import ConfigError
from k2trt.trtllm import PINNED_RELEASE
from k2trt.trtllm.doctor import doctor, installed_profile

pytest.importorskip("pydantic")

LLM_ARGS = textwrap.dedent('''\
    import logging
    from typing import Annotated, Literal, Optional, Union

    from pydantic import BaseModel, ConfigDict, Discriminator, Field, model_validator

    logger = logging.getLogger("stand-in")


    class StrictBaseModel(BaseModel):
        model_config = ConfigDict(extra="forbid")


    class MoeConfig(StrictBaseModel):
        backend: Literal["AUTO", "CUTLASS", "CUTEDSL", "WIDEEP", "TRTLLM", "DEEPGEMM"] = "AUTO"
        max_num_tokens: Optional[int] = None


    class KvCacheConfig(StrictBaseModel):
        free_gpu_memory_fraction: Optional[float] = Field(default=0.9, ge=0, le=1)
        dtype: str = "auto"
        enable_block_reuse: bool = True


    class MTPDecodingConfig(StrictBaseModel):
        decoding_type: Literal["MTP"] = "MTP"
        max_draft_len: Optional[int] = None
        num_nextn_predict_layers: Optional[int] = None

        @model_validator(mode="before")
        @classmethod
        def _remap_deprecated(cls, data):
            if isinstance(data, dict) and "num_nextn_predict_layers" in data:
                logger.warning("num_nextn_predict_layers is deprecated; use max_draft_len")
                data = dict(data)
                data["max_draft_len"] = data.pop("num_nextn_predict_layers")
            return data


    class DraftTargetDecodingConfig(StrictBaseModel):
        decoding_type: Literal["Draft_Target"] = "Draft_Target"
        speculative_model: Optional[str] = None


    class TorchLlmArgs(StrictBaseModel):
        model: str
        skip_tokenizer_init: bool = False
        max_batch_size: Optional[int] = 2048
        kv_cache_config: KvCacheConfig = Field(default_factory=KvCacheConfig)
        moe_config: MoeConfig = Field(default_factory=MoeConfig)
        speculative_config: Optional[Annotated[Union[MTPDecodingConfig, DraftTargetDecodingConfig],
                                               Discriminator("decoding_type")]] = None
        brand_new_knob: bool = False
    ''')


def _forget_stand_in() -> None:
    for m in [m for m in sys.modules if m == "tensorrt_llm" or m.startswith("tensorrt_llm.")]:
        del sys.modules[m]


@pytest.fixture
def stand_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """Install the stand-in ``tensorrt_llm`` (version given by the test) on sys.path for one test."""

    def make(version: str = PINNED_RELEASE) -> Path:
        pkg = tmp_path / "tensorrt_llm"
        (pkg / "llmapi").mkdir(parents=True, exist_ok=True)
        (pkg / "__init__.py").write_text(f"__version__ = {version!r}\n")
        (pkg / "llmapi" / "__init__.py").write_text("")
        (pkg / "llmapi" / "llm_args.py").write_text(LLM_ARGS)
        monkeypatch.syspath_prepend(str(tmp_path))
        _forget_stand_in()
        return pkg

    yield make
    _forget_stand_in()  # the stand-in's modules vanish with the test


def test_drift_from_the_packaged_profile_is_reported(stand_in) -> None:  # type: ignore[no-untyped-def]
    stand_in()
    rep = doctor()
    assert rep.installed and rep.version == PINNED_RELEASE and rep.compared_with == PINNED_RELEASE
    assert rep.live_counts["models"] == 5 and rep.drift_count == len(rep.drift) > 0
    assert rep.drift[-1].endswith("in the packaged profile, not in the installed release")
    assert "TorchLlmArgs.brand_new_knob: only installed" in rep.drift
    backend = next(d for d in rep.drift if d.startswith("MoeConfig.backend: type"))
    assert "Literal['AUTO', 'CUTLASS', 'CUTEDSL', 'WIDEEP', 'TRTLLM', 'DEEPGEMM'] here" in backend
    assert any(d == "TorchLlmArgs.cuda_graph_config: only packaged" for d in rep.drift)
    assert any("differs from k2trt's 1.3.0rc24 profile" in n for n in rep.notes)


def test_yaml_is_judged_by_the_installed_schema_and_torchllmargs(stand_in) -> None:  # type: ignore[no-untyped-def]
    stand_in()
    rep = doctor({"brand_new_knob": True, "moe_config": {"backend": "DEEPGEMM"}})
    assert rep.ok and rep.native_ok and rep.lint is not None and rep.lint.profile == PINNED_RELEASE
    rep = doctor({"max_batch_sise": 8})
    assert rep.native_ok is False and "Extra inputs" in (rep.native_error or "") and not rep.ok
    assert "max_batch_size" in next(i for i in rep.lint.issues if i.path == "max_batch_sise").fix  # type: ignore[union-attr]
    rep = doctor({"moe_config": {"backend": "MARLIN"}})  # in the packaged profile, not in the installed release
    assert not rep.ok and rep.native_ok is False and not rep.lint.ok  # type: ignore[union-attr]
    # the live before-validator's remap is read from its source: a warning naming the new key, and pydantic agrees
    rep = doctor({"speculative_config": {"decoding_type": "MTP", "num_nextn_predict_layers": 1}})
    dep = next(i for i in rep.lint.issues if i.path == "speculative_config.num_nextn_predict_layers")  # type: ignore[union-attr]
    assert rep.ok and rep.native_ok and dep.severity == "warning" and "max_draft_len" in dep.fix


def test_an_unpackaged_installed_release_is_compared_with_the_pinned_one(stand_in) -> None:  # type: ignore[no-untyped-def]
    stand_in("9.0.0")
    ver, prof = installed_profile()
    assert ver == "9.0.0" and prof.name == "9.0.0" and prof.models["TorchLlmArgs"]["extra"] == "forbid"
    rep = doctor({"max_batch_size": 8})
    assert rep.compared_with == PINNED_RELEASE and any("differs from the pinned" in n for n in rep.notes)
    assert rep.ok and rep.lint.profile == "9.0.0"  # type: ignore[union-attr]


def test_config_check_trtllm_installed(stand_in, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    f = tmp_path / "c.yml"
    f.write_text("moe_config:\n  backend: MARLIN\n")
    r = CliRunner().invoke(cli, ["config", "check", str(f), "--trtllm", "installed"])
    assert r.exit_code == 1 and "not installed" in str(r.exception)  # no tensorrt_llm yet
    stand_in()
    r = CliRunner().invoke(cli, ["config", "check", str(f), "--trtllm", "installed"])
    assert r.exit_code == 1 and "drift: " in r.output and "more (--json lists every one)" in r.output
    assert "TorchLlmArgs: rejected" in r.output and "MARLIN" in r.output
    f.write_text("moe_config:\n  backend: CUTLASS\n")
    r = CliRunner().invoke(cli, ["config", "check", str(f), "--trtllm", "installed", "--json"])
    d = json.loads(r.output)
    assert r.exit_code == 0 and d["native_ok"] is True and d["drift_count"] == len(d["drift"]) and d["lint"]["ok"]
    assert any(line.startswith("MoeConfig.backend: type") for line in d["drift"])
    r = CliRunner().invoke(cli, ["doctor", "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["compared_with"] == PINNED_RELEASE


def test_installed_profile_without_tensorrt_llm() -> None:
    with pytest.raises(ConfigError, match="not installed"):
        installed_profile()


MAIN_LIKE = textwrap.dedent('''\
    import logging
    from typing import Any, Callable, Dict, Optional, Union

    from pydantic import BaseModel, ConfigDict, Field, model_validator

    logger = logging.getLogger("stand-in")


    class StrictBaseModel(BaseModel):
        model_config = ConfigDict(extra="forbid")


    class MoeLoadBalancerConfig(StrictBaseModel):
        num_slots: Optional[int] = None
        layer_updates_per_iter: int = 0


    class MoeConfig(StrictBaseModel):
        load_balancer: Optional[Union[object, str]] = None


    def _check_removed_sampler_type(value: Any) -> None:
        if value in ("auto", "TorchSampler"):
            logger.warning("ignored")
            return
        raise ValueError("no longer available")


    _TORCH_LLMARGS_REMOVED_ARG_CHECKS: Dict[str, Callable[[Any], None]] = {"sampler_type": _check_removed_sampler_type}


    class TorchLlmArgs(StrictBaseModel):
        model: str
        moe_config: MoeConfig = Field(default_factory=MoeConfig)

        @model_validator(mode="before")
        @classmethod
        def _drop_removed_args(cls, data):
            for key, check in _TORCH_LLMARGS_REMOVED_ARG_CHECKS.items():
                if isinstance(data, dict) and key in data:
                    check(data.pop(key))
            return data

        @model_validator(mode="after")
        def validate_load_balancer(self):
            if isinstance(self.moe_config.load_balancer, dict):
                self.moe_config.load_balancer = MoeLoadBalancerConfig(**self.moe_config.load_balancer)
            return self
    ''')


def test_live_extraction_reads_removed_arguments_and_after_validator_models(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """An installed main-era release: the same removed-argument and load-balancer facts as the packaged main profile."""
    import importlib

    from k2trt.trtllm.facts import build_profile
    from k2trt.trtllm.live import facts_from_models

    (tmp_path / "k2trt_main_like_llm_args.py").write_text(MAIN_LIKE)
    monkeypatch.syspath_prepend(str(tmp_path))
    mod = importlib.import_module("k2trt_main_like_llm_args")
    try:
        prof = build_profile(facts_from_models(mod.TorchLlmArgs, "9.9.9"))
    finally:
        sys.modules.pop("k2trt_main_like_llm_args", None)
    root = prof["models"]["TorchLlmArgs"]
    assert root["handled"]["sampler_type"]["values"] == ["auto", "TorchSampler"]
    assert root["coerce"] == {"moe_config.load_balancer": "MoeLoadBalancerConfig"}
    assert set(prof["models"]["MoeLoadBalancerConfig"]["fields"]) == {"num_slots", "layer_updates_per_iter"}
