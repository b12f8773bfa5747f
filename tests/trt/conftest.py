"""Fixtures for the TensorRT-backend tests: tiny real ONNX models, fake-TensorRT installs."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.testing import fake_trt  # noqa: E402
from edge_agent.testing.models import tiny_cnn  # noqa: E402


@pytest.fixture
def tiny_onnx(tmp_path) -> Path:
    return tiny_cnn(tmp_path / "model.onnx")


@pytest.fixture
def fakes(monkeypatch):
    """FakeTensorRT 10.3 + FakeCuda in sys.modules (see edge_agent/testing/fake_trt.py): (trt, cuda)."""
    return fake_trt.install(monkeypatch)


@pytest.fixture
def host_kernels(fakes, monkeypatch):
    """FakeCuda, with compile_kernel → the real kernel source compiled for the CPU.

    (edge_agent/testing/cuda_host.py: an emulation; ``cuda.compiled`` lists the
    (stored dtype, output dtype) pairs built.)
    """
    import numpy as np

    from edge_agent.inference.trt import preprocess_kernel
    from edge_agent.testing.cuda_host import HostModule

    _trt, cuda = fakes
    cuda.compiled = []

    def host_compile(raw_dtype, out_dtype):
        cuda.compiled.append((np.dtype(raw_dtype), out_dtype))
        return HostModule(preprocess_kernel.kernel_source(raw_dtype, out_dtype), ["raw_to_input"],
                          resolve=lambda ptr: cuda.memory[int(ptr)].ctypes.data)

    monkeypatch.setattr(preprocess_kernel, "compile_kernel", host_compile)
    return cuda


@pytest.fixture
def kernels(host_kernels):
    """``host_kernels`` with the primary context pushed in this thread (popped and released after)."""
    cuda = host_kernels
    ctx = cuda.Device(0).retain_primary_context()
    ctx.push()
    yield cuda
    cuda.Context.pop()
    ctx.detach()
