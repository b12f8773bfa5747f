"""A 2.5-D model on TensorRT (FakeTensorRT/FakeCuda, edge_agent/testing/fake_trt.py): its input is prepared on the CPU.

The GPU kernel writes a slice's own windows only, so a model with ``preprocessing.context`` never takes the
stored-pixel device path: no kernel is built, ``infer_stored`` is never called, the host tensor (own window,
neighbour below, neighbour above) goes to ``infer``, and one INFO line says so. The fake engine outputs the
mean of each input sample, so the expected score is the mean of the three windowed HU values, in numpy.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

from edge_agent.testing.models import CONTEXT_NAME as NAME
from edge_agent.testing.models import add_engine, context_win as win, expected_neighbours, write_context_model

from edge_agent.dicom import read_file  # noqa: E402
from edge_agent.dicom.synth import SeriesHeaders, write_series  # noqa: E402
from edge_agent.inference.models import ModelSet  # noqa: E402
from edge_agent.inference.trt import preprocess_kernel  # noqa: E402
from edge_agent.inference.trt.runner import TrtRunner  # noqa: E402


@pytest.fixture
def context_engine(tmp_path, fakes, monkeypatch):
    def no_kernel(raw_dtype, out_dtype):
        raise AssertionError("a 2.5-D model must not build the GPU preprocessing kernel")

    monkeypatch.setattr(preprocess_kernel, "compile_kernel", no_kernel)
    return add_engine(write_context_model(tmp_path / NAME, size=32))


def test_context_model_on_tensorrt_prepares_its_input_on_the_cpu(context_engine, tmp_path, monkeypatch, caplog):
    hu = [-80.0, 40.0, -10.0, 90.0, 0.0, 60.0]
    volume = np.stack([np.full((32, 32), v, np.float32) for v in hu])
    paths = write_series(volume, tmp_path / "s", spacing=(5.0, 1.0, 1.0),
                         headers=SeriesHeaders(body_part="CHEST", series_description="CHEST"))
    stored = [read_file(p, stored_only=True)[0] for p in paths]
    assert all(s.hu is None and s.stored is not None for s in stored)
    calls = {"infer": [], "infer_stored": 0}
    original = TrtRunner.infer

    def spy_infer(self, feed):
        calls["infer"].append(feed["input"].shape)
        return original(self, feed)

    def spy_stored(self, *a, **kw):
        calls["infer_stored"] += 1
        raise AssertionError("stored pixels went to the device path")

    monkeypatch.setattr(TrtRunner, "infer", spy_infer)
    monkeypatch.setattr(TrtRunner, "infer_stored", spy_stored)
    caplog.set_level(logging.INFO, "edge_agent")
    models = ModelSet.load(context_engine, backend="tensorrt")
    with models:
        model = models[NAME]
        first = model.score_images(stored)[:, 0]
        again = model.score_images(stored[::-1])[:, 0]
        assert model.runner.backend == "tensorrt"
        assert model.runner.stored_input_dtypes() == ()
        assert "needs neighbour slices" in model.runner.preprocess_problem
    below, above = expected_neighbours(6, 1)
    expected = [(win(hu[i]) + win(hu[below[i]]) + win(hu[above[i]])) / 3 for i in range(6)]
    np.testing.assert_allclose(first, expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(again, expected[::-1], rtol=0, atol=1e-6)
    assert calls["infer_stored"] == 0 and calls["infer"] and all(s[1:] == (3, 32, 32) for s in calls["infer"])
    lines = [r for r in caplog.records if "needs neighbour slices" in r.getMessage()]
    assert [r.getMessage() for r in lines] == [f"model {NAME} needs neighbour slices: its input is prepared on "
                                               "the CPU"], "said once per model"
    assert lines[0].levelno == logging.INFO
    assert not any("GPU preprocessing is off" in r.getMessage() for r in caplog.records), "not a fault"
