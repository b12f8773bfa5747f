"""Find DCMTK's command-line tools.

pynetdicom installs Python scripts named ``storescu``/``echoscu`` into the
venv's ``bin``, which comes first on PATH inside an activated venv: skip any
script (``#!`` first line) and return the real DCMTK binary.
"""

from __future__ import annotations

import os


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
