"""Fixtures for the DICOM results tests: a real Orthanc (the agent and Mosquitto: tests/conftest.py)."""

from __future__ import annotations

import pytest

from edge_agent.testing import orthanc as orthanc_support


@pytest.fixture
def orthanc(tmp_path):
    if not orthanc_support.available():
        pytest.skip("Orthanc is not installed (Debian package orthanc)")
    pacs = orthanc_support.Orthanc(tmp_path / "orthanc")
    yield pacs
    pacs.stop()
