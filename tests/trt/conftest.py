"""Fixtures for the TensorRT-backend tests: tiny real ONNX models, fake-TensorRT installs."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import fake_trt  # noqa: E402
from trt_helpers import tiny_cnn  # noqa: E402


@pytest.fixture
def tiny_onnx(tmp_path) -> Path:
    return tiny_cnn(tmp_path / "model.onnx")


@pytest.fixture
def fakes(monkeypatch):
    """FakeTensorRT 10.3 + FakeCuda in sys.modules (see fake_trt.py): (trt, cuda)."""
    return fake_trt.install(monkeypatch)
