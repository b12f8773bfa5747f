"""The PACS queue: every DICOM result, stored once, and its delivery to each destination.

``<state-dir>/pacs.sqlite3`` (edge_agent/durable.py: WAL; new objects commit
with ``synchronous=FULL`` before they count as queued). Three tables:

* ``objects``: one row per SOP Instance UID with the Part 10 bytes exactly as
  they are sent. A UID is inserted once and never changed: a resend is the same
  bytes, so nothing is ever sent twice under one UID with different content.
* ``deliveries``: one row per object and destination — each destination is its
  own queue: ``pending → sending → done``, or ``dead`` once it has failed for
  longer than ``pacs.dead_after``. ``sending`` rows left by a killed agent go
  back to ``pending`` at start.
* ``revisions``: per series and model, the latest revision, the digest of its
  content (a new decision with the same digest queues nothing) and the KOS it
  queued, if any: what the next revision must withdraw with an IOCM rejection
  note. It is kept when the objects are forgotten (30 days after delivery), so
  a reopen months later still knows which key images are flagged in the PACS.
  A file from before that column gets it at open (``_migrate``), filled from
  the objects still held; a revision whose objects were already forgotten
  then reads "unknown" (:attr:`Revision.kos_known` false).

The bytes hold the patient attributes the objects must carry (they belong to
the patient's study); nothing here is ever logged except UIDs and states.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from edge_agent.durable import DurableDB, connect
from edge_agent.errors import EdgeAgentError

log = logging.getLogger(__name__)

STATES = ("pending", "sending", "done", "dead")
#: Done deliveries (and the objects no destination still needs) are forgotten after this long.
DONE_MEMORY_S = 30 * 24 * 3600

_SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    sop_instance_uid    TEXT PRIMARY KEY,
    sop_class_uid       TEXT NOT NULL,
    kind                TEXT NOT NULL,      -- sr | kos | rejection
    series_instance_uid TEXT NOT NULL,      -- the analysed series (in the original study)
    model               TEXT NOT NULL,
    model_version       TEXT NOT NULL,
    revision            INTEGER NOT NULL,
    dataset             BLOB NOT NULL,      -- the Part 10 file as sent (patient data: never logged)
    sha256              TEXT NOT NULL,
    created_at          REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS deliveries (
    destination      TEXT NOT NULL,         -- AET@host:port
    sop_instance_uid TEXT NOT NULL,
    state            TEXT NOT NULL,         -- pending | sending | done | dead
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  REAL NOT NULL,
    created_at       REAL NOT NULL,         -- queued (or retried by hand): the dead-letter clock starts here
    sent_at          REAL,
    last_error       TEXT,
    PRIMARY KEY (destination, sop_instance_uid)
);
CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (destination, state, next_attempt_at);
CREATE TABLE IF NOT EXISTS revisions (
    series_instance_uid TEXT NOT NULL,
    model               TEXT NOT NULL,
    model_version       TEXT NOT NULL,
    revision            INTEGER NOT NULL,
    digest              TEXT NOT NULL,
    decided_at          REAL NOT NULL,
    kos_sop_instance_uid TEXT,              -- the KOS this revision queued; '' none; NULL unknown (see _migrate)
    PRIMARY KEY (series_instance_uid, model, model_version)
);
"""
#: Added after the first release: an older file gets it at open, filled from the objects it still holds.
_KOS_COLUMN = "kos_sop_instance_uid"
_BACKFILL = f"""
UPDATE revisions SET {_KOS_COLUMN} = COALESCE(
    (SELECT o.sop_instance_uid FROM objects o WHERE o.kind = 'kos' AND o.series_instance_uid =
     revisions.series_instance_uid AND o.model = revisions.model AND o.model_version = revisions.model_version
     AND o.revision = revisions.revision),
    CASE WHEN EXISTS (SELECT 1 FROM objects o WHERE o.kind = 'sr' AND o.series_instance_uid =
     revisions.series_instance_uid AND o.model = revisions.model AND o.model_version = revisions.model_version
     AND o.revision = revisions.revision) THEN '' END)
"""


