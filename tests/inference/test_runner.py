"""The Runner interface and the ONNX Runtime runner, on tiny real ONNX models."""

import threading

import numpy as np
import pytest

from edge_agent.testing.models import tiny_onnx, tiny_reference, write_model_folder
from edge_agent.errors import MissingDependency
from edge_agent.inference import trt as trt_backend
from edge_agent.inference.manifest import ManifestError, TensorSpec, add_artefact, load_manifest
from edge_agent.inference.onnxrt import OnnxRuntimeRunner, default_providers
from edge_agent.inference.backends import make_runner
from edge_agent.inference.runner import Runner, RunnerError, shapes_compatible


def test_onnxrt_runner_matches_numpy_reference_batched(model_folder):
    m = load_manifest(model_folder)
    runner = make_runner(m, "onnxrt", threads=1)
    assert isinstance(runner, OnnxRuntimeRunner) and not runner.is_active
    rng = np.random.default_rng(0)
    with runner:
        assert runner.is_active
        assert runner.providers == ["CPUExecutionProvider"]  # CPU-only onnxruntime here
        assert runner.input_specs() == [TensorSpec("input", (-1, 1, 16, 16), "float32")]
        assert runner.max_batch_size() is None  # dynamic batch
        for n in (1, 7, 33):
            x = rng.random((n, 1, 16, 16), dtype=np.float32)
            out = runner.infer({"input": x})["probability"]
            assert out.shape == (n, 1)
            np.testing.assert_allclose(out, tiny_reference(x), atol=1e-5)
    assert not runner.is_active and runner.session is None


def test_threads_reach_the_session(model_folder):
    runner = make_runner(load_manifest(model_folder), "onnxrt", threads=2)
    with runner:
        assert runner.session.get_session_options().intra_op_num_threads == 2
    with pytest.raises(RunnerError, match="threads must be a whole number"):
        OnnxRuntimeRunner(model_folder / "model.onnx", threads=0)


def test_state_and_input_checks_are_sentences(model_folder):
    runner = make_runner(load_manifest(model_folder), "onnxrt")
    x = np.zeros((2, 1, 16, 16), np.float32)
    with pytest.raises(RunnerError, match="is not active; call activate"):
        runner.infer({"input": x})
    with runner:
        with pytest.raises(RunnerError, match="already active"):
            runner.activate()
        with pytest.raises(RunnerError, match=r"needs inputs \['input'\] but was given \['image'\]"):
            runner.infer({"image": x})
        with pytest.raises(RunnerError, match="must be float32, not float64"):
            runner.infer({"input": x.astype(np.float64)})
        with pytest.raises(RunnerError, match=r"has shape \[2, 3, 16, 16\]"):
            runner.infer({"input": np.zeros((2, 3, 16, 16), np.float32)})
        with pytest.raises(RunnerError, match="must be a numpy array"):
            runner.infer({"input": [[0.0]]})
    runner.deactivate()  # idempotent


def test_manifest_that_lies_about_the_model_is_caught_at_activate(tmp_path):
    folder = write_model_folder(tmp_path / "m")
    tiny_onnx(folder / "model.onnx", input_name="pixels")  # the model's input is not what the manifest says
    m = load_manifest(folder, verify=False)
    runner = make_runner(m, "onnxrt")
    with pytest.raises(RunnerError, match="has no input tensor named 'input'"):
        runner.activate()
    assert not runner.is_active


def test_corrupt_onnx_file_is_one_sentence(tmp_path):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"not a protobuf at all")
    with pytest.raises(RunnerError, match="onnxruntime cannot load") as info:
        OnnxRuntimeRunner(bad).activate()
    assert "\n" not in str(info.value)


def test_unavailable_provider_is_refused(model_folder):
    runner = OnnxRuntimeRunner(model_folder / "model.onnx", providers=["CUDAExecutionProvider"])
    with pytest.raises(RunnerError, match="onnxruntime here has no CUDAExecutionProvider"):
        runner.activate()
    assert default_providers()[-1] == "CPUExecutionProvider"


def test_unknown_backend_and_missing_engine(model_folder):
    m = load_manifest(model_folder)
    with pytest.raises(RunnerError, match="Unknown backend 'cuda'"):
        make_runner(m, "cuda")
    with pytest.raises(ManifestError, match="has no TensorRT engine.*edge-agent convert"):
        make_runner(m, "tensorrt")


