"""The shipped ICH model on real head CT, not phantoms: a normal skull-base slice from pydicom's test files.

Skull-base slices (petrous ridges, sphenoid sinus, orbits) carried the false alarms seen on real scans
outside the project (docs/MODELS.md). pydicom ships one such real slice (``J2K_pixelrep_mismatch.dcm``: an
axial 5 mm head slice through the posterior fossa, JPEG 2000, 0.43 mm pixels) with no acute finding. It was
never used to train, choose or threshold a model; it guards against a model or an evidence rule that would
call real skull-base anatomy blood. Its companion ``693_UNCR.dcm`` (a real supratentorial slice, unlabelled)
is only checked to be recognised as a head (skull found) and scored, not judged.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from pydicom.data import get_testdata_file

from edge_agent.dicom import read_file
from edge_agent.engines import ENGINES_DIR
from edge_agent.inference.models import ModelSet


@pytest.fixture(scope="module")
def ich():
    models = ModelSet.load(None)
    model = next(m for m in models if m.manifest.name == "ich")
    model.ensure_active()
    yield model
    models.close()


def test_a_real_normal_skull_base_slice_is_no_bleed_to_model_or_evidence(ich):
    threshold = json.loads((ENGINES_DIR / "ich" / "manifest.json").read_text())["decision"]["threshold"]
    slices = read_file(get_testdata_file("J2K_pixelrep_mismatch.dcm"))
    probabilities, features = ich.analyse_images(slices)
    p = float(np.asarray(probabilities).ravel()[0])
    assert p < threshold, f"the shipped ICH model calls a real normal skull-base slice blood (p={p:.3f})"
    blood = features[0]["ich"]
    assert blood["area_mm2"] == 0.0 and blood["comps"] == []     # no acute-blood region inside the skull
    assert features[0]["head"]["skull"] is True                  # and it was read as a head, not refused


def test_a_real_supratentorial_slice_is_recognised_as_a_head_and_scored(ich):
    slices = read_file(get_testdata_file("693_UNCR.dcm"))
    probabilities, features = ich.analyse_images(slices)
    p = float(np.asarray(probabilities).ravel()[0])
    assert 0.0 <= p <= 1.0 and features[0]["head"]["skull"] is True
