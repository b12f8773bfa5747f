"""Quarantine: a copy of the rejected file and a sidecar saying why.

The original is never modified. The copy keeps the file's path relative to
the watch folder (so ``IM00001`` of two series do not collide) and gets a
``<name>.reason.json`` sidecar beside it::

    {"reason": "...", "category": "undecodable", "time": "2026-11-26T04:00:00Z",
     "original_path": "/data/incoming/S1/IM00001", "size": 12345, "mtime_ns": ...}

Both are written to a temporary name and renamed, so a crash never leaves a
half-copied file that looks complete. The reason never carries patient data
(it is built from decoder messages and UIDs only).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import time
from pathlib import Path

SIDECAR_SUFFIX = ".reason.json"

# Categories written to the sidecar.
UNDECODABLE = "undecodable"          # BadFile after retry_timeout
CONFLICT = "conflict"                # same SOP Instance UID, different content
PIPELINE_ERROR = "pipeline_error"    # the pipeline's on_file raised


NAME_MAX = 255  # bytes in one file name (ext4, xfs, btrfs; os.pathconf says when it can)
# Bytes a quarantined name must leave free: the sidecar suffix, the temporary ".<name>.tmp" and a ".<n>"
# collision counter.
_RESERVE = len(SIDECAR_SUFFIX) + len("..tmp") + len(".9999")


def _name_max(folder: Path) -> int:
    try:
        return min(NAME_MAX, int(os.pathconf(folder, "PC_NAME_MAX")))
    except (OSError, ValueError):
        return NAME_MAX


def safe_name(name: str, limit: int = NAME_MAX, reserve: int = _RESERVE) -> str:
    """A name for the quarantine copy: valid UTF-8, and short enough for its sidecar and temporary names.

    Names that are too long, or not UTF-8 (a scanner writing Latin-1 bytes),
    keep a readable prefix and get ``~`` and a hash of the original bytes, so
    two long names that share a prefix do not collide. The sidecar keeps the
    exact original path.
    """
    raw = os.fsencode(name)
    try:
        raw.decode("utf-8")
        clean = True
    except UnicodeDecodeError:
        clean = False
    if clean and len(raw) + reserve <= limit:
        return name
    digest = hashlib.sha256(raw).hexdigest()[:16]
    room = max(1, limit - reserve - len(digest) - 1)
    head = raw.decode("utf-8", "replace").replace("\ufffd", "_").encode()[:room].decode("utf-8", "ignore")
    return f"{head}~{digest}"


def _destination(quarantine_dir: Path, watch_dir: Path, path: Path) -> Path:
    try:
        relative = path.relative_to(watch_dir)
    except ValueError:
        relative = Path(path.name)
    limit = _name_max(quarantine_dir)
    parts = [safe_name(p, limit, 0) for p in relative.parts[:-1]]
    name = safe_name(relative.name, limit)
    folder = quarantine_dir.joinpath(*parts)
    dest = folder / name
    n = 1
    while dest.exists() or dest.with_name(dest.name + SIDECAR_SUFFIX).exists():
        dest = folder / f"{name}.{n}"
        n += 1
    return dest


def _atomic_write(dest: Path, data: bytes) -> None:
    tmp = dest.with_name(f".{dest.name}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, dest)


def _copy(path: Path, dest: Path) -> str:
    """Copy a regular file to ``dest`` (through a temporary name); ``""`` or why it was not copied."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "the file was gone before it could be copied"
    except OSError as err:
        return f"the file could not be examined ({err.strerror or err})"
    if not stat.S_ISREG(st.st_mode):
        return "the entry is not a regular file, so it was not opened"
    tmp = dest.with_name(f".{dest.name}.tmp")
    try:
        shutil.copy2(path, tmp)
        with open(tmp, "rb") as fh:  # on disk before the original may be deleted
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
    except OSError as err:
        try:
            tmp.unlink()
        except OSError:
            pass
        if isinstance(err, FileNotFoundError) and not os.path.lexists(path):
            return "the file was gone before it could be copied"
        return f"the file could not be copied ({err.strerror or type(err).__name__})"
    return ""


def quarantine_file(path: Path, *, quarantine_dir: Path, watch_dir: Path, reason: str, category: str) -> Path:
    """Copy ``path`` into the quarantine with its sidecar; return the copy's path.

    The original stays where it is (deleting it is the caller's retention
    decision). When it cannot be copied — vanished, unreadable to this user
    (mode 000, as the systemd unit runs without root's capabilities), not a
    regular file — it is quarantined *by reference*: only the sidecar is
    written, with ``"copied": false``, ``copy_error`` saying why, and
    ``original_path`` naming the file where it lies.
    """
    dest = _destination(quarantine_dir, watch_dir, path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    original = os.fsencode(str(path))
    entry: dict[str, object] = {
        "reason": reason,
        "category": category,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "original_path": original.decode("utf-8", "backslashreplace"),
    }
    if original.decode("utf-8", "backslashreplace").encode("utf-8", "surrogateescape") != original:
        entry["original_path_hex"] = original.hex()  # not UTF-8: the exact bytes
    try:
        st = os.stat(path)
        entry.update(size=st.st_size, mtime_ns=st.st_mtime_ns)
    except OSError:
        pass
    why_not = _copy(path, dest)
    if why_not:
        entry["copied"] = False
        entry["copy_error"] = f"{why_not}; it is quarantined by reference and stays at original_path"
    sidecar = dest.with_name(dest.name + SIDECAR_SUFFIX)
    _atomic_write(sidecar, (json.dumps(entry, indent=2) + "\n").encode())
    return dest
