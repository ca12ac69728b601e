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
from click.testing import CliRunner

from k2trt.cli import cli
from k2trt.trtllm import known
from k2trt.trtllm.disagg_lint import lint_config_text
from k2trt.trtllm.facts import build_profile, dump, flatten
from k2trt.trtllm.lint import lint
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
        for s in doc["provenance"]["sources"]:
            assert s["repo"] == "NVIDIA/TensorRT-LLM" and re.fullmatch(r"[0-9a-f]{40}", s["commit"])
        if name == "main":
            # main has no published pages: raw files, each at the commit it is stored at, hashed, dated in a note
            assert {"llm_args", "serve"} <= roles <= {"llm_args", "module", "serve", "disagg"}
            for s in doc["provenance"]["sources"]:
                assert s["form"] in ("python", "yaml") and re.fullmatch(r"[0-9a-f]{64}", s["sha256"]) and s["note"]
                assert not s["path"].startswith("main/")
            assert doc["disagg"]["section_extra"] == "llm_args" and doc["counts"]["disagg_keys"] > 15
        else:
            assert roles == {"llm_args", "serve"}
            for s in doc["provenance"]["sources"]:
                assert s["path"].startswith(f"{name}/")
        facts = json.loads((FACTS_DIR / f"{name}.json").read_text())
        assert doc["counts"]["models"] == len(doc["models"]) > 15 and doc["counts"]["serve_options"] > 20
        assert flatten("TorchLlmArgs", facts)["fields"] == doc["models"]["TorchLlmArgs"]["fields"]


def _shipped() -> list[tuple[str, Path]]:
    return [(d.name, f) for d in sorted(SHIPPED.iterdir()) if d.is_dir() for f in sorted(d.glob("*.yaml"))
            if f.name not in ("verdicts.yaml", "sources.yaml")]


def _verdict(release: str, name: str) -> dict | None:  # type: ignore[type-arg]
    f = SHIPPED / release / "verdicts.yaml"
    return (yaml.safe_load(f.read_text()) or {}).get(name) if f.exists() else None


@pytest.mark.parametrize("release,path", _shipped(), ids=lambda x: getattr(x, "name", x))
def test_shipped_configs_are_judged_as_their_release_judges_them(release: str, path: Path) -> None:
    """TensorRT-LLM ships these files for this release (README.md names the page and commit). The release accepts
    them, except those verdicts.yaml lists: it rejects those, and the message names the replacement."""
    res = lint_config_text(path.read_text(), release, str(path))  # a router config is judged as one
    assert res.profile == release
    verdict = _verdict(release, path.name)
    if verdict is None:
        assert res.ok, [str(i) for i in res.issues]
        assert not [i for i in res.issues if "stale" in i.message or "unknown" in i.message]
    else:
        rejects, fixes = verdict["rejects"], verdict["fix"]
        if isinstance(rejects, str):
            assert [i.path for i in res.errors] == [rejects], [str(i) for i in res.issues]
            assert fixes in res.errors[0].fix
        else:  # several keys rejected: each error in order, each naming its replacement
            assert sorted(i.path for i in res.errors) == sorted(rejects), [str(i) for i in res.issues]
            by_path = {i.path: i for i in res.errors}
            assert all(f in by_path[r].fix for r, f in zip(rejects, fixes)), [str(i) for i in res.errors]


def test_every_shipped_main_file_names_its_upstream_path_and_commit() -> None:
    """The stored raw versions judged by the main profile: each one's path, commit and kind (issue 12 item 3)."""
    src = yaml.safe_load((SHIPPED / "main" / "sources.yaml").read_text())
    files = {f.name for r, f in _shipped() if r == "main"}
    assert set(src) == files
    for name, s in src.items():
        assert re.fullmatch(r"[0-9a-f]{40}", s["commit"]) and s["path"].startswith("examples/"), name
        assert s["kind"] in ("curated", "database", "disaggregated", "wide-ep") and name.startswith(
            {"disaggregated": "disagg"}.get(s["kind"], s["kind"]) + "--")
    kinds = [s["kind"] for s in src.values()]
    assert {k: kinds.count(k) for k in set(kinds)} == {"curated": 27, "database": 21, "disaggregated": 10,
                                                      "wide-ep": 4}


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
# main: as 1.3.0rc24, except that normalize_prefill_cuda_graph_config moves the two torch_compile_config keys to the
# prefill_* fields with a warning, and sampler_type (where enable_trtllm_sampler went) is itself removed.
EXPECTED["main"] = {**EXPECTED["1.3.0rc24"], "torch_compile_config.enable_piecewise_cuda_graph": "warning",
                    "torch_compile_config.capture_num_tokens": "warning"}
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
                                         ("1.3.0rc24", "use speculative_config.max_draft_len;"),
                                         ("main", "use speculative_config.max_draft_len;")])
