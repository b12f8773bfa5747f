"""The durable outbox: every alert and result is committed here before it counts as raised.

SQLite in WAL mode with ``synchronous=FULL`` (https://www.sqlite.org/pragma.html#pragma_synchronous):
a commit returns only after the WAL is fsync'd, so a raised alert survives a
power cut or ``kill -9``. Rows move ``pending -> inflight -> acked -> done``
(or ``rejected``); ``acked`` means the broker sent PUBACK and, in receipt mode,
a consumer's receipt is still awaited. Rows are never evicted while not done.

An :class:`Outbox` object is used by one thread only (the publisher thread,
which opens and closes it); :func:`read_stats` gives other threads a read-only
view through their own connection.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from edge_agent.durable import DurableDB, connect
from edge_agent.errors import EdgeAgentError

ACTIVE_STATES = ("pending", "inflight", "acked")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    message_key     TEXT    NOT NULL UNIQUE,   -- alert_id, result_id for results, preview:<alert_id>
    kind            TEXT    NOT NULL,          -- alert | result | preview
    revision        INTEGER NOT NULL,
    topic           TEXT    NOT NULL,
    payload         BLOB    NOT NULL,
    delivery        TEXT    NOT NULL,          -- receipt | broker
    state           TEXT    NOT NULL,          -- pending | inflight | acked | done | rejected
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL    NOT NULL,
    created_at      REAL    NOT NULL,          -- first commit of this message_key
    committed_at    REAL    NOT NULL,          -- commit of the current revision
    published_at    REAL,
    acked_at        REAL,
    done_at         REAL,
    last_error      TEXT
);
CREATE INDEX IF NOT EXISTS outbox_state_due ON outbox (state, next_attempt_at);
CREATE INDEX IF NOT EXISTS outbox_state_seq ON outbox (state, seq);
"""


class OutboxError(EdgeAgentError):
    """The outbox database cannot be opened or written."""


@dataclass
class OutboxRow:
    """One message to (re)publish."""

    seq: int
    message_key: str
    kind: str
    revision: int
    topic: str
    payload: bytes
    delivery: str
    state: str
    attempts: int


def _connect(path: Path, readonly: bool = False) -> sqlite3.Connection:
    return connect(path, what="alert outbox", error=OutboxError, readonly=readonly)


