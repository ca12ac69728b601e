"""The TensorRT-LLM schema profiles: the extractor (ast over source, the documentation pages), byte-for-byte
regeneration of every packaged profile from its stored facts, provenance, TensorRT-LLM's own shipped configs judged
as their release judges them, and every row of the renamed-key table under every profile."""

from __future__ import annotations

import html
import json
import re
import textwrap
from pathlib import Path

import pytest
import yaml

from k2trt.trtllm import known
from k2trt.trtllm.facts import build_profile, dump, flatten
from k2trt.trtllm.lint import lint, lint_text
from k2trt.trtllm.profiles import PROFILE_DIR, available, profile_for
from tools.trtllm_extract.__main__ import FACTS_DIR, regenerate
from tools.trtllm_extract.cli_source import click_options_from_source, merge_rule
from tools.trtllm_extract.pages import click_options, viewcode_source
from tools.trtllm_extract.source import extract_models

SHIPPED = Path(__file__).parent.parent / "data" / "trtllm" / "shipped"

# A module shaped like tensorrt_llm/llmapi/llm_args.py: every construct the extractor reads.
SAMPLE = textwrap.dedent('''\
    from enum import Enum
    from typing import Annotated, Dict, List, Literal, Optional, TypeAlias, Union

    from pydantic import AliasChoices, BaseModel, ConfigDict, Discriminator, Field, PositiveInt, model_validator
    from .utils import StrictBaseModel


    class CapacitySchedulerPolicy(StrEnum):
        MAX_UTILIZATION = "MAX_UTILIZATION"
        GUARANTEED_NO_EVICT = "GUARANTEED_NO_EVICT"


    class MoeConfig(StrictBaseModel):
        backend: Literal["AUTO", "CUTLASS"] = Field(default="AUTO")
        max_num_tokens: Optional[int] = Field(default=None, ge=1)


    class LaxConfig(BaseModel):
        model_config = ConfigDict(extra="allow")
        knob: bool = False


    class OldStyle(BaseModel):
        class Config:
            extra = "forbid"
        policy: CapacitySchedulerPolicy = Field(default=CapacitySchedulerPolicy.GUARANTEED_NO_EVICT)


    class DecodingBaseConfig(StrictBaseModel):
        max_draft_len: Optional[PositiveInt] = None


    class MTPDecodingConfig(DecodingBaseConfig):
        decoding_type: Literal["MTP"] = "MTP"
        num_nextn_predict_layers: Optional[int] = Field(default=None, status="deprecated")

        @model_validator(mode="before")
        @classmethod
        def remap(cls, data):
            if isinstance(data, dict) and "num_nextn_predict_layers" in data:
                logger.warning("deprecated: use max_draft_len")
                data["max_draft_len"] = data.pop("num_nextn_predict_layers")
            return data


    class NGramDecodingConfig(DecodingBaseConfig):
        decoding_type: Literal["NGram"] = "NGram"
        max_matching_ngram_size: int = 4


    SpeculativeConfig: TypeAlias = Annotated[Union[MTPDecodingConfig, NGramDecodingConfig],
                                             Discriminator("decoding_type")]


    class BlockReuseConfig(StrictBaseModel):
        policy: str = "lru"

        @model_validator(mode="before")
        @classmethod
        def reject_old(cls, data):
            if "block_reuse_policy" in data:
                raise ValueError("block_reuse_policy was renamed to policy")
            return data


    class TorchLlmArgs(StrictBaseModel):
        model: str
        max_batch_size: Optional[int] = Field(default=2048, validation_alias=AliasChoices("max_batch_size", "mbs"))
        moe_config: MoeConfig = Field(default_factory=MoeConfig)
        lax: Optional[LaxConfig] = None
        old: OldStyle = Field(default_factory=OldStyle)
        speculative_config: Optional[SpeculativeConfig] = None
        reuse: BlockReuseConfig = Field(default_factory=BlockReuseConfig)
        env: Dict[str, str] = Field(default_factory=dict)
        sizes: List[int] = Field(default_factory=list)
        backend: Literal["pytorch"] = Field(default="pytorch", status="deprecated")

        @field_validator("env", mode="before")
        @classmethod
        def stringify(cls, v):
            return {str(k): str(x) for k, x in v.items()}


    def update_llm_args_with_extra_dict(llm_args, llm_args_dict):
        if "hf_revision" in llm_args_dict:
            llm_args_dict.setdefault("revision", llm_args_dict.pop("hf_revision"))
        if "kv_cache_config" in llm_args and "kv_cache_config" in llm_args_dict:
            pass
        return llm_args | llm_args_dict
    ''')