def test_a_renamed_key_is_pointed_at_the_spelling_its_release_takes(release: str, fix: str) -> None:
    """1.0.0 and 1.2.1 overwrite max_draft_len with num_nextn_predict_layers (their validate_speculative_config), so a
    stray top-level num_nextn_predict_layers must be sent to their MTP count field, not to 1.3's max_draft_len."""
    res = lint({"num_nextn_predict_layers": 3}, release)
    assert [i.path for i in res.errors] == ["num_nextn_predict_layers"]
    assert res.errors[0].fix.startswith(fix)


# --- issue 12: main's removed arguments, after-validator models, the CLI reference, the router config --------------

MAIN_SHAPED = textwrap.dedent('''\
    from typing import Any, Callable, Dict, Optional, Union
    from pydantic import model_validator
    from .utils import StrictBaseModel


    class MoeLoadBalancerConfig(StrictBaseModel):
        num_slots: Optional[int] = None
        layer_updates_per_iter: int = 0


    class MoeConfig(StrictBaseModel):
        load_balancer: Optional[Union[object, str]] = None


    class MultimodalConfig(StrictBaseModel):
        knob: bool = False


    def _check_removed_sampler_type(value: Any) -> None:
        if value in ("auto", "TorchSampler"):
            logger.warning("ignored")
            return
        raise ValueError("no longer available")


    _TORCH_LLMARGS_REMOVED_ARG_CHECKS: Dict[str, Callable[[Any], None]] = {
        "sampler_type": _check_removed_sampler_type,
    }


    class TorchLlmArgs(StrictBaseModel):
        moe_config: MoeConfig = Field(default_factory=MoeConfig)
        multimodal_config: Optional[MultimodalConfig] = None

        @model_validator(mode="before")
        @classmethod
        def _drop_removed_args(cls, data):
            for key, check in _TORCH_LLMARGS_REMOVED_ARG_CHECKS.items():
                if key in data:
                    check(data.pop(key))
            return data

        @model_validator(mode="after")
        def validate_load_balancer(self):
            if isinstance(self.moe_config.load_balancer, dict):
                self.moe_config.load_balancer = MoeLoadBalancerConfig(**self.moe_config.load_balancer)
            return self


    def update_llm_args_with_extra_dict(llm_args, llm_args_dict):
        if "multimodal_config" in llm_args_dict:
            base = llm_args.get("multimodal_config") or {}
            llm_args["multimodal_config"] = base | llm_args_dict.pop("multimodal_config")
        return llm_args | llm_args_dict
    ''')


def test_extractor_reads_mains_removed_arguments_and_after_validator_models() -> None:
    """main's llm_args.py: sampler_type is removed but still taken (auto/TorchSampler ignored with a warning, the rest
    refused), a load_balancer mapping is rebuilt into MoeLoadBalancerConfig, multimodal_config is merged key by key."""
    models, enums = extract_models([MAIN_SHAPED])
    facts = {"format": 1, "release": "9.9.9", "root": "TorchLlmArgs", "models": models, "enums": enums,
             "external_bases": {"BaseModel": "ignore", "StrictBaseModel": "forbid"}, "merge": merge_rule(MAIN_SHAPED)}
    prof = build_profile(facts)
    root = prof["models"]["TorchLlmArgs"]
    assert root["handled"]["sampler_type"] == {"action": "removed", "to": None, "warn": True,
                                               "values": ["auto", "TorchSampler"]}
    assert root["coerce"] == {"moe_config.load_balancer": "MoeLoadBalancerConfig"}
    assert prof["models"]["MoeLoadBalancerConfig"]["extra"] == "forbid"  # reachable through the validator
    assert prof["merge"]["deep"] == ["multimodal_config"]
    from k2trt.trtllm.lint import lint_with
    from k2trt.trtllm.profiles import from_dict

    p = from_dict(prof)
    warn = lint_with({"sampler_type": "auto"}, p)
    assert warn.ok and "ignored" in warn.issues[0].message
    bad = lint_with({"sampler_type": "TRTLLMSampler", "moe_config": {"load_balancer": {"slots": 4}}}, p)
    assert {i.path for i in bad.errors} == {"sampler_type", "moe_config.load_balancer.slots"}
    assert lint_with({"moe_config": {"load_balancer": "eplb.yaml"}}, p).ok  # a file: judged where it runs


