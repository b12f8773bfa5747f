"""Fixtures for the DICOM results tests: a real Orthanc, a throw-away PKI, a rendered head series (the agent
and Mosquitto: tests/conftest.py)."""

from __future__ import annotations

import pytest

from edge_agent.testing import orthanc as orthanc_support
from edge_agent.testing.mosquitto import make_pki
from pacs_helpers import head_series


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A CA, a server certificate for localhost / 127.0.0.1, a client certificate and a CA that signed nothing."""
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    """A rendered head series (12 slices) whose positive ICH result the PACS tests queue."""
    return head_series(tmp_path_factory.mktemp("series"))


@pytest.fixture
def orthanc(tmp_path):
    if not orthanc_support.available():
        pytest.skip("Orthanc is not installed (Debian package orthanc)")
    pacs = orthanc_support.Orthanc(tmp_path / "orthanc")
    yield pacs
    pacs.stop()
