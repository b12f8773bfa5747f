"""Alarms raised by the publisher: broker rejections, refused connections, a deep or old outbox.

Alerts are never evicted from the outbox; instead, when it grows deeper than
``alarm_depth`` or its oldest undelivered alert is older than
``alarm_oldest_age_s``, an alarm is raised once (and re-armed when it recovers).
"""

from __future__ import annotations

import logging
import threading
from typing import Callable

log = logging.getLogger(__name__)

_KEEP = 50


class Alarms:
    """A thread-safe list of recent alarm sentences, each also logged and passed to ``on_alarm``."""

    def __init__(self, on_alarm: Callable[[str], None] | None, depth_limit: int, age_limit_s: float) -> None:
        self._on_alarm = on_alarm
        self._depth_limit = depth_limit
        self._age_limit_s = age_limit_s
        self._lock = threading.Lock()
        self._recent: list[str] = []
        self._depth_alarmed = False
        self._age_alarmed = False

    def raise_(self, message: str) -> None:
        """Record, log at ERROR and hand ``message`` (one sentence) to the on_alarm hook."""
        log.error("ALARM: %s", message)
        with self._lock:
            self._recent.append(message)
            del self._recent[:-_KEEP]
        if self._on_alarm is not None:
            try:
                self._on_alarm(message)
            except Exception:  # noqa: BLE001 - a broken alarm hook must not stop delivery
                log.exception("the on_alarm callback failed")

    def recent(self) -> list[str]:
        with self._lock:
            return list(self._recent)

    def check_outbox(self, depth: int, oldest_age_s: float | None) -> None:
        """Alarm once when the outbox gets too deep or too old; re-arm when it is back under the limit."""
        over_depth = depth >= self._depth_limit
        if over_depth and not self._depth_alarmed:
            self.raise_(f"The alert outbox holds {depth} undelivered messages; check the broker and the consumers.")
        self._depth_alarmed = over_depth
        age = oldest_age_s or 0.0
        over_age = age >= self._age_limit_s
        if over_age and not self._age_alarmed:
            self.raise_(f"The oldest undelivered alert is {age:.0f} s old; check the broker and the consumers.")
        self._age_alarmed = over_age
