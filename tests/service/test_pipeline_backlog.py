"""A series is decided once it is quiet *and* its slices are in, however far the pipeline lags behind.

"Quiet for ``settle`` seconds" is about the scanner: when scoring or decoding lags behind a burst (a loaded
Jetson, a thousand-slice thin series), files written long ago still wait in the pipeline's queue or in the
ingest. Decided before they are in, a series gets a result from part of its slices, then reopens (a second
result, a KOS rejection, perhaps a retracted preliminary). Real DICOM files, the real ingest on a real folder,
the tiny real ONNX model; the lag is made by slowing the model or the decoder (fault injection).
"""

from __future__ import annotations

import contextlib
import logging
import time

import numpy as np

from edge_agent.dicom.synth import SeriesHeaders, write_series
from edge_agent.inference.models import ModelSet
from edge_agent.ingest import Ingest, IngestSettings
from edge_agent.ingest.decode import Decoder
from edge_agent.service.pipeline import SeriesPipeline
from edge_agent.testing.outputs import RecordingOutputs, ingested_file
from edge_agent.testing.wait import wait
from test_pipeline import engines  # noqa: F401 (the tiny ICH model folder, a fixture)

SETTLE = 0.4


def slow_decoder(monkeypatch, seconds=0.5):
    """Fault injection: a decoder that takes ``seconds`` a file (a compressed burst on a busy Jetson)."""
    real_read = Decoder.read

    def read(self, path):
        time.sleep(seconds)
        return real_read(self, path)

    monkeypatch.setattr(Decoder, "read", read)


@contextlib.contextmanager
def slow_ingest(engines, tmp_path, monkeypatch, out, *, tell_pipeline: bool):
    """The real ingest (one worker, a slow decoder) feeding a pipeline; yields (watch folder, ingest)."""
    slow_decoder(monkeypatch)
    watch, state = tmp_path / "watch", tmp_path / "state"
    watch.mkdir()
    ingest = Ingest(IngestSettings(watch_dir=watch, state_dir=state, stable_seconds=0.1, retry_timeout=5.0,
                                   poll_interval=0.1, workers=1, decode_processes=False),
                    on_file=lambda item: pipeline.submit(item))
    pipeline = pipeline_for(engines, tmp_path, out, **({"backlog": ingest.oldest_pending} if tell_pipeline else {}))
    ingest.start()
    try:
        yield watch, ingest
    finally:
        ingest.stop()
        pipeline.stop()


def write_head(folder, values_hu):
    volume = np.stack([np.full((16, 16), v, np.float32) for v in values_hu])
    headers = SeriesHeaders(series_description="HEAD 5mm", body_part="HEAD", study_description="CT HEAD")
    return headers, write_series(volume, folder, spacing=(5.0, 1.0, 1.0), headers=headers)


def pipeline_for(engines, tmp_path, out, **kw):
    p = SeriesPipeline(lambda: ModelSet.load(engines), tmp_path / "series.sqlite3", out, site="s", device="d",
                       settle=SETTLE, batch=4, **kw)
    p.start()
    return p


def settled(out, seconds=4 * SETTLE):
    """Wait for a first result, then long enough for any premature decision's reopening to show."""
    wait(lambda: out.results, timeout=60)
    time.sleep(seconds)
    return out.results


def test_a_series_is_not_decided_while_its_files_wait_in_the_pipeline_queue(engines, tmp_path, monkeypatch):
    """Scoring a batch takes longer than the settle: the other files of the burst are still queued."""
    slow_score = SeriesPipeline._score

    def score(self, *args):  # fault injection: a model that takes 0.5 s a batch
        time.sleep(0.5)
        return slow_score(self, *args)

    monkeypatch.setattr(SeriesPipeline, "_score", score)
    out = RecordingOutputs()
    _, paths = write_head(tmp_path / "s", [30, 30, 30, 30, 30, 30, 30, 30, 70, 70, 30, 30])
    items = [ingested_file(p) for p in paths]
    pipeline = pipeline_for(engines, tmp_path, out)
    try:
        for item in items:            # the burst: all twelve queued before the first batch is scored
            pipeline.submit(item)
        results = settled(out)
        assert [r["slices"] for r in results] == [12]
        assert results[0]["findings"][0]["positive"] is True      # the bleed was in the last batches
        assert [a["state"] for a in out.alerts] == ["preliminary", "final"]
    finally:
        pipeline.stop()