@pytest.mark.skipif(trt_backend.is_available(), reason="TensorRT is installed here")
def test_tensorrt_backend_without_tensorrt_says_what_to_do(model_folder):
    engine = model_folder / "model.engine"
    engine.write_bytes(b"engine bytes")  # never deserialised: TensorRT is absent
    m = add_artefact(model_folder, "engine", engine)
    with pytest.raises(MissingDependency, match="TensorRT is not installed.*--backend onnxrt"):
        make_runner(m, "tensorrt")
    assert isinstance(make_runner(m, "auto"), OnnxRuntimeRunner)  # auto falls back to the CPU path


class FakeThreadBoundRunner(Runner):
    """A fake backend (no GPU here) that owns per-thread resources like a CUDA context."""

    thread_bound = True

    def activate_impl(self):
        self.owner_name = threading.current_thread().name

    def deactivate_impl(self):
        pass

    def input_specs_impl(self):
        return [TensorSpec("x", (4, 2), "float32")]

    def output_specs_impl(self):
        return [TensorSpec("y", (4, 1), "float32")]

    def infer_impl(self, feed):
        return {"y": feed["x"].sum(axis=1, keepdims=True)}


def test_thread_bound_runner_refuses_other_threads_and_reports_static_batch():
    runner = FakeThreadBoundRunner("fake", expected_inputs=[TensorSpec("x", (-1, 2), "float32")])
    runner.activate()
    assert runner.max_batch_size() == 4
    errors = []

    def other():
        try:
            runner.infer({"x": np.ones((4, 2), np.float32)})
        except RunnerError as exc:
            errors.append(str(exc))

    t = threading.Thread(target=other, name="not-the-owner")
    t.start()
    t.join()
    assert errors and "cannot infer from thread 'not-the-owner'" in errors[0]
    assert runner.infer({"x": np.ones((4, 2), np.float32)})["y"].tolist() == [[2.0]] * 4
    runner.deactivate()


def test_expected_dtype_mismatch_refused():
    runner = FakeThreadBoundRunner("fake", expected_inputs=[TensorSpec("x", (-1, 2), "float16")])
    with pytest.raises(RunnerError, match="declares input 'x' as float32"):
        runner.activate()


def test_shapes_compatible():
    assert shapes_compatible((-1, 3, 8, 8), (5, 3, 8, 8))
    assert not shapes_compatible((5, 3, 8), (5, 3, 8, 8))
    assert not shapes_compatible((5, 1, 8, 8), (-1, 3, 8, 8))


def test_make_runner_builds_the_real_trt_runner_when_tensorrt_is_usable(model_folder, monkeypatch):
    """Only is_available() is faked (no TensorRT here); the TrtRunner is the real class, never activated."""
    engine = model_folder / "model.engine"
    engine.write_bytes(b"engine bytes")
    fingerprint = model_folder / "model.engine.json"
    fingerprint.write_text("{}")
    m = add_artefact(model_folder, "engine", engine, fingerprint=fingerprint)
    monkeypatch.setattr(trt_backend, "is_available", lambda: True)
    for backend in ("auto", "tensorrt"):
        runner = make_runner(m, backend, device=0)
        assert type(runner).__name__ == "TrtRunner" and not runner.is_active
        assert runner.engine_path == engine.resolve() and runner.thread_bound
        assert runner.onnx_sha256 == m.artefacts["onnx"].sha256
        assert runner.expected_inputs == m.inputs
    assert isinstance(make_runner(m, "onnxrt"), OnnxRuntimeRunner)


def test_gpu_providers_preferred_where_present(model_folder, monkeypatch):
    """Fake only the provider list (no GPU build of onnxruntime here): CUDA/TensorRT EPs first, with the device."""
    import edge_agent.inference.onnxrt as onnxrt

    monkeypatch.setattr(onnxrt.ort, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider", "TensorrtExecutionProvider"])
    assert default_providers() == ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    runner = OnnxRuntimeRunner(model_folder / "model.onnx", device=1)
    assert runner._provider_list() == [("TensorrtExecutionProvider", {"device_id": 1}),
                                       ("CUDAExecutionProvider", {"device_id": 1}), "CPUExecutionProvider"]
