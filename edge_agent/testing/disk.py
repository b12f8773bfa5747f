"""A real small disk for "the disk is full" tests: a tmpfs, filled with a file until ENOSPC."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path


def mount_small_disk(mount: Path, size: str = "4m") -> Path:
    """Mount a tmpfs of ``size`` at ``mount`` (needs root, as CI has; the test is skipped, saying why, without)."""
    mount.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], check=True,
                       capture_output=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        import pytest  # only tests mount disks; the package itself does not need pytest

        pytest.skip(f"cannot mount a tmpfs here ({exc}); this test needs root, as CI runs it")
    return mount


def unmount(mount: Path) -> None:
    subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(folder: Path) -> Path:
    """Fill the disk: write until ENOSPC; returns the filler's path (unlink it and space returns)."""
    filler = folder / f"filler-{uuid.uuid4().hex}"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    return filler