def test_main_profile_judges_what_its_validators_judge() -> None:
    assert lint({"sampler_type": "TorchSampler"}, "main").ok
    err = lint({"enable_trtllm_sampler": True}, "main").errors[0]
    assert "removed as well" in err.message and "sampler_type" in err.fix
    # normalize_prefill_cuda_graph_config: the old spellings move with a warning, conflicting ones are refused
    old = lint({"torch_compile_config": {"enable_piecewise_cuda_graph": True, "capture_num_tokens": [8, 4]},
                "prefill_capture_num_tokens": [4, 8]}, "main")
    assert old.ok and {i.path for i in old.issues} == {"torch_compile_config.enable_piecewise_cuda_graph",
                                                       "torch_compile_config.capture_num_tokens"}
    clash = lint({"torch_compile_config": {"enable_piecewise_cuda_graph": True, "capture_num_tokens": [8]},
                  "prefill_cuda_graph_backend": "breakable", "prefill_capture_num_tokens": [16]}, "main")
    assert {i.path for i in clash.errors} == {"torch_compile_config.enable_piecewise_cuda_graph",
                                              "torch_compile_config.capture_num_tokens", "torch_compile_config"}
    assert lint({"torch_compile_config": {"enable_piecewise_cuda_graph": True}}, "1.3.0rc24").issues == []
    lb = lint({"moe_config": {"load_balancer": {"num_slots": 416, "layer_updates": 1}}}, "main")
    assert [i.path for i in lb.errors] == ["moe_config.load_balancer.layer_updates"]
    assert "layer_updates_per_iter" in lb.errors[0].fix
    adp = lint({"attention_dp_config": {"enable_balance": True, "timeout_iters": -1}}, "main")
    assert [i.path for i in adp.errors] == ["attention_dp_config.timeout_iters"]
    both = lint({"cuda_graph_config": {"batch_sizes": [1, 2, 4], "max_batch_size": 8}}, "main")
    assert [i.path for i in both.errors] == ["cuda_graph_config.max_batch_size"]  # validate_base_cuda_graph_config


def test_a_cli_option_the_release_lacks_is_not_recommended() -> None:
    """1.0.0's trtllm-serve has no --tool_parser: a stray tool_parser key must not send the user to it."""
    old = lint({"tool_parser": "kimi_k2"}, "1.0.0").errors[0]
    assert "--tool_parser" in old.fix and "has no --tool_parser" in old.fix and "pass --tool_parser" not in old.fix
    new = lint({"tool_parser": "kimi_k2"}, "1.2.1").errors[0]
    assert "pass --tool_parser on the trtllm-serve command line" in new.fix


def test_cli_reference_yaml_gives_the_serve_options() -> None:
    from tools.trtllm_extract.cli_source import click_options_from_reference

    ref = textwrap.dedent('''\
        commands:
          serve:
            options:
              tensor_parallel_size:
                type: INT
                default: 1
                flags:
                - "--tensor_parallel_size"
                - "--tp_size"
              tool_parser:
                type: Choice(['auto', 'kimi_k2'])
                default: null
                flags:
                - "--tool_parser"
              telemetry:
                is_flag: true
                default: true
                flags:
                - "--no-telemetry"
                - "--telemetry"
              backend:
                status: deprecated
                flags:
                - "--backend"
          mm_embedding_serve:
            options: {}
        ''')
    opts = click_options_from_reference(ref)["serve"]
    assert opts["--tensor_parallel_size"]["aliases"] == ["--tp_size"]
    assert opts["--tool_parser"]["choices"] == ["auto", "kimi_k2"]
    assert opts["--telemetry"]["flag"] and opts["--telemetry"]["aliases"] == ["--no-telemetry"]
    assert opts["--backend"]["deprecated"] and not opts["--tool_parser"]["deprecated"]
    p = profile_for("main")  # main's options came from TensorRT-LLM's own reference file
    assert p.option("--tp_size") == "--tp_size" and p.has_tool_parser("kimi_k2") and p.serve["config_flag"] == "--config"


