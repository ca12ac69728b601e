"""Files written whole or not at all, and structured files read or refused in one line.

The one place k2trt writes a file atomically: a unique temporary name in the target's directory (so the rename
never crosses filesystems), the data fsynced, ``os.replace`` over the target, the directory fsynced (so the rename
itself survives a power cut), and the temporary file removed on any error, KeyboardInterrupt included. A reader
never sees a half-written file, and a crash leaves at most a ``.NAME.*.partial`` file that the next run ignores.
``atomic_dir`` does the same for a directory of files (a bundle) built under a temporary name.

Depends only on the standard library, pyyaml and ``k2trt.errors``; every layer may import it.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from k2trt.errors import ConfigError, K2trtError

PARTIAL_SUFFIX = ".partial"


def partial_name(path: Path) -> Path:
    """The temporary sibling a write to ``path`` goes through (unique per call, hidden, ``*.partial``)."""
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}{PARTIAL_SUFFIX}")


def fsync_dir(directory: Path) -> None:
    """Make a rename or a new entry in ``directory`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems (tmpfs on old kernels, network mounts) refuse fsync on a directory
    finally:
        os.close(fd)


@contextmanager
def atomic_open(path: str | Path, mode: str = "w", *, perm: int | None = None,
                encoding: str | None = "utf-8") -> Iterator[IO[Any]]:
    """Open a temporary sibling of ``path`` for writing; on a clean exit it replaces ``path`` durably.

    Args:
        path: the final name; its parent directory is created.
        mode: ``"w"`` (text) or ``"wb"`` (binary).
        perm: file permissions; by default those of a new file under the process umask (as ``open`` gives).
        encoding: for text mode.
    Returns:
        A context manager yielding the open file. On an exception nothing appears under ``path`` and an existing
        file there is untouched.
    Example:
        >>> with atomic_open(out / "config.yml") as f:
        ...     f.write(text)
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files: mode must be 'w' or 'wb', not {mode!r}")
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_name(p)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666 if perm is None else perm)
    try:
        if perm is not None:
            os.fchmod(fd, perm)  # the umask must not narrow an explicit mode (e.g. 0o755 scripts)
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(p.parent)


@contextmanager
def atomic_dir(path: str | Path, *, perm: int | None = None) -> Iterator[Path]:
    """Build a directory under a temporary sibling name; on a clean exit it takes ``path``'s place as a whole.

    Write its files with ``atomic_write`` (each fsynced) into the yielded staging directory. On a clean exit the
    staging directory is fsynced and renamed to ``path`` — an existing ``path`` is first renamed aside and removed
    afterwards, so a reader sees the old directory or the new one, never a mix (between the two renames ``path``
    is briefly absent; a failed second rename puts the old one back) — and the parent is fsynced. On any error the
    staging directory is removed and ``path`` is untouched.

    Args:
        path: the final directory; its parent is created.
        perm: the directory's permissions; by default those ``mkdir`` gives under the process umask.
    Returns:
        A context manager yielding the staging directory.
    Example:
        >>> with atomic_dir(bundle, perm=0o755) as stage:
        ...     atomic_write(stage / "config.yml", text)
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_name(p)
    tmp.mkdir()
    try:
        yield tmp
        if perm is not None:
            os.chmod(tmp, perm)
        fsync_dir(tmp)
        if p.exists():
            old = partial_name(p)
            os.replace(p, old)
            try:
                os.replace(tmp, p)
            except BaseException:
                os.replace(old, p)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, p)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(p.parent)


def atomic_write(path: str | Path, data: str | bytes, *, perm: int | None = None) -> Path:
    """Write ``data`` (text as UTF-8, or bytes) to ``path`` atomically; return the path."""
    with atomic_open(path, "wb" if isinstance(data, bytes) else "w", perm=perm) as f:
        f.write(data)
    return Path(path)


def atomic_write_json(path: str | Path, obj: Any, *, indent: int | None = 2, sort_keys: bool = False) -> Path:
    """Write ``obj`` as JSON (with a trailing newline) to ``path`` atomically; return the path."""
    return atomic_write(path, json.dumps(obj, indent=indent, sort_keys=sort_keys) + "\n")


def read_mapping(path: str | Path, *, what: str = "file", fmt: str | None = None,
                 error: type[K2trtError] = ConfigError, hint: str | None = None) -> dict[str, Any]:
    """Read a JSON or YAML file that must hold a mapping, or raise ``error`` in one line naming the cause.

    Args:
        path: the file; ``fmt`` defaults to its suffix (``.json`` → JSON, anything else → YAML).
        what: how the message names the file ("recipe", "launch spec", ...).
        error: the K2trtError subclass to raise (ConfigError unless the caller owns another domain).
        hint: the fix, appended to every message (a file that is missing, unreadable, malformed or not a mapping).
    Returns:
        The parsed mapping.
    Example:
        >>> read_mapping(bundle / "launch.json", what="launch spec", error=LaunchError)
    """
    p = Path(path)
    kind = fmt or ("json" if p.suffix == ".json" else "yaml")
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{what} {p} does not exist", hint) from None
    except IsADirectoryError:
        raise error(f"{what} {p} is a directory, not a file", hint) from None
    except UnicodeDecodeError as e:
        raise error(f"{what} {p} is not UTF-8 text ({e.reason} at byte {e.start})", hint) from None
    except OSError as e:
        raise error(f"cannot read {what} {p}: {e.strerror}", hint) from None
    try:
        if kind == "json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except ValueError as e:  # json.JSONDecodeError is a ValueError
        raise error(f"{what} {p} is not valid JSON: {e}", hint) from None
    except Exception as e:  # yaml.YAMLError, kept lazy so JSON readers never import yaml
        if type(e).__module__.startswith("yaml"):
            raise error(f"{what} {p} is not valid YAML: {' '.join(str(e).split())}", hint) from None
        raise
    if not isinstance(data, dict):
        raise error(f"{what} {p} must hold a mapping, not {type(data).__name__}", hint)
    return data
