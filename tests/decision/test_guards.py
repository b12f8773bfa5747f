"""The platform's guards stop a model that cries wolf: a real ONNX model that calls *every* slice positive,
declared with the head domain and ICH evidence checks, run by ``analyse_series`` on phantom DICOM written to
disk and read back (the infer path), and through the daemon's pipeline (the same decider).

The model is a fake on purpose (always p ≈ 1): whatever the result says comes from the guards alone.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from edge_agent.testing.models import write_model_folder  # noqa: E402

from edge_agent.dicom import read_series  # noqa: E402
from edge_agent.inference.models import ModelSet  # noqa: E402
from edge_agent.phantoms import head_phantom, qa_phantom, write_phantom  # noqa: E402
from edge_agent.service.analyse import analyse_series  # noqa: E402

HEAD_APPLIES = {"modality": ["CT"], "body_part": ["HEAD", "BRAIN", "SKULL"],
                "description_keywords": ["HEAD", "BRAIN", "CRAN", "SKULL"], "min_slices": 4,
                "min_coverage_mm": 10.0}


@pytest.fixture(scope="module")
def cry_wolf(tmp_path_factory):
    """Always p = sigmoid(10) ≈ 0.99995, with evidence + domain declared in its manifest."""
    root = tmp_path_factory.mktemp("engines")
    folder = write_model_folder(root / "wolf", name="wolf", weights=(0.0,), biases=(10.0,), applies_to=HEAD_APPLIES,
                                decision={"rule": "top_k_mean", "k": 2, "threshold": 0.5,
                                          "preliminary": {"min_slices": 2, "threshold": 0.8}})
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["evidence"] = {"kind": "ich_blood"}
    manifest["domain"] = {"kind": "head"}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
    with ModelSet.load(root, backend="onnxrt", threads=1) as models:
        yield models


def analysed(phantom, tmp_path, models):
    write_phantom(phantom, tmp_path / "series")
    [series] = read_series([tmp_path / "series"])
    return analyse_series(series, models), series


def test_on_normal_heads_the_evidence_alone_decides_and_vetoes(cry_wolf, tmp_path):
    """The model says bleed on every slice; the finding is positive exactly where the HU show blood.

    The check is not perfect on phantoms (docs/EVIDENCE.md: evidence on about half of normal phantom
    heads), so this asserts the mechanism, and that it vetoes, not a rate.
    """
    vetoed = 0
    for n, seed in enumerate((3_100_001, 3_100_004, 3_100_006)):
        result, _ = analysed(head_phantom(seed, bleed=None, slices=12, thickness_mm=5.0), tmp_path / str(n), cry_wolf)
        assert result["status"] == "analysed"
        [finding] = result["findings"]
        assert finding["probability"] > 0.99  # the model says bleed...
        assert finding["positive"] is finding["evidence"]["present"]  # ...the HU decide
        assert finding["evidence"]["reason"]
        vetoed += not finding["positive"]
    assert vetoed >= 1


def test_a_bleed_is_positive_with_its_evidence_and_key_slice_on_it(cry_wolf, tmp_path):
    phantom = head_phantom(3_100_002, bleed="iph", volume_ml=12.0, slices=12, thickness_mm=5.0)
    result, series = analysed(phantom, tmp_path, cry_wolf)
    [finding] = result["findings"]
    assert finding["positive"] is True and finding["evidence"]["present"] is True
    assert finding["evidence"]["volume_ml"] == pytest.approx(phantom.details["volume_ml"], rel=0.6)
    labelled = {series.sop_instance_uids[i] for i in np.flatnonzero(
        np.isin(np.round(series.positions, 2), np.round(np.sort(phantom.slice_positions)[phantom.slice_labels[
            np.argsort(phantom.slice_positions)]], 2)))}
    assert finding["key_slices"][0]["sop_instance_uid"] in labelled


def test_a_qa_phantom_is_not_assessable(cry_wolf, tmp_path):
    result, _ = analysed(qa_phantom(3_100_003, slices=12, thickness_mm=5.0), tmp_path, cry_wolf)
    assert result["status"] == "not_assessable", result
    assert result["findings"] == [] and result["reason"]
    assert result["models"][0]["status"] == "not_assessable"


def test_the_daemon_raises_no_alert_on_the_normal_head_and_alerts_on_the_bleed(cry_wolf, tmp_path):
    """Same decider in the streaming pipeline: slice features computed as each slice lands."""
    from edge_agent.testing.outputs import RecordingOutputs, ingested_file as ingested
    from edge_agent.testing.wait import wait

    from edge_agent.service.pipeline import SeriesPipeline

    root = Path(cry_wolf.models[0].manifest.folder).parent
    out = RecordingOutputs()
    pipeline = SeriesPipeline(lambda: ModelSet.load(root, backend="onnxrt", threads=1),
                              tmp_path / "series.sqlite3", out, site="s", device="d", settle=0.5, batch=4)
    pipeline.start()
    try:
        normal = write_phantom(head_phantom(3_100_004, bleed=None, slices=10, thickness_mm=5.0), tmp_path / "n")
        for p in normal:
            pipeline.submit(ingested(p))
        wait(lambda: len(out.results) == 1, timeout=60)
        assert out.alerts == [] and out.results[0]["findings"][0]["positive"] is False
        bleed = write_phantom(head_phantom(3_100_005, bleed="sdh", volume_ml=20.0, slices=10, thickness_mm=5.0),
                              tmp_path / "b")
        for p in bleed:
            pipeline.submit(ingested(p))
        wait(lambda: len(out.results) == 2, timeout=60)
    finally:
        pipeline.stop()
    assert out.results[1]["findings"][0]["positive"] is True
    assert {a["state"] for a in out.alerts} <= {"preliminary", "final"} and out.alerts[-1]["state"] == "final"
