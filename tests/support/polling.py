"""Waiting for a condition that a background thread makes true (no timing assertion: only a deadline)."""

from __future__ import annotations

import time


def wait(predicate, timeout: float = 20.0, every: float = 0.02) -> bool:
    """Poll ``predicate`` until it is true; an AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every)
    raise AssertionError("condition not met in time")
