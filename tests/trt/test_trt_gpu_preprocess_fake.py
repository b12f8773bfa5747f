"""GPU preprocessing wired into TrtRunner and Model.score_images — FakeTensorRT/FakeCuda + the emulated kernel.

The kernel is the real CUDA source run on the CPU (edge_agent/testing/cuda_host.py);
TensorRT and pycuda are the named fakes of edge_agent/testing/fake_trt.py (the fake engine
outputs the mean of each input sample, so what the kernel wrote into the
engine's input buffer is visible in the output). What this proves: stored
pixels from real DICOM files go through the runner's own stream into the
engine input and give the same scores as the CPU reference path; the kernel
is compiled once per stored dtype at activation; a kernel that cannot be
built turns GPU preprocessing off with a reason, and the model still scores
on the CPU. Not proved here: that it runs on a real GPU (tests/gpu).
"""

from __future__ import annotations

import logging
import threading

import numpy as np
import pytest

from edge_agent.dicom import read_file
from edge_agent.errors import MissingDependency
from edge_agent.inference import TrtOptions, load_manifest
from edge_agent.inference.models import ModelSet
from edge_agent.inference.runner import RunnerError
from edge_agent.inference.trt import preprocess_kernel
from edge_agent.inference.trt.preprocess_kernel import TOLERANCE
from edge_agent.inference.trt.runner import TrtRunner
from edge_agent.preprocess import prepare_slices
from edge_agent.testing.cuda_host import compiler
from edge_agent.testing.models import converted_model
from edge_agent.testing.volumes import phantom_series
from edge_agent.testing.outputs import RecordingOutputs  # noqa: E402

pytestmark = pytest.mark.skipif(compiler() is None, reason="g++ is needed to run the kernel source on the CPU")


@pytest.fixture
def model_dir(tmp_path, fakes):
    """A model folder with ONNX, manifest and a (fake) TensorRT engine recorded in the manifest."""
    return converted_model(tmp_path / "tiny")


def _slices(folder, *, stored_only: bool, signed: bool = False):
    paths = phantom_series(folder, seed=4, bright=True, signed=signed, slices=6)
    return [s for p in sorted(paths) for s in read_file(p, stored_only=stored_only)]


def _runner(model_dir, **kw):
    manifest = load_manifest(model_dir)
    engine = manifest.artefacts["engine"]
    return manifest, TrtRunner(engine.path, fingerprint=engine.fingerprint, preprocessing=manifest.preprocessing, **kw)


@pytest.mark.parametrize("signed", [False, True], ids=["uint16", "int16"])
def test_infer_stored_matches_the_cpu_reference(model_dir, host_kernels, tmp_path, signed):
    cuda = host_kernels
    manifest, runner = _runner(model_dir)
    stored = _slices(tmp_path / "s", stored_only=True, signed=signed)
    hu = _slices(tmp_path / "h", stored_only=False, signed=signed)
    assert all(s.hu is None and s.stored is not None for s in stored)
    raw = np.stack([s.stored for s in stored])
    cuda.log.clear()
    with runner:
        assert set(runner.stored_input_dtypes()) == {np.dtype(np.int16), np.dtype(np.uint16)}
        out = runner.infer_stored(raw, stored[0].pixel_spacing, stored[0].rescale)["probability"]
        small = runner.infer_stored(raw[:2], stored[0].pixel_spacing, stored[0].rescale)["probability"]
    assert sorted(str(d) for d, _ in cuda.compiled) == ["int16", "uint16"], "both kernels built at activation"
    x = prepare_slices(np.stack([s.hu for s in hu]), hu[0].pixel_spacing, manifest.preprocessing)
    expected = x.reshape(len(hu), -1).mean(axis=1)
    np.testing.assert_allclose(out.reshape(-1), expected, rtol=0, atol=TOLERANCE["float32"])
    np.testing.assert_allclose(small.reshape(-1), expected[:2], rtol=0, atol=TOLERANCE["float32"])
    assert np.ptp(expected) > 0.01, "the phantom's slices differ, so a mix-up would show"
    ops = [op for op, _ in cuda.log]
    assert ops.count("memcpy_htod_async") >= 2                     # stored pixels uploaded per call ...
    htod = [op for op in ops[ops.index("execute_async_v3") - 3:ops.index("execute_async_v3")]]
    assert "memcpy_htod_async" in htod                               # ... just before the engine runs
    assert {t for _, t in cuda.log} == {threading.current_thread().name}
    assert not cuda.live, "kernel buffers and engine buffers all freed at deactivate"
    assert cuda.retained == 0