SERVE = textwrap.dedent('''\
    @click.command("serve")
    @click.argument("model")
    @click.option("--tp_size", "--tensor_parallel_size", type=int, default=1, help="TP size.")
    @click.option("--config", "--extra_llm_api_options", default=None)
    @click.option("--tool_parser", type=click.Choice(["auto", "kimi_k2"]), default=None)
    @click.option("--trust_remote_code", is_flag=True, default=False)
    @click.option("--telemetry/--no-telemetry", default=True)
    @click.option("--cluster_size", type=int, help="[Deprecated] expert cluster size")
    def serve(model, **kw):
        pass
    ''')


def _facts(texts: list[str]) -> dict:  # type: ignore[type-arg]
    models, enums = extract_models(texts)
    return {"format": 1, "release": "9.9.9", "root": "TorchLlmArgs", "models": models, "enums": enums,
            "external_bases": {"BaseModel": "ignore", "StrictBaseModel": "forbid"},
            "serve": {"options": click_options_from_source(SERVE)["serve"]}, "merge": merge_rule(SAMPLE)}


def test_extractor_reads_every_construct() -> None:
    facts = _facts([SAMPLE])
    prof = build_profile(facts)
    m = prof["models"]
    root = m["TorchLlmArgs"]
    assert root["extra"] == "forbid" and root["fields"]["model"]["required"] is True
    assert root["fields"]["max_batch_size"]["aliases"] == ["max_batch_size", "mbs"]
    assert root["fields"]["max_batch_size"]["default"] == 2048 and root["fields"]["backend"]["status"] == "deprecated"
    assert m["MoeConfig"]["fields"]["backend"]["type"] == {"k": "lit", "vals": ["AUTO", "CUTLASS"]}
    assert m["MoeConfig"]["fields"]["max_num_tokens"]["type"]["of"][0] == {"k": "int", "ge": 1}
    assert m["LaxConfig"]["extra"] == "allow" and m["OldStyle"]["extra"] == "forbid"
    assert m["OldStyle"]["fields"]["policy"] == {"default": "GUARANTEED_NO_EVICT",
                                                  "type": {"k": "enum", "name": "CapacitySchedulerPolicy"}}
    assert prof["enums"] == {"CapacitySchedulerPolicy": ["MAX_UTILIZATION", "GUARANTEED_NO_EVICT"]}
    spec = root["fields"]["speculative_config"]["type"]
    assert spec["of"][0]["disc"] == "decoding_type" and spec["of"][1] == {"k": "none"}
    # inheritance flattened; the before-validator's remap of a deprecated field and its rejection of an old key
    assert set(m["MTPDecodingConfig"]["fields"]) == {"max_draft_len", "decoding_type", "num_nextn_predict_layers"}
    assert m["MTPDecodingConfig"]["handled"]["num_nextn_predict_layers"] == \
        {"action": "rename", "to": "max_draft_len", "warn": True}
    assert m["BlockReuseConfig"]["handled"]["block_reuse_policy"]["action"] == "reject"
    assert root["fields"]["env"]["pre"] is True and "pre" not in root["fields"]["sizes"]
    assert prof["merge"] == {"deep": ["kv_cache_config"], "renames": {"hf_revision": "revision"}}
    opts = prof["serve"]["options"]
    assert opts["--tp_size"]["aliases"] == ["--tensor_parallel_size"] and opts["--tp_size"]["default"] == 1
    assert opts["--tool_parser"]["choices"] == ["auto", "kimi_k2"] and opts["--trust_remote_code"]["flag"]
    assert opts["--telemetry"] == {"aliases": ["--no-telemetry"], "choices": None, "default": True,
                                   "deprecated": False, "flag": True}
    assert opts["--cluster_size"]["deprecated"] and not opts["--config"]["deprecated"]
    assert prof["counts"] == {"models": 7, "fields": sum(len(x["fields"]) for x in m.values()),
                              "enum_values": 2 + 2 + 1 + 1 + 1, "serve_options": 6}
    assert dump(build_profile(facts)) == dump(prof)  # deterministic


def test_linter_judges_by_the_extracted_facts() -> None:
    from k2trt.trtllm.lint import lint_with
    from k2trt.trtllm.profiles import from_dict

    p = from_dict(build_profile(_facts([SAMPLE])))
    assert lint_with({"mbs": 8, "lax": {"anything": 1}}, p).ok  # an alias; extra="allow"
    res = lint_with({"old": {"policy": "MAX_UTILISATION", "x": 1}, "reuse": {"block_reuse_policy": "lru"}}, p)
    assert {i.path for i in res.errors} == {"old.policy", "old.x", "reuse.block_reuse_policy"}
    res = lint_with({"speculative_config": {"decoding_type": "MTP", "num_nextn_predict_layers": 2}}, p)
    assert res.ok and "max_draft_len" in res.issues[0].fix
    res = lint_with({"speculative_config": {"decoding_type": "NGram", "num_nextn_predict_layers": 2}}, p)
    assert not res.ok  # NGram has no such field: the discriminator picks the member


