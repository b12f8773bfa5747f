"""Waiting for a condition that a background thread or process makes true (a deadline, never a timing assertion)."""

from __future__ import annotations

import time


def wait_until(predicate, timeout: float = 20.0, every: float = 0.05) -> bool:
    """Poll ``predicate`` until it is truthy (True) or ``timeout`` seconds pass (its last value, as a bool)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every)
    return bool(predicate())


def wait(predicate, timeout: float = 20.0, every: float = 0.02) -> bool:
    """:func:`wait_until`, but an AssertionError when the condition is not met in time."""
    if not wait_until(predicate, timeout, every):
        raise AssertionError("condition not met in time")
    return True


def wait_value(predicate, timeout: float, what: str, every: float = 0.1):
    """Poll ``predicate`` until it returns something truthy and return that; an AssertionError naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")