def test_model_scores_stored_slices_on_the_device_and_hu_slices_on_the_cpu(model_dir, host_kernels, tmp_path,
                                                                          monkeypatch):
    models = ModelSet.load(model_dir, backend="tensorrt")
    model = models["tiny"]
    calls = []
    original = TrtRunner.infer_stored

    def spy(self, stored, spacing, rescale):
        calls.append((stored.shape, tuple(spacing)))
        return original(self, stored, spacing, rescale)

    monkeypatch.setattr(TrtRunner, "infer_stored", spy)
    stored = _slices(tmp_path / "s", stored_only=True)
    hu = _slices(tmp_path / "h", stored_only=False)
    with models:
        timings = {}
        on_device = model.score_images(stored, timings=timings)
        assert model.runner.backend == "tensorrt"
        assert calls == [((6, 48, 48), tuple(stored[0].pixel_spacing))]
        assert timings["preprocess"] > 0 and timings["inference"] > 0     # from the stream's events
        on_cpu = model.score_images(hu)
        assert len(calls) == 1, "HU slices are prepared on the CPU"
    np.testing.assert_allclose(on_device, on_cpu, rtol=0, atol=TOLERANCE["float32"])


def test_mixed_geometry_is_grouped_and_order_kept(model_dir, host_kernels, tmp_path):
    models = ModelSet.load(model_dir, backend="tensorrt")
    stored = _slices(tmp_path / "s", stored_only=True)
    for s in stored[::2]:
        s.pixel_spacing = (2.0, 2.0)                                  # every other slice: another field of view
    with models:
        mixed = models["tiny"].score_images(stored)
        alone = [models["tiny"].score_images([s])[0] for s in stored]
    np.testing.assert_allclose(mixed, np.array(alone), rtol=0, atol=1e-6)
    assert abs(mixed[0, 0] - mixed[1, 0]) > 1e-3


def test_kernel_that_cannot_be_built_falls_back_to_the_cpu(model_dir, fakes, tmp_path, monkeypatch, caplog):
    _, cuda = fakes

    def no_nvcc(raw_dtype, out_dtype):
        raise MissingDependency("nvcc is not on PATH or in /usr/local/cuda/bin; install the CUDA toolkit.")

    monkeypatch.setattr(preprocess_kernel, "compile_kernel", no_nvcc)
    models = ModelSet.load(model_dir, backend="tensorrt")
    stored = _slices(tmp_path / "s", stored_only=True)
    caplog.set_level(logging.INFO, "edge_agent.trt")
    with models:
        runner = models["tiny"].runner
        out = models["tiny"].score_images(stored)
        assert runner.stored_input_dtypes() == ()
        assert "nvcc is not on PATH" in runner.preprocess_problem
        with pytest.raises(RunnerError, match="convert them to HU"):
            runner.infer_stored(np.stack([s.stored for s in stored]), (4.0, 4.0), stored[0].rescale)
    assert any("GPU preprocessing is off" in r.getMessage() for r in caplog.records)
    assert any("preprocessing on the CPU" in r.getMessage() for r in caplog.records)
    assert out.shape == (6, 1) and np.ptp(out) > 0.01                 # still scored, on the CPU
    assert not cuda.live


