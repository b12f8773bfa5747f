"""Shared by the engine/bench/doctor CLI tests: a tiny real CNN model folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.testing.models import manifest_for, tiny_cnn  # noqa: E402


@pytest.fixture
def model_dir(tmp_path) -> Path:
    folder = tmp_path / "tiny"
    folder.mkdir()
    tiny_cnn(folder / "model.onnx")
    manifest_for(folder)
    return folder
