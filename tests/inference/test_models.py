"""ModelSet: loading an engines folder, routing series, scoring slices in batches."""

from types import SimpleNamespace

import numpy as np
import pytest

from edge_agent.testing.models import tiny_reference, write_model_folder
from edge_agent.inference.manifest import ManifestError
from edge_agent.inference.models import ModelSet, coverage_mm
from edge_agent.preprocess import prepare_slices


def info(**kw):
    base = dict(modality="CT", body_part="HEAD", series_description="HEAD 5mm STND",
                study_description="CT HEAD WO CONTRAST", slice_thickness=5.0, gantry_tilt=0.0,
                tilt_corrected=False)
    base.update(kw)
    return SimpleNamespace(**base)


def series(n=8, spacing_z=5.0, **kw):
    s = info(**kw)
    s.sop_instance_uids = [f"1.2.826.0.1.{i}" for i in range(n)]
    s.positions = np.arange(n, dtype=np.float64) * spacing_z
    s.spacing = (spacing_z, 0.5, 0.5)
    return s


def test_load_engines_folder_and_single_model_folder(engines_dir):
    models = ModelSet.load(engines_dir, backend="onnxrt", threads=1)
    assert [m.name for m in models] == ["tiny_ich", "tiny_lung"]
    assert not any(m.runner.is_active for m in models)  # lazy
    assert [m.name for m in ModelSet.load(engines_dir / "tiny_lung")] == ["tiny_lung"]
    assert [m.name for m in ModelSet.load(engines_dir, names=["tiny_lung"])] == ["tiny_lung"]
    with pytest.raises(ManifestError, match="No model named 'brain'"):
        ModelSet.load(engines_dir, names=["brain"])


def test_bad_engines_folders_are_sentences(tmp_path):
    with pytest.raises(ManifestError, match="does not exist; pass --engines"):
        ModelSet.load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ManifestError, match="No model manifests found"):
        ModelSet.load(tmp_path / "empty")
    write_model_folder(tmp_path / "dup" / "a")
    write_model_folder(tmp_path / "dup" / "b")
    with pytest.raises(ManifestError, match="Two models .* are named 'tiny_ich'"):
        ModelSet.load(tmp_path / "dup")


@pytest.mark.parametrize("kw, expected", [
    ({}, ["tiny_ich"]),
    ({"body_part": "", "series_description": "AX BRAIN 5MM", "study_description": ""}, ["tiny_ich"]),
    ({"body_part": "chest", "series_description": "THORAX 1mm", "study_description": "CT CHEST"}, ["tiny_lung"]),
    ({"series_description": "CTA HEAD NECK"}, []),          # excluded keyword
    ({"modality": "MR"}, []),
    ({"body_part": "PELVIS", "series_description": "ABD", "study_description": "CT ABDOMEN"}, []),
])
def test_route_by_modality_body_part_and_descriptions(engines_dir, kw, expected):
    models = ModelSet.load(engines_dir)
    routes = models.route(info(**kw))
    assert [m.name for m, _ in routes] == expected
    assert all(reason is None for _, reason in routes)


def test_route_rejects_thickness_and_uncorrected_tilt(engines_dir):
    models = ModelSet.load(engines_dir)
    [(model, reason)] = models.route(info(slice_thickness=10.0))
    assert reason == "slice thickness 10 mm is outside the 0.5–6 mm model tiny_ich accepts"
    [(_, reason)] = models.route(info(gantry_tilt=-35.0))
    assert "gantry tilt 35° is beyond the 30°" in reason
    [(_, reason)] = models.route(info(gantry_tilt=-35.0, tilt_corrected=True))
    assert reason is None


def test_check_series_min_slices_and_coverage(engines_dir):
    models = ModelSet.load(engines_dir)
    model = models["tiny_ich"]
    assert models.check_series(model, series(8)) is None
    assert models.check_series(model, series(3)) == "3 slices is fewer than the 4 model tiny_ich needs"
    thin = series(5, spacing_z=1.0, slice_thickness=1.0)
    assert coverage_mm(thin) == pytest.approx(5.0)
    assert models.check_series(model, thin) == "the series covers 5 mm, less than the 10 mm model tiny_ich needs"
    assert models.check_series(model, series(8, slice_thickness=7.0)).startswith("slice thickness 7 mm")