def test_a_series_waits_for_its_files_still_in_the_ingest(engines, tmp_path, monkeypatch):
    """Decoding lags (one worker, 0.5 s a file, settle 0.4 s): the real ingest holds the rest of the series."""
    out = RecordingOutputs()
    with slow_ingest(engines, tmp_path, monkeypatch, out, tell_pipeline=True) as (watch, ingest):
        headers, paths = write_head(watch / "s", [30, 30, 30, 30, 70, 70, 30, 30])
        results = settled(out)
        assert [r["slices"] for r in results] == [8]
        assert results[0]["findings"][0]["positive"] is True
        assert out.done == [headers.series_instance_uid]
        assert ingest.oldest_pending() is None                    # nothing left on its way


def test_without_the_backlog_the_same_lag_decides_early(engines, tmp_path, monkeypatch):
    """The control for the test above: the same slow decoder, the pipeline not told of the ingest backlog."""
    out = RecordingOutputs()
    with slow_ingest(engines, tmp_path, monkeypatch, out, tell_pipeline=False) as (watch, _):
        write_head(watch / "s", [30, 30, 30, 30, 70, 70, 30, 30])
        wait(lambda: out.results and out.results[-1]["slices"] == 8, timeout=60)
        assert len(out.results) > 1                                # decided from part of it, then reopened


def test_a_file_stuck_in_the_ingest_holds_a_decision_only_so_long(engines, tmp_path, caplog):
    """A file that never finishes (a stuck decode) must not hold every series: decided after backlog_wait."""
    stuck_since = time.monotonic()
    out = RecordingOutputs()
    _, paths = write_head(tmp_path / "s", [30] * 6)
    pipeline = pipeline_for(engines, tmp_path, out, backlog=lambda: stuck_since, backlog_wait=1.5)
    try:
        with caplog.at_level(logging.WARNING, logger="edge_agent.service.pipeline"):
            t0 = time.monotonic()
            for p in paths:
                pipeline.submit(ingested_file(p))
            wait(lambda: out.results, timeout=30)
            waited = time.monotonic() - t0
        assert [r["slices"] for r in out.results] == [6]
        assert waited >= 1.5                                      # it did wait for the stuck file ...
        assert any("still holds files written" in r.getMessage() for r in caplog.records)   # ... and says why
    finally:
        pipeline.stop()


def test_a_file_written_after_the_series_went_quiet_does_not_hold_it(engines, tmp_path):
    """Only files older than the quiet moment can be the series' slices; a newer backlog does not wait."""
    out = RecordingOutputs()
    _, paths = write_head(tmp_path / "s", [30] * 6)
    pipeline = pipeline_for(engines, tmp_path, out, backlog=lambda: time.monotonic(), backlog_wait=3600)
    try:
        for p in paths:
            pipeline.submit(ingested_file(p))
        wait(lambda: out.results, timeout=10)   # a wait of backlog_wait (an hour) would time out here
        assert [r["slices"] for r in out.results] == [6]
    finally:
        pipeline.stop()


def test_the_agent_holds_a_quiet_series_for_the_files_its_ingest_still_reads(tmp_path, monkeypatch):
    """The wiring in the agent itself: its shipped models, its ingest, a slow decoder; one result, whole."""
    from edge_agent.service.app import Agent
    from edge_agent.service.demo import demo_config

    slow_decoder(monkeypatch)
    cfg = demo_config(tmp_path, settle=SETTLE)
    cfg.ingest.workers = 1
    (tmp_path / "incoming").mkdir()
    agent = Agent(cfg)
    results: list[dict] = []
    agent.result_listeners.append(results.append)
    agent.start()
    try:
        _, paths = write_head(tmp_path / "incoming" / "s", [30] * 10)
        wait(lambda: results, timeout=60)
        time.sleep(4 * SETTLE)
        assert [r["slices"] for r in results] == [10]
    finally:
        agent.stop()
