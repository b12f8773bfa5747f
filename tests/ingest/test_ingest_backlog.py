"""``Ingest.oldest_pending``: what the pipeline waits for before it decides a quiet series.

Every file the ingest has seen and not yet handed over counts, from its last change — waiting to be stable,
decoding, decoded and waiting to be judged, resumed after a restart — and nothing else: not a file that
failed to read and is being retried, not a file already handed over.
"""

from __future__ import annotations

import threading
import time

from ingest_helpers import Collector, settle
from edge_agent.dicom.synth import SeriesHeaders
from edge_agent.testing.volumes import dicom_bytes


class BlockingCollector(Collector):
    """A pipeline that takes its first file only when told to (a full pipeline queue: on_file blocks)."""

    def __init__(self) -> None:
        super().__init__()
        self.entered, self.release = threading.Event(), threading.Event()

    def on_file(self, item) -> None:
        self.entered.set()
        assert self.release.wait(20)
        super().on_file(item)


def test_files_count_until_they_are_handed_over(make_ingest, dirs, tmp_path):
    watch, _ = dirs
    collector = BlockingCollector()
    ing = make_ingest(collector)
    assert ing.oldest_pending() is None                       # nothing seen yet
    before = time.monotonic()
    for k, data in enumerate(dicom_bytes(3, tmp=tmp_path)):
        (watch / f"s{k}.dcm").write_bytes(data)
    assert collector.entered.wait(10)                         # the first file is being handed over
    oldest = ing.oldest_pending()
    assert oldest is not None and before <= oldest <= time.monotonic()
    collector.release.set()
    assert collector.wait(files=3)
    settle(ing)
    assert ing.oldest_pending() is None


def test_resumed_files_count_from_the_start_until_handed_over(make_ingest, dirs, tmp_path):
    watch, _ = dirs
    open_series = SeriesHeaders()
    for k, data in enumerate(dicom_bytes(2, headers=open_series, tmp=tmp_path)):
        (watch / f"b{k}.dcm").write_bytes(data)
    first = Collector()
    ing = make_ingest(first)
    assert first.wait(files=2)
    settle(ing)
    ing.stop()                                                # the series was never marked done: resumed

    second = BlockingCollector()
    before = time.monotonic()
    ing = make_ingest(second)
    assert second.entered.wait(10)
    oldest = ing.oldest_pending()
    assert oldest is not None and before <= oldest <= time.monotonic()
    second.release.set()
    assert second.wait(files=2)
    assert all(f.resumed for f in second.files)
    settle(ing)
    assert ing.oldest_pending() is None


def test_a_file_being_retried_does_not_count(make_ingest, dirs, tmp_path):
    """A truncated file is retried for retry_timeout; it may never become an image, so nothing waits on it."""
    watch, _ = dirs
    collector = Collector()
    ing = make_ingest(collector, retry_timeout=30.0)
    data = dicom_bytes(1, tmp=tmp_path)[0]
    (watch / "cut.dcm").write_bytes(data[: len(data) // 2])   # pixel data cut short: 'bad', retried
    deadline = time.monotonic() + 10
    while ing.stats()["retries"] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ing.stats()["retries"] >= 1 and ing.stats()["pending"] == 1
    assert ing.oldest_pending() is None
