"""Fixtures: tiny real ONNX models in temporary engines folders (see edge_agent/testing/models.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.testing.models import write_model_folder


@pytest.fixture
def model_folder(tmp_path) -> Path:
    return write_model_folder(tmp_path / "engines" / "tiny_ich")


@pytest.fixture
def engines_dir(tmp_path) -> Path:
    """Two models: a head model (ich) and a chest model (lung_nodule)."""
    root = tmp_path / "engines"
    write_model_folder(root / "tiny_ich")
    write_model_folder(root / "tiny_lung", name="tiny_lung",
                       findings=[{"code": "lung_nodule", "label": "Lung nodule", "severity": "urgent"}],
                       windows=((-600, 1500),),
                       applies_to={"modality": ["CT"], "body_part": ["CHEST", "LUNG"],
                                   "description_keywords": ["CHEST", "THORAX", "LUNG"],
                                   "slice_thickness_mm": [0.5, 5.0], "min_slices": 4},
                       decision={"rule": "max", "threshold": 0.5})
    return root
