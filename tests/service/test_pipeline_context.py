"""The streaming pipeline with a 2.5-D model (manifest ``preprocessing.context``).

Real DICOM files, the real SeriesPipeline and state DB, a tiny real 2.5-D ONNX model
(edge_agent/testing/models.py). Each expected probability is computed in numpy from the HU
written and the neighbour indices expected (``i ± k``, the end slice itself at the ends), and the
daemon's scores must equal ``infer``'s: in order, shuffled, after a restart. The daemon keeps only
preprocessed planes of a bounded window of slices, never the HU.
"""

from __future__ import annotations

from functools import partial
import logging

import numpy as np
import pytest

from edge_agent.testing.models import CONTEXT_NAME as NAME, expected_neighbours, expected_probabilities, write_context_model  # noqa: E402

from edge_agent.alerts.previews import PreviewSettings  # noqa: E402
from edge_agent.dicom import read_file, read_series  # noqa: E402
from edge_agent.dicom.synth import SeriesHeaders, write_series  # noqa: E402
from edge_agent.inference.models import ModelSet  # noqa: E402
from edge_agent.service.analyse import analyse_series  # noqa: E402
from edge_agent.service.pipeline import SeriesPipeline  # noqa: E402
from edge_agent.service.state import SeriesStore  # noqa: E402
from edge_agent.testing.outputs import PreviewOutputs, RecordingOutputs, ingested_file  # noqa: E402
from edge_agent.testing.wait import wait


def values(n: int, seed: int = 11) -> list[float]:
    return [float(v) for v in np.random.default_rng(seed).integers(-90, 91, n)]


def chest(tmp_path, hu, spacing_mm, name="s"):
    headers = SeriesHeaders(body_part="CHEST", series_description="CHEST", study_description="CT CHEST")
    volume = np.stack([np.full((16, 16), v, np.float32) for v in hu])
    return headers, write_series(volume, tmp_path / name, spacing=(spacing_mm, 1.0, 1.0), headers=headers)


ingested = partial(ingested_file, stored_only=True)  # as the agent's ingest hands them over


@pytest.fixture
def engines(tmp_path):
    write_context_model(tmp_path / "engines" / NAME)
    return tmp_path / "engines"


def make_pipeline(engines, tmp_path, outputs, settle=0.3, **kw):
    p = SeriesPipeline(lambda: ModelSet.load(engines), tmp_path / "series.sqlite3", outputs, site="s", device="d",
                       settle=settle, batch=4, **kw)
    p.start()
    return p


def stored_scores(tmp_path, uid, sops):
    """The daemon's slice scores (state DB) in series order (``sops``)."""
    store = SeriesStore(tmp_path / "series.sqlite3")
    try:
        by_sop = {s.sop_instance_uid: s.probabilities[0] for s in store.scores(uid, NAME)}
    finally:
        store.close()
    assert set(by_sop) == set(sops), "every slice scored"
    return np.array([by_sop[u] for u in sops])


def infer_scores(folder, engines):
    [series] = read_series(folder)
    with ModelSet.load(engines) as models:
        result = analyse_series(series, models, slice_probabilities=True)
    return list(series.sop_instance_uids), np.asarray(result["findings"][0]["slice_probabilities"])


def window(pipeline, uid):
    series = pipeline._open.get(uid)
    return None if series is None else series.context.get(NAME)


@pytest.mark.parametrize("spacing, k, order", [(5.0, 1, "in order"), (5.0, 1, "shuffled"),
                                                (1.25, 4, "in order"), (1.25, 4, "shuffled"),
                                                (2.5, 2, "reversed")])
