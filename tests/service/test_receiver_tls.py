"""DICOM TLS on the receiver, against the real DCMTK storescu (as a scanner would send) and pynetdicom.

Certificates come from openssl (edge_agent.testing.mosquitto.make_pki): a CA, a
server certificate for localhost/127.0.0.1, a client certificate, and a second
CA that signed nothing here.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pydicom
import pytest

from edge_agent.dicom.synth import SeriesHeaders, write_series
from edge_agent.errors import ConfigError
from edge_agent.ingest.receiver import StorageReceiver, tls_context
from edge_agent.testing.dcmtk import dcmtk
from edge_agent.testing.mosquitto import make_pki
from edge_agent.testing.volumes import random_hu

STORESCU = dcmtk("storescu")
pytestmark = pytest.mark.skipif(STORESCU is None, reason="DCMTK storescu is not installed (apt install dcmtk)")


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


def _series(folder, n=2):
    vol = random_hu(n, 24, seed=0)
    return write_series(vol, folder, headers=SeriesHeaders())


def _storescu(port, files, *tls_flags, host="127.0.0.1"):
    cmd = [STORESCU, "-aet", "SCANNER", "-aec", "EDGE_AGENT", "-ta", "10", "-td", "20", *tls_flags, host, str(port),
           *map(str, files)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def _landed(rx):
    return sorted(p for p in rx.watch_dir.rglob("*.dcm"))


def test_tls_store_from_dcmtk_lands_and_plain_tcp_is_refused(tmp_path, pki):
    files = _series(tmp_path / "src")
    with StorageReceiver(tmp_path / "watch", port=0, ssl_context=tls_context(pki.server_cert, pki.server_key)) as rx:
        plain = _storescu(rx.port, files[:1])
        assert plain.returncode != 0 and _landed(rx) == []
        secure = _storescu(rx.port, files, "+tls", str(pki.client_key), str(pki.client_cert), "+cf",
                           str(pki.ca_cert))
        assert secure.returncode == 0, secure.stdout + secure.stderr
        assert len(_landed(rx)) == 2
        wrong_ca = _storescu(rx.port, files[:1], "+tla", "+cf", str(pki.other_ca_cert))   # cannot trust us
        assert wrong_ca.returncode != 0
        deadline = time.monotonic() + 10                 # the server's side of a failed handshake ends a bit later
        while rx.stats()["tls_failures"] < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        stats = rx.stats()
    assert stats["stored"] == 2 and stats["tls_failures"] == 2
    landed = {pydicom.dcmread(p).SOPInstanceUID: p for p in _landed(rx)}
    for src in files:
        ds = pydicom.dcmread(src)
        np.testing.assert_array_equal(pydicom.dcmread(landed[ds.SOPInstanceUID]).pixel_array, ds.pixel_array)


def test_mutual_tls_refuses_a_peer_without_a_certificate_from_our_ca(tmp_path, pki):
    files = _series(tmp_path / "src", n=1)
    ctx = tls_context(pki.server_cert, pki.server_key, pki.ca_cert)
    with StorageReceiver(tmp_path / "watch", port=0, ssl_context=ctx) as rx:
        anonymous = _storescu(rx.port, files, "+tla", "+cf", str(pki.ca_cert))
        assert anonymous.returncode != 0 and _landed(rx) == []
        signed = _storescu(rx.port, files, "+tls", str(pki.client_key), str(pki.client_cert), "+cf",
                           str(pki.ca_cert))
        assert signed.returncode == 0, signed.stdout + signed.stderr
        assert len(_landed(rx)) == 1


def test_a_silent_peer_does_not_block_other_scanners(tmp_path, pki):
    """The handshake runs in the association's thread: a connection that never speaks TLS holds only itself."""
    files = _series(tmp_path / "src", n=1)
    with StorageReceiver(tmp_path / "watch", port=0, ssl_context=tls_context(pki.server_cert, pki.server_key)) as rx:
        silent = socket.create_connection(("127.0.0.1", rx.port))
        try:
            time.sleep(0.2)
            proc = _storescu(rx.port, files, "+tls", str(pki.client_key), str(pki.client_cert), "+cf",
                             str(pki.ca_cert))
            assert proc.returncode == 0, proc.stdout + proc.stderr
            assert len(_landed(rx)) == 1
        finally:
            silent.close()


def test_ipv6_bind(tmp_path):
    if not socket.has_ipv6:
        pytest.skip("this Python has no IPv6")
    try:
        probe = socket.socket(socket.AF_INET6)
        probe.bind(("::1", 0))
        probe.close()
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    [src] = _series(tmp_path / "src", n=1)
    script = textwrap.dedent(f"""
        import sys
        from pydicom import dcmread
        from pynetdicom import AE
        ae = AE(ae_title="PYSCU")
        ds = dcmread({str(src)!r})
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
        assoc = ae.associate("::1", int(sys.argv[1]), ae_title="EDGE_AGENT")
        if not assoc.is_established:
            sys.exit(2)
        status = assoc.send_c_store(ds)
        assoc.release()
        print(hex(status.Status))
    """)   # DCMTK's storescu here speaks IPv4 only
    with StorageReceiver(tmp_path / "watch", port=0, bind="::1") as rx:
        proc = subprocess.run([sys.executable, "-c", script, str(rx.port)], capture_output=True, text=True,
                              timeout=60)
        assert proc.returncode == 0 and proc.stdout.strip() == "0x0", proc.stdout + proc.stderr
        assert len(_landed(rx)) == 1


def test_bad_tls_files_are_one_sentence(tmp_path, pki):
    missing = tmp_path / "nope.pem"
    with pytest.raises(ConfigError, match="cannot be loaded.*PEM certificate"):
        tls_context(missing, pki.server_key)
    with pytest.raises(ConfigError, match="cannot be loaded"):
        tls_context(pki.server_cert, pki.client_key)            # key of another certificate
    with pytest.raises(ConfigError, match="CA file .* cannot be loaded"):
        tls_context(pki.server_cert, pki.server_key, missing)
