"""Logging set-up: plain or JSON lines, never PHI.

Code in this package logs identifiers that are not PHI by default
(SeriesInstanceUID, SOP Instance UID, file paths). Patient name, ID, birth date
and sex are never passed to a logger; :class:`PhiFilter` is a second line of
defence that redacts the values of those attributes if a message carries them
in ``name=value`` form. Free text from a header (a series description) goes
through :func:`header_text` first.

The operator's story — the start-up banner, one line per series opened and
decided, broker trouble and its recovery, the periodic summary — is logged at
INFO on the loggers in :data:`OPERATOR_LOGGERS`, which stay at INFO at the
default verbosity (everything else from ``edge_agent`` at WARNING; ``-v``
shows all INFO lines, ``-vv`` debug). docs/DEPLOYMENT.md ("Reading the log").
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time

_PHI = re.compile(r"\b(PatientName|PatientID|PatientBirthDate|PatientSex)\s*[=:]\s*\S+", re.I)

#: Start-up banner and periodic summary.
AGENT_LOG = "edge_agent.agent"
#: One line per series when it opens and when it is decided.
SERIES_LOG = "edge_agent.series"
#: The broker cannot be reached (WARNING) and is back (INFO).
BROKER_LOG = "edge_agent.broker"
#: The pipeline thread's own lines (its ALERT lines; the warnings of the parts it runs: scoring, previews,
#: results, story), one logger for all of them.
PIPELINE_LOG = "edge_agent.service.pipeline"
#: Loggers whose INFO lines are shown at the default verbosity (the story an operator reads).
OPERATOR_LOGGERS = (AGENT_LOG, SERIES_LOG, BROKER_LOG)

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]+")


def header_text(value, limit: int = 64) -> str:
    """Free header text (e.g. Series Description) made safe for a log line.

    Control characters go (a newline in a header must not forge a log line),
    the text is clipped to ``limit`` characters (LO's 64), and a word that
    looks like a person's name in DICOM form (``Doe^John``) or like an
    identifier or a date (five or more digits: ``MRN44556``, ``1951-03-17``)
    is replaced: scanners' free-text fields are sometimes typed by hand, and a
    name or ID typed there must not reach the log. Protocol words (``5mm``,
    ``B30f``, ``120kV``) stay.
    """
    words = []
    for word in _CONTROL.sub(" ", str(value or "")).split():
        if "^" in word:
            word = "<name?>"
        elif sum(c.isdigit() for c in word) >= 5:
            word = "<number?>"
        words.append(word)
    text = " ".join(words)
    return text if len(text) <= limit else text[: limit - 1] + "…"


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
        event = getattr(record, "event", None)
        if event:  # extra={"event": ..., "data": {...}} on the operator's lines: fields for log shippers
            entry["event"] = event
            data = getattr(record, "data", None)
            if isinstance(data, dict):
                entry["data"] = data
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
    # The operator's story is told at the default verbosity; with -v everything is (their level: inherited).
    for name in OPERATOR_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO if verbose <= 0 else logging.NOTSET)
    # Third-party loggers: the embedded broker (amqtt) and transitions log
    # tracebacks for every client that disconnects abruptly; keep them out of
    # the user's way unless debugging.
    for name in ("amqtt", "transitions", "pynetdicom", "highdicom", "dicomweb_client"):
        other = logging.getLogger(name)
        other.handlers[:] = [handler]
        other.setLevel(logging.DEBUG if verbose >= 3 else _third_party_level(name, verbose))
        other.propagate = False


#: Third-party loggers kept quiet at the default verbosity. pynetdicom logs an ERROR line of its own for every
#: association that fails ("Association request failed: unable to connect to remote", "TCP Initialisation
#: Error"), which the PACS sender and the receiver already tell in one sentence each with what to do: its own
#: lines come back with -vv (and everything it says with -vvv).
QUIET_BY_DEFAULT = ("amqtt", "pynetdicom")


def _third_party_level(name: str, verbose: int) -> int:
    if name == "amqtt" or (name in QUIET_BY_DEFAULT and verbose <= 1):
        return logging.CRITICAL
    return logging.WARNING


def use_json() -> None:
    """Switch the handlers set up by :func:`setup_logging` to JSON lines (config ``agent.log_json``)."""
    for name in ("edge_agent", "amqtt", "transitions", "pynetdicom", "highdicom", "dicomweb_client"):
        for handler in logging.getLogger(name).handlers:
            handler.setFormatter(JsonFormatter())
