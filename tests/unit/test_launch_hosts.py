"""Host lists: -H strings and Open MPI hostfiles."""

from __future__ import annotations

from pathlib import Path

import pytest

from k2trt.errors import LaunchError
from k2trt.launch.hosts import (format_hostfile, format_hosts, parse_hostfile_text, parse_hosts, read_hostfile)
from k2trt.launch.spec import HostSlots


def test_parse_hosts_keeps_order_and_slots() -> None:
    hosts = parse_hosts("node-b:8, node-a:8,10.0.0.3")
    assert hosts == (HostSlots("node-b", 8), HostSlots("node-a", 8), HostSlots("10.0.0.3", 1))
    assert format_hosts(hosts) == "node-b:8,node-a:8,10.0.0.3:1"
    assert parse_hosts("h", default_slots=8) == (HostSlots("h", 8),)


@pytest.mark.parametrize("text,match", [
    ("", "empty entry"), ("a:8,,b:8", "empty entry"), ("a:0", "positive integer"), ("a:x", "positive integer"),
    ("a:", "positive integer"), ("a:8:9", "more than one ':'"), ("bad host:8", "not a host name"),
    ("a:8,a:8", "listed twice"), ("-oProxyCommand=x:1", "not a host name"),
])
def test_parse_hosts_errors_are_one_line(text: str, match: str) -> None:
    with pytest.raises(LaunchError, match=match) as e:
        parse_hosts(text)
    assert "\n" not in str(e.value) and ("node1:8,node2:8" in str(e.value) or "total slots" in str(e.value))


def test_hostfile_round_trip_and_comments(tmp_path: Path) -> None:
    text = "# two H200 nodes\nnodeA slots=8 max_slots=8\n\nnodeB  slots=8  # second\nnodeC\n"
    hosts = parse_hostfile_text(text)
    assert hosts == (HostSlots("nodeA", 8), HostSlots("nodeB", 8), HostSlots("nodeC", 1))
    p = tmp_path / "hostfile"
    p.write_text(format_hostfile(hosts))
    assert read_hostfile(p) == hosts


@pytest.mark.parametrize("text,match", [
    ("a slots=0\n", "a:1: slots '0'"), ("a cpus=4\n", "unknown field 'cpus=4'"), ("# only comments\n", "no hosts"),
    ("a slots=2\nb\na slots=2\n", "listed twice"),
])
def test_hostfile_errors_name_the_line(text: str, match: str) -> None:
    with pytest.raises(LaunchError, match=match):
        parse_hostfile_text(text, "a")


def test_missing_hostfile(tmp_path: Path) -> None:
    with pytest.raises(LaunchError, match="does not exist"):
        read_hostfile(tmp_path / "nope")
