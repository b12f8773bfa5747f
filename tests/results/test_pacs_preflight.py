"""`run --check` tries every PACS destination: a real Orthanc, DCMTK's storescp, and SCPs that refuse.

What a refusing PACS does is built with pynetdicom's own SCP (an AE that checks the called AE title, one
that accepts CT images but no SR), not with our code.
"""

from __future__ import annotations

import socket
import subprocess
import time

import pytest
from pynetdicom import AE, evt

from edge_agent.config import Config
from edge_agent.service.preflight import pacs_checks
from edge_agent.testing.dcmtk import dcmtk
from edge_agent.testing.orthanc import Orthanc, available

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
VERIFICATION = "1.2.840.10008.1.1"

pytestmark = pytest.mark.timeout(120)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _checks(*destinations: str, ae_title: str = "EDGE_TEST"):
    cfg = Config()
    cfg.pacs.destinations = list(destinations)
    cfg.pacs.ae_title = ae_title
    return pacs_checks(cfg, timeout=3.0)


def _scp(contexts, **kw):
    ae = AE(ae_title="REFUSER")
    for uid in contexts:
        ae.add_supported_context(uid)
    port = _port()
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_ECHO, lambda e: 0x0000)],
                             **kw)
    return server, port


def test_no_destination_is_one_ok_line():
    (check,) = _checks()
    assert check.ok and "MQTT only" in check.line


@pytest.mark.skipif(not available(), reason="Orthanc is not installed")
def test_a_real_orthanc_answers_and_accepts_sr_and_ko(tmp_path):
    pacs = Orthanc(tmp_path / "orthanc").start()
    try:
        (check,) = _checks(pacs.destination)
        assert check.ok, check.line
        assert "C-ECHO answered" in check.line and "Key Object Selection" in check.line
        assert pacs.get("/instances") == []            # a check stores nothing
    finally:
        pacs.stop()


@pytest.mark.skipif(dcmtk("storescp") is None, reason="DCMTK storescp is not installed")
@pytest.mark.refused_dicom_connection
def test_dcmtk_storescp_passes_and_a_closed_port_fails_in_one_sentence(tmp_path):
    port = _port()
    scp = subprocess.Popen([dcmtk("storescp"), "-aet", "STORESCP", "-od", str(tmp_path), str(port)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        good, closed = _checks(f"STORESCP@127.0.0.1:{port}", f"NOBODY@127.0.0.1:{_port()}")
    finally:
        scp.terminate()
        scp.wait(10)
    assert good.ok, good.line
    assert not closed.ok
    assert "no DICOM answer" in closed.line and closed.line.count(". ") == 0 and "Traceback" not in closed.line
    assert list(tmp_path.iterdir()) == []              # nothing was stored


def test_a_pacs_that_does_not_know_the_called_ae_title_rejects_and_says_so():
    server, port = _scp([VERIFICATION, "1.2.840.10008.5.1.4.1.1.88.34", "1.2.840.10008.5.1.4.1.1.88.59"])
    server.ae.require_called_aet = True
    try:
        (check,) = _checks(f"WRONGAET@127.0.0.1:{port}", ae_title="EDGE_TEST")
    finally:
        server.shutdown()
    assert not check.ok
    assert "rejected the association" in check.line and "EDGE_TEST" in check.line


def test_a_pacs_without_sr_storage_fails_before_results_become_dead_letters():
    server, port = _scp([VERIFICATION, CT_IMAGE_STORAGE])
    try:
        (check,) = _checks(f"REFUSER@127.0.0.1:{port}")
    finally:
        server.shutdown()
    assert not check.ok
    assert "does not accept Comprehensive 3D SR and Key Object Selection storage" in check.line


def test_with_key_images_on_the_secondary_capture_class_is_checked_too():
    sr_and_ko = [VERIFICATION, "1.2.840.10008.5.1.4.1.1.88.34", "1.2.840.10008.5.1.4.1.1.88.59"]
    server, port = _scp(sr_and_ko)
    try:
        cfg = Config()
        cfg.pacs.destinations, cfg.pacs.ae_title = [f"REFUSER@127.0.0.1:{port}"], "EDGE_TEST"
        (plain,) = pacs_checks(cfg, timeout=3.0)
        cfg.pacs.secondary_capture = True
        (with_sc,) = pacs_checks(cfg, timeout=3.0)
    finally:
        server.shutdown()
    assert plain.ok, plain.line
    assert not with_sc.ok and "does not accept Secondary Capture Image storage" in with_sc.line
    server, port = _scp([*sr_and_ko, "1.2.840.10008.5.1.4.1.1.7"])
    try:
        cfg.pacs.destinations = [f"REFUSER@127.0.0.1:{port}"]
        (check,) = pacs_checks(cfg, timeout=3.0)
    finally:
        server.shutdown()
    assert check.ok and "Secondary Capture Image storage" in check.line, check.line
