"""Leak checks for tests: threads and child processes started since a snapshot and still there.

Linux only (child processes are read from /proc), and no dependency beyond the standard library, so the
checks also run where the GPU tests run. tests/conftest.py applies them to every test and every module.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass, field

#: Children that outlive any test by design: multiprocessing's resource tracker and forkserver (one per run).
LONG_LIVED_CHILDREN = ("multiprocessing.resource_tracker", "multiprocessing.forkserver")


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of ``pid``, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read().decode(errors="replace")
    except OSError:
        return None
    fields = data[data.rindex(")") + 2:].split()
    return fields[0], int(fields[1])


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


def running_children(root: int | None = None) -> set[int]:
    """Pids of the running (not zombie) descendants of ``root`` (default: this process), long-lived ones left out."""
    root = os.getpid() if root is None else root
    parents: dict[int, list[int]] = {}
    states: dict[int, str] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = _stat(int(name))
            if st is not None:
                states[int(name)] = st[0]
                parents.setdefault(st[1], []).append(int(name))
    out, todo = set(), [root]
    while todo:
        for child in parents.get(todo.pop(), []):
            todo.append(child)
            if states.get(child) not in ("Z", "X") and not any(n in cmdline(child) for n in LONG_LIVED_CHILDREN):
                out.add(child)
    return out


@dataclass
class Snapshot:
    threads: set = field(default_factory=lambda: set(threading.enumerate()))
    children: set = field(default_factory=running_children)


def leaks_since(before: Snapshot, grace: float = 5.0, kill: bool = True) -> list[str]:
    """Threads and child processes started since ``before`` and still there after ``grace`` seconds, named.

    With ``kill``, the processes found are SIGKILLed once named, so one leak does not fail the tests after it.
    """
    deadline = time.monotonic() + grace
    threads = [t for t in threading.enumerate() if t not in before.threads and t.is_alive()]
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    found = [f"thread {t.name!r} ({'daemon' if t.daemon else 'non-daemon'}, "
             f"target {getattr(getattr(t, '_target', None), '__qualname__', type(t).__qualname__)})"
             for t in threads if t.is_alive()]
    new = running_children() - before.children
    while new and time.monotonic() < deadline:
        time.sleep(0.05)
        new &= running_children()
    for pid in sorted(new):
        found.append(f"child process {pid}: {cmdline(pid)[:300]}")
        if kill:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
    return found

