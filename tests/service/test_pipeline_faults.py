"""The pipeline thread under fire: a payload that cannot be built, a full state disk (a real tmpfs).

Issue 16: one file without a Study Instance UID used to kill the pipeline thread (its result failed
schema validation, and so did the error result built for it); a full state disk killed it too.
"""

from __future__ import annotations

import os
import time

import pytest

from edge_agent.alerts.payloads import PayloadError
from edge_agent.testing.disk import fill, mount_small_disk, unmount
from test_pipeline import RecordingOutputs, engines, ingested, make_pipeline, series_files, wait  # noqa: F401


class FailingFirstResult(RecordingOutputs):
    """The outbox refuses the first series' result, and the error result built for it (as it did)."""

    def __init__(self, bad_series):
        super().__init__()
        self.bad_series = bad_series

    def publish_result(self, payload):
        if payload["series_instance_uid"] == self.bad_series:
            raise PayloadError("The result payload is invalid at study/study_instance_uid: '' should be non-empty")
        super().publish_result(payload)


def test_a_series_whose_result_cannot_be_built_does_not_stop_the_next_alert(engines, tmp_path):
    bad_headers, bad = series_files(tmp_path, [30] * 6, name="bad")
    out = FailingFirstResult(bad_headers.series_instance_uid)
    pipeline = make_pipeline(engines, tmp_path, out)
    try:
        for p in bad:
            pipeline.submit(ingested(p))
        wait(lambda: bad_headers.series_instance_uid in out.done)
        _, hot = series_files(tmp_path, [30, 70, 70, 70, 30], name="hot")
        for p in hot:
            pipeline.submit(ingested(p))
        wait(lambda: out.results)
        assert pipeline._thread.is_alive()
        assert out.results[0]["status"] == "analysed" and out.results[0]["findings"][0]["positive"] is True
        assert [a["state"] for a in out.alerts][-1] == "final"
        assert ("series", "rejected") in out.counts  # the unpublishable series is still counted
    finally:
        pipeline.stop()


@pytest.fixture
def small_disk(tmp_path):
    """A real 4 MiB tmpfs for the state DB."""
    mount = mount_small_disk(tmp_path / "state")
    yield mount
    unmount(mount)


def test_a_full_state_disk_pauses_the_pipeline_and_it_resumes_by_itself(engines, tmp_path, small_disk):
    out = RecordingOutputs()
    from edge_agent.inference.models import ModelSet
    from edge_agent.service.pipeline import SeriesPipeline

    pipeline = SeriesPipeline(lambda: ModelSet.load(engines), small_disk / "series.sqlite3", out, site="s",
                              device="d", settle=0.3, batch=4)
    pipeline.start()
    try:
        filler = fill(small_disk)
        _, hot = series_files(tmp_path, [30, 70, 70, 70, 30, 30], name="hot")
        for p in hot:
            pipeline.submit(ingested(p))
        time.sleep(1.5)  # the disk is full: nothing can be recorded, so nothing may be decided yet
        assert out.results == [] and pipeline._thread.is_alive()
        os.unlink(filler)  # space returns
        wait(lambda: out.results, timeout=30)
        result = out.results[0]
        assert result["status"] == "analysed" and result["slices"] == 6  # every slice, each counted once
        assert result["findings"][0]["positive"] is True
        assert [a["state"] for a in out.alerts][-1] == "final"
    finally:
        pipeline.stop()


# The pipeline thread is made to die of an uncaught SystemExit: that is the point, not a leak.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_the_agent_notices_a_supervised_thread_that_died(tmp_path):
    """A thread that ends while the agent runs makes it unhealthy (systemd's watchdog starves) and named."""
    from edge_agent.service.app import Agent
    from edge_agent.service.demo import demo_config

    (tmp_path / "incoming").mkdir()
    agent = Agent(demo_config(tmp_path, settle=1.0))
    agent.start()
    try:
        assert agent.dead_threads() == [] and agent.healthy()

        def die():
            raise SystemExit("simulated fatal error")

        agent.pipeline._step = die  # SystemExit passes the per-step boundary, as it must
        wait(lambda: agent.dead_threads(), timeout=10)
        assert agent.dead_threads() == ["pipeline (pipeline)"]
        assert not agent.healthy()
    finally:
        agent.stop()
    assert agent.dead_threads() == []  # stopping is not dying