DISAGG_UTILS = textwrap.dedent('''\
    from dataclasses import dataclass
    from typing import Any, List, Literal, Optional


    @dataclass
    class MinimalInstances:
        context_servers: int = 1


    @dataclass
    class DisaggClusterConfig:
        cluster_uri: str
        minimal_instances: Optional[MinimalInstances] = None


    @dataclass
    class RouterConfig:
        type: str = "round_robin"


    def extract_disagg_cfg(hostname: str = 'localhost', port: int = 8000,
                           context_servers: Optional[dict] = None, generation_servers: Optional[dict] = None,
                           disagg_cluster: Optional[dict] = None,
                           schedule_style: Literal['context_first', 'generation_first'] = 'context_first',
                           **kwargs: Any):
        ctx = extract_router_config(context_servers)
        if disagg_cluster:
            cluster = extract_disagg_cluster_config(disagg_cluster)


    def extract_ctx_gen_cfgs(type: Literal['ctx', 'gen'], num_instances: int = 1,
                             urls: Optional[List[str]] = None, **kwargs: Any):
        pass


    def extract_router_config(server_cfg: dict) -> RouterConfig:
        args = server_cfg.pop("router", {})
        router_type = args.pop("type", "round_robin")
        return RouterConfig(type=router_type, args=args)


    def extract_disagg_cluster_config(cluster_config_dict) -> DisaggClusterConfig:
        pass
    ''')


def test_disagg_extractor_reads_the_router_config_schema() -> None:
    from tools.trtllm_extract.disagg_source import disagg_facts

    d = disagg_facts(DISAGG_UTILS)
    assert set(d["top"]) == {"hostname", "port", "context_servers", "generation_servers", "disagg_cluster",
                             "schedule_style"}
    assert d["top"]["schedule_style"]["type"] == {"k": "lit", "vals": ["context_first", "generation_first"]}
    assert d["inherit"] is True and d["section_extra"] == "llm_args"
    assert set(d["section"]) == {"num_instances", "urls", "router"}
    assert d["blocks"] == {"disagg_cluster": "DisaggClusterConfig"}  # the sections keep their own schema
    assert d["models"]["DisaggClusterConfig"]["extra"] == "forbid"
    assert d["models"]["DisaggClusterConfig"]["fields"]["cluster_uri"]["required"] is True
    assert "MinimalInstances" in d["models"] and "RouterConfig" not in d["models"]


def test_k2trts_router_config_is_clean_under_every_profile() -> None:
    from k2trt.trtllm.disagg import RoleServers, disagg_config
    from k2trt.trtllm.disagg_lint import lint_disagg

    doc = disagg_config(RoleServers(("h1:8001",), 8), RoleServers(("h2:8002", "h3:8002"), 8, 2))
    for release in available():
        res = lint_disagg(doc, release)
        assert res.ok, (release, [str(i) for i in res.issues])
        assert not [i for i in res.issues if "stale" in i.message or "unknown" in i.message], release
        established = bool(profile_for(release).disagg)
        assert established == (release == "main")
        assert any("not established" in i.message for i in res.issues) != established


def test_router_config_mistakes_are_caught_as_main_catches_them(tmp_path: Path) -> None:
    from k2trt.trtllm.disagg_lint import lint_disagg

    doc = {"hostname": "h", "port": "80a", "max_batch_size": 16, "free_gpu_memory_fraction": 0.5,
           "conditional_disagg_config": {"max_local_prefill_len": 1},
           "context_servers": {"num_instances": 2, "urls": ["a:1"], "max_batch_size": 8, "tp_size": 4,
                               "router": {"type": "kv_cache_aware", "max_batch_size": 8}},
           "generation_servers": {"urls": ["b"], "kv_cache_config": {"free_gpu_memory_fraction": 1.5}}}
    res = lint_disagg(doc, "main")
    assert {i.path for i in res.errors} == {
        "port", "conditional_disagg_config.max_local_prefill_len", "context_servers.max_batch_size",
        "context_servers.tp_size", "context_servers.urls", "generation_servers.kv_cache_config.free_gpu_memory_fraction",
        "generation_servers.urls[0]"}
    assert "max_local_prefill_length" in next(i for i in res.errors if i.path.startswith("conditional")).fix
    # the same document through `k2trt config check`'s entry point is recognised as a router config
    assert {i.path for i in lint_config_text(yaml.safe_dump(doc), "main").errors} == {i.path for i in res.errors}
    f = tmp_path / "disagg.yml"
    f.write_text(yaml.safe_dump(doc))
    r = CliRunner().invoke(cli, ["config", "check", str(f), "--trtllm", "main", "--json"])
    assert r.exit_code == 1 and {i["path"] for i in json.loads(r.output)["issues"] if i["severity"] == "error"} \
        == {i.path for i in res.errors}