def test_documentation_pages_give_the_same_facts_as_the_source() -> None:
    """The release documentation's viewcode page (highlighted source) and sphinx-click page (options), in the shape
    the published pages have, read back to the same facts as the plain files."""
    from pygments import highlight
    from pygments.formatters import HtmlFormatter
    from pygments.lexers import PythonLexer

    code = highlight(SAMPLE, PythonLexer(), HtmlFormatter(nowrap=True))
    # viewcode wraps documented objects in a block with a "[docs]" back-link inside the <pre>
    code = re.sub(r'(?m)^(<span class="k">class</span><span class="w"> </span><span class="nc">(\w+)</span>)',
                  r'<div class="viewcode-block" id="\2">\n<a class="viewcode-back" href="#\2">[docs]</a>\n\1', code)
    page = f'<html><body><div class="highlight"><pre><span></span>{code}</pre></div></body></html>'
    assert page.count("[docs]") == 9 and extract_models([viewcode_source(page)]) == extract_models([SAMPLE])

    def opt(anchor: str, names: list[str], metavar: str | None, body: str) -> str:
        sig = ", ".join(f'<span class="sig-name descname"><span class="pre">{n}</span></span>' for n in names)
        mv = f'<span class="sig-prename descclassname"> <span class="pre">{html.escape(metavar)}</span></span>' \
            if metavar else ""
        return (f'<dl class="std option">\n<dt class="sig sig-object std" id="cmdoption-trtllm-serve-serve-{anchor}">'
                f'\n{sig}{mv}<a class="headerlink" href="#x" title="Link to this definition">#</a></dt>\n'
                f'<dd>{body}</dd></dl>\n')

    choices = ('<p>Specify the parser.</p>\n<dl class="field-list simple">\n<dt class="field-odd">Options<span '
               'class="colon">:</span></dt>\n<dd class="field-odd"><p>auto | kimi_k2</p>\n</dd>\n</dl>\n')
    page = ("<section>" + opt("tp_size", ["--tp_size", "--tensor_parallel_size"], "<tp_size>",
                              "<p>TP size.</p>\n<dl class=\"field-list simple\">\n<dt class=\"field-odd\">Default"
                              "<span class=\"colon\">:</span></dt>\n<dd class=\"field-odd\"><p><code>1</code></p>\n"
                              "</dd>\n</dl>\n")
            + opt("tool_parser", ["--tool_parser"], "<tool_parser>", choices)
            + opt("trust_remote_code", ["--trust_remote_code"], None, "<p>Flag for HF transformers.</p>\n")
            + opt("cluster_size", ["--cluster_size"], "<cluster_size>",
                  "<p><code>deprecated</code> [Deprecated] expert cluster size</p>\n") + "</section>")
    got = click_options(page)["trtllm-serve-serve"]
    src = click_options_from_source(SERVE)["serve"]
    for name in got:
        assert got[name] == {**src[name], "default": str(src[name]["default"]) if name == "--tp_size"
                             else src[name]["default"]}, name


@pytest.mark.parametrize("name", available())
def test_packaged_profile_regenerates_byte_for_byte(name: str, tmp_path: Path) -> None:
    written = {p.name: p for p in regenerate(FACTS_DIR, tmp_path)}
    assert f"{name}.json" in written
    assert written[f"{name}.json"].read_bytes() == (PROFILE_DIR / f"{name}.json").read_bytes()


def test_every_packaged_profile_has_facts_and_provenance() -> None:
    assert sorted(p.stem for p in FACTS_DIR.glob("*.json")) == sorted(available())
    for name in available():
        doc = json.loads((PROFILE_DIR / f"{name}.json").read_text())
        assert doc["release"] == name and doc["provenance"]["extractor"].startswith("k2trt-trtllm-extract")
        roles = {s["role"] for s in doc["provenance"]["sources"]}
        assert roles == {"llm_args", "serve"}
        for s in doc["provenance"]["sources"]:
            assert s["repo"] == "NVIDIA/TensorRT-LLM" and re.fullmatch(r"[0-9a-f]{40}", s["commit"])
            assert s["path"].startswith(f"{name}/")
        facts = json.loads((FACTS_DIR / f"{name}.json").read_text())
        assert doc["counts"]["models"] == len(doc["models"]) > 15 and doc["counts"]["serve_options"] > 20
        assert flatten("TorchLlmArgs", facts)["fields"] == doc["models"]["TorchLlmArgs"]["fields"]


