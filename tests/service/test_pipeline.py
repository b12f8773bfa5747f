"""The streaming pipeline in-process: preliminary → final → retracted, reopen across a restart.

Real DICOM files (written by ``edge_agent.dicom.synth``, read back by
``read_file``), a real tiny ONNX model run by ONNX Runtime (see
edge_agent/testing/models.py: a 70 HU slice scores ≈0.99, 53 HU ≈0.70,
30 HU ≈0.007), and a real SQLite series store. Only the outputs are a
recorder, standing in for the outbox, which has its own tests.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from edge_agent.testing.models import write_model_folder  # noqa: E402

from edge_agent.dicom import read_file  # noqa: E402
from edge_agent.dicom.synth import SeriesHeaders, write_series  # noqa: E402
from edge_agent.inference.models import ModelSet  # noqa: E402
from edge_agent.service.pipeline import SeriesPipeline  # noqa: E402
from edge_agent.testing.outputs import RecordingOutputs, ingested_file  # noqa: E402,F401 (also imported from here)
from edge_agent.testing.wait import wait


def series_files(tmp_path, values_hu, *, description="HEAD 5mm", body_part="HEAD", name="s", headers=None):
    volume = np.stack([np.full((16, 16), v, np.float32) for v in values_hu])
    headers = headers or SeriesHeaders(series_description=description, body_part=body_part,
                                       study_description=f"CT {body_part}")
    paths = write_series(volume, tmp_path / name, spacing=(5.0, 1.0, 1.0), headers=headers)
    return headers, paths


ingested = ingested_file


@pytest.fixture
def engines(tmp_path):
    root = tmp_path / "engines"
    write_model_folder(root / "tiny_ich", decision={
        "rule": "top_k_mean", "k": 2, "threshold": 0.9, "preliminary": {"min_slices": 1, "threshold": 0.6}})
    return root


def make_pipeline(engines, tmp_path, outputs, settle=0.3):
    p = SeriesPipeline(lambda: ModelSet.load(engines), tmp_path / "series.sqlite3", outputs, site="s", device="d",
                       settle=settle, batch=4)
    p.start()
    return p


@pytest.mark.parametrize("stored_only", [False, True], ids=["hu", "stored"])
def test_preliminary_before_the_series_ends_then_final(engines, tmp_path, stored_only):
    """Both hand-overs: HU, and stored values + rescale (the agent's ingest; HU made on the pipeline thread)."""
    out = RecordingOutputs()
    pipeline = make_pipeline(engines, tmp_path, out, settle=1.0)
    try:
        headers, paths = series_files(tmp_path, [30, 30, 70, 70, 30, 30, 30, 30])
        items = [ingested(p, stored_only) for p in paths]
        assert all((s.hu is None) == stored_only for f in items for s in f.slices)
        for item in items[:4]:
            pipeline.submit(item)
        wait(lambda: out.alerts)                      # raised while the series is still open
        assert out.alerts[0]["state"] == "preliminary" and out.alerts[0]["revision"] == 1
        assert out.results == []
        for item in items[4:]:
            pipeline.submit(item)
        wait(lambda: out.results)
        assert all(s.hu is None and s.stored is None for f in items for s in f.slices), "pixels dropped"
        final = out.alerts[-1]
        assert final["state"] == "final" and final["revision"] == 2
        assert final["alert_id"] == out.alerts[0]["alert_id"]
        assert final["finding"]["probability"] > 0.98
        result = out.results[0]
        assert result["status"] == "analysed" and result["slices"] == 8
        assert result["findings"][0]["positive"] is True
        top = result["findings"][0]["key_slices"][0]
        assert top["sop_instance_uid"] in {read_file(p)[0].sop_instance_uid for p in paths[2:4]}
        wait(lambda: out.done)                        # marked done just after its result is handed over
        assert out.done == [headers.series_instance_uid]
    finally:
        pipeline.stop()


def test_negative_series_gives_a_result_and_no_alert(engines, tmp_path):
    out = RecordingOutputs()
    pipeline = make_pipeline(engines, tmp_path, out)
    try:
        _, paths = series_files(tmp_path, [30] * 6)
        for p in paths:
            pipeline.submit(ingested(p))
        wait(lambda: out.results)
        assert out.alerts == []
        assert out.results[0]["findings"][0]["positive"] is False
    finally:
        pipeline.stop()


def test_preliminary_retracted_when_the_final_decision_is_negative(engines, tmp_path):
    out = RecordingOutputs()
    pipeline = make_pipeline(engines, tmp_path, out)
    try:
        _, paths = series_files(tmp_path, [30, 53, 30, 30, 30, 30])   # one slice at p≈0.70
        for p in paths:
            pipeline.submit(ingested(p))
        wait(lambda: out.results)
        assert [a["state"] for a in out.alerts] == ["preliminary", "retracted"]
        assert out.alerts[1]["revision"] == 2 and out.alerts[1]["finding"]["positive"] is False
    finally:
        pipeline.stop()


def test_late_slices_reopen_the_series_across_a_restart(engines, tmp_path):
    out = RecordingOutputs()
    headers, paths = series_files(tmp_path, [30, 30, 30, 30, 30, 30, 70, 70])
    pipeline = make_pipeline(engines, tmp_path, out)
    try:
        for p in paths[:6]:
            pipeline.submit(ingested(p))
        wait(lambda: out.results)
        assert out.alerts == [] and out.results[0]["slices"] == 6
    finally:
        pipeline.stop()
    # The agent restarts; the last two slices arrive late and carry the bleed.
    out2 = RecordingOutputs()
    pipeline = make_pipeline(engines, tmp_path, out2)
    try:
        for p in paths[6:]:
            pipeline.submit(ingested(p))
        wait(lambda: out2.results)
        assert out2.results[0]["slices"] == 8                   # decided with the slices scored before the restart
        assert out2.results[0]["findings"][0]["positive"] is True
        assert [a["state"] for a in out2.alerts][-1] == "final"
    finally:
        pipeline.stop()


def test_too_few_slices_rejected_and_chest_skipped(engines, tmp_path):
    out = RecordingOutputs()
    pipeline = make_pipeline(engines, tmp_path, out)
    try:
        _, head = series_files(tmp_path, [70, 70], name="short")
        _, chest = series_files(tmp_path, [30] * 5, name="chest", description="CHEST 1mm", body_part="CHEST")
        for p in head + chest:
            pipeline.submit(ingested(p))
        wait(lambda: len(out.results) == 2)
        by_status = {r["status"]: r for r in out.results}
        # the same rule and words as `edge-agent infer` (ModelSet.check_series)
        assert by_status["rejected"]["reason"] == "2 slices is fewer than the 4 model tiny_ich needs"
        assert "no model applies" in by_status["skipped"]["reason"]
    finally:
        pipeline.stop()


def test_too_little_coverage_rejected_like_infer(engines, tmp_path):
    """Four 1 mm slices span 3 mm + one spacing = 4 mm, under the model's 10 mm."""
    out = RecordingOutputs()
    pipeline = make_pipeline(engines, tmp_path, out)
    try:
        volume = np.full((4, 16, 16), 30.0, np.float32)
        headers = SeriesHeaders(series_description="HEAD 1mm", body_part="HEAD", study_description="CT HEAD")
        for p in write_series(volume, tmp_path / "thin", spacing=(1.0, 1.0, 1.0), headers=headers):
            pipeline.submit(ingested(p))
        wait(lambda: out.results)
        assert out.results[0]["status"] == "rejected"
        assert out.results[0]["reason"] == "the series covers 4 mm, less than the 10 mm model tiny_ich needs"
    finally:
        pipeline.stop()


def test_a_slice_of_another_size_is_left_out_with_a_warning(engines, tmp_path):
    out = RecordingOutputs()
    pipeline = make_pipeline(engines, tmp_path, out)
    try:
        headers, paths = series_files(tmp_path, [30] * 5)
        odd = write_series(np.full((1, 24, 24), 70, np.float32), tmp_path / "odd", spacing=(5.0, 1.0, 1.0),
                           headers=headers, origin=(-128.0, -128.0, 100.0))
        for p in paths + odd:
            pipeline.submit(ingested(p))
        wait(lambda: out.results)
        result = out.results[0]
        assert result["slices"] == 5 and result["status"] == "analysed"
        assert any("24x24" in w for w in result["warnings"])
        assert out.alerts == []
    finally:
        pipeline.stop()


def test_two_models_on_one_series_both_score_every_slice(tmp_path):
    root = tmp_path / "engines"
    for name in ("tiny_a", "tiny_b"):
        write_model_folder(root / name, name=name)
    out = RecordingOutputs()
    pipeline = make_pipeline(root, tmp_path, out)
    try:
        _, paths = series_files(tmp_path, [30, 70, 70, 30, 30])
        for p in paths:
            pipeline.submit(ingested(p))
        wait(lambda: out.results)
        result = out.results[0]
        assert sorted(f["model"] for f in result["findings"]) == ["tiny_a", "tiny_b"]
        assert all(f["positive"] for f in result["findings"])
        assert {a["model"]["name"] for a in out.alerts} == {"tiny_a", "tiny_b"}
    finally:
        pipeline.stop()


def test_shadow_mode_publishes_would_alert_and_raises_nothing_then_report_counts_it(engines, tmp_path):
    """Silent trial: the same bleed that alerts live gives a result marked shadow, and no alert."""
    from edge_agent.service.report import load, summarise

    out = RecordingOutputs()
    pipeline = SeriesPipeline(lambda: ModelSet.load(engines), tmp_path / "series.sqlite3", out, site="s",
                              device="d", settle=0.3, batch=4, mode_for=lambda name: "shadow")
    pipeline.start()
    try:
        _, paths = series_files(tmp_path, [30, 30, 70, 70, 30, 30])
        _, negative = series_files(tmp_path, [30] * 6, name="neg")
        for p in paths + negative:
            pipeline.submit(ingested(p))
        wait(lambda: len(out.results) == 2)
    finally:
        pipeline.stop()
    assert out.alerts == []
    by_positive = {r["findings"][0]["would_alert"]: r for r in out.results}
    assert set(by_positive) == {True, False}
    hot = by_positive[True]["findings"][0]
    assert hot["shadow"] is True and hot["positive"] is True and hot["probability"] > 0.9
    assert by_positive[True]["models"][0]["mode"] == "shadow"
    [row] = summarise(load(tmp_path, 3600, time.time()))
    assert (row["model"], row["mode"], row["series"], row["analysed"], row["would_alert"]) == \
        ("tiny_ich", "shadow", 2, 2, 1)
    assert "alerted" not in row


def test_live_outcomes_are_recorded_for_report_with_statuses(engines, tmp_path):
    from edge_agent.service.report import load, summarise

    out = RecordingOutputs()
    pipeline = make_pipeline(engines, tmp_path, out)
    try:
        _, hot = series_files(tmp_path, [30, 70, 70, 70, 30])
        _, short = series_files(tmp_path, [70, 70], name="short")
        for p in hot + short:
            pipeline.submit(ingested(p))
        wait(lambda: len(out.results) == 2)
    finally:
        pipeline.stop()
    assert [a["state"] for a in out.alerts][-1] == "final"
    [row] = summarise(load(tmp_path, 3600, time.time()))
    assert (row["mode"], row["series"], row["analysed"], row["rejected"], row["alerted"]) == ("live", 2, 1, 1, 1)
    assert row["reasons"] == {"2 slices is fewer than the 4 model tiny_ich needs": 1}
    assert row["latency_s_p50"] is not None and row["latency_s_p50"] >= 0


def test_a_series_the_model_was_not_made_for_is_skipped_with_the_rule_in_the_daemon_too(tmp_path):
    """Applicability in the streaming path: a bone-kernel head is skipped (no slice scored, no alert)."""
    root = tmp_path / "engines"
    write_model_folder(root / "tiny_ich", applies_to={
        "modality": ["CT"], "body_part": ["HEAD"], "min_slices": 4, "min_coverage_mm": 10.0,
        "kernels": {"refuse_kinds": ["bone"]}},
        decision={"rule": "top_k_mean", "k": 2, "threshold": 0.9, "preliminary": {"min_slices": 1, "threshold": 0.6}})
    out = RecordingOutputs()
    pipeline = make_pipeline(root, tmp_path, out)
    try:
        headers = SeriesHeaders(series_description="HEAD 5mm", body_part="HEAD", study_description="CT HEAD",
                                extra={"ConvolutionKernel": "BONE"})
        _, paths = series_files(tmp_path, [70] * 6, headers=headers)
        for p in paths:
            pipeline.submit(ingested(p))
        wait(lambda: out.results)
    finally:
        pipeline.stop()
    [result] = out.results
    assert result["status"] == "skipped" and "BONE" in result["reason"] and result["findings"] == []
    assert result["models"][0]["status"] == "skipped"
    assert out.alerts == []  # 70 HU slices would have alerted had they been scored
