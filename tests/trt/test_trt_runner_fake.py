"""TrtRunner and build_engine logic against FakeTensorRT/FakeCuda (edge_agent/testing/fake_trt.py).

What these prove: the named-tensor call sequence, profile checks, fingerprint
refusal, buffers allocated once and freed, and that every CUDA operation
happens on the owning thread with its context pushed and the stack empty
afterwards. They do not prove the real libraries behave so (tests/gpu and
docs/TENSORRT.md).
"""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from edge_agent.testing import fake_trt
from edge_agent.inference.manifest import TensorSpec
from edge_agent.inference.runner import RunnerError
from edge_agent.inference.trt.builder import BuildError, BuildOptions, build_engine
from edge_agent.inference.trt.fingerprint import EngineRefused, fingerprint_path
from edge_agent.inference.trt.runner import TrtRunner

OPTIONS = dict(static_dims={"input": (3, 32, 32)}, opt_batch=4, max_batch=8)


@pytest.fixture
def engine(tmp_path, tiny_onnx, fakes):
    return tmp_path / "model.engine"


def _build(tiny_onnx, engine, **kw):
    return build_engine(tiny_onnx, engine, BuildOptions(timing_cache=engine.parent / "timing.cache",
                                                        **{**OPTIONS, **kw}))


def test_build_writes_engine_fingerprint_profiles_and_timing_cache(tiny_onnx, engine, fakes):
    trt, cuda = fakes
    messages = []
    fp = build_engine(tiny_onnx, engine, BuildOptions(timing_cache=engine.parent / "timing.cache", **OPTIONS),
                      progress=messages.append)
    network, config = trt.built[-1]
    assert network.flags == 0                                   # TensorRT >= 10: no EXPLICIT_BATCH bit
    assert {f.name for f in config.flags} == {"FP16"}
    assert config.pool[trt.MemoryPoolType.WORKSPACE] == 1024 << 20
    assert config.profiles[0].shapes["input"] == ((1, 3, 32, 32), (4, 3, 32, 32), (8, 3, 32, 32))
    assert engine.read_bytes().startswith(b"FAKEENGINE")
    saved = json.loads(fingerprint_path(engine).read_text())
    assert saved["tensorrt_version"] == "10.3.0" and saved["device_name"] == "Fake Orin"
    assert saved["compute_capability"] == "8.7" and saved["precision"] == "fp16"
    assert saved["profiles"]["input"] == {"min": [1, 3, 32, 32], "opt": [4, 3, 32, 32], "max": [8, 3, 32, 32]}
    assert fp.onnx_sha256 == saved["onnx_sha256"]
    assert (engine.parent / "timing.cache").read_bytes().startswith(b"CACHE")
    assert any("building fp16" in m for m in messages) and any(m.startswith("built") for m in messages)
    # second build reuses the cache it wrote
    _build(tiny_onnx, engine)
    assert trt.built[-1][1].cache.blob.startswith(b"CACHE")


def test_build_tensorrt8_sets_explicit_batch(monkeypatch, tiny_onnx, tmp_path):
    trt, _ = fake_trt.install(monkeypatch, version="8.6.2")
    _build(tiny_onnx, tmp_path / "m.engine")
    assert trt.built[-1][0].flags == 1 << 0


def test_build_refusals(tiny_onnx, engine, fakes, tmp_path):
    with pytest.raises(BuildError, match="calibrate"):
        _build(tiny_onnx, engine, precision="int8")             # no Q/DQ nodes
    with pytest.raises(BuildError, match="no DLA cores"):
        _build(tiny_onnx, engine, dla_core=0)
    import onnx

    model = onnx.load(str(tiny_onnx))
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "H"   # dynamic rows, nothing says how many
    dyn = tmp_path / "dyn.onnx"
    onnx.save(model, str(dyn))
    with pytest.raises(BuildError, match="--profile input:MIN:OPT:MAX"):
        build_engine(dyn, engine, BuildOptions())
    fp = build_engine(dyn, engine, BuildOptions(profiles={"input": ((1, 3, 32, 32), (2, 3, 32, 32),
                                                                    (4, 3, 64, 64))}))
    assert fp.profiles["input"]["max"] == [4, 3, 64, 64]
    model = onnx.load(str(tiny_onnx))
    model.graph.node[1].op_type = "Unsupported"
    bad = tmp_path / "bad.onnx"
    onnx.save(model, str(bad))
    with pytest.raises(BuildError, match="unsupported op Unsupported"):
        _build(bad, tmp_path / "bad.engine")
    assert not (tmp_path / "bad.engine").exists() and not (tmp_path / "bad.engine.json").exists()


def test_build_tensorrt11_refuses_fp16_it_cannot_apply(monkeypatch, tiny_onnx, tmp_path):
    """TensorRT 11 has no FP16/INT8 builder flags (checked against the 11.4 bindings): fp16 is refused, fp32 builds."""
    trt, _ = fake_trt.install(monkeypatch, version="11.4.0")
    with pytest.raises(BuildError, match="strongly typed.*--precision fp32"):
        _build(tiny_onnx, tmp_path / "m.engine")                 # default precision fp16
    assert not (tmp_path / "m.engine").exists()
    fp = _build(tiny_onnx, tmp_path / "m.engine", precision="fp32")
    assert fp.precision == "fp32" and trt.built[-1][0].flags == 0 and not trt.built[-1][1].flags


def test_build_dla_with_gpu_fallback(monkeypatch, tiny_onnx, tmp_path):
    trt, _ = fake_trt.install(monkeypatch, dla_cores=2)
    with pytest.raises(BuildError, match="FP16 or INT8"):
        _build(tiny_onnx, tmp_path / "m.engine", dla_core=1, precision="fp32")
    fp = _build(tiny_onnx, tmp_path / "m.engine", dla_core=1)
    config = trt.built[-1][1]
    assert config.default_device_type == trt.DeviceType.DLA and config.DLA_core == 1
    assert trt.BuilderFlag.GPU_FALLBACK in config.flags and fp.dla_core == 1