def _shipped() -> list[tuple[str, Path]]:
    return [(d.name, f) for d in sorted(SHIPPED.iterdir()) if d.is_dir() for f in sorted(d.glob("*.yaml"))
            if f.name != "verdicts.yaml"]


def _verdict(release: str, name: str) -> dict | None:  # type: ignore[type-arg]
    f = SHIPPED / release / "verdicts.yaml"
    return (yaml.safe_load(f.read_text()) or {}).get(name) if f.exists() else None


@pytest.mark.parametrize("release,path", _shipped(), ids=lambda x: getattr(x, "name", x))
def test_shipped_configs_are_judged_as_their_release_judges_them(release: str, path: Path) -> None:
    """TensorRT-LLM ships these files for this release (README.md names the page and commit). The release accepts
    them, except those verdicts.yaml lists: it rejects those, and the message names the replacement."""
    res = lint_text(path.read_text(), release, str(path))
    assert res.profile == release
    verdict = _verdict(release, path.name)
    if verdict is None:
        assert res.ok, [str(i) for i in res.issues]
        assert not [i for i in res.issues if "stale" in i.message or "unknown" in i.message]
    else:
        assert [i.path for i in res.errors] == [verdict["rejects"]], [str(i) for i in res.issues]
        assert verdict["fix"] in res.errors[0].fix


def test_shipped_configs_stay_rejected_when_broken_the_way_old_docs_spell_them() -> None:
    """Known true rejections: the shipped files with the spellings older releases and guides used."""
    wide = yaml.safe_load((SHIPPED / "1.3.0rc24" / "wide-ep-kimi-k2-thinking-gen.yaml").read_text())
    wide["cuda_graph_config"]["padding_enabled"] = wide["cuda_graph_config"].pop("enable_padding")
    wide["kv_cache_config"]["block_reuse_config"] = {"block_reuse_policy": "lru"}
    wide["moe_config"]["backend"] = "CUTE_DSL"
    res = lint(wide, "1.3.0rc24")
    fixes = {i.path: i.fix for i in res.errors}
    assert fixes["cuda_graph_config.padding_enabled"] == "use cuda_graph_config.enable_padding"
    assert "kv_cache_config.block_reuse_config.policy" in fixes["kv_cache_config.block_reuse_config.block_reuse_policy"]
    assert "'CUTEDSL'" in fixes["moe_config.backend"]


# How each release judges each historical spelling: ok (a field there), warning (accepted, deprecated or renamed
# by the release itself), error (rejected; the message names the replacement). Every row × every profile.
_121 = {
    "use_cuda_graph": "error", "cuda_graph_batch_sizes": "error", "cuda_graph_max_batch_size": "error",
    "cuda_graph_padding_enabled": "error", "cuda_graph_config.padding_enabled": "error",
    "pytorch_backend_config": "error", "pytorch_backend_config.enable_overlap_scheduler": "error@pytorch_backend_config",
    "enable_overlap_scheduler": "error", "moe_backend": "error", "moe_max_num_tokens": "error",
    "moe_load_balancer": "error", "kv_cache_dtype": "error",
    "speculative_config.num_nextn_predict_layers": "ok",  # the MTP count field in 1.2.1
    "enable_trtllm_sampler": "error", "enable_mixed_sampler": "error",
    "torch_compile_config.enable_piecewise_cuda_graph": "ok", "torch_compile_config.capture_num_tokens": "ok",
    "tp_size": "error", "pp_size": "error", "ep_size": "error", "cluster_size": "error",
    "kv_cache_free_gpu_memory_fraction": "error", "free_gpu_memory_fraction": "error",
    "extra_llm_api_options": "error", "tool_parser": "error", "log_level": "error",
    "hf_revision": "error",  # 1.2.1's merge does not rename it
    "kv_cache_config.block_reuse_config.block_reuse_policy": "error@kv_cache_config.block_reuse_config",
    "mtp_eagle_one_model": "error", "num_nextn_predict_layers": "error", "enable_block_reuse": "error",
}
# 1.0.0 still has the 1.0 sampler booleans and no capture_num_tokens / mtp_eagle_one_model at all ("absent": an
# error that says the release has neither spelling, never "stale").
_100 = {**_121, "enable_trtllm_sampler": "ok", "enable_mixed_sampler": "ok",
        "torch_compile_config.capture_num_tokens": "absent", "mtp_eagle_one_model": "absent"}
