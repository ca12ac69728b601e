"""Two "hosts" on one machine for multi-host tests: network namespaces joined by a veth pair, each with its own
hostname (``unshare --uts``, because Open MPI tells nodes apart by hostname) and its own sshd on port 2233 with
key authentication. The shared filesystem stands in for identical model paths on every node.

Reusable harness::

    with TwoHosts(tmp_path) as hosts:            # skips (pytest.skip) where namespaces cannot be created
        hosts.run("hostA", ["hostname"])         # -> "hostA"
        argv = hosts.wrap("hostA", ["python", "-m", "k2trt.cli", "serve", ...])  # a command "on" hostA
        hosts.ssh_args                            # ssh options for MPI / preflight (key, no host-key prompts)

Only resources created here are touched: addresses live inside the namespaces, cleanup kills the sshd pids started
here plus whatever still runs inside these namespaces, deletes the namespaces and their /etc/netns entries.
Needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN) and Debian's openssh-server, which ``ensure_tools`` installs.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

SSH_PORT = 2233
SUBNET = "10.231.0"  # addresses exist only inside the namespaces created here


class NetnsUnavailable(RuntimeError):
    """Network namespaces (or the tools for them) are not available here; the message says why."""


def _run(argv: list[str], timeout: float = 30, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({r.returncode}): {r.stderr.strip()[-400:]}")
    return r


def ensure_tools() -> None:
    """Install openssh-server/iproute2 if missing (Debian); raise NetnsUnavailable if that is impossible."""
    if os.geteuid() != 0:
        raise NetnsUnavailable("network namespaces need root")
    missing = [t for t in ("ip", "unshare", "ssh", "ssh-keygen") if shutil.which(t) is None]
    if missing or not Path("/usr/sbin/sshd").exists():
        if shutil.which("apt-get") is None:
            raise NetnsUnavailable(f"missing {missing or ['sshd']} and no apt-get to install them")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "-q", "openssh-server", "iproute2"]
        r = subprocess.run(install, capture_output=True, text=True, timeout=600, env=env)
        if r.returncode != 0:  # a fresh image may have no package lists yet
            subprocess.run(["apt-get", "update", "-q"], capture_output=True, timeout=600, env=env)
            r = subprocess.run(install, capture_output=True, text=True, timeout=600, env=env)
        if r.returncode != 0 or not Path("/usr/sbin/sshd").exists():
            raise NetnsUnavailable(f"could not install openssh-server: {r.stderr.strip()[-300:]}")
    Path("/run/sshd").mkdir(parents=True, exist_ok=True)


class TwoHosts:
    """Context manager creating hostA and hostB (see the module docstring)."""

    def __init__(self, workdir: Path, names: tuple[str, str] = ("hostA", "hostB"), port: int = SSH_PORT) -> None:
        self.dir = Path(workdir)
        self.names = names
        self.port = port
        tag = uuid.uuid4().hex[:4]
        self.ns = {names[0]: f"k2lA-{tag}", names[1]: f"k2lB-{tag}"}
        self.veth = {names[0]: f"k2lvA{tag}", names[1]: f"k2lvB{tag}"}
        self.addr = {names[0]: f"{SUBNET}.1", names[1]: f"{SUBNET}.2"}
        self.key = self.dir / "id_ed25519"
        self.sshd_pids: dict[str, int] = {}
        self._sshd: list[subprocess.Popen[bytes]] = []
        self._created: list[str] = []
        self.t_start = time.monotonic()

    @property
    def ssh_args(self) -> tuple[str, ...]:
        """ssh options (besides the port) for reaching either host non-interactively."""
        return ("-i", str(self.key), "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "BatchMode=yes", "-o", "LogLevel=ERROR")

    def wrap(self, host: str, argv: list[str]) -> list[str]:
        """``argv`` run inside ``host``'s namespace with its hostname."""
        return ["ip", "netns", "exec", self.ns[host], "unshare", "--uts", "sh", "-c",
                f'hostname {host} && exec "$@"', "sh", *argv]

    def run(self, host: str, argv: list[str], timeout: float = 60) -> str:
        """Run ``argv`` on ``host``; return stdout (raise on failure)."""
        return _run(self.wrap(host, argv), timeout=timeout).stdout.strip()

    def __enter__(self) -> TwoHosts:
        ensure_tools()
        self.t_start = time.monotonic()  # after any package install: what a test may bound
        self.dir.mkdir(parents=True, exist_ok=True)
        try:
            self._setup()
        except BaseException:
            self.cleanup()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    def _setup(self) -> None:
        a, b = self.names
        for host in self.names:
            r = _run(["ip", "netns", "add", self.ns[host]], check=False)
            if r.returncode != 0:
                raise NetnsUnavailable(f"`ip netns add` failed: {r.stderr.strip()}")
            self._created.append(host)
            etc = Path("/etc/netns") / self.ns[host]
            etc.mkdir(parents=True, exist_ok=True)
            (etc / "hosts").write_text(f"127.0.0.1 localhost\n{self.addr[a]} {a}\n{self.addr[b]} {b}\n")
        _run(["ip", "link", "add", self.veth[a], "netns", self.ns[a], "type", "veth", "peer", "name", self.veth[b],
              "netns", self.ns[b]])
        for host in self.names:
            ns = ["ip", "-n", self.ns[host]]
            _run(ns + ["addr", "add", f"{self.addr[host]}/24", "dev", self.veth[host]])
            _run(ns + ["link", "set", self.veth[host], "up"])
            _run(ns + ["link", "set", "lo", "up"])
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.key)])
        shutil.copy(f"{self.key}.pub", self.dir / "authorized_keys")
        for host in self.names:
            hostkey = self.dir / f"hostkey_{host}"
            _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(hostkey)])
            conf = self.dir / f"sshd_{host}.conf"
            conf.write_text(f"Port {self.port}\nListenAddress {self.addr[host]}\nHostKey {hostkey}\n"
                            f"AuthorizedKeysFile {self.dir / 'authorized_keys'}\n"
                            f"PidFile {self.dir / f'sshd_{host}.pid'}\n"
                            "StrictModes no\nUsePAM no\nPermitRootLogin yes\nPasswordAuthentication no\n"
                            "KbdInteractiveAuthentication no\nPrintMotd no\nAcceptEnv *\n")
            log = open(self.dir / f"sshd_{host}.log", "w")
            # ip netns exec, unshare and sh all exec: the Popen pid is sshd's own pid
            p = subprocess.Popen(self.wrap(host, ["/usr/sbin/sshd", "-D", "-e", "-f", str(conf)]),
                                 stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            self.sshd_pids[host] = p.pid
            self._sshd.append(p)
        deadline = time.monotonic() + 20
        for src, dst in ((a, b), (b, a), (a, a)):
            while True:
                r = subprocess.run(self.wrap(src, ["ssh", "-p", str(self.port), *self.ssh_args, dst, "hostname"]),
                                   capture_output=True, text=True, timeout=30)
                if r.returncode == 0 and r.stdout.strip() == dst:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"ssh {src} -> {dst} never worked: {r.stderr.strip()[-300:]}")
                time.sleep(0.2)

    def cleanup(self) -> None:
        """Kill the sshd pids started here and anything left inside the namespaces; delete the namespaces."""
        for pid in self.sshd_pids.values():
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for host in self._created:
            r = subprocess.run(["ip", "netns", "pids", self.ns[host]], capture_output=True, text=True, timeout=30)
            for pid in r.stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
        for p in self._sshd:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)
        for host in self._created:
            subprocess.run(["ip", "netns", "del", self.ns[host]], capture_output=True, timeout=30)
            shutil.rmtree(Path("/etc/netns") / self.ns[host], ignore_errors=True)
        self._created.clear()
        self.sshd_pids.clear()
        self._sshd.clear()
        try:
            Path("/etc/netns").rmdir()  # only if no other namespace config is left in it
        except OSError:
            pass
