"""Find DCMTK's command-line tools; check a DICOM SR with DCMTK's dsrdump and dicom3tools' dciodvfy.

pynetdicom installs Python scripts named ``storescu``/``echoscu`` into the
venv's ``bin``, which comes first on PATH inside an activated venv: skip any
script (``#!`` first line) and return the real DCMTK binary.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

#: dicom3tools' IOD validator (Debian package dicom3tools), or None.
DCIODVFY = shutil.which("dciodvfy")


def dcmtk(tool: str) -> str | None:
    for folder in os.get_exec_path():
        path = os.path.join(folder, tool)
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            continue
        with open(path, "rb") as fh:
            if fh.read(2) == b"#!":
                continue
        return path
    return None


def validate_sr(path: Path, data: bytes | None = None) -> str:
    """For tests: dsrdump must parse the SR (or KOS) at ``path`` (written from ``data`` first when given) and
    dciodvfy, where installed, report no error (its errors are lines starting 'Error'); returns the dump."""
    if data is not None:
        Path(path).write_bytes(data)
    dump = subprocess.run([dcmtk("dsrdump") or "dsrdump", str(path)], capture_output=True, text=True)
    assert dump.returncode == 0, dump.stderr
    if DCIODVFY:
        out = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True)
        errors = [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]
        assert errors == [], errors
    return dump.stdout