def test_streaming_scores_equal_infer_in_any_order(engines, tmp_path, spacing, k, order):
    n = 14
    hu = values(n)
    headers, paths = chest(tmp_path, hu, spacing)
    sops, from_infer = infer_scores(tmp_path / "s", engines)
    expected = expected_probabilities(hu, *expected_neighbours(n, k))
    np.testing.assert_allclose(from_infer, expected, rtol=0, atol=2e-6)
    items = [ingested(p) for p in paths]
    if order == "shuffled":
        items = [items[i] for i in np.random.default_rng(int(spacing * 100)).permutation(n)]
    elif order == "reversed":
        items = items[::-1]
    out = RecordingOutputs()
    pipeline = make_pipeline(engines, tmp_path, out, settle=0.5)
    try:
        for item in items:
            pipeline.submit(item)
        wait(lambda: out.results)
        assert out.results[0]["status"] == "analysed" and out.results[0]["slices"] == n
        assert all(s.hu is None and s.stored is None for f in items for s in f.slices), "pixels dropped"
    finally:
        pipeline.stop()
    np.testing.assert_allclose(stored_scores(tmp_path, headers.series_instance_uid, sops), expected, rtol=0,
                               atol=2e-6)
    # the ends repeat the slice itself: the first slice's neighbour below is itself, the last's above too
    alone_below = expected_probabilities(hu, [0] * n, [min(k, n - 1)] * n)[0]
    assert np.isclose(expected[0], alone_below)


def test_end_slices_wait_for_settle_and_the_window_stays_small(engines, tmp_path):
    """40 slices in order (2.5 mm, offset 5 mm): each is scored once the slice 5 mm above it lands; the first
    and last two, which never get a neighbour on one side, at settle; the planes held stay a small window."""
    n = 40
    hu = values(n, seed=2)
    headers, paths = chest(tmp_path, hu, 2.5)
    items = [ingested(p) for p in paths]
    sops = [f.sop_instance_uids[0] for f in items]
    out = RecordingOutputs()
    pipeline = make_pipeline(engines, tmp_path, out, settle=3.0)
    uid = headers.series_instance_uid
    try:
        for item in items:
            pipeline.submit(item)
        wait(lambda: window(pipeline, uid) is not None and pipeline.queue_depth() == 0
             and set(window(pipeline, uid).pending()) == {sops[0], sops[1], sops[-2], sops[-1]})
        w = window(pipeline, uid)
        assert out.results == [], "still before settle"
        # held: the 2 pending at each end and the scored slices within 2 x 5 mm of them (4 each side)
        assert len(w) <= 12, len(w)
        assert w.peak <= 12 + 4, w.peak                  # plus one batch of 4 just landed
        assert all(h.own is None for h in w.held.values() if h.sop_instance_uid not in w.pending())
        wait(lambda: out.done)   # closed: the result, then its DICOM results and record, then series_done
        assert out.results[0]["slices"] == n
        assert window(pipeline, uid) is None, "the series is final: its window is gone"
    finally:
        pipeline.stop()
    expected = expected_probabilities(hu, *expected_neighbours(n, 2))
    np.testing.assert_allclose(stored_scores(tmp_path, uid, sops), expected, rtol=0, atol=2e-6)