class Outbox:
    """The outbox table; every method runs on the owning (publisher) thread."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._db = DurableDB(self.path, what="alert outbox", error=OutboxError, schema=_SCHEMA)
        self._conn = self._db.conn

    def close(self) -> None:
        self._db.close()

    def transaction(self, durable: bool = True):
        """One write transaction; COMMIT on success, ROLLBACK on error.

        ``durable`` (new alerts and results) commits with ``synchronous=FULL``: the WAL is fsync'd before
        COMMIT returns. State transitions (in flight, acked, done) commit with ``NORMAL``: safe against a
        crash of the process, and after a power cut the worst case is that a message goes out again, which
        consumers deduplicate (edge_agent/durable.py).
        """
        return self._db.transaction(durable)

    def reset_inflight(self) -> int:
        """At start: rows left in flight by a previous run go back to pending (their PUBACK never came)."""
        cur = self._conn.execute("UPDATE outbox SET state='pending', next_attempt_at=? WHERE state='inflight'",
                                 (time.time(),))
        return cur.rowcount

    def put(self, *, kind: str, message_key: str, revision: int, topic: str, payload: bytes,
            delivery: str, now: float | None = None) -> str:
        """Insert, or replace with a higher revision; returns 'inserted', 'updated' or 'unchanged'."""
        now = time.time() if now is None else now
        row = self._conn.execute("SELECT revision FROM outbox WHERE message_key=?", (message_key,)).fetchone()
        if row is None:
            self._conn.execute(
                "INSERT INTO outbox (message_key, kind, revision, topic, payload, delivery, state, attempts,"
                " next_attempt_at, created_at, committed_at) VALUES (?,?,?,?,?,?, 'pending', 0, ?, ?, ?)",
                (message_key, kind, revision, topic, payload, delivery, now, now, now))
            return "inserted"
        if revision <= row[0]:
            return "unchanged"
        self._conn.execute(
            "UPDATE outbox SET revision=?, topic=?, payload=?, delivery=?, state='pending', attempts=0,"
            " next_attempt_at=?, committed_at=?, published_at=NULL, acked_at=NULL, done_at=NULL, last_error=NULL"
            " WHERE message_key=?", (revision, topic, payload, delivery, now, now, message_key))
        return "updated"

    def due(self, limit: int, now: float | None = None, horizon: float | None = None) -> list[OutboxRow]:
        """Oldest first: pending rows, and acked rows whose receipt is overdue, due by ``now``.

        ``horizon``: the furthest ahead any deadline is ever set. A deadline beyond ``now + horizon``
        was set before the wall clock stepped back (an NTP step, a wrong RTC fixed): it is due now,
        or an alert would wait as long as the step.
        """
        now = time.time() if now is None else now
        beyond = now + horizon if horizon is not None else float("inf")
        rows = self._conn.execute(
            "SELECT seq, message_key, kind, revision, topic, payload, delivery, state, attempts FROM outbox"
            " WHERE state IN ('pending', 'acked') AND (next_attempt_at <= ? OR next_attempt_at > ?)"
            " ORDER BY seq LIMIT ?", (now, beyond, limit)).fetchall()
        return [OutboxRow(*r) for r in rows]

    def has_pending(self) -> bool:
        return self._conn.execute("SELECT 1 FROM outbox WHERE state='pending' LIMIT 1").fetchone() is not None

    def next_due_at(self) -> float | None:
        row = self._conn.execute(
            "SELECT min(next_attempt_at) FROM outbox WHERE state IN ('pending', 'acked')").fetchone()
        return row[0]

    def mark_inflight(self, seq: int, now: float) -> None:
        self._conn.execute("UPDATE outbox SET state='inflight', attempts=attempts+1, published_at=? WHERE seq=?",
                           (now, seq))

    def mark_retry(self, seq: int, revision: int, next_attempt_at: float, error: str | None = None) -> None:
        """Back to pending, to be tried again at ``next_attempt_at``."""
        self._conn.execute("UPDATE outbox SET state='pending', next_attempt_at=?, last_error=?"
                           " WHERE seq=? AND revision=? AND state='inflight'",
                           (next_attempt_at, error, seq, revision))

    def mark_acked(self, seq: int, revision: int, now: float, receipt_due_at: float | None) -> bool:
        """PUBACK arrived: done (broker mode, ``receipt_due_at`` None) or awaiting a receipt until then."""
        if receipt_due_at is None:
            cur = self._conn.execute("UPDATE outbox SET state='done', acked_at=?, done_at=? WHERE seq=? AND"
                                     " revision=? AND state='inflight'", (now, now, seq, revision))
        else:
            cur = self._conn.execute("UPDATE outbox SET state='acked', acked_at=?, next_attempt_at=? WHERE seq=?"
                                     " AND revision=? AND state='inflight'", (now, receipt_due_at, seq, revision))
        return cur.rowcount > 0

    def mark_rejected(self, seq: int, revision: int, error: str, now: float) -> bool:
        cur = self._conn.execute("UPDATE outbox SET state='rejected', last_error=?, done_at=? WHERE seq=? AND"
                                 " revision=? AND state='inflight'", (error, now, seq, revision))
        return cur.rowcount > 0

    def confirm(self, message_key: str, revision: int, now: float) -> bool:
        """A consumer's receipt for ``revision`` confirms every revision <= it; True if a row became done."""
        cur = self._conn.execute(
            "UPDATE outbox SET state='done', done_at=? WHERE message_key=? AND revision<=? AND"
            " state IN ('pending', 'inflight', 'acked')", (now, message_key, revision))
        return cur.rowcount > 0

    def requeue_inflight(self, now: float) -> int:
        """After a disconnect: in-flight rows go back to pending (paho's own queue is memory only)."""
        return self._conn.execute("UPDATE outbox SET state='pending', next_attempt_at=? WHERE state='inflight'",
                                  (now,)).rowcount

    def prune_done(self, older_than: float) -> int:
        """Forget finished rows (done) older than ``older_than``; pending and rejected rows are kept."""
        return self._conn.execute("DELETE FROM outbox WHERE state='done' AND done_at < ?", (older_than,)).rowcount

    def counts(self, finished: dict | None = None) -> dict:
        """Counts by state, depth and oldest age. Given ``finished`` (done/rejected counts from before),
        only the active states are counted: an index range scan however many rows are done."""
        return _counts(self._conn, finished)


def _counts(conn: sqlite3.Connection, finished: dict | None = None) -> dict:
    by_state = {state: 0 for state in ("pending", "inflight", "acked", "done", "rejected")}
    query = "SELECT state, count(*) FROM outbox GROUP BY state"
    if finished is not None:
        by_state.update(finished)
        query = "SELECT state, count(*) FROM outbox WHERE state IN ('pending','inflight','acked') GROUP BY state"
    for state, count in conn.execute(query):
        by_state[state] = count
    oldest = conn.execute("SELECT min(created_at) FROM outbox WHERE state IN ('pending','inflight','acked')"
                          ).fetchone()[0]
    depth = sum(by_state[s] for s in ACTIVE_STATES)
    return {"depth": depth, "by_state": by_state, "oldest_created_at": oldest,
            "oldest_pending_age_s": None if oldest is None else max(0.0, round(time.time() - oldest, 3))}


def read_stats(path: Path) -> dict:
    """Depth, counts by state and the oldest pending age, read through a separate read-only connection."""
    conn = _connect(Path(path), readonly=True)
    try:
        return _counts(conn)
    finally:
        conn.close()


def read_rows(path: Path) -> list[dict]:
    """Every row as a dict (for tests, benchmarks and support)."""
    conn = _connect(Path(path), readonly=True)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM outbox ORDER BY seq")]
    finally:
        conn.close()
