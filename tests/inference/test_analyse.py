"""analyse_series: route, check, score, decide → the infer JSON object."""

import json
from types import SimpleNamespace

import numpy as np
import pytest

from edge_agent.testing.models import write_model_folder
from edge_agent.inference.models import ModelSet
from edge_agent.service.analyse import DISCLAIMER, analyse_series
from edge_agent.testing.volumes import tiny_model_volume

PHI = ("PHANTOM^HEAD", "PH0001", "19700101")


def make_series(n=8, hot=(3, 4), thickness=5.0, **kw):
    hu = tiny_model_volume(n, hot, size=24)
    base = dict(series_instance_uid="1.2.826.0.1.3680043.2.1", study_instance_uid="1.2.826.0.1.3680043.2.2",
                sop_instance_uids=[f"1.2.826.0.1.3680043.2.3.{i}" for i in range(n)],
                positions=np.arange(n) * thickness, spacing=(thickness, 0.5, 0.5), pixel_spacing=(0.5, 0.5),
                hu=hu, modality="CT", body_part="HEAD", series_description="HEAD 5mm",
                study_description="CT HEAD", slice_thickness=thickness, gantry_tilt=0.0, tilt_corrected=False,
                warnings=[], rejected=[])
    base.update(kw)
    return SimpleNamespace(**base)


@pytest.fixture
def models(engines_dir):
    with ModelSet.load(engines_dir, backend="onnxrt", threads=1) as loaded:
        yield loaded


def test_positive_series_is_analysed_with_key_slices(models):
    result = analyse_series(make_series(), models)
    assert result["status"] == "analysed" and "reason" not in result
    assert result["slices"] == 8
    [finding] = result["findings"]
    assert finding["code"] == "ich" and finding["positive"] is True and finding["probability"] > 0.95
    assert finding["preliminary"] is True
    assert (finding["model"], finding["model_version"], finding["severity"]) == ("tiny_ich", "0.0.1", "critical")
    assert sorted(k["index"] for k in finding["key_slices"][:2]) == [3, 4]
    assert finding["key_slices"][0]["sop_instance_uid"].startswith("1.2.826.0.1.3680043.2.3.")
    [entry] = result["models"]
    assert {k: entry[k] for k in ("name", "version", "backend", "status")} == {
        "name": "tiny_ich", "version": "0.0.1", "backend": "onnxrt", "status": "analysed"}
    assert entry["precision"] == "fp32" and entry["engine_fingerprint"] is None and len(entry["sha256"]) == 64
    assert result["timings_ms"]["inference"] > 0 and result["timings_ms"]["preprocess"] > 0
    assert result["disclaimer"] == DISCLAIMER
    text = json.dumps(result)  # JSON-ready, and no PHI
    assert not any(p in text for p in PHI)


def test_negative_series(models):
    result = analyse_series(make_series(hot=()), models)
    assert result["status"] == "analysed"
    assert result["findings"][0]["positive"] is False and result["findings"][0]["probability"] < 0.05


def test_no_model_applies_is_skipped(models):
    result = analyse_series(make_series(body_part="KNEE", series_description="KNEE", study_description="KNEE"),
                            models)
    assert result["status"] == "skipped" and result["findings"] == [] and result["models"] == []
    assert result["reason"] == "no model applies to this series (modality CT, body part KNEE)"


def test_too_few_slices_are_rejected_and_thick_slices_skipped_with_reason(models):
    """Rejected: the model applies but cannot decide on what arrived; skipped: it was not made for the series
    (an applicability rule, issue 12)."""
    result = analyse_series(make_series(n=3, hot=()), models)
    assert result["status"] == "rejected"
    assert result["reason"] == "3 slices is fewer than the 4 model tiny_ich needs"
    assert result["models"][0]["status"] == "rejected"
    result = analyse_series(make_series(thickness=8.0), models)
    assert result["status"] == "skipped" and "slice thickness 8 mm" in result["reason"]
    assert result["models"][0]["status"] == "skipped"


def test_series_warnings_and_left_out_files_are_carried(models):
    s = make_series(warnings=["gap of 10 mm between slices 3 and 4"], rejected=[object(), object()])
    result = analyse_series(s, models)
    assert result["warnings"] == ["gap of 10 mm between slices 3 and 4", "2 files of this series were left out"]


def test_failing_model_is_a_reason_not_a_crash(tmp_path):
    """A model whose scores are not probabilities (no sigmoid) fails inside the boundary."""
    folder = write_model_folder(tmp_path / "m", weights=(-1000.0,), biases=(0.0,))
    # Replace the sigmoid's input by an unbounded score: a graph that outputs logits.
    import onnx

    model = onnx.load(str(folder / "model.onnx"))
    model.graph.node[-1].op_type = "Identity"
    onnx.save(model, str(folder / "model.onnx"))
    with ModelSet.load(folder, backend="onnxrt", verify=False) as models:
        result = analyse_series(make_series(), models)
    assert result["status"] == "rejected"
    assert result["models"][0]["status"] == "failed"
    assert "model tiny_ich failed: The model produced slice scores outside [0, 1]" in result["reason"]
    assert "disclaimer" not in result


def test_two_findings_from_one_model_in_manifest_order(tmp_path):
    findings = [{"code": "ich", "label": "Bleed", "severity": "critical"},
                {"code": "not_ich", "label": "Inverse", "severity": "info"}]
    folder = write_model_folder(tmp_path / "m", weights=(20.0, -20.0), biases=(-12.5, 12.5), findings=findings,
                                decision={"rule": "max", "threshold": 0.5})
    with ModelSet.load(folder, backend="onnxrt") as models:
        result = analyse_series(make_series(hot=()), models)
    assert [f["code"] for f in result["findings"]] == ["ich", "not_ich"]
    assert [f["positive"] for f in result["findings"]] == [False, True]
    assert result["findings"][1]["severity"] == "info" and result["findings"][0]["preliminary"] is False


def test_route_accepts_a_real_slice(models, tmp_path):
    from edge_agent.dicom import read_file
    from edge_agent.dicom.synth import SeriesHeaders, write_series

    paths = write_series(np.full((2, 16, 16), 30.0, np.float32), tmp_path / "s", (5.0, 0.5, 0.5), SeriesHeaders())
    [first] = read_file(paths[0])
    assert [(m.name, reason) for m, reason in models.route(first)] == [("tiny_ich", None)]
