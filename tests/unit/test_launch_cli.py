"""`k2trt serve/status/stop` argument handling through Click's CliRunner (no process is started: the Slurm dry
run only renders, and the errors happen before any launch)."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from k2trt.cli import cli
from k2trt.launch.runner import find_spec
from k2trt.launch.spec import LaunchSpec


def _bundle(tmp_path: Path, **kw) -> Path:
    b = tmp_path / "bundle"
    LaunchSpec(argv=("python", "-m", "srv", "--port", "18290"), world_size=2, http_port=18290, **kw).dump(
        b / "launch.json")
    return b


def test_dry_run_slurm_prints_the_script_and_writes_nothing(tmp_path: Path) -> None:
    b = _bundle(tmp_path)
    r = CliRunner().invoke(cli, ["serve", str(b), "--dry-run", "--launcher", "slurm"])
    assert r.exit_code == 0, r.output
    assert f"# file: {b / 'serve.sbatch'}" in r.output and "srun \\" in r.output and "--mpi=pmix" in r.output
    assert sorted(p.name for p in b.iterdir()) == ["launch.json"]
    r = CliRunner().invoke(cli, ["serve", "--spec", str(b / "launch.json"), "-n", "--launcher", "slurm", "--json"])
    res = json.loads(r.output)
    assert res["status"] == "dry-run" and str(b / "serve.sbatch") in res["plans"]["slurm"]["files"]


def test_engine_mismatch_and_missing_target_are_clean_errors(tmp_path: Path) -> None:
    b = _bundle(tmp_path)
    r = CliRunner().invoke(cli, ["serve", str(b), "--engine", "trtllm", "-n"])
    assert r.exit_code != 0 and "launches the reference engine, not trtllm" in str(r.exception)
    r = CliRunner().invoke(cli, ["serve", "-n"])
    assert r.exit_code == 2 and "give a BUNDLE directory or --spec" in r.output
    r = CliRunner().invoke(cli, ["status", str(b)])
    assert r.exit_code != 0 and "no serve state" in str(r.exception)


def test_per_engine_launch_files(tmp_path: Path) -> None:
    b = _bundle(tmp_path)
    assert find_spec(b) == b / "launch.json" and find_spec(b, "reference") == b / "launch.json"
    LaunchSpec(engine="reference", argv=("x",)).dump(b / "launch.reference.json")
    assert find_spec(b, "reference") == b / "launch.reference.json"


def test_hosts_override_from_the_command_line(tmp_path: Path) -> None:
    b = _bundle(tmp_path)
    r = CliRunner().invoke(cli, ["serve", str(b), "-H", "n1:1,n2:1", "-n", "--launcher", "slurm", "--json"])
    res = json.loads(r.output)
    script = next(iter(res["plans"]["slurm"]["files"].values()))
    assert "#SBATCH --nodes=2" in script and "#SBATCH --ntasks-per-node=1" in script and res["url"].startswith(
        "http://n1:18290")
    r = CliRunner().invoke(cli, ["serve", str(b), "-H", "n1:0", "-n", "--launcher", "slurm"])
    assert r.exit_code != 0 and "slots '0' must be a positive integer" in str(r.exception)
    r = CliRunner().invoke(cli, ["serve", str(b), "-H", "n1:1", "-n", "--launcher", "slurm"])
    assert r.exit_code != 0 and "2 ranks but only 1 slots" in str(r.exception)


def test_a_corrupt_state_file_is_one_line_with_the_fix(tmp_path: Path) -> None:
    """status and stop cannot tell the job's processes from others without the state file: the error says so in
    one line and names the fix."""
    b = _bundle(tmp_path)
    (b / "logs").mkdir()
    for text, cause in (('{"status": "ready", "pid', "is not valid JSON"), ("[]", "must hold a mapping")):
        (b / "logs" / "serve.state.json").write_text(text)
        for cmd in ("status", "stop"):
            r = CliRunner().invoke(cli, [cmd, str(b)])
            msg = str(r.exception)
            assert r.exit_code != 0 and f"state file {b / 'logs' / 'serve.state.json'} {cause}" in msg, msg
            assert msg.endswith("(delete it once no job from this bundle runs)") and "\n" not in msg