def test_gpu_preprocessing_can_be_switched_off(model_dir, host_kernels):
    models = ModelSet.load(model_dir, backend="tensorrt", trt_options=TrtOptions(gpu_preprocess=False))
    with models:
        assert models["tiny"].runner.stored_input_dtypes() == ()
    assert host_kernels.compiled == []


def test_bench_measures_the_agents_tensorrt_path(model_dir, host_kernels, capsys, monkeypatch):
    """`edge-agent bench --backend tensorrt`: pinned, zero-copy and stored→kernel→engine rows (fakes + emulation)."""
    import json
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "cli"))
    from cli_helpers import run_cli

    monkeypatch.setattr("edge_agent.inference.trt.is_available", lambda: True)
    monkeypatch.setattr("edge_agent.inference.trt.why_unavailable", lambda: None)
    code, out, err = run_cli(capsys, "bench", "--model", str(model_dir), "--backend", "tensorrt", "--slices", "3",
                             "--repeat", "2", "--warmup", "1", "--json")
    assert code == 0, err
    rows = {r["backend"]: r for r in json.loads(out)["rows"] if r["stage"] == "inference"}
    assert set(rows) == {"tensorrt pinned copy", "tensorrt zero-copy", "tensorrt + gpu preprocess"}
    stored = rows["tensorrt + gpu preprocess"]
    assert stored["batch"] == 3 and stored["end_to_end_ms"] == stored["series_p50_ms"] > 0
    assert [op for op, _ in host_kernels.log].count("execute_async_v3") >= 3 * 3
    assert not host_kernels.live


@pytest.mark.parametrize("integrated,zero_copy,mapped", [(True, "auto", True), (False, "auto", False),
                                                         (True, "off", False), (False, "on", True)])
def test_zero_copy_follows_the_device_and_the_setting(model_dir, host_kernels, tmp_path, monkeypatch,
                                                      integrated, zero_copy, mapped):
    """auto: mapped pinned memory on an integrated GPU (Jetson) — stored pixels and engine I/O are never copied."""
    cuda = host_kernels
    monkeypatch.setattr(cuda.Device, "get_attribute",
                        lambda self, attr: int(integrated) if attr == "INTEGRATED" else 1)
    models = ModelSet.load(model_dir, backend="tensorrt", trt_options=TrtOptions(zero_copy=zero_copy))
    stored = _slices(tmp_path / "s", stored_only=True)
    hu = _slices(tmp_path / "h", stored_only=False)
    with models:
        models["tiny"].score_images(stored)          # first call: the geometry table goes up once
        cuda.log.clear()
        out = models["tiny"].score_images(stored)
        assert models["tiny"].runner.mapped is mapped
    copies = {op for op, _ in cuda.log} & {"memcpy_htod", "memcpy_htod_async", "memcpy_dtoh_async"}
    assert (copies == set()) is mapped, copies
    x = prepare_slices(np.stack([s.hu for s in hu]), hu[0].pixel_spacing, models["tiny"].manifest.preprocessing)
    np.testing.assert_allclose(out.reshape(-1), x.reshape(len(hu), -1).mean(axis=1), atol=TOLERANCE["float32"])
    assert not cuda.live


