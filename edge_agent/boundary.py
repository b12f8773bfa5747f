"""The error boundary every unit of work runs in: what it catches and the sentence it records.

One rule, reused by the DICOM reader, the ingest's decode step and the
batch readers (and meant for every other unit of work: a series, a
payload, an alert):

* everything is caught except the three exceptions that mean "stop this
  process or generator" (:data:`FATAL`: ``KeyboardInterrupt``,
  ``SystemExit``, ``GeneratorExit``). That includes ``BaseException``
  subclasses raised by native decoders: pyo3 turns a Rust panic into
  ``pyo3_runtime.PanicException``, which derives from ``BaseException``
  so that ``except Exception`` lets it through (pylibjpeg-rle panics on
  damaged RLE segments);
* the failure becomes one sentence (:func:`failure_sentence`), never the
  internal error text (``RecursionError: maximum recursion depth
  exceeded``), and never an object that cannot cross a process boundary
  (a worker returns the sentence, not the exception);
* building the sentence cannot raise.
"""

from __future__ import annotations

import errno
import sqlite3

FATAL = (KeyboardInterrupt, SystemExit, GeneratorExit)

# Nesting depth of DICOM sequences we read (the fast header path stops here; pydicom's recursive parser
# runs out of Python stack a little above it). Real objects nest fewer than 10 levels.
MAX_SEQUENCE_DEPTH = 64


def is_fatal(exc: BaseException) -> bool:
    """True for the exceptions a boundary must let through (interrupt, exit, generator close)."""
    return isinstance(exc, FATAL)


def is_panic(exc: BaseException) -> bool:
    """True for a native extension's panic (a ``BaseException`` that is neither an ``Exception`` nor fatal)."""
    return not isinstance(exc, (Exception, *FATAL))


def failure_reason(exc: BaseException) -> str:
    """Why an input failed, as the predicate of a sentence about it ("has ...", "could not ...").

    Never the internal error text; never raises.
    """
    try:
        if isinstance(exc, RecursionError):
            return (f"has sequences nested too deeply to read (over {MAX_SEQUENCE_DEPTH} levels); "
                    "it is not a usable image")
        if isinstance(exc, MemoryError):
            return "needs more memory to decode than this machine has; it is not a usable image"
        if is_panic(exc):
            return ("has compressed pixel data that crashed the decoder (the data are damaged); resend it "
                    "or ask for another transfer syntax")
        return (f"could not be read because of an unexpected internal error ({type(exc).__name__}, logged); "
                "it was set aside")
    except BaseException:  # noqa: BLE001 - the boundary's own failure path must not raise
        return "could not be read because of an unexpected internal error; it was set aside"


def failure_sentence(exc: BaseException, what: str = "The file") -> str:
    """A whole sentence: ``what`` followed by :func:`failure_reason`, ending in a full stop."""
    return f"{what} {failure_reason(exc)}."


def describe(exc: BaseException) -> str:
    """``Type: message`` for logs (bounded, one line); never raises."""
    try:
        text = str(exc).splitlines()[0] if str(exc) else ""
        return f"{type(exc).__module__}.{type(exc).__name__}: {text[:200]}"
    except BaseException:  # noqa: BLE001
        return type(exc).__name__



#: How often work paused by a full disk (the ingest's intake, the pipeline's decisions) tries again.
DISK_FULL_RETRY_S = 2.0


def disk_full(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or what caused it) says the disk is full: SQLite's SQLITE_FULL, ENOSPC, EDQUOT."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if isinstance(exc, sqlite3.OperationalError) and "full" in str(exc).lower():
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False
