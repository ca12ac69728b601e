"""k2trt.fsio: the one atomic-write helper and the one mapping reader."""

from __future__ import annotations

import os
import stat

import pytest

from k2trt.errors import ConfigError, LaunchError
from k2trt.fsio import atomic_open, atomic_write, atomic_write_json, read_mapping


def test_atomic_write_replaces_whole_and_leaves_no_partial(tmp_path):
    p = tmp_path / "sub" / "a.json"
    atomic_write_json(p, {"x": 1})
    assert p.read_text() == '{\n  "x": 1\n}\n'
    atomic_write(p, b"\x00\x01")
    assert p.read_bytes() == b"\x00\x01"
    assert sorted(os.listdir(p.parent)) == ["a.json"]


def test_error_inside_keeps_old_file_and_removes_temporary(tmp_path):
    p = tmp_path / "a.txt"
    p.write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_open(p) as f:
            f.write("half")
            raise KeyboardInterrupt
    assert p.read_text() == "old"
    assert os.listdir(tmp_path) == ["a.txt"]


def test_permissions_follow_umask_or_the_explicit_mode(tmp_path):
    old = os.umask(0o027)
    try:
        atomic_write(tmp_path / "a", "x")
        atomic_write(tmp_path / "b.sh", "x", perm=0o755)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "b.sh").stat().st_mode) == 0o755


@pytest.mark.parametrize("name,text,needle", [
    ("r.yaml", "a: [1,", "not valid YAML"),
    ("r.json", "{", "not valid JSON"),
    ("r.yaml", "- 1\n- 2\n", "must hold a mapping, not list"),
    ("r.json", '"s"', "must hold a mapping, not str"),
])
def test_read_mapping_refuses_in_one_line(tmp_path, name, text, needle):
    (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError) as e:
        read_mapping(tmp_path / name, what="recipe")
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_read_mapping_missing_file_uses_the_callers_error_and_hint(tmp_path):
    with pytest.raises(LaunchError, match=r"launch spec .* does not exist \(run k2trt build\)"):
        read_mapping(tmp_path / "launch.json", what="launch spec", error=LaunchError, hint="run k2trt build")
    (tmp_path / "ok.yml").write_text("a: 1\n")
    assert read_mapping(tmp_path / "ok.yml") == {"a": 1}


@pytest.mark.parametrize("name, text, needle", [("s.json", "{trunc", "not valid JSON"),
                                                ("s.json", "[1]", "must hold a mapping, not list"),
                                                ("s.yml", "a: [1", "not valid YAML"),
                                                ("s.json", b"\xff\xfe", "not UTF-8 text")])
def test_read_mapping_gives_the_callers_fix_for_a_bad_file_too(tmp_path, name, text, needle):
    path = tmp_path / name
    path.write_bytes(text) if isinstance(text, bytes) else path.write_text(text)
    with pytest.raises(LaunchError) as e:
        read_mapping(path, what="state file", error=LaunchError, hint="delete it")
    assert needle in str(e.value) and str(e.value).endswith("(delete it)") and "\n" not in str(e.value)
    with pytest.raises(LaunchError, match=r"is a directory, not a file \(delete it\)"):
        read_mapping(tmp_path, what="state file", error=LaunchError, hint="delete it")


def test_atomic_dir_replaces_a_directory_whole_or_not_at_all(tmp_path):
    from k2trt.fsio import atomic_dir

    out = tmp_path / "bundle"
    old = os.umask(0o077)  # the explicit mode must win over a narrow umask
    try:
        with atomic_dir(out, perm=0o755) as stage:
            atomic_write(stage / "a", "1")
            assert not out.exists()  # nothing under the final name until the directory is complete
    finally:
        os.umask(old)
    assert sorted(os.listdir(out)) == ["a"] and stat.S_IMODE(out.stat().st_mode) == 0o755
    with pytest.raises(RuntimeError):
        with atomic_dir(out) as stage:
            atomic_write(stage / "b", "2")
            raise RuntimeError("half-built")
    assert sorted(os.listdir(out)) == ["a"] and sorted(os.listdir(tmp_path)) == ["bundle"]
    with atomic_dir(out) as stage:
        atomic_write(stage / "b", "2")
    assert sorted(os.listdir(out)) == ["b"] and sorted(os.listdir(tmp_path)) == ["bundle"]