def test_the_pipeline_thread_owns_the_engine_and_prepares_stored_pixels_on_the_device(model_dir, host_kernels,
                                                                                      tmp_path):
    """The daemon's path: ingest-style stored slices → SeriesPipeline → TensorRT runner with the kernel."""
    import time

    from edge_agent.ingest.settings import IngestedFile
    from edge_agent.service.pipeline import SeriesPipeline

    cuda = host_kernels
    paths = phantom_series(tmp_path / "s", seed=4, bright=True, slices=6)
    items = []
    for p in sorted(paths):
        slices = read_file(p, stored_only=True)
        now = time.time()
        items.append(IngestedFile(path=p, slices=slices, sop_instance_uids=[s.sop_instance_uid for s in slices],
                                  series_instance_uid=slices[0].series_instance_uid, received_at=now,
                                  complete_at=now, written_at=now))
    out = RecordingOutputs()
    pipeline = SeriesPipeline(lambda: ModelSet.load(model_dir, backend="tensorrt"), tmp_path / "series.sqlite3", out,
                              site="s", device="d", settle=0.3, batch=4)
    pipeline.start()
    try:
        for item in items:
            pipeline.submit(item)
        deadline = time.monotonic() + 20
        while not out.results and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        pipeline.stop()
    (result,) = out.results
    assert result["status"] == "analysed" and result["slices"] == 6
    hu = _slices(tmp_path / "h", stored_only=False)
    manifest = load_manifest(model_dir)
    per_slice = prepare_slices(np.stack([s.hu for s in hu]), hu[0].pixel_spacing, manifest.preprocessing)
    top2 = np.sort(per_slice.reshape(6, -1).mean(axis=1))[-2:].mean()          # the manifest's top_k_mean, k=2
    assert result["findings"][0]["probability"] == pytest.approx(top2, abs=2e-4)
    assert {thread for op, thread in cuda.log} == {"pipeline"}, "only the pipeline thread touches CUDA"
    assert [op for op, _ in cuda.log].count("execute_async_v3") >= 2          # scored as files arrived
    assert not cuda.live and cuda.retained == 0, "the pipeline freed everything when it stopped"


def test_a_kernel_failure_at_run_time_moves_preprocessing_to_the_cpu(model_dir, host_kernels, tmp_path,
                                                                    monkeypatch, caplog):
    """Never a lost series: the failed group is scored again from HU, and later slices go the CPU way."""
    cuda = host_kernels
    launches = []

    class Module:
        def get_function(self, name):
            def launch(*args, **kw):
                launches.append(1)
                raise RuntimeError("cuLaunchKernel failed: an illegal memory access was encountered")
            return launch

    def flaky_compile(raw_dtype, out_dtype):
        return Module()

    monkeypatch.setattr(preprocess_kernel, "compile_kernel", flaky_compile)
    models = ModelSet.load(model_dir, backend="tensorrt")
    stored = _slices(tmp_path / "s", stored_only=True)
    hu = _slices(tmp_path / "h", stored_only=False)
    caplog.set_level(logging.ERROR, "edge_agent.inference")
    with models:
        model = models["tiny"]
        first = model.score_images(stored)
        assert model.runner.stored_input_dtypes() == () and "illegal memory access" in model.runner.preprocess_problem
        second = model.score_images(stored)
        expected = model.score_images(hu)
    assert len(launches) == 1, "the kernel is not tried again"
    np.testing.assert_allclose(first, expected, atol=1e-6)
    np.testing.assert_allclose(second, expected, atol=1e-6)
    assert any("GPU preprocessing failed" in r.getMessage() for r in caplog.records)
    assert not cuda.live


def test_a_failure_after_the_kernels_are_built_leaves_nothing_half_made(model_dir, host_kernels, tmp_path,
                                                                       monkeypatch):
    cuda = host_kernels

    def no_events():
        raise RuntimeError("cuEventCreate failed: out of memory")

    monkeypatch.setattr(cuda, "Event", no_events)
    models = ModelSet.load(model_dir, backend="tensorrt")
    stored = _slices(tmp_path / "s", stored_only=True)
    with models:
        models["tiny"].ensure_active()
        runner = models["tiny"].runner
        assert runner.is_active and runner.backend == "tensorrt"
        assert runner.stored_input_dtypes() == () and "cuEventCreate failed" in runner.preprocess_problem
        out = models["tiny"].score_images(stored)                   # scored, on the CPU path
    assert out.shape == (6, 1) and np.ptp(out) > 0.01
    assert not cuda.live, "the half-built preprocessor's buffers were freed"
