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

import json
import os
import shutil
import time
from pathlib import Path

SIDECAR_SUFFIX = ".reason.json"

# Categories written to the sidecar.
UNDECODABLE = "undecodable"          # BadFile after retry_timeout
CONFLICT = "conflict"                # same SOP Instance UID, different content
PIPELINE_ERROR = "pipeline_error"    # the pipeline's on_file raised


def _destination(quarantine_dir: Path, watch_dir: Path, path: Path) -> Path:
    try:
        relative = path.relative_to(watch_dir)
    except ValueError:
        relative = Path(path.name)
    dest = quarantine_dir / relative
    n = 1
    while dest.exists() or dest.with_name(dest.name + SIDECAR_SUFFIX).exists():
        dest = quarantine_dir / relative.parent / f"{relative.name}.{n}"
        n += 1
    return dest


def _atomic_write(dest: Path, data: bytes) -> None:
    tmp = dest.with_name(f".{dest.name}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, dest)


def quarantine_file(path: Path, *, quarantine_dir: Path, watch_dir: Path, reason: str, category: str) -> Path:
    """Copy ``path`` into the quarantine with its sidecar; return the copy's path.

    The original stays where it is (deleting it is the caller's retention
    decision). If the original has vanished, only the sidecar is written.
    """
    dest = _destination(quarantine_dir, watch_dir, path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    entry: dict[str, object] = {
        "reason": reason,
        "category": category,
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "original_path": str(path),
    }
    try:
        st = path.stat()
        entry.update(size=st.st_size, mtime_ns=st.st_mtime_ns)
        tmp = dest.with_name(f".{dest.name}.tmp")
        shutil.copy2(path, tmp)
        with open(tmp, "rb") as fh:  # on disk before the original may be deleted
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
    except FileNotFoundError:
        entry["copied"] = False
    sidecar = dest.with_name(dest.name + SIDECAR_SUFFIX)
    _atomic_write(sidecar, (json.dumps(entry, indent=2) + "\n").encode())
    return dest
