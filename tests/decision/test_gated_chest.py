"""No lung-nodule alert on cardiac-gated CT, even when the header does not say it is gated.

Real calcium-score CT sent to the lung model alerted (docs/MODELS.md, issue #11). Two independent guards keep
it out, tested here with the shipped models on a gated calcium-score phantom (a 190–220 mm field centred on
the heart) written to disk as DICOM and read back:

- the header: ECG synchronisation, a trigger time or a cardiac description refuses the series
  (``applies_to.cardiac_gating: refuse``);
- the pixels, when an anonymiser or a scanner left none of that in the header: the lungs of a heart-centred
  small field touch its edge, so the ``chest`` domain finds no lung inside the body and calls the series not
  assessable for the lung model.

The control is the same patient's non-gated full-field chest: in the lung model's domain and scored, so the
guards are not a blanket refusal.
"""

from __future__ import annotations

import dataclasses

import pytest

from edge_agent.dicom import read_series
from edge_agent.inference.models import ModelSet
from edge_agent.phantoms import write_phantom
from edge_agent.phantoms.cardiac import cardiac_phantom
from edge_agent.service.analyse import analyse_series

SEED = 4_400_001


@pytest.fixture(scope="module")
def shipped():
    with ModelSet.load(None, threads=1) as models:
        yield models


def _lung(result: dict) -> dict:
    [entry] = [m for m in result["models"] if m["name"] == "lung_nodule"]
    return entry


def _analysed(phantom, folder, models):
    write_phantom(phantom, folder)
    [series] = read_series([folder])
    return analyse_series(series, models)


def _lung_kept_out(result: dict, status: str, words: str) -> None:
    """The lung model did not decide this series (``status``, a reason with ``words``) and nothing is positive."""
    lung = _lung(result)
    assert lung["status"] == status, lung
    assert words in lung["reason"], lung
    assert not [f for f in result.get("findings", []) if f.get("code") == "lung_nodule" and f.get("positive")]


def test_a_gated_calcium_score_ct_is_refused_by_its_header(shipped, tmp_path):
    phantom = cardiac_phantom(SEED, gated=True, thickness_mm=3.0)
    # the body part says CHEST (as many exports do), so the lung model applies until its gating rule refuses
    phantom = dataclasses.replace(phantom, headers=dataclasses.replace(phantom.headers, body_part="CHEST",
                                                                       study_description="CT CHEST"))
    _lung_kept_out(_analysed(phantom, tmp_path / "gated", shipped), "skipped", "ECG-synchronised")


def test_a_gated_ct_whose_header_says_nothing_is_out_of_the_chest_domain(shipped, tmp_path):
    phantom = cardiac_phantom(SEED, gated=True, thickness_mm=3.0)
    extra = {k: v for k, v in phantom.headers.extra.items() if k not in ("CardiacSynchronizationTechnique",
                                                                           "TriggerTime")}
    headers = dataclasses.replace(phantom.headers, study_description="CT CHEST WO CONTRAST",
                                  series_description="CHEST 3mm B35f", body_part="CHEST", extra=extra)
    _lung_kept_out(_analysed(dataclasses.replace(phantom, headers=headers), tmp_path / "anonymous", shipped),
                   "not_assessable", "lung")


def test_the_same_patients_full_field_chest_is_in_the_lung_models_domain(shipped, tmp_path):
    phantom = cardiac_phantom(SEED, gated=False, thickness_mm=3.0)
    result = _analysed(phantom, tmp_path / "chest", shipped)
    lung = _lung(result)
    assert lung["status"] == "analysed", lung
    assert [f for f in result["findings"] if f["code"] == "lung_nodule"], result
