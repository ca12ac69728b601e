"""Multi-host launch for real: two network namespaces ("hostA", "hostB"), each with its own hostname and its own
sshd on port 2233 with key auth (tests/e2e/netns.py). `k2trt serve` runs on hostA with `-H hostA:2,hostB:2`:
preflight reaches each host over ssh, the mpirun built for this Open MPI version starts ranks in both namespaces,
the job serves, `k2trt stop` leaves no process of the job in either. Skipped, with the reason printed, only where
network namespaces cannot be created."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from launch_helpers import MPIRUN, ROOT, k2trt_cmd, procs_with, rank_server_argv, token
from netns import NetnsUnavailable, TwoHosts

from k2trt.launch.spec import HostSlots, LaunchSpec

pytestmark = pytest.mark.e2e
PORT = 18230


@pytest.fixture()
def two_hosts(tmp_path: Path):
    try:
        with TwoHosts(tmp_path / "netns") as hosts:
            yield hosts
    except NetnsUnavailable as e:
        print(f"SKIP multi-host test: {e}")
        pytest.skip(f"network namespaces unavailable: {e}")


def _k2trt_on(hosts: TwoHosts, host: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    argv = hosts.wrap(host, ["env", f"PYTHONPATH={ROOT}", *k2trt_cmd(*args)])
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)


@pytest.mark.timeout(420)  # room for a one-time `apt-get install openssh-server`; the run itself is bounded below
def test_two_hosts_serve_preflight_and_stop(two_hosts: TwoHosts, tmp_path: Path) -> None:
    tok = token()
    model = tmp_path / "model"  # the shared filesystem stands in for identical model paths on both nodes
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "kimi_k2"}')
    (model / "model-00001-of-00001.safetensors").write_bytes(b"\0" * 1024)
    spec = LaunchSpec(engine="reference", argv=rank_server_argv(PORT, tok, host="0.0.0.0"), world_size=4,
                      hosts=(HostSlots("hostA", 2), HostSlots("hostB", 2)), mpirun=MPIRUN, ssh_port=two_hosts.port,
                      ssh_args=two_hosts.ssh_args, http_port=PORT, model_dir=str(model), ready_timeout_s=45,
                      stop_grace_s=5)
    bad = tmp_path / "bad"
    dataclasses.replace(spec, ssh_port=2299).validate().dump(bad / "launch.json")
    b = tmp_path / "b"  # no hosts in this bundle: they come from `k2trt serve -H hostA:2,hostB:2`
    dataclasses.replace(spec, hosts=()).validate().dump(b / "launch.json")
    placement = ("-H", "hostA:2,hostB:2")

    r = _k2trt_on(two_hosts, "hostA", "serve", str(bad), "--json")
    assert r.returncode == 2 and "preflight found 2 problem(s)" in r.stderr, r.stderr
    assert "hostA: ssh on port 2299 failed" in r.stderr and "hostB: ssh on port 2299 failed" in r.stderr

    dry = _k2trt_on(two_hosts, "hostA", "serve", str(b), *placement, "--dry-run", "--launcher", "mpirun")
    assert "-H hostA:2,hostB:2 --map-by slot" in dry.stdout and "plm_ssh_args '-p 2233 -i" in dry.stdout

    r = _k2trt_on(two_hosts, "hostA", "serve", str(b), *placement, "--detach", "--json")
    try:
        assert r.returncode == 0, r.stderr + r.stdout
        res = json.loads(r.stdout)
        assert res["status"] == "ready" and res["url"] == f"http://hostA:{PORT}"
        checks = res["preflight"]["checks"]
        assert {(c["host"], c["name"], c["status"]) for c in checks} >= {
            ("hostA", "ssh", "ok"), ("hostB", "ssh", "ok"), ("hostA", "model", "ok"), ("hostB", "model", "ok"),
            ("hostA", "port", "ok"), ("hostA", "gpu", "skip"), ("hostB", "gpu", "skip")}
        assert [c["detail"] for c in checks if c["name"] == "ssh"] == ["port 2233, hostname hostA",
                                                                       "port 2233, hostname hostB"]
        fetch = f"import urllib.request as u; print(u.urlopen('http://hostA:{PORT}/ranks', timeout=5).read().decode())"
        ranks = json.loads(two_hosts.run("hostB", [sys.executable, "-c", fetch]))  # from the other host
        assert sorted((x["rank"], x["host"]) for x in ranks) == [(0, "hostA"), (1, "hostA"), (2, "hostB"),
                                                                 (3, "hostB")]
        assert sorted(x["local_rank"] for x in ranks) == [0, 0, 1, 1]
    finally:
        stop = _k2trt_on(two_hosts, "hostA", "stop", str(b), "--json")
    assert stop.returncode == 0, stop.stderr
    assert procs_with(tok) == []
    for host in two_hosts.names:  # only the sshd started by the harness is left in each namespace
        pids = subprocess.run(["ip", "netns", "pids", two_hosts.ns[host]], capture_output=True, text=True).stdout
        assert sorted(int(p) for p in pids.split()) == [two_hosts.sshd_pids[host]], host
    assert time.monotonic() - two_hosts.t_start <= 90.0  # namespaces, sshds, preflight, launch, serve, stop
