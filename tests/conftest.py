"""Test-wide checks (watchdog's habit): no test may leak a thread."""

import threading

import pytest


@pytest.fixture(autouse=True)
def no_thread_leaks():
    before = set(threading.enumerate())
    yield
    deadline_threads = []
    for t in threading.enumerate():
        if t not in before and t.is_alive():
            t.join(timeout=5)
            if t.is_alive():
                deadline_threads.append(t.name)
    assert not deadline_threads, f"test leaked threads: {deadline_threads}"
