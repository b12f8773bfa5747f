"""The series state DB forgets final series after a week, and only those."""

from __future__ import annotations

import time

from edge_agent.service.state import AlertState, SeriesStore, SliceScore


def test_prune_forgets_only_old_final_series(tmp_path):
    store = SeriesStore(tmp_path / "series.sqlite3")
    for uid in ("1.old", "1.open", "1.recent"):
        store.touch_series(uid, {"series_instance_uid": uid}, time.time())
        store.add_scores(uid, "ich", [SliceScore(f"{uid}.1", 0.0, [0.9], 0.0, 0.0)])
        store.save_alert(uid, AlertState(f"a-{uid}", 1, "final", 0.9))
    store.mark_final("1.old")
    store._db.execute("UPDATE series SET finalised_at = ? WHERE series_instance_uid = '1.old'", (time.time() - 100,))
    store.mark_final("1.recent")
    assert store.prune_final(time.time() - 50) == 1
    assert store.series_info("1.old") is None and store.scores("1.old", "ich") == []
    assert store.alert("a-1.old") is None
    for uid in ("1.open", "1.recent"):
        assert store.series_info(uid) is not None and len(store.scores(uid, "ich")) == 1
        assert store.alert(f"a-{uid}").revision == 1
    assert store.prune_final(time.time() - 50) == 0
    store.close()