EXPECTED: dict[str, dict[str, str]] = {"1.0.0": _100, "1.2.1": _121, "1.3.0rc24": {
    "use_cuda_graph": "error", "cuda_graph_batch_sizes": "error", "cuda_graph_max_batch_size": "error",
    "cuda_graph_padding_enabled": "error", "cuda_graph_config.padding_enabled": "error",
    "pytorch_backend_config": "error", "pytorch_backend_config.enable_overlap_scheduler": "error@pytorch_backend_config",
    "enable_overlap_scheduler": "error", "moe_backend": "error", "moe_max_num_tokens": "error",
    "moe_load_balancer": "error", "kv_cache_dtype": "error", "speculative_config.num_nextn_predict_layers": "warning",
    "enable_trtllm_sampler": "error", "enable_mixed_sampler": "error",
    "torch_compile_config.enable_piecewise_cuda_graph": "ok", "torch_compile_config.capture_num_tokens": "ok",
    "tp_size": "error", "pp_size": "error", "ep_size": "error", "cluster_size": "error",
    "kv_cache_free_gpu_memory_fraction": "error", "free_gpu_memory_fraction": "error",
    "extra_llm_api_options": "error", "tool_parser": "error", "log_level": "error", "hf_revision": "warning",
    "kv_cache_config.block_reuse_config.block_reuse_policy": "error", "mtp_eagle_one_model": "error",
    "num_nextn_predict_layers": "error", "enable_block_reuse": "error",
}}
_SAMPLE_VALUE = {"torch_compile_config.capture_num_tokens": [64, 128], "speculative_config.num_nextn_predict_layers": 1}


def _doc(path: str, value: object) -> dict:  # type: ignore[type-arg]
    doc: dict = {}  # type: ignore[type-arg]
    node = doc
    parts = path.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
    if parts[0] == "speculative_config":
        doc["speculative_config"]["decoding_type"] = "MTP"
    return doc


def test_the_rename_table_covers_every_profile() -> None:
    assert set(EXPECTED) == set(available())
    for rows in EXPECTED.values():
        assert set(rows) == {r.old for r in known.RENAMES}
    assert all(r.source for r in known.RENAMES) and len({r.old for r in known.RENAMES}) == len(known.RENAMES)


@pytest.mark.parametrize("release", available())
@pytest.mark.parametrize("row", known.RENAMES, ids=lambda r: r.old)
def test_each_renamed_key_under_each_profile(release: str, row: known.Rename) -> None:
    want, _, at = EXPECTED[release][row.old].partition("@")
    res = lint(_doc(row.old, _SAMPLE_VALUE.get(row.old, True)), release)
    hits = [i for i in res.issues if i.path == (at or row.old)]
    if want == "ok":
        assert res.ok and not hits, [str(i) for i in res.issues]  # a field of this release is never called stale
        return
    if want == "absent":
        assert hits and hits[0].severity == "error" and "stale" not in hits[0].message
        assert "has neither" in hits[0].message and hits[0].fix.startswith("remove it")
        return
    assert hits and hits[0].severity == want, (row.old, [str(i) for i in res.issues])
    if want == "error" and not at:
        assert "stale key" in hits[0].message
        assert ("trtllm-serve option" if row.cli else row.since) in hits[0].message
        same_setting = {row.new} | {r.old for r in known.RENAMES if r.new == row.new} if row.new else set()
        assert any(s in hits[0].fix for s in same_setting) if row.new else \
            ("remove" in hits[0].fix or row.note in hits[0].fix)
        if "inverted" in row.note:
            assert "inverted" in hits[0].fix
    if want == "warning":
        assert row.new is not None and row.new.split(".")[-1] in hits[0].fix


@pytest.mark.parametrize("release,fix", [("1.0.0", "use speculative_config.num_nextn_predict_layers;"),
                                         ("1.2.1", "use speculative_config.num_nextn_predict_layers;"),
                                         ("1.3.0rc24", "use speculative_config.max_draft_len;")])
def test_a_renamed_key_is_pointed_at_the_spelling_its_release_takes(release: str, fix: str) -> None:
    """1.0.0 and 1.2.1 overwrite max_draft_len with num_nextn_predict_layers (their validate_speculative_config), so a
    stray top-level num_nextn_predict_layers must be sent to their MTP count field, not to 1.3's max_draft_len."""
    res = lint({"num_nextn_predict_layers": 3}, release)
    assert [i.path for i in res.errors] == ["num_nextn_predict_layers"]
    assert res.errors[0].fix.startswith(fix)
