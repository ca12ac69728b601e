"""Host lists: ``--hosts host1:8,host2:8`` strings and Open MPI hostfiles (``host slots=N``).

Order matters: ranks fill hosts in the order given, so host 1 holds rank 0 (the HTTP server). A host without
``:N`` takes the deployment's GPUs per node (``HostList.with_slots``), in ``k2trt build --hosts`` and
``k2trt serve --hosts`` alike. Errors are one-line LaunchErrors naming the offending entry and the accepted syntax.

Example::

    >>> parse_hosts("node1:8,node2:8")
    (HostSlots(name='node1', slots=8), HostSlots(name='node2', slots=8))
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from k2trt.errors import LaunchError
from k2trt.launch.spec import LOCAL_NAMES, HostSlots

# RFC 1123 host names, IPv4 addresses and bracket-free IPv6 literals are what ssh and MPI accept here.
_NAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?$")
_SYNTAX = "use HOST[:SLOTS][,HOST[:SLOTS]...], e.g. node1:8,node2:8"


def _check_name(name: str, where: str) -> str:
    if not _NAME.match(name):
        raise LaunchError(f"{where}: {name!r} is not a host name", _SYNTAX)
    return name


def _check_unique(hosts: list[HostSlots], where: str) -> tuple[HostSlots, ...]:
    seen: set[str] = set()
    for h in hosts:
        if h.name in seen:
            raise LaunchError(f"{where}: host {h.name!r} is listed twice", "give each host once with its total slots")
        seen.add(h.name)
    return tuple(hosts)


@dataclass(frozen=True)
class HostList:
    """Hosts as a user wrote them: names in rank order, and each host's slots where ``:N`` gave them.

    Example: ``parse_host_list("a:8,b").with_slots(4)`` → ``(HostSlots("a", 8), HostSlots("b", 4))``.
    """

    entries: tuple[tuple[str, int | None], ...]
    """(host name, slots or None) in rank order."""

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(n for n, _ in self.entries)

    def with_slots(self, default: int) -> tuple[HostSlots, ...]:
        """The hosts, a host without ``:N`` taking ``default`` slots."""
        return tuple(HostSlots(n, default if s is None else s) for n, s in self.entries)

    def __str__(self) -> str:
        return ",".join(n if s is None else f"{n}:{s}" for n, s in self.entries)


def parse_host_list(text: str) -> HostList:
    """Parse ``host1:8,host2:8`` or ``host1,host2`` (slots left to the caller's default).

    Args:
        text: comma-separated ``HOST[:SLOTS]`` entries.
    Returns:
        The hosts in rank order.
    Raises:
        LaunchError: empty list, bad name, non-positive or non-numeric slots, duplicate host.
    """
    entries = [e.strip() for e in text.split(",")]
    if not text.strip() or any(not e for e in entries):
        raise LaunchError(f"host list {text!r} has an empty entry", _SYNTAX)
    out: list[tuple[str, int | None]] = []
    for e in entries:
        if e.count(":") > 1:
            raise LaunchError(f"host entry {e!r} has more than one ':'", _SYNTAX)
        name, sep, slots_s = e.partition(":")
        slots = None
        if sep:
            if not slots_s.isdigit() or int(slots_s) < 1:
                raise LaunchError(f"host entry {e!r}: slots {slots_s!r} must be a positive integer", _SYNTAX)
            slots = int(slots_s)
        out.append((_check_name(name, f"host entry {e!r}"), slots))
    _check_unique([HostSlots(n) for n, _ in out], f"host list {text!r}")
    return HostList(tuple(out))


def parse_hosts(text: str, default_slots: int = 1) -> tuple[HostSlots, ...]:
    """Parse ``host1:8,host2:8`` (a missing ``:N`` means ``default_slots``): ``parse_host_list`` with slots.

    Raises:
        LaunchError: as ``parse_host_list``.
    """
    return parse_host_list(text).with_slots(default_slots)


def parse_hostfile_text(text: str, where: str = "hostfile", default_slots: int = 1) -> tuple[HostSlots, ...]:
    """Parse Open MPI hostfile text: ``host [slots=N] [max_slots=M]`` per line, ``#`` comments.

    Returns the hosts in file order; raises LaunchError (with the line number) on anything else.
    """
    out: list[HostSlots] = []
    for i, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        name, slots = _check_name(parts[0], f"{where}:{i}"), default_slots
        for kv in parts[1:]:
            key, eq, val = kv.partition("=")
            if not eq or key not in ("slots", "max_slots", "max-slots"):
                raise LaunchError(f"{where}:{i}: unknown field {kv!r}", "lines look like 'node1 slots=8'")
            if not val.isdigit() or int(val) < 1:
                raise LaunchError(f"{where}:{i}: {key} {val!r} must be a positive integer", "e.g. 'node1 slots=8'")
            if key == "slots":
                slots = int(val)
        out.append(HostSlots(name, slots))
    if not out:
        raise LaunchError(f"{where} lists no hosts", "add lines like 'node1 slots=8'")
    return _check_unique(out, where)


def read_hostfile(path: str | Path) -> tuple[HostSlots, ...]:
    """Read and parse an Open MPI hostfile; a missing file is a LaunchError."""
    p = Path(path)
    if not p.is_file():
        raise LaunchError(f"hostfile {p} does not exist", "pass an existing file or use -H host1:8,host2:8")
    return parse_hostfile_text(p.read_text(), str(p))


def format_hosts(hosts: tuple[HostSlots, ...]) -> str:
    """The ``-H`` form: ``host1:8,host2:8``."""
    return ",".join(f"{h.name}:{h.slots}" for h in hosts)


def format_hostfile(hosts: tuple[HostSlots, ...]) -> str:
    """Open MPI hostfile text for ``hosts``."""
    return "".join(f"{h.name} slots={h.slots}\n" for h in hosts)


def is_local(name: str) -> bool:
    """True when ``name`` means this machine without ssh."""
    return name in LOCAL_NAMES
