"""2.5-D models end to end outside the daemon: manifest ``preprocessing.context``, ``infer``'s scores, calibration.

A tiny real ONNX model (edge_agent/testing/models.py) run by ONNX Runtime on real DICOM files; every expected
probability is computed in numpy from the HU written and the neighbour indices the rule of docs/MANIFEST.md
gives for a regular series (written out per case), not by edge_agent.preprocess.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

from edge_agent.testing.models import CONTEXT_NAME as NAME
from edge_agent.testing.models import (
    context_manifest, context_win as win, expected_neighbours, expected_probabilities, write_context_model,
)

from edge_agent.dicom import read_file, read_series
from edge_agent.dicom.synth import SeriesHeaders, write_series
from edge_agent.inference.manifest import ManifestError, load_manifest, parse_manifest
from edge_agent.inference.models import ModelSet
from edge_agent.inference.quantize import prepare_series
from edge_agent.service.analyse import analyse_series

CHEST = dict(body_part="CHEST", series_description="CHEST", study_description="CT CHEST")


def values(n: int, seed: int = 3) -> list[float]:
    return [float(v) for v in np.random.default_rng(seed).integers(-90, 91, n)]


def chest_series(folder, hu_values, spacing_mm):
    volume = np.stack([np.full((16, 16), v, np.float32) for v in hu_values])
    return write_series(volume, folder, spacing=(spacing_mm, 1.0, 1.0), headers=SeriesHeaders(**CHEST))


# -- the manifest ------------------------------------------------------------------------------------------
def _parse(data, tmp_path):
    return parse_manifest(data, tmp_path, source=tmp_path / "manifest.json", verify=False)


def test_a_context_manifest_loads_with_its_channels(tmp_path):
    m = _parse(context_manifest(), tmp_path)
    assert m.preprocessing.context.offset_mm == 5.0 and m.preprocessing.context.windows == ((0.0, 200.0),)
    assert m.preprocessing.channels == 3
    dynamic = context_manifest()
    dynamic["inputs"][0]["shape"] = [-1, -1, 16, 16]        # a dynamic channel axis is not cross-checked
    assert _parse(dynamic, tmp_path).preprocessing.channels == 3


def _broken(change):
    data = copy.deepcopy(context_manifest())
    change(data)
    return data


@pytest.mark.parametrize("change, words", [
    (lambda d: d["preprocessing"]["context"].update(offset_mm=0),
     "'preprocessing.context.offset_mm' (the distance to each neighbour slice along the normal) must be > 0 mm, "
     "not 0"),
    (lambda d: d["preprocessing"]["context"].update(offset_mm=-2.5), "must be > 0 mm, not -2.5"),
    (lambda d: d["preprocessing"]["context"].update(offset_mm="5"),
     "'preprocessing.context.offset_mm' must be a finite number"),
    (lambda d: d["preprocessing"]["context"].update(slices=3), "'preprocessing.context.slices' is not a known key"),
    (lambda d: d["preprocessing"]["context"].pop("offset_mm"),
     "'preprocessing.context.offset_mm' is required but missing"),
    (lambda d: d["preprocessing"]["context"].update(windows=[]),
     "'preprocessing.context.windows' must be a non-empty list of [centre, width] pairs in HU"),
    (lambda d: d["preprocessing"]["context"].update(windows=[[40, 0]]),
     "'preprocessing.context.windows[0][1]' (the window width) must be > 0"),
    (lambda d: d["preprocessing"].update(context=[5.0]), "'preprocessing.context' must be a JSON object"),
    (lambda d: d["inputs"][0].update(shape=[-1, 1, 16, 16]),
     "'inputs[0].shape[1]' is 1 but preprocessing gives 3 channels (1 window of the slice, then 1 of the "
     "neighbour below and as many of the neighbour above, preprocessing.context)"),
])
def test_manifest_errors_are_one_sentence_naming_the_key(tmp_path, change, words):
    with pytest.raises(ManifestError) as err:
        _parse(_broken(change), tmp_path)
    text = str(err.value)
    assert words in text
    assert text.count(". ") == 0 and text.endswith("(see docs/MANIFEST.md).")  # one sentence
    assert "\n" not in text


def test_a_1_slice_manifest_still_checks_its_channels_as_before(tmp_path):
    data = context_manifest()
    del data["preprocessing"]["context"]
    with pytest.raises(ManifestError, match=r"'inputs\[0\]\.shape\[1\]' is 3 but preprocessing gives 1;"):
        _parse(data, tmp_path)


# -- infer's path -------------------------------------------------------------------------------------------
@pytest.fixture
def engines(tmp_path):
    write_context_model(tmp_path / "engines" / NAME)
    return tmp_path / "engines"


def _infer_scores(folder, engines):
    [series] = read_series(folder)
    with ModelSet.load(engines) as models:
        result = analyse_series(series, models, slice_probabilities=True)
    assert result["status"] == "analysed", result
    return series, np.asarray(result["findings"][0]["slice_probabilities"])


def test_infer_scores_each_slice_with_the_slices_beside_it(tmp_path, engines):
    hu = values(10)
    chest_series(tmp_path / "s5", hu, 5.0)                      # offset 5 mm = one slice each side
    _, scores = _infer_scores(tmp_path / "s5", engines)
    below, above = expected_neighbours(10, 1)
    assert below[:3] == [0, 0, 1] and above[-3:] == [8, 9, 9]  # the ends repeat the slice itself
    np.testing.assert_allclose(scores, expected_probabilities(hu, below, above), rtol=0, atol=2e-6)
    # the neighbours matter: the same slices scored alone (each its own neighbour) differ
    alone = expected_probabilities(hu, list(range(10)), list(range(10)))
    assert np.max(np.abs(scores - alone)) > 0.2


def test_thin_slices_take_the_neighbour_offset_mm_away(tmp_path, engines):
    """1.25 mm slices, offset 5 mm: slice i sees i - 4 and i + 4 (the end slice near the ends)."""
    hu = values(16, seed=7)
    chest_series(tmp_path / "thin", hu, 1.25)
    _, scores = _infer_scores(tmp_path / "thin", engines)
    below, above = expected_neighbours(16, 4)
    assert (below[8], above[8]) == (4, 12) and (below[2], above[13]) == (0, 15)
    np.testing.assert_allclose(scores, expected_probabilities(hu, below, above), rtol=0, atol=2e-6)
    wrong = expected_probabilities(hu, *expected_neighbours(16, 1))   # the next slice is not the neighbour
    assert np.max(np.abs(scores - wrong)) > 0.2


def test_score_images_takes_slices_in_any_order_by_their_position(tmp_path, engines):
    hu = values(10, seed=5)
    paths = chest_series(tmp_path / "any", hu, 5.0)
    order = np.random.default_rng(0).permutation(10)
    slices = [read_file(paths[i], stored_only=True)[0] for i in order]
    with ModelSet.load(engines) as models:
        out = models[NAME].score_images(slices)[:, 0]
    expected = expected_probabilities(hu, *expected_neighbours(10, 1))[order]
    np.testing.assert_allclose(out, expected, rtol=0, atol=2e-6)


def test_calibration_inputs_are_the_models_real_input(tmp_path, engines):
    """INT8 calibration data: own window, then the neighbour below's and above's (by the series' positions)."""
    hu = values(6, seed=9)
    chest_series(tmp_path / "cal", hu, 2.5)
    [series] = read_series(tmp_path / "cal")
    spec = load_manifest(engines / NAME).preprocessing
    [inp] = prepare_series([series], spec)
    assert inp.inputs.shape == (6, 3, 16, 16)
    below, above = expected_neighbours(6, 2)                    # 5 mm at 2.5 mm spacing: two slices away
    means = inp.inputs.mean(axis=(2, 3))
    np.testing.assert_allclose(means[:, 0], [win(v) for v in hu], atol=1e-6)
    np.testing.assert_allclose(means[:, 1], [win(hu[j]) for j in below], atol=1e-6)
    np.testing.assert_allclose(means[:, 2], [win(hu[j]) for j in above], atol=1e-6)