class PacsQueueError(EdgeAgentError):
    """The PACS queue cannot be opened or written, or a UID would change content."""


@dataclass(frozen=True)
class QueuedObject:
    """One DICOM object to deliver."""

    sop_instance_uid: str
    sop_class_uid: str
    kind: str
    dataset: bytes
    sha256: str


@dataclass(frozen=True)
class Revision:
    """The latest revision queued for a series and model."""

    revision: int
    digest: str
    kos_sop_instance_uid: str | None  # the KOS it queued (flagged in the PACS until withdrawn); None: none
    kos_known: bool = True            # False: queued before the queue recorded it, and its objects are forgotten


@dataclass(frozen=True)
class Due:
    """A delivery due now: the object's bytes and how often it was tried."""

    sop_instance_uid: str
    sop_class_uid: str
    kind: str
    dataset: bytes
    attempts: int
    created_at: float


class PacsQueue:
    """The queue, through one connection (one per thread: the pipeline adds, each sender delivers)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._db = DurableDB(self.path, what="PACS queue", error=PacsQueueError, schema=_SCHEMA)
        self._conn = self._db.conn
        try:
            self._migrate()
        except BaseException:
            self._db.close()
            raise

    def close(self) -> None:
        self._db.close()

    def _has_kos_column(self) -> bool:
        return any(row[1] == _KOS_COLUMN for row in self._conn.execute("PRAGMA table_info(revisions)"))

    def _migrate(self) -> None:
        """A file from before ``revisions.kos_sop_instance_uid``: add it and fill it from the objects still held
        (a KOS of that revision: its UID; only an SR: ''; nothing left: NULL, unknown). Once, in one transaction
        (another connection opening the file at the same time finds it done)."""
        if self._has_kos_column():
            return
        try:
            with self._db.transaction(durable=True) as conn:
                if self._has_kos_column():
                    return
                conn.execute(f"ALTER TABLE revisions ADD COLUMN {_KOS_COLUMN} TEXT")
                conn.execute(_BACKFILL)
                unknown = conn.execute(f"SELECT count(*) FROM revisions WHERE {_KOS_COLUMN} IS NULL").fetchone()[0]
        except sqlite3.Error as exc:
            raise PacsQueueError(f"The PACS queue {self.path} cannot be upgraded to record which revision has "
                                 f"key images ({type(exc).__name__}); check it is writable.") from None
        log.info("PACS queue %s upgraded: each revision now records its key-image KOS (%d revision(s) whose "
                 "objects were already forgotten are marked unknown)", self.path, unknown)

    # -- adding ------------------------------------------------------------------
    def latest(self, series_instance_uid: str, model: str, model_version: str) -> tuple[int, str] | None:
        """(revision, digest) of the latest result queued for a series and model, or None."""
        row = self._conn.execute("SELECT revision, digest FROM revisions WHERE series_instance_uid=? AND model=?"
                                 " AND model_version=?", (series_instance_uid, model, model_version)).fetchone()
        return (row[0], row[1]) if row else None

    def latest_revision(self, series_instance_uid: str, model: str, model_version: str) -> Revision | None:
        """The latest revision queued for a series and model, with the KOS it queued (what a new revision
        withdraws), or None."""
        row = self._conn.execute(f"SELECT revision, digest, {_KOS_COLUMN} FROM revisions WHERE"
                                 " series_instance_uid=? AND model=? AND model_version=?",
                                 (series_instance_uid, model, model_version)).fetchone()
        if row is None:
            return None
        return Revision(row[0], row[1], row[2] or None, kos_known=row[2] is not None)

    def add(self, *, series_instance_uid: str, model: str, model_version: str, revision: int, digest: str,
            objects: list[QueuedObject], destinations: list[str], now: float | None = None) -> int:
        """Queue one revision's objects for every destination in one durable transaction; returns how many
        deliveries were new. An existing UID keeps its bytes; different bytes under it is an error. The
        revision's KOS (the object of kind ``kos``, if any) is recorded with it."""
        now = time.time() if now is None else now
        kos = next((o.sop_instance_uid for o in objects if o.kind == "kos"), "")
        added = 0
        with self._db.transaction(durable=True) as conn:
            for obj in objects:
                row = conn.execute("SELECT sha256 FROM objects WHERE sop_instance_uid=?",
                                   (obj.sop_instance_uid,)).fetchone()
                if row is not None and row[0] != obj.sha256:
                    raise PacsQueueError(f"SOP Instance UID {obj.sop_instance_uid} is already queued with other "
                                         "content; it is kept as it was and the new object is not queued.")
                if row is None:
                    conn.execute("INSERT INTO objects VALUES (?,?,?,?,?,?,?,?,?,?)",
                                 (obj.sop_instance_uid, obj.sop_class_uid, obj.kind, series_instance_uid, model,
                                  model_version, revision, obj.dataset, obj.sha256, now))
                for destination in destinations:
                    added += conn.execute(
                        "INSERT OR IGNORE INTO deliveries (destination, sop_instance_uid, state, attempts,"
                        " next_attempt_at, created_at) VALUES (?,?, 'pending', 0, ?, ?)",
                        (destination, obj.sop_instance_uid, now, now)).rowcount
            conn.execute(f"INSERT OR REPLACE INTO revisions (series_instance_uid, model, model_version, revision,"
                         f" digest, decided_at, {_KOS_COLUMN}) VALUES (?,?,?,?,?,?,?)",
                         (series_instance_uid, model, model_version, revision, digest, now, kos))
        return added

    def dataset_of(self, kind: str, series_instance_uid: str, model: str, model_version: str,
                   revision: int) -> bytes | None:
        """The queued bytes of a revision's object of ``kind`` (sr, kos, …), or None (none, or forgotten)."""
        row = self._conn.execute("SELECT dataset FROM objects WHERE kind=? AND series_instance_uid=? AND model=? AND"
                                 " model_version=? AND revision=?",
                                 (kind, series_instance_uid, model, model_version, revision)).fetchone()
        return None if row is None else bytes(row[0])

    def holds(self, sop_instance_uid: str) -> bool:
        """Whether an object with this UID is queued (or was, and is not yet pruned)."""
        return self._conn.execute("SELECT 1 FROM objects WHERE sop_instance_uid=?",
                                  (sop_instance_uid,)).fetchone() is not None

    # -- delivering ----------------------------------------------------------------
    def reset_sending(self, destination: str | None = None) -> int:
        """At start: deliveries a killed agent left ``sending`` go back to pending (sent again: same bytes)."""
        query, args = "UPDATE deliveries SET state='pending', next_attempt_at=? WHERE state='sending'", [time.time()]
        if destination is not None:
            query, args = query + " AND destination=?", args + [destination]
        with self._db.transaction(durable=False) as conn:
            return conn.execute(query, args).rowcount

    def due(self, destination: str, limit: int, now: float | None = None) -> list[Due]:
        """Pending deliveries of ``destination`` due by ``now``, oldest first, marked ``sending``."""
        now = time.time() if now is None else now
        with self._db.transaction(durable=False) as conn:
            rows = conn.execute(
                "SELECT d.sop_instance_uid, o.sop_class_uid, o.kind, o.dataset, d.attempts, d.created_at"
                " FROM deliveries d JOIN objects o USING (sop_instance_uid) WHERE d.destination=? AND"
                " d.state='pending' AND d.next_attempt_at<=? ORDER BY d.created_at, o.kind DESC, d.sop_instance_uid"
                " LIMIT ?", (destination, now, limit)).fetchall()
            conn.executemany("UPDATE deliveries SET state='sending', attempts=attempts+1 WHERE destination=? AND"
                             " sop_instance_uid=?", [(destination, r[0]) for r in rows])
        return [Due(r[0], r[1], r[2], bytes(r[3]), r[4] + 1, r[5]) for r in rows]

    def next_due_at(self, destination: str) -> float | None:
        row = self._conn.execute("SELECT min(next_attempt_at) FROM deliveries WHERE destination=? AND"
                                 " state='pending'", (destination,)).fetchone()
        return row[0]

    def mark_done(self, destination: str, sop_instance_uid: str, now: float | None = None) -> None:
        with self._db.transaction(durable=False) as conn:
            conn.execute("UPDATE deliveries SET state='done', sent_at=?, last_error=NULL WHERE destination=? AND"
                         " sop_instance_uid=?", (time.time() if now is None else now, destination, sop_instance_uid))

    def mark_retry(self, destination: str, sop_instance_uid: str, next_attempt_at: float, error: str) -> None:
        with self._db.transaction(durable=False) as conn:
            conn.execute("UPDATE deliveries SET state='pending', next_attempt_at=?, last_error=? WHERE"
                         " destination=? AND sop_instance_uid=?", (next_attempt_at, error, destination,
                                                                   sop_instance_uid))

    def mark_dead(self, destination: str, sop_instance_uid: str, error: str) -> None:
        with self._db.transaction(durable=False) as conn:
            conn.execute("UPDATE deliveries SET state='dead', last_error=? WHERE destination=? AND"
                         " sop_instance_uid=?", (error, destination, sop_instance_uid))

    def retry_dead(self, destination: str | None = None, now: float | None = None) -> int:
        """Dead deliveries (of one destination, or all) go back to pending with a fresh dead-letter clock."""
        now = time.time() if now is None else now
        query = ("UPDATE deliveries SET state='pending', attempts=0, next_attempt_at=?, created_at=? WHERE"
                 " state='dead'")
        args: list = [now, now]
        if destination is not None:
            query, args = query + " AND destination=?", args + [destination]
        with self._db.transaction(durable=False) as conn:
            return conn.execute(query, args).rowcount

    def prune(self, older_than: float) -> int:
        """Forget deliveries done before ``older_than`` and objects no delivery still needs; revisions stay
        (a later reopen must not reuse a revision's UIDs for other content)."""
        with self._db.transaction(durable=False) as conn:
            n = conn.execute("DELETE FROM deliveries WHERE state='done' AND sent_at < ?", (older_than,)).rowcount
            conn.execute("DELETE FROM objects WHERE created_at < ? AND sop_instance_uid NOT IN"
                         " (SELECT sop_instance_uid FROM deliveries)", (older_than,))
        return n

    def stats(self) -> dict:
        return _stats(self._conn)


