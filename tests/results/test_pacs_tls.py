"""C-STORE over DICOM TLS (``tls:AET@host:port``): real TLS peers, real certificates, no mocks.

Certificates come from openssl (edge_agent.testing.mosquitto.make_pki): a CA, a server certificate for
localhost / 127.0.0.1, a client certificate, and a second CA that signed nothing here. The peers are
DCMTK's storescp (mutual TLS, as it requires by default), pynetdicom's own Storage SCP behind a TLS context
built here with the ssl module (not with the agent's code), and Orthanc's DICOM TLS.
"""

from __future__ import annotations

import logging
import subprocess
import time

import pydicom
import pytest

from pacs_helpers import (COMPREHENSIVE_3D_SR, KEY_OBJECT_SELECTION, TlsScp, all_done, closing_factory, delivered,
                          delivery, destination_checks, failed_tries, one_sentence, rows, server_context,
                          submit)
from edge_agent.testing.net import free_port
from edge_agent.testing.wait import wait_value as wait_for
from edge_agent.testing import orthanc as orthanc_support
from edge_agent.testing.dcmtk import dcmtk

STORESCP = dcmtk("storescp")

pytestmark = pytest.mark.timeout(180)


def _mutual(pki) -> dict:
    return dict(tls_ca=str(pki.ca_cert), tls_cert=str(pki.client_cert), tls_key=str(pki.client_key))


def _checks(destination: str, **pacs):
    return destination_checks(destination, ae_title="EDGE_TEST", **pacs)


@pytest.fixture
def scp_factory():
    yield from closing_factory(TlsScp)


