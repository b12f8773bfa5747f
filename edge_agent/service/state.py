"""Durable per-series state: slice scores and alert revisions (SQLite).

The daemon forgets pixels as soon as a slice is scored; what it keeps is
small — each slice's position and per-model probabilities, and each alert's
latest revision — and it keeps it here, so that a series that reopens after
its final decision (late or resent slices), even across a restart, is
re-decided with all of its slices and its alert updated under the same
``alert_id`` with a higher revision.

Owned by the pipeline thread: one connection, used from that thread only.
"""

from __future__ import annotations

import json
import sqlite3
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_SCHEMA = """
CREATE TABLE IF NOT EXISTS series (
    series_instance_uid TEXT PRIMARY KEY,
    info TEXT NOT NULL,              -- JSON: study uid, accession, modality, description... (no PHI)
    first_received REAL NOT NULL,
    last_received REAL NOT NULL,
    status TEXT NOT NULL,            -- open | final
    finalised_at REAL
);
CREATE TABLE IF NOT EXISTS slices (
    series_instance_uid TEXT NOT NULL,
    sop_instance_uid TEXT NOT NULL,
    model TEXT NOT NULL,
    position_mm REAL NOT NULL,
    probabilities TEXT NOT NULL,     -- JSON list, one per finding of the model
    received_at REAL NOT NULL,
    complete_at REAL NOT NULL,
    features TEXT,                   -- JSON: the slice's evidence/domain numbers (no pixels), or NULL
    PRIMARY KEY (series_instance_uid, sop_instance_uid, model)
);
CREATE TABLE IF NOT EXISTS alerts (
    alert_id TEXT PRIMARY KEY,
    series_instance_uid TEXT NOT NULL,
    revision INTEGER NOT NULL,
    state TEXT NOT NULL,             -- preliminary | final | retracted
    probability REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS outcomes (
    series_instance_uid TEXT NOT NULL,
    model TEXT NOT NULL,
    finding TEXT NOT NULL,           -- finding code, '' when the model decided nothing (skipped, rejected...)
    decided_at REAL NOT NULL,        -- time.time() of the (latest) final decision
    status TEXT NOT NULL,            -- the model's status on the series: analysed | skipped | rejected | ...
    reason TEXT,
    mode TEXT NOT NULL,              -- live | shadow
    probability REAL,
    positive INTEGER,                -- the decision (shadow: what would have alerted)
    scanner TEXT NOT NULL,           -- manufacturer and model name (no PHI)
    latency_s REAL,                  -- first slice received -> decided
    PRIMARY KEY (series_instance_uid, model, finding)
);
CREATE TABLE IF NOT EXISTS thumbnails (
    series_instance_uid TEXT NOT NULL,
    model TEXT NOT NULL,
    sop_instance_uid TEXT NOT NULL,
    score REAL NOT NULL,
    height INTEGER NOT NULL,
    width INTEGER NOT NULL,
    pixels BLOB NOT NULL,            -- zlib of the uint8 windowed, downscaled key-image preview (no PHI)
    PRIMARY KEY (series_instance_uid, model, sop_instance_uid)
);
CREATE INDEX IF NOT EXISTS outcomes_by_time ON outcomes(decided_at);
CREATE INDEX IF NOT EXISTS alerts_by_series ON alerts(series_instance_uid);
CREATE INDEX IF NOT EXISTS series_by_status ON series(status, finalised_at);
"""


@dataclass
class SliceScore:
    sop_instance_uid: str
    position_mm: float
    probabilities: list[float]
    received_at: float
    complete_at: float
    features: dict | None = None


@dataclass
class Outcome:
    """One model's final word on one series (a finding, or a status without findings), for ``report``."""

    series_instance_uid: str
    model: str
    finding: str
    decided_at: float
    status: str
    reason: str | None
    mode: str
    probability: float | None
    positive: bool | None
    scanner: str
    latency_s: float | None


#: Thumbnails of a final series are kept this long for a reopen's previews (the slice scores: a week).
THUMBNAIL_MEMORY_S = 24 * 3600