def test_preliminary_alert_from_a_slice_scored_with_its_neighbours(engines, tmp_path, caplog):
    """Slice 5 is 0 HU between a bright slice below and a dark one above: only its neighbours make it score
    0.99; the preliminary alert goes out as soon as slice 6 lands, before the series ends, with its preview."""
    write_context_model(engines / NAME, decision={"rule": "max", "threshold": 0.5,
                                                  "preliminary": {"min_slices": 1, "threshold": 0.95}})
    hu = [-90.0] * 12
    hu[4], hu[5] = 90.0, 0.0
    expected = expected_probabilities(hu, *expected_neighbours(12, 1))
    assert expected[5] > 0.99 and np.sort(expected)[-2] < 0.95
    headers, paths = chest(tmp_path, hu, 5.0)
    out = PreviewOutputs()
    caplog.set_level(logging.INFO, "edge_agent.inference")
    pipeline = make_pipeline(engines, tmp_path, out, settle=1.0, previews=PreviewSettings(size=16))
    try:
        for p in paths[:7]:
            pipeline.submit(ingested(p))
        wait(lambda: out.alerts)
        assert out.alerts[0]["state"] == "preliminary" and out.results == []
        key = out.alerts[0]["finding"]["key_slices"][0]
        assert key["sop_instance_uid"] == read_file(paths[5])[0].sop_instance_uid
        assert abs(key["probability"] - round(float(expected[5]), 4)) < 1e-4
        wait(lambda: out.previews)
        assert out.previews[0]["sop_instance_uid"] == key["sop_instance_uid"]
        for p in paths[7:]:
            pipeline.submit(ingested(p))
        wait(lambda: out.results)
        assert out.alerts[-1]["state"] == "final"
    finally:
        pipeline.stop()
    assert not any("needs neighbour slices" in r.getMessage() for r in caplog.records), "ONNX Runtime: no line"


def test_a_restart_before_settle_resumes_with_the_re_emitted_files(engines, tmp_path):
    """Pending slices' planes are not persisted; the ingest re-emits the files of a series not marked done:
    slices scored before come back as neighbours (not scored again), the others are scored as infer would."""
    n = 12
    hu = values(n, seed=4)
    headers, paths = chest(tmp_path, hu, 5.0)
    sops = [read_file(p)[0].sop_instance_uid for p in paths]
    uid = headers.series_instance_uid
    out = RecordingOutputs()
    pipeline = make_pipeline(engines, tmp_path, out, settle=60.0)
    try:
        for p in paths[:8]:
            pipeline.submit(ingested(p))
        wait(lambda: window(pipeline, uid) is not None and pipeline.queue_depth() == 0
             and set(window(pipeline, uid).pending()) == {sops[0], sops[7]})
    finally:
        pipeline.stop()                                   # slices 1..6 scored, 0 and 7 pending: lost
    assert out.results == []
    out2 = RecordingOutputs()
    # read before submitting, and a settle no loaded machine stalls through: the series must not settle
    # between the re-emitted files (CI once saw slice 7 scored without its neighbour)
    items = [ingested(p) for p in paths]
    pipeline = make_pipeline(engines, tmp_path, out2, settle=2.0)
    try:
        for item in items:                                # the resume re-emits every file of the series
            pipeline.submit(item)
        wait(lambda: out2.results)
        assert out2.results[0]["slices"] == n
    finally:
        pipeline.stop()
    expected = expected_probabilities(hu, *expected_neighbours(n, 1))
    np.testing.assert_allclose(stored_scores(tmp_path, uid, sops), expected, rtol=0, atol=2e-6)


def test_late_slices_after_final_see_only_each_other(engines, tmp_path):
    """Reopened after its final decision, the series' planes are gone: late slices 10 and 11 are each other's
    neighbours and the slice itself stands in on the other side (docs/ARCHITECTURE.md)."""
    n = 12
    hu = values(n, seed=6)
    headers, paths = chest(tmp_path, hu, 5.0)
    sops = [read_file(p)[0].sop_instance_uid for p in paths]
    out = RecordingOutputs()
    pipeline = make_pipeline(engines, tmp_path, out, settle=0.3)
    try:
        for p in paths[:10]:
            pipeline.submit(ingested(p))
        wait(lambda: out.results)
        assert out.results[0]["slices"] == 10
        for p in paths[10:]:
            pipeline.submit(ingested(p))
        wait(lambda: len(out.results) == 2)
        assert out.results[1]["slices"] == 12
    finally:
        pipeline.stop()
    below, above = expected_neighbours(10, 1)
    below, above = below + [10, 10], above + [11, 11]
    expected = expected_probabilities(hu, below, above)
    np.testing.assert_allclose(stored_scores(tmp_path, headers.series_instance_uid, sops), expected, rtol=0,
                               atol=2e-6)
