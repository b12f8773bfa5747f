"""Logging set-up: plain or JSON lines, never PHI.

Code in this package logs identifiers that are not PHI by default
(SeriesInstanceUID, SOP Instance UID, file paths). Patient name, ID, birth date
and sex are never passed to a logger; :class:`PhiFilter` is a second line of
defence that redacts the values of those attributes if a message carries them
in ``name=value`` form.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time

_PHI = re.compile(r"\b(PatientName|PatientID|PatientBirthDate|PatientSex)\s*[=:]\s*\S+", re.I)


class PhiFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if _PHI.search(msg):
            record.msg = _PHI.sub(lambda m: f"{m.group(1)}=<redacted>", msg)
            record.args = ()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "thread": record.threadName,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def setup_logging(verbose: int = 0, json_lines: bool = False) -> None:
    level = logging.WARNING if verbose <= 0 else logging.INFO if verbose == 1 else logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(PhiFilter())
    if json_lines:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s"))
    root = logging.getLogger("edge_agent")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    # Third-party loggers: the embedded broker (amqtt) and transitions log
    # tracebacks for every client that disconnects abruptly; keep them out of
    # the user's way unless debugging.
    for name in ("amqtt", "transitions", "pynetdicom"):
        other = logging.getLogger(name)
        other.handlers[:] = [handler]
        other.setLevel(logging.DEBUG if verbose >= 3 else logging.CRITICAL if name == "amqtt" else logging.WARNING)
        other.propagate = False


def use_json() -> None:
    """Switch the handlers set up by :func:`setup_logging` to JSON lines (config ``agent.log_json``)."""
    for name in ("edge_agent", "amqtt", "transitions", "pynetdicom"):
        for handler in logging.getLogger(name).handlers:
            handler.setFormatter(JsonFormatter())
