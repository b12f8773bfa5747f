"""The SQLite ledger on its own: claims, resume, done series, durability settings."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from edge_agent.ingest import ledger as L


def test_claim_outcomes_and_reopen(tmp_path):
    db = tmp_path / "ledger.sqlite3"
    ledger = L.Ledger(db)
    a, b = Path("/w/a.dcm"), Path("/w/b.dcm")
    assert ledger.claim(a, 10, 1, ["1.1"], "9.9", "h1") == L.NEW
    assert ledger.claim(b, 10, 2, ["1.1"], "9.9", "h1") == L.DUPLICATE
    assert ledger.claim(b, 10, 3, ["1.1"], "9.9", "h2") == L.CONFLICT
    assert ledger.claim(a, 10, 4, ["1.1"], "9.9", "h1", resume=True) == L.RESUMED
    ledger.close()

    ledger = L.Ledger(db)  # everything survived the close
    assert ledger.is_known(a, 10, 4) and not ledger.is_known(a, 10, 1)
    assert ledger.resume_paths() == [a]  # b is a duplicate, not a holder
    files = ledger.mark_series_done("9.9")
    assert sorted(p for p, _, _ in files) == [a, b]
    assert ledger.resume_paths() == []
    assert ledger.claim(a, 10, 5, ["1.1"], "9.9", "h1", resume=True) == L.DUPLICATE  # done: no resume
    # A new instance reopens a done series.
    assert ledger.claim(Path("/w/c.dcm"), 1, 1, ["1.2"], "9.9", "h3") == L.NEW
    assert not ledger.series_done("9.9")
    assert ledger.counts()["instances"] == 2
    ledger.close()


def test_overwrite_of_the_accepted_file_keeps_it_the_holder(tmp_path):
    ledger = L.Ledger(tmp_path / "l.sqlite3")
    a = Path("/w/a.dcm")
    ledger.claim(a, 10, 1, ["1.1"], "9.9", "h1")
    assert ledger.claim(a, 10, 2, ["1.1"], "9.9", "h1") == L.DUPLICATE  # resend onto the same name
    assert ledger.resume_paths() == [a]  # still re-emitted after a restart
    ledger.release(a, ["1.1"])
    assert ledger.claim(Path("/w/z.dcm"), 1, 1, ["1.1"], "9.9", "h9") == L.NEW  # released: not seen
    ledger.close()


def test_wal_normal_sync_and_durable_commits(tmp_path):
    ledger = L.Ledger(tmp_path / "l.sqlite3")
    ledger.close()
    db = sqlite3.connect(tmp_path / "l.sqlite3")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"  # persistent setting
    db.close()
    ledger = L.Ledger(tmp_path / "l.sqlite3")
    assert ledger._db.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL

    seen = []
    ledger._db.set_trace_callback(seen.append)
    ledger.mark_series_done("9.9", durable=True)
    ledger.record(Path("/w/a"), 1, 1, L.QUARANTINED, "why", durable=True)
    ledger._db.set_trace_callback(None)
    assert seen.count("PRAGMA synchronous=FULL") == 2  # fsynced before retention deletes anything
    assert ledger._db.execute("PRAGMA synchronous").fetchone()[0] == 1  # and back to NORMAL
    ledger.close()


def test_prune_forgets_only_deleted_files(tmp_path):
    ledger = L.Ledger(tmp_path / "l.sqlite3")
    kept, gone = Path("/w/kept.dcm"), Path("/w/gone.dcm")
    ledger.claim(kept, 1, 1, ["1.1"], "9.1", "h1")
    ledger.claim(gone, 1, 1, ["2.1"], "9.2", "h2")
    ledger.mark_series_done("9.2")
    ledger.record(gone, 1, 1, L.DELETED, None, "9.2")
    assert ledger.prune(before=0.0) == 0  # nothing is old enough
    assert ledger.prune(before=time.time() + 1) == 1
    counts = ledger.counts()
    assert counts["instances"] == 1 and counts.get(L.DELETED, 0) == 0 and counts[L.ACCEPTED] == 1
    assert ledger.claim(Path("/w/again.dcm"), 1, 1, ["2.1"], "9.2", "h2") == L.NEW  # forgotten
    assert ledger.claim(Path("/w/k2.dcm"), 1, 1, ["1.1"], "9.1", "h1") == L.DUPLICATE  # remembered
    ledger.close()
