"""Fixtures for the DICOM results tests: a real Orthanc, the agent as a process, a real Mosquitto."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent_fixtures import agent_factory, broker, collector  # noqa: E402,F401 (fixtures)
from support import orthanc as orthanc_support  # noqa: E402

# A routine head series the shipped ICH model applies to (5 mm, standard kernel, no motion or metal).
from edge_agent.service.simulator import ROUTINE_HEAD as ROUTINE  # noqa: E402


@pytest.fixture
def orthanc(tmp_path):
    if not orthanc_support.available():
        pytest.skip("Orthanc is not installed (Debian package orthanc)")
    pacs = orthanc_support.Orthanc(tmp_path / "orthanc")
    yield pacs
    pacs.stop()