def _stats(conn: sqlite3.Connection) -> dict:
    """``{destination: {"pending": n, "sending": n, "done": n, "dead": n, "oldest_pending_age_s": s|None,
    "last_error": text|None}}``."""
    out: dict[str, dict] = {}
    for destination, state, count in conn.execute(
            "SELECT destination, state, count(*) FROM deliveries GROUP BY destination, state"):
        out.setdefault(destination, {s: 0 for s in STATES})[state] = count
    now = time.time()
    for destination, oldest, error in conn.execute(
            "SELECT destination, min(created_at), (SELECT last_error FROM deliveries e WHERE e.destination="
            "d.destination AND e.last_error IS NOT NULL AND e.state != 'done' ORDER BY e.next_attempt_at DESC"
            " LIMIT 1) FROM deliveries d WHERE state IN ('pending','sending') GROUP BY destination"):
        entry = out.setdefault(destination, {s: 0 for s in STATES})
        entry["oldest_pending_age_s"] = None if oldest is None else round(max(0.0, now - oldest), 1)
        entry["last_error"] = error
    for entry in out.values():
        entry.setdefault("oldest_pending_age_s", None)
        entry.setdefault("last_error", None)
    return out


def read_stats(path: Path) -> dict:
    """:meth:`PacsQueue.stats` through a read-only connection (``doctor``, while the agent runs)."""
    conn = connect(Path(path), what="PACS queue", error=PacsQueueError, readonly=True)
    try:
        return _stats(conn)
    finally:
        conn.close()


def read_deliveries(path: Path) -> list[dict]:
    """Every delivery with its object's kind and revision (tests and support; no dataset bytes)."""
    conn = connect(Path(path), what="PACS queue", error=PacsQueueError, readonly=True)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute(
            "SELECT d.*, o.kind, o.revision, o.model, o.series_instance_uid, o.sha256 FROM deliveries d"
            " JOIN objects o USING (sop_instance_uid) ORDER BY d.created_at, d.sop_instance_uid")]
    finally:
        conn.close()
