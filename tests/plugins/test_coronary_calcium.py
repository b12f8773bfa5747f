"""coronary_calcium: the agatston plug-in through the model mechanism, on phantom DICOM files.

The reference score is computed here, independently of the code under test:
scipy.ndimage.label on the HU read back from the files, keeping the ≥ 130 HU
8-connected in-plane components that the phantom says are coronary plaque
(``plaque_labels``), area ≥ 1 mm², weighted by their peak HU, summed × 3 mm / 3 mm.
Both sides see the same HU, so partial volume affects them alike; the
tolerance (5 % + 1) allows for a plaque section whose ≥ 130 HU component the
localisation cuts differently at the aortic root or a vessel wall (measured on
these seeds: 0.0–0.1).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from edge_agent.decision.series import ScoredSlice, decide_model, final_actions
from edge_agent.dicom import read_file, read_series
from edge_agent.engines import ENGINES_DIR
from edge_agent.inference.manifest import ManifestError, parse_manifest
from edge_agent.inference.models import ModelSet
from edge_agent.ingest import IngestedFile
from edge_agent.phantoms import write_phantom
from edge_agent.phantoms.cardiac import ARTERIES, cardiac_phantom
from edge_agent.plugins.agatston import category, weight
from edge_agent.service.analyse import analyse_series
from edge_agent.service.pipeline import SeriesPipeline
from edge_agent.testing.outputs import RecordingOutputs  # noqa: E402

MODEL = ENGINES_DIR / "coronary_calcium"


def reference_agatston(hu: np.ndarray, labels: np.ndarray, pixel_mm2: float, thickness_mm: float):
    """Total and per-artery Agatston of the components the truth labels touch (independent of the plug-in)."""
    total, per = 0.0, dict.fromkeys(ARTERIES, 0.0)
    for k in range(hu.shape[0]):
        lab, n = ndimage.label(hu[k] >= 130.0, structure=np.ones((3, 3), bool))
        for i in range(1, n + 1):
            comp = lab == i
            arts = labels[k][comp]
            area = comp.sum() * pixel_mm2
            if not (arts > 0).any() or area < 1.0:
                continue
            peak = hu[k][comp].max()
            w = 1 if peak < 200 else 2 if peak < 300 else 3 if peak < 400 else 4
            score = area * w * thickness_mm / 3.0
            total += score
            per[ARTERIES[int(np.bincount(arts[arts > 0]).argmax()) - 1]] += score
    return total, per


@pytest.fixture(scope="module")
def models():
    return ModelSet.load(MODEL)


def written(tmp_path: Path, name: str, **kwargs):
    ph = cardiac_phantom(**kwargs)
    write_phantom(ph, tmp_path / name)
    [series] = read_series([tmp_path / name])
    return ph, series


def cac(result: dict) -> dict:
    [finding] = [f for f in result["findings"] if f["code"] == "coronary_calcium"]
    return finding


@pytest.mark.parametrize("seed,gated", [(1, False), (5, True)], ids=["chest", "gated"])
def test_infer_agrees_with_an_independent_agatston(tmp_path, models, seed, gated):
    ph, series = written(tmp_path, "s", seed=seed, plaques=5, heavy=True, gated=gated)
    total, per = reference_agatston(series.hu, ph.plaque_labels, series.spacing[1] * series.spacing[2],
                                    series.spacing[0])
    assert total > 100.0  # the phantom's plaques are there and dense
    result = analyse_series(series, models)
    json.dumps(result)  # JSON-ready
    assert result["status"] == "analysed"
    f = cac(result)
    assert f["agatston"] == pytest.approx(total, rel=0.05, abs=1.0)
    assert f["category"] == category(f["agatston"]) and f["positive"] is True and f["probability"] == 1.0
    assert f["severity"] == "significant" and f["alert_at"] == ">=400"
    assert f["alert"] is (f["agatston"] >= 400.0)
    assert f["lesions"] >= 1 and f["key_slices"] and f["key_slices"][0]["sop_instance_uid"] in series.sop_instance_uids
    arteries = f["per_artery"]
    assert arteries is not None and set(arteries) == set(ARTERIES)
    assert sum(arteries.values()) == pytest.approx(f["agatston"], abs=0.5)
    # RCA vs the left system: the LM/LAD/LCX split near the bifurcation is positional (docs/MODELS.md)
    assert arteries["RCA"] == pytest.approx(per["RCA"], rel=0.05, abs=1.0)
    assert arteries["LM"] + arteries["LAD"] + arteries["LCX"] == pytest.approx(
        per["LM"] + per["LAD"] + per["LCX"], rel=0.05, abs=1.0)
    assert result["disclaimer"]


def test_confounders_only_score_zero_and_raise_no_alert(tmp_path, models):
    ph, series = written(tmp_path, "c", seed=4, plaques=0)
    assert not ph.plaque_labels.any()
    raw, _ = reference_agatston(series.hu, ph.confounder_labels, series.spacing[1] * series.spacing[2],
                                series.spacing[0])
    assert raw > 100.0, "valve, annulus, aortic wall and cartilage calcium would count if not localised out"
    f = cac(analyse_series(series, models))
    assert f["agatston"] == 0.0 and f["category"] == "0" and f["positive"] is False and f["alert"] is False
    assert f["excluded"]["aortic_root_or_valve"] + f["excluded"]["not_in_epicardial_fat"] > 0


def test_contrast_enhanced_series_is_refused(tmp_path, models):
    _, series = written(tmp_path, "k", seed=7, plaques=2, gated=True, contrast=True)
    result = analyse_series(series, models)
    assert result["status"] == "skipped"
    assert "contrast" in result["reason"].lower()
    assert result["findings"] == []


def test_category_thresholds_and_weights():
    assert [category(v) for v in (0, 0.4, 1, 99.9, 100, 399.9, 400, 2500)] == \
        ["0", "1-99", "1-99", "1-99", "100-399", "100-399", ">=400", ">=400"]
    assert [weight(v) for v in (130, 199.9, 200, 299, 300, 399.9, 400, 1200)] == [1, 1, 2, 2, 3, 3, 4, 4]


def manifest_data(**plugin) -> dict:
    data = json.loads((MODEL / "manifest.json").read_text())
    data["plugin"].update(plugin)
    return data


def test_plugin_manifest_is_validated_with_one_sentence():
    with pytest.raises(ManifestError, match=r"'preprocessing' is not used by a plug-in model"):
        parse_manifest({**manifest_data(), "preprocessing": {}}, MODEL)
    with pytest.raises(ManifestError, match=r"'plugin.name' names no known plug-in"):
        parse_manifest(manifest_data(name="nope"), MODEL)
    with pytest.raises(ManifestError, match=r"'plugin.alert_at' must be one of 0, 1-99, 100-399, >=400"):
        parse_manifest(manifest_data(alert_at="severe"), MODEL)
    with pytest.raises(ManifestError, match=r"'plugin.threshold' is not a known key"):
        parse_manifest(manifest_data(threshold=130), MODEL)


def _features(lesions):
    """Features of a synthetic series: a heart on 10 slices, the root found above it, these lesions."""
    out = []
    for k in range(14):
        f = {"thorax": True, "zp": 3.0 * k - 30.0, "mid_x": 0.0, "spine": [0.0, 55.0], "heart_mm2": 6000.0 if k < 10
             else 500.0, "circles": [[-2.0, -15.0, 14.0]] if k >= 10 else [], "lesions": [], "excluded": {}}
        out.append(f)
    for k, les in lesions:
        out[k]["lesions"].append(les)
    return out


def test_the_decider_alerts_from_the_configured_category():
    """100-399 is positive but does not alert at the default >=400; with alert_at 100-399 it does."""
    lesions = [(4, [40.0, -40.0, 20.0, 450.0, 0.6]), (5, [40.0, -40.0, 20.0, 450.0, 0.6])]  # 2 × 80 = 160
    scored = [ScoredSlice(f"1.2.{k}", 3.0 * k - 30.0, (1.0 if f["lesions"] else 0.0,), features=f)
              for k, f in enumerate(_features(lesions))]
    default = parse_manifest(manifest_data(), MODEL)
    outcome = decide_model(default, scored)
    [f] = outcome.findings
    assert f["agatston"] == 160.0 and f["category"] == "100-399" and f["positive"] is True
    assert f["alert"] is False and f["per_artery"]["LAD"] == 160.0
    assert final_actions(outcome, scored, lambda m, c: "aid", lambda aid: None) == []
    lower = parse_manifest(manifest_data(alert_at="100-399"), MODEL)
    outcome = decide_model(lower, scored)
    assert outcome.findings[0]["alert"] is True
    [action] = final_actions(outcome, scored, lambda m, c: "aid", lambda aid: None)
    assert action.state == "final" and action.key_slices[0]["sop_instance_uid"] in ("1.2.4", "1.2.5")


def test_the_pipeline_streams_the_same_score_as_infer_and_alerts_at_400(tmp_path, models):
    ph, series = written(tmp_path, "p", seed=1, plaques=5, heavy=True)
    offline = cac(analyse_series(series, models))
    assert offline["category"] == ">=400"
    out = RecordingOutputs()
    pipeline = SeriesPipeline(lambda: ModelSet.load(MODEL), tmp_path / "series.sqlite3", out, site="s",
                              device="d", settle=5.0, batch=8)
    pipeline.start()
    try:
        paths = sorted((tmp_path / "p").iterdir())
        for path in paths:
            slices = read_file(path)
            now = time.time()
            pipeline.submit(IngestedFile(path=path, slices=slices, sop_instance_uids=[s.sop_instance_uid for s in slices],
                                         series_instance_uid=slices[0].series_instance_uid, received_at=now,
                                         complete_at=now))
        deadline = time.monotonic() + 120
        def done():
            return any(r["slices"] == len(paths) for r in out.results)
        while not done() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        pipeline.stop()
    result = out.results[-1]  # the decision over every slice (a slow submit may settle a part first)
    assert result["slices"] == len(paths) and result["status"] == "analysed"
    live = cac(result)
    for key in ("agatston", "category", "per_artery", "lesions", "positive", "alert"):
        assert live[key] == offline[key], key
    assert [k["sop_instance_uid"] for k in live["key_slices"]] == [k["sop_instance_uid"] for k in offline["key_slices"]]
    alert = out.alerts[-1]
    assert alert["state"] == "final" and alert["finding"]["code"] == "coronary_calcium"
    assert alert["finding"]["severity"] == "significant"


def test_a_site_sets_the_alerting_category_in_its_config(tmp_path):
    """``[models.coronary_calcium] alert_at`` in the site config reaches the decider; typos are one sentence."""
    from edge_agent.config import load_config
    from edge_agent.errors import EdgeAgentError

    ph, series = written(tmp_path, "s", seed=1, plaques=5, heavy=True)
    site = tmp_path / "site.toml"
    site.write_text('[models.coronary_calcium]\nalert_at = "1-99"\n')
    cfg = load_config(site)
    assert cfg.alert_at_overrides() == {"coronary_calcium": "1-99"}
    lowered = ModelSet.load(MODEL, alert_at=cfg.alert_at_overrides())
    f = cac(analyse_series(series, lowered))
    assert f["positive"] is True and f["alert_at"] == "1-99" and f["alert"] is True  # any calcium alerts now
    default = cac(analyse_series(series, ModelSet.load(MODEL)))
    assert default["agatston"] == f["agatston"] and default["alert"] is (default["agatston"] >= 400.0)
    with pytest.raises(EdgeAgentError, match=r"alert_at.*one of 0, 1-99, 100-399, >=400"):
        ModelSet.load(MODEL, alert_at={"coronary_calcium": "severe"})
    with pytest.raises(EdgeAgentError, match=r"ich is a network model"):
        ModelSet.load(ENGINES_DIR, alert_at={"ich": ">=400"})