#: Outcomes are kept this long for ``edge-agent report`` (longer than the week of slice scores).
OUTCOME_MEMORY_S = 90 * 24 * 3600


@dataclass
class AlertState:
    alert_id: str
    revision: int
    state: str
    probability: float


class SeriesStore:
    """Slice scores and alert revisions of every series seen, on disk."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL: a crash may lose the last scores, which are recomputed from the
        # re-emitted files (the ledger resumes unfinished series); alert
        # durability is the outbox's job, which uses FULL.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(slices)")}
        if "features" not in columns:  # a state DB from before evidence checks
            self._db.execute("ALTER TABLE slices ADD COLUMN features TEXT")

    def close(self) -> None:
        self._db.close()

    # -- series ----------------------------------------------------------------
    def touch_series(self, series_instance_uid: str, info: dict, received_at: float) -> str | None:
        """Record a slice arrival; returns the previous status (None: new series)."""
        row = self._db.execute("SELECT status FROM series WHERE series_instance_uid=?",
                               (series_instance_uid,)).fetchone()
        if row is None:
            self._db.execute("INSERT INTO series VALUES (?,?,?,?, 'open', NULL)",
                             (series_instance_uid, json.dumps(info), received_at, received_at))
            return None
        self._db.execute("UPDATE series SET last_received=max(last_received, ?), status='open' "
                         "WHERE series_instance_uid=?", (received_at, series_instance_uid))
        return row[0]

    def series_info(self, series_instance_uid: str) -> tuple[dict, float] | None:
        row = self._db.execute("SELECT info, first_received FROM series WHERE series_instance_uid=?",
                               (series_instance_uid,)).fetchone()
        return (json.loads(row[0]), row[1]) if row else None

    def prune_final(self, before: float) -> int:
        """Forget series final since before ``before`` (time.time()): their scores and alert revisions.

        A series that reopens after that starts afresh (its alert_id is the
        same, its revision starts again at 1). Returns how many were forgotten.
        """
        uids = [(u,) for (u,) in self._db.execute(
            "SELECT series_instance_uid FROM series WHERE status='final' AND finalised_at < ?", (before,))]
        if not uids:
            return 0
        self._db.execute("BEGIN")
        for table in ("slices", "alerts", "thumbnails", "series"):  # outcomes stay for report (OUTCOME_MEMORY_S)
            self._db.executemany(f"DELETE FROM {table} WHERE series_instance_uid=?", uids)
        self._db.execute("COMMIT")
        return len(uids)

    # -- key-image thumbnails (previews after a restart or a reopen) --------------
    def thumbnails(self, series_instance_uid: str, model: str) -> list[tuple[str, float, np.ndarray]]:
        """The kept thumbnails of one series and model: ``(sop_instance_uid, score, uint8 image)``."""
        rows = self._db.execute("SELECT sop_instance_uid, score, height, width, pixels FROM thumbnails "
                                "WHERE series_instance_uid=? AND model=?", (series_instance_uid, model)).fetchall()
        out = []
        for uid, score, height, width, pixels in rows:
            image = np.frombuffer(zlib.decompress(pixels), np.uint8)
            if image.size == height * width:  # anything else is a damaged row: no preview rather than a wrong one
                out.append((uid, score, image.reshape(height, width)))
        return out

    def keep_thumbnails(self, series_instance_uid: str, model: str, added: list, dropped: list[str]) -> None:
        """Mirror a preview cache's changes (:meth:`PreviewCache.drain`)."""
        if not added and not dropped:
            return
        self._db.execute("BEGIN")
        self._db.executemany("DELETE FROM thumbnails WHERE series_instance_uid=? AND model=? AND sop_instance_uid=?",
                             [(series_instance_uid, model, uid) for uid in dropped])
        self._db.executemany(
            "INSERT OR REPLACE INTO thumbnails VALUES (?,?,?,?,?,?,?)",
            [(series_instance_uid, model, uid, float(score), int(image.shape[0]), int(image.shape[1]),
              zlib.compress(np.ascontiguousarray(image, np.uint8).tobytes(), 1)) for uid, score, image in added])
        self._db.execute("COMMIT")

    def forget_thumbnails(self, before: float) -> int:
        """Drop the thumbnails of series final since before ``before`` (a later reopen then has no preview of the
        slices scored before it); returns how many."""
        cursor = self._db.execute(
            "DELETE FROM thumbnails WHERE series_instance_uid IN (SELECT series_instance_uid FROM series "
            "WHERE status='final' AND finalised_at < ?)", (before,))
        return cursor.rowcount

    def mark_final(self, series_instance_uid: str) -> None:
        self._db.execute("UPDATE series SET status='final', finalised_at=? WHERE series_instance_uid=?",
                         (time.time(), series_instance_uid))

    # -- slices ----------------------------------------------------------------
    def scored(self, series_instance_uid: str, model: str) -> set[str]:
        """SOP Instance UIDs of the series already scored by ``model``."""
        return {r[0] for r in self._db.execute(
            "SELECT sop_instance_uid FROM slices WHERE series_instance_uid=? AND model=?",
            (series_instance_uid, model))}

    def add_scores(self, series_instance_uid: str, model: str, scores: list[SliceScore]) -> None:
        self._db.execute("BEGIN")
        self._db.executemany(
            "INSERT OR REPLACE INTO slices VALUES (?,?,?,?,?,?,?,?)",
            [(series_instance_uid, s.sop_instance_uid, model, s.position_mm, json.dumps(s.probabilities),
              s.received_at, s.complete_at, None if s.features is None else json.dumps(s.features))
             for s in scores])
        self._db.execute("COMMIT")

    def scores(self, series_instance_uid: str, model: str) -> list[SliceScore]:
        """All scored slices of a series for one model, ordered along the slice normal."""
        rows = self._db.execute(
            "SELECT sop_instance_uid, position_mm, probabilities, received_at, complete_at, features FROM slices "
            "WHERE series_instance_uid=? AND model=? ORDER BY position_mm, sop_instance_uid",
            (series_instance_uid, model)).fetchall()
        return [SliceScore(r[0], r[1], json.loads(r[2]), r[3], r[4], None if r[5] is None else json.loads(r[5]))
                for r in rows]

    # -- alerts ----------------------------------------------------------------
    def alert(self, alert_id: str) -> AlertState | None:
        row = self._db.execute("SELECT alert_id, revision, state, probability FROM alerts WHERE alert_id=?",
                               (alert_id,)).fetchone()
        return AlertState(*row) if row else None

    # -- outcomes (edge-agent report) --------------------------------------------
    def save_outcomes(self, outcomes: list[Outcome]) -> None:
        """Record a series' final outcomes (a reopen replaces them), and forget those older than 90 days."""
        self._db.execute("BEGIN")
        for uid in {o.series_instance_uid for o in outcomes}:
            self._db.execute("DELETE FROM outcomes WHERE series_instance_uid=?", (uid,))
        self._db.executemany(
            "INSERT OR REPLACE INTO outcomes VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            [(o.series_instance_uid, o.model, o.finding, o.decided_at, o.status, o.reason, o.mode, o.probability,
              None if o.positive is None else int(o.positive), o.scanner, o.latency_s) for o in outcomes])
        self._db.execute("DELETE FROM outcomes WHERE decided_at < ?", (time.time() - OUTCOME_MEMORY_S,))
        self._db.execute("COMMIT")

    def save_alert(self, series_instance_uid: str, state: AlertState) -> None:
        self._db.execute("INSERT OR REPLACE INTO alerts VALUES (?,?,?,?,?,?)",
                         (state.alert_id, series_instance_uid, state.revision, state.state,
                          state.probability, time.time()))


def read_outcomes(path: Path, since: float) -> list[Outcome]:
    """Outcomes decided at or after ``since`` from a series DB, opened read-only (the agent may be running)."""
    path = Path(path)
    db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT * FROM outcomes WHERE decided_at >= ? ORDER BY decided_at", (since,)).fetchall()
    except sqlite3.OperationalError:  # a state DB from before outcomes were recorded
        rows = []
    finally:
        db.close()
    return [Outcome(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], None if r[8] is None else bool(r[8]), r[9], r[10])
            for r in rows]