def test_score_slices_batches_and_matches_reference(engines_dir):
    models = ModelSet.load(engines_dir, backend="onnxrt", threads=1, batch_size=3)
    model = models["tiny_ich"]
    hu = np.full((7, 32, 32), 30.0, np.float32)
    hu[2:4] = 70.0
    timings = {}
    probs = model.score_slices(hu, (0.5, 0.5), timings)
    assert model.runner.is_active
    assert probs.shape == (7, 1) and probs.dtype == np.float32
    expected = tiny_reference(prepare_slices(hu, (0.5, 0.5), model.manifest.preprocessing))
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    assert probs[2, 0] > 0.95 and probs[0, 0] < 0.05
    assert timings["preprocess"] > 0 and timings["inference"] > 0
    models.close()
    assert not model.runner.is_active


def test_score_images_takes_stored_or_hu_slices_of_mixed_geometry(engines_dir, tmp_path):
    """ONNX Runtime has no device preprocessing: stored slices become HU on the CPU; rows keep their order."""
    from edge_agent.dicom import read_file
    from edge_agent.dicom.synth import SeriesHeaders, write_series
    from edge_agent.inference.runner import DevicePreprocessing

    vol = np.full((4, 24, 24), 30.0, np.float32)
    vol[1] = 70.0
    paths = write_series(vol, tmp_path / "s", spacing=(5.0, 0.5, 0.5), headers=SeriesHeaders(signed=True))
    stored = [read_file(p, stored_only=True)[0] for p in paths]
    hu = [read_file(p)[0] for p in paths]
    stored[3].pixel_spacing = (2.0, 2.0)                        # another field of view: its own group
    hu[3].pixel_spacing = (2.0, 2.0)
    with ModelSet.load(engines_dir, backend="onnxrt", threads=1) as models:
        model = models["tiny_ich"]
        assert not isinstance(model.runner, DevicePreprocessing)  # no stored_input_dtypes(): not on Runner
        timings = {}
        from_stored = model.score_images(stored, timings)
        from_hu = model.score_images(hu)
        one_by_one = np.concatenate([model.score_slices(s.hu, s.pixel_spacing) for s in hu])
    np.testing.assert_allclose(from_stored, from_hu, atol=1e-6)
    np.testing.assert_allclose(from_hu, one_by_one, atol=1e-6)
    assert from_stored[1, 0] > 0.95 and from_stored[0, 0] < 0.05 and timings["preprocess"] > 0


def test_static_batch_model_is_padded(tmp_path):
    """A model exported with a fixed batch of 4 still scores 6 slices (padded last batch)."""
    folder = write_model_folder(tmp_path / "fixed", model_batch=4, batch=4)
    with ModelSet.load(folder, backend="onnxrt") as models:
        model = models["tiny_ich"]
        hu = np.full((6, 16, 16), 70.0, np.float32)
        probs = model.score_slices(hu, (1.0, 1.0))
        assert probs.shape == (6, 1) and model.runner.max_batch_size() == 4
        assert np.all(probs > 0.95)


def test_auto_backend_falls_back_to_onnxrt_when_tensorrt_cannot_start(tmp_path, monkeypatch, caplog):
    """The real TrtRunner fails to activate here (no tensorrt module); 'auto' keeps the model working."""
    from edge_agent.errors import MissingDependency
    from edge_agent.inference import trt as trt_backend
    from edge_agent.inference.manifest import add_artefact

    folder = write_model_folder(tmp_path / "m")
    (folder / "model.engine").write_bytes(b"engine bytes")
    add_artefact(folder, "engine", folder / "model.engine")
    monkeypatch.setattr(trt_backend, "is_available", lambda: True)  # pretend; the import inside activate fails
    hu = np.full((4, 16, 16), 70.0, np.float32)
    with ModelSet.load(folder, backend="auto") as models:
        model = models["tiny_ich"]
        assert type(model.runner).__name__ == "TrtRunner"
        probs = model.score_slices(hu, (1.0, 1.0))
        assert model.runner.backend == "onnxrt" and np.all(probs > 0.95)
    assert "falling back to ONNX Runtime" in caplog.text
    with ModelSet.load(folder, backend="tensorrt") as models:
        with pytest.raises(MissingDependency):
            models["tiny_ich"].score_slices(hu, (1.0, 1.0))
