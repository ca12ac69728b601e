"""``k2trt verify`` through the real CLI on real checkpoints: the oracle comparison passes, a faithful BF16 copy
passes, a checkpoint with one FP8 scale block multiplied by 4 fails."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from k2trt.checkpoint import files, names
from k2trt.cli import cli
from k2trt.reference.oracle import write_float_copy
from k2trt.reference.verify import Thresholds, _cause, judge, logit_metrics

pytestmark = pytest.mark.usefixtures("single_thread")


def run(*args: str):
    return CliRunner().invoke(cli, ["verify", *args], catch_exceptions=False)


@pytest.fixture(scope="module")
def bf16_copy(tiny_ckpt, tmp_path_factory):
    """A faithful FP8→BF16 conversion: every weight dequantised by k2trt and rounded once to bf16."""
    return write_float_copy(tiny_ckpt, tmp_path_factory.mktemp("bf16"), torch.bfloat16)


@pytest.fixture(scope="module")
def corrupted(tiny_ckpt, tmp_path_factory):
    d = tmp_path_factory.mktemp("bad") / "ck"
    shutil.copytree(tiny_ckpt, d)
    name = names.scale_name(names.name_of("q_b", 1))
    shard = d / files.tensor_locations(d)[name].file
    state = load_file(shard)
    state[name][0, 0] *= 4  # one 128×128 block of layer 1's q_b_proj now dequantises 4× too large
    save_file(state, shard)
    return d


def test_against_transformers_passes(tiny_ckpt) -> None:
    r = run(str(tiny_ckpt), "--against", "transformers", "--prompts", "2", "--length", "8", "--json")
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout)
    assert rep["passed"] and rep["metrics"]["rel"] <= 1e-4 and rep["metrics"]["top1"] == 1.0


def test_bf16_conversion_passes_and_corruption_fails(tiny_ckpt, bf16_copy, corrupted) -> None:
    ok = run(str(tiny_ckpt), str(bf16_copy), "--json")
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["detail"]["b_quantization"] == "bf16"
    bad = run(str(tiny_ckpt), str(corrupted))
    assert bad.exit_code == 1, bad.output
    assert "FAIL kl" in bad.output and bad.output.strip().endswith("FAIL")
    # thresholds are options: loose enough ones let the damaged checkpoint through
    loose = run(str(tiny_ckpt), str(corrupted), "--max-kl", "1", "--min-top1", "0", "--max-rel", "10", "--json")
    assert loose.exit_code == 0 and json.loads(loose.stdout)["thresholds"]["max_kl"] == 1


def test_needs_exactly_one_mode(tiny_ckpt) -> None:
    r = CliRunner().invoke(cli, ["verify", str(tiny_ckpt)])
    assert r.exit_code == 2 and "exactly one of" in r.output
    r = CliRunner().invoke(cli, ["verify", str(tiny_ckpt), str(tiny_ckpt), "--layout", "tp2"])
    assert r.exit_code == 2


def test_layout_dry_run_shows_mpirun(tiny_ckpt) -> None:
    r = run(str(tiny_ckpt), "--layout", "tp4,ep2", "--dry-run", "--master-port", "18340")
    assert r.exit_code == 0
    assert "-np 4" in r.output and "--layout tp4,ep2" in r.output and "MASTER_PORT=18340" in r.output


def test_metrics_and_judge() -> None:
    a = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 1.0]])
    m = logit_metrics(a, a)
    assert m["max_abs"] == 0 and m["top1"] == 1 and m["kl"] < 1e-12 and abs(m["cosine"] - 1) < 1e-12
    b = torch.tensor([[3.0, 2.0, 1.0], [0.0, 0.0, 1.0]])
    m = logit_metrics(a, b)
    assert m["top1"] == 0.5 and m["max_abs"] == 2
    assert judge(m, Thresholds(min_top1=0.9, max_abs=5)) == ["top1 0.5 is not >= min_top1 0.9"]


def test_check_argv_parses_back_with_its_own_parser() -> None:
    """The sharded check's command line is written by the module that parses it: every value comes back."""
    from k2trt.layout import Layout
    from k2trt.reference.parallel import check_argv, parser

    lay = Layout.parse("tp4,ep4,adp")
    argv = check_argv("/m", lay, "/o", seed=7, attn_impl="naive", timeout_s=33.0)
    assert argv[1:3] == ["-m", "k2trt.reference.parallel"] and argv[argv.index("--layout") + 1] == "tp4,ep4,adp"
    a = parser().parse_args(argv[3:])
    assert (a.check, a.layout, a.out, a.seed, a.attn_impl, a.timeout) == ("/m", lay, "/o", 7, "naive", 33.0)


def test_a_failed_layout_check_names_the_ranks_error_not_open_mpis_banner() -> None:
    """mpirun ends its report with a line of dashes; the error quoted is a rank's exception line if there is one,
    else the last line with words."""
    dashes = "-" * 74
    out = (f"Traceback (most recent call last):\n  File \"rank.py\", line 3\nRuntimeError: Address already in use\n"
           f"{dashes}\nPrimary job  terminated normally, but 1 process returned\na non-zero exit code.\n{dashes}\n")
    assert _cause(out) == "RuntimeError: Address already in use"
    assert _cause(f"{dashes}\nmpirun noticed that process rank 1 exited on signal 9\n{dashes}\n") == \
        "mpirun noticed that process rank 1 exited on signal 9"
    assert _cause("") == "no output"