@pytest.mark.skipif(STORESCP is None, reason="DCMTK storescp is not installed")
def test_dcmtk_storescp_receives_sr_and_kos_over_mutual_tls(tmp_path, pki, series):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    port = free_port()
    # storescp's default is --require-peer-cert: mutual TLS, our client certificate checked against its CA.
    scp = subprocess.Popen([STORESCP, "-aet", "STORESCP", "-od", str(inbox), "+tls", str(pki.server_key),
                            str(pki.server_cert), "+cf", str(pki.ca_cert), str(port)],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    pacs = delivery(tmp_path, f"tls:STORESCP@127.0.0.1:{port}", **_mutual(pki))
    try:
        time.sleep(0.5)
        (check,) = _checks(f"tls:STORESCP@127.0.0.1:{port}", **_mutual(pki))
        assert check.ok and "over DICOM TLS" in check.line, check.line
        pacs.start()
        new = submit(pacs, series)
        done = wait_for(lambda: all_done(tmp_path), 30, "delivery over TLS")
        wait_for(lambda: len(list(inbox.iterdir())) >= 2, 10, "the files in storescp's folder")
        time.sleep(0.3)
    finally:
        pacs.stop()
        scp.terminate()
        output = scp.communicate(timeout=10)[0].decode(errors="replace")
    received = {pydicom.dcmread(p).SOPInstanceUID: pydicom.dcmread(p) for p in inbox.iterdir()}
    assert set(received) == set(new) == {r["sop_instance_uid"] for r in done}, output
    assert {r["destination"] for r in done} == {f"tls:STORESCP@127.0.0.1:{port}"}   # the queue key
    kinds = {str(ds.SOPClassUID) for ds in received.values()}
    assert kinds == {COMPREHENSIVE_3D_SR, KEY_OBJECT_SELECTION}
    first = pydicom.dcmread(series[0], stop_before_pixels=True)
    assert all(ds.StudyInstanceUID == first.StudyInstanceUID for ds in received.values())


def test_a_pacs_demanding_client_certificates_stores_with_ours_and_refuses_without(tmp_path, pki, series,
                                                                                  scp_factory, caplog):
    scp = scp_factory(server_context(pki, require_client=True))
    with_cert = tmp_path / "with"
    with_cert.mkdir()
    pacs = delivery(with_cert, scp.destination, **_mutual(pki))
    new, _ = delivered(pacs, series, with_cert, "delivery with our client certificate")
    assert sorted(scp.stored) == sorted(new)

    scp.stored.clear()
    without = tmp_path / "without"
    without.mkdir()
    pacs = delivery(without, scp.destination, tls_ca=str(pki.ca_cert))
    with caplog.at_level(logging.WARNING, logger="edge_agent.results"):
        failed = failed_tries(pacs, series, without, 2, "tries refused without a client certificate")
    assert scp.stored == []
    assert all("TLS" in r["last_error"] and "pacs.tls_cert" in r["last_error"] for r in failed), failed
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(scp.destination in w and "TLS" in w and "client certificate" in w for w in warnings), warnings
    (check,) = _checks(scp.destination, tls_ca=str(pki.ca_cert))
    assert not check.ok and "client certificate" in check.line and "pacs.tls_cert" in check.line, check.line
    one_sentence(check.line)


def test_tls_towards_a_plain_port_is_retried_and_the_check_says_what_to_fix(tmp_path, pki, series, scp_factory,
                                                                           caplog):
    plain = scp_factory(None)                     # a plain DICOM port: no TLS at all
    pacs = delivery(tmp_path, plain.destination, tls_ca=str(pki.ca_cert))
    with caplog.at_level(logging.WARNING, logger="edge_agent.results"):
        failed = failed_tries(pacs, series, tmp_path, 2, "tries against a plain port")
    assert plain.stored == []
    assert all("TLS" in r["last_error"] and f"TLSSCP@127.0.0.1:{plain.port}" in r["last_error"] for r in failed)
    (check,) = _checks(plain.destination, tls_ca=str(pki.ca_cert))
    assert not check.ok, check.line
    assert "TLS handshake" in check.line and "not a TLS port" in check.line
    assert f"TLSSCP@127.0.0.1:{plain.port} for a plain port" in check.line   # the destination written without tls:
    one_sentence(check.line)
    assert not any("Traceback" in r.getMessage() for r in caplog.records)


def test_a_certificate_from_another_ca_or_for_another_host_is_refused(tmp_path, pki, series, scp_factory):
    scp = scp_factory(server_context(pki, require_client=False))
    pacs = delivery(tmp_path, scp.destination, tls_ca=str(pki.other_ca_cert))   # not the CA that signed it
    failed = failed_tries(pacs, series, tmp_path, 1, "a try refused for an untrusted certificate")
    assert scp.stored == []
    assert all("not trusted" in r["last_error"] and "pacs.tls_ca" in r["last_error"] for r in failed)
    (untrusted,) = _checks(scp.destination, tls_ca=str(pki.other_ca_cert))
    assert not untrusted.ok and "certificate is not trusted" in untrusted.line, untrusted.line
    one_sentence(untrusted.line)
    (trusted,) = _checks(scp.destination, tls_ca=str(pki.ca_cert))
    assert trusted.ok, trusted.line

    # The server certificate names localhost and 127.0.0.1: at 127.0.0.2 the host name check refuses it.
    other_host = scp_factory(server_context(pki, require_client=False), host="127.0.0.2")
    (mismatch,) = _checks(other_host.destination, tls_ca=str(pki.ca_cert))
    assert not mismatch.ok and "not valid for the host name 127.0.0.2" in mismatch.line, mismatch.line
    one_sentence(mismatch.line)
    assert other_host.stored == []


def test_tls_material_that_does_not_load_isone_sentence(tmp_path, pki):
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello\n")
    (check,) = _checks("tls:PACS@127.0.0.1:2762", tls_ca=str(not_pem))
    assert not check.ok and "pacs.tls_ca" in check.line and str(not_pem) in check.line, check.line
    (check,) = _checks("tls:PACS@127.0.0.1:2762", tls_cert=str(pki.client_cert), tls_key=str(pki.server_key))
    assert not check.ok and "pacs.tls_cert" in check.line and "cannot be loaded" in check.line, check.line


@pytest.mark.skipif(not orthanc_support.available(), reason="Orthanc is not installed (Debian package orthanc)")
def test_orthanc_dicom_tls_with_client_certificates_files_the_results(tmp_path, pki, series):
    pacs_server = orthanc_support.Orthanc(tmp_path / "orthanc", dicom_tls=orthanc_support.DicomTls(
        pki.server_cert, pki.server_key, trusted=pki.ca_cert, require_client_certificate=True))
    pacs_server.start()
    try:
        pacs_server.upload(series)
        destination = "tls:" + pacs_server.destination
        (check,) = _checks(destination, **_mutual(pki))
        assert check.ok and "C-ECHO answered over DICOM TLS" in check.line, check.line
        (anonymous,) = _checks(destination, tls_ca=str(pki.ca_cert))
        assert not anonymous.ok and "TLS" in anonymous.line, anonymous.line
        pacs = delivery(tmp_path, destination, **_mutual(pki))
        new, _ = delivered(pacs, series, tmp_path, "delivery to Orthanc over DICOM TLS")
        by_sop = pacs_server.instances_by_sop()
        assert set(new) <= set(by_sop)
        assert len(pacs_server.get("/studies")) == 1
        study = pydicom.dcmread(series[0], stop_before_pixels=True).StudyInstanceUID
        assert {by_sop[uid]["StudyInstanceUID"] for uid in new} == {study}
        assert {r["destination"] for r in rows(tmp_path)} == {destination}
    finally:
        pacs_server.stop()
