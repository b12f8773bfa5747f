"""Stop a child process the way a service manager does: SIGTERM, a grace period, then SIGKILL."""

from __future__ import annotations

import signal
import subprocess


def terminate(proc: subprocess.Popen, timeout: float) -> bool:
    """SIGTERM ``proc`` (if it still runs) and wait up to ``timeout`` seconds, then SIGKILL it and reap it.

    Returns False when it had to be killed, True otherwise; ``proc.returncode`` holds its exit status.
    """
    if proc.poll() is not None:
        return True
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return False
    return True
