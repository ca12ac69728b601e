"""The resume manifest of ``k2trt convert`` (every target): what was written, from what, which files are finished.

``k2trt-manifest.json`` sits in the output directory. It records the k2trt version, the target, the source directory,
a digest of the whole conversion plan (target, options, resolved config, source file names, sizes and mtimes) and,
per finished file, its size, BLAKE3 hash (``files.FILE_HASH``; unless hashing was turned off) and how it was made
(``link``/``copy``/``rewrite``/``write``). It is rewritten atomically after every finished shard, so a run that is
killed resumes where it stopped: a shard listed here whose size (and hash) still match is skipped, anything else is
redone. The manifest holds no timestamps, so an interrupted-and-resumed run ends byte-identical to an uninterrupted
one, manifest included.
"""

from __future__ import annotations

import hashlib
import json
import stat
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from k2trt.checkpoint.files import hash_file
from k2trt.errors import CheckpointError
from k2trt.fsio import atomic_write_json

MANIFEST_FILE = "k2trt-manifest.json"
FORMAT = "k2trt-convert-manifest/2"
"""/2 records BLAKE3 per file where /1 recorded sha256; a /1 manifest reads as another k2trt's conversion."""
_FORMAT_FAMILY = "k2trt-convert-manifest/"


@dataclass(frozen=True)
class FileRecord:
    """One finished output file."""

    size: int
    blake3: str | None = None
    how: str = "write"
    """``link`` (hard link to the source shard), ``copy``, ``rewrite`` (tensors converted) or ``write``."""
    source: str | None = None
    """The source file it came from, if any."""


@dataclass
class Manifest:
    """The state of one conversion into one output directory."""

    target: str
    source: str
    plan_digest: str
    k2trt_version: str
    options: dict[str, Any] = field(default_factory=dict)
    complete: bool = False
    files: dict[str, FileRecord] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "k2trt_version": self.k2trt_version, "target": self.target,
                "source": self.source, "options": dict(sorted(self.options.items())),
                "plan_digest": self.plan_digest, "complete": self.complete,
                "files": {k: {kk: vv for kk, vv in asdict(v).items() if vv is not None}
                          for k, v in sorted(self.files.items())}}

    def save(self, out_dir: str | Path) -> None:
        """Write atomically (temporary name, fsync, rename)."""
        atomic_write_json(Path(out_dir) / MANIFEST_FILE, self.to_dict())

    @classmethod
    def load(cls, out_dir: str | Path) -> "Manifest | None":
        """The manifest in ``out_dir``, or None when there is none or it is not one of ours."""
        p = Path(out_dir) / MANIFEST_FILE
        try:
            d = json.loads(p.read_text())
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, UnicodeDecodeError, OSError):
            return None
        if not isinstance(d, dict) or not str(d.get("format", "")).startswith(_FORMAT_FAMILY):
            return None
        if d["format"] != FORMAT:  # an older k2trt's: never resumed, but named as ours
            return cls(str(d.get("target")), str(d.get("source")), "", str(d.get("k2trt_version")))
        try:
            recs = {k: FileRecord(**v) for k, v in d.get("files", {}).items()}
            return cls(d["target"], d["source"], d["plan_digest"], d["k2trt_version"], d.get("options", {}),
                       bool(d.get("complete")), recs)
        except (KeyError, TypeError):
            return None


def digest(obj: Any) -> str:
    """A stable sha256 of a JSON-able object (sorted keys)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def file_matches(path: Path, rec: FileRecord, check_hash: bool) -> bool:
    """Whether a finished file still is what the manifest says: a regular file (a link under a final name is never
    finished work — it may dangle), of its size, and of its hash when recorded and asked."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return False
    if not stat.S_ISREG(st.st_mode) or st.st_size != rec.size:
        return False
    if check_hash and rec.blake3 is not None:
        return hash_file(path) == rec.blake3
    return True


def require_empty_or_ours(out_dir: Path, plan_digest: str) -> Manifest | None:
    """The resumable manifest of ``out_dir`` if it holds this same conversion, None if the directory is empty or
    absent; CheckpointError if it holds anything else."""
    if not out_dir.exists():
        return None
    if not out_dir.is_dir():
        raise CheckpointError(f"{out_dir} exists and is not a directory", "choose another DST")
    man = Manifest.load(out_dir)
    if man is not None and man.plan_digest == plan_digest:
        return man
    if any(out_dir.iterdir()):
        what = ("a different conversion (other source, target, options or k2trt version)" if man is not None
                else "files that k2trt did not write")
        raise CheckpointError(f"{out_dir} is not empty: it holds {what}",
                              "pass --force to replace its contents, or choose an empty DST")
    return None
