"""The SQLite outbox on its own: durability settings, state machine, never evicting."""

from __future__ import annotations

import sqlite3
import time

from edge_agent.alerts.outbox import Outbox, read_rows, read_stats


def _put(outbox: Outbox, key: str, revision: int = 1, delivery: str = "receipt", now: float | None = None) -> str:
    with outbox.transaction():
        return outbox.put(kind="alert", message_key=key, revision=revision, topic="p/s/d/alerts",
                          payload=f"{key}:{revision}".encode(), delivery=delivery, now=now)


def test_outbox_uses_wal_and_synchronous_full_and_survives_reopen(tmp_path):
    path = tmp_path / "outbox.db"
    outbox = Outbox(path)
    assert outbox._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert outbox._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert _put(outbox, "a") == "inserted"
    # Another connection sees the committed row at once (committed, not just buffered).
    other = sqlite3.connect(path)
    assert other.execute("SELECT message_key, state FROM outbox").fetchall() == [("a", "pending")]
    other.close()
    outbox.close()
    assert [r["message_key"] for r in read_rows(path)] == ["a"]


def test_due_is_oldest_first_and_respects_the_limit(tmp_path):
    outbox = Outbox(tmp_path / "o.db")
    for i in range(5):
        _put(outbox, f"k{i}")
    assert [r.message_key for r in outbox.due(3)] == ["k0", "k1", "k2"]
    outbox.close()


def test_inflight_rows_go_back_to_pending_at_start(tmp_path):
    path = tmp_path / "o.db"
    outbox = Outbox(path)
    _put(outbox, "a")
    row = outbox.due(1)[0]
    with outbox.transaction():
        outbox.mark_inflight(row.seq, time.time())
    outbox.close()  # as if the agent died before PUBACK
    outbox = Outbox(path)
    with outbox.transaction():
        assert outbox.reset_inflight() == 1
    assert [r.message_key for r in outbox.due(10)] == ["a"]
    outbox.close()


def test_a_higher_revision_replaces_and_a_lower_one_changes_nothing(tmp_path):
    outbox = Outbox(tmp_path / "o.db")
    _put(outbox, "a", 1)
    row = outbox.due(1)[0]
    with outbox.transaction():
        outbox.mark_inflight(row.seq, time.time())
    assert _put(outbox, "a", 2) == "updated"
    assert _put(outbox, "a", 2) == "unchanged" and _put(outbox, "a", 1) == "unchanged"
    # The PUBACK of revision 1 must not mark revision 2 delivered.
    with outbox.transaction():
        assert outbox.mark_acked(row.seq, 1, time.time(), None) is False
    due = outbox.due(10)
    assert [(r.message_key, r.revision, r.payload) for r in due] == [("a", 2, b"a:2")]
    outbox.close()


def test_receipt_for_revision_r_confirms_revisions_up_to_r_only(tmp_path):
    outbox = Outbox(tmp_path / "o.db")
    _put(outbox, "a", 2)
    with outbox.transaction():
        assert outbox.confirm("a", 1, time.time()) is False
        assert outbox.confirm("a", 3, time.time()) is True
    assert outbox.counts()["by_state"]["done"] == 1 and outbox.counts()["depth"] == 0
    outbox.close()


def test_rows_are_never_evicted_and_depth_and_age_are_reported(tmp_path):
    path = tmp_path / "o.db"
    outbox = Outbox(path)
    old = time.time() - 120
    for i in range(300):
        _put(outbox, f"k{i}", now=old if i == 0 else None)
    with outbox.transaction():
        outbox.prune_done(time.time() + 10)   # prune only forgets finished rows
    stats = read_stats(path)
    assert stats["depth"] == 300 and stats["by_state"]["pending"] == 300
    assert 119 <= stats["oldest_pending_age_s"] <= 130
    outbox.close()


def test_a_deadline_beyond_the_horizon_is_due_now_after_the_clock_stepped_back(tmp_path):
    """A receipt deadline set before a 2 h backward step of the wall clock must not wait 2 h."""
    outbox = Outbox(tmp_path / "o.db")
    _put(outbox, "a")
    _put(outbox, "b")
    now = time.time()
    a, b = outbox.due(2, now)
    with outbox.transaction():
        for row in (a, b):
            outbox.mark_inflight(row.seq, now)
        outbox.mark_acked(a.seq, a.revision, now, now + 30.0)  # receipt due in 30 s: a normal deadline
        outbox.mark_acked(b.seq, b.revision, now, now + 7230.0)  # set 2 h "in the future" before the step
    horizon = 1.25 * 300 + 5
    assert outbox.due(10, now) == []  # without a horizon both wait
    assert [r.message_key for r in outbox.due(10, now, horizon)] == ["b"]  # the stepped deadline is due now
    assert [r.message_key for r in outbox.due(10, now + 31, horizon)] == ["a", "b"]
    outbox.close()
