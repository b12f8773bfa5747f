"""SQLite files that must survive ``kill -9`` and power cuts: the alert outbox, the PACS queue.

WAL mode; a *durable* transaction commits with ``synchronous=FULL`` (the WAL
is fsync'd before COMMIT returns, https://www.sqlite.org/pragma.html#pragma_synchronous),
a state change with ``NORMAL`` (safe against a crash of the process; after a
power cut the worst case is that a message goes out again). One
:class:`DurableDB` is used by one thread; other threads open their own, or read
through :func:`connect_readonly`.
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path
from typing import Iterator


def connect(path: Path, *, what: str, error: type[Exception], readonly: bool = False) -> sqlite3.Connection:
    """Open ``path`` (WAL, FULL) or read-only; a failure is ``error`` with one sentence naming ``what``."""
    try:
        if readonly:
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None, timeout=5.0)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(str(path), isolation_level=None, timeout=10.0)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
    except (sqlite3.Error, OSError) as exc:
        raise error(f"Cannot open the {what} {path} ({exc}); check the state directory exists, is writable and "
                    "is on a local disk.") from exc
    return conn


class DurableDB:
    """One connection with :meth:`transaction`; ``schema`` is run at open (``CREATE ... IF NOT EXISTS``)."""

    def __init__(self, path: Path, *, what: str, error: type[Exception], schema: str = "") -> None:
        self.path = Path(path)
        self.conn = connect(self.path, what=what, error=error)
        if schema:
            self.conn.executescript(schema)
        self._durable = True

    def close(self) -> None:
        self.conn.close()

    @contextlib.contextmanager
    def transaction(self, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE); COMMIT on success, ROLLBACK on error.

        ``durable``: commit with ``synchronous=FULL``; otherwise ``NORMAL``. Any later FULL commit fsyncs
        the earlier WAL frames too.
        """
        if durable != self._durable:
            self.conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            self._durable = durable
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")