def _stack_sizes(cuda):
    return {name: len(s) for name, s in cuda.stacks.items()}


def test_runner_infers_on_owner_thread_and_frees_everything(tiny_onnx, engine, fakes):
    _, cuda = fakes
    _build(tiny_onnx, engine)
    cuda.log.clear()
    x = np.random.default_rng(0).random((5, 3, 32, 32), dtype=np.float32)
    expected_in = [TensorSpec("input", (-1, 3, 32, 32), "float32")]
    with TrtRunner(engine, expected_inputs=expected_in) as runner:
        assert runner.max_batch_size() == 8
        assert [t.name for t in runner.output_specs()] == ["probability"]
        out = runner.infer({"input": x})["probability"]
        np.testing.assert_allclose(out, x.reshape(5, -1).mean(axis=1, keepdims=True), rtol=1e-6)
        out2 = runner.infer({"input": x[:2]})["probability"]     # buffers reused for another batch size
        assert out2.shape == (2, 1)
        allocations = [op for op, _ in cuda.log if op in ("mem_alloc", "pagelocked_empty")]
        assert len(allocations) == 4                              # 2 tensors x (pinned host + device), once
    threads = {thread for _, thread in cuda.log}
    assert threads == {threading.current_thread().name}
    assert not cuda.live, "all device and pinned memory freed"
    assert all(n == 0 for n in _stack_sizes(cuda).values()), "context stack empty after every call"
    assert cuda.retained == 0, "primary context released"
    pushes = sum(1 for op, _ in cuda.log if op == "push")
    assert pushes == sum(1 for op, _ in cuda.log if op == "pop") >= 4


def test_runner_refuses_other_threads_and_out_of_profile_shapes(tiny_onnx, engine, fakes):
    _, cuda = fakes
    _build(tiny_onnx, engine)
    x = np.zeros((9, 3, 32, 32), np.float32)
    with TrtRunner(engine) as runner:
        errors = []

        def other():
            try:
                runner.infer({"input": x[:1]})
            except RunnerError as exc:
                errors.append(str(exc))

        t = threading.Thread(target=other, name="not-the-owner")
        t.start()
        t.join()
        assert errors and "not-the-owner" in errors[0]
        with pytest.raises(RunnerError, match="outside the engine's profile"):
            runner.infer({"input": x})                            # batch 9 > profile max 8
    assert "not-the-owner" not in {thread for _, thread in cuda.log}


def test_mapped_buffers_do_no_copies(tiny_onnx, engine, fakes):
    _, cuda = fakes
    _build(tiny_onnx, engine)
    x = np.ones((3, 3, 32, 32), np.float32) * 0.25
    cuda.log.clear()
    with TrtRunner(engine, mapped=True) as runner:
        out = runner.infer({"input": x})["probability"]
    np.testing.assert_allclose(out.reshape(-1), 0.25)
    ops = {op for op, _ in cuda.log}
    assert "mem_alloc" not in ops and not ops & {"memcpy_htod_async", "memcpy_dtoh_async"}
    assert not cuda.live


def test_mismatched_or_corrupt_engine_is_refused_and_context_released(monkeypatch, tiny_onnx, engine, fakes):
    _, cuda = fakes
    _build(tiny_onnx, engine)
    fp = json.loads(fingerprint_path(engine).read_text())
    fingerprint_path(engine).write_text(json.dumps({**fp, "tensorrt_version": "8.6.2"}))
    with pytest.raises(EngineRefused, match=r"TensorRT 8\.6\.2 but this machine has 10\.3\.0.*edge-agent convert"):
        TrtRunner(engine).activate()
    fingerprint_path(engine).write_text(json.dumps(fp))
    engine.write_bytes(engine.read_bytes() + b"x")
    with pytest.raises(EngineRefused, match="corrupt"):
        TrtRunner(engine).activate()
    # bytes TensorRT cannot deserialize, with a fingerprint that matches them
    from edge_agent.inference.trt.fingerprint import sha256_file

    engine.write_bytes(b"NOT AN ENGINE")
    fingerprint_path(engine).write_text(json.dumps({**fp, "engine_sha256": sha256_file(engine)}))
    with pytest.raises(EngineRefused, match="Version tag does not match.*edge-agent convert"):
        TrtRunner(engine).activate()
    assert cuda.retained == 0 and all(n == 0 for n in _stack_sizes(cuda).values())


def test_manifest_mismatch_refused_after_activation_frees(tiny_onnx, engine, fakes):
    _, cuda = fakes
    _build(tiny_onnx, engine)
    wrong = [TensorSpec("input", (-1, 1, 64, 64), "float32")]
    with pytest.raises(RunnerError, match="manifest"):
        TrtRunner(engine, expected_inputs=wrong).activate()
    assert not cuda.live and cuda.retained == 0


def test_make_runner_picks_trt_runner_for_a_converted_model(tmp_path, fakes):
    """The manifest path end to end: convert records the engine; make_runner('tensorrt') runs it (fakes)."""
    from edge_agent.inference import load_manifest, make_runner
    from edge_agent.testing.models import converted_model

    folder = converted_model(tmp_path / "tiny")
    manifest = load_manifest(folder)
    runner = make_runner(manifest, backend="tensorrt")
    assert isinstance(runner, TrtRunner)
    x = np.full((2, 3, 32, 32), 0.5, np.float32)
    with runner:
        out = runner.infer({"input": x})["probability"]
    np.testing.assert_allclose(out, 0.5)
