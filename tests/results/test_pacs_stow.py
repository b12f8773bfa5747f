"""STOW-RS (DICOMweb) destinations: a real Orthanc with its DICOMweb plugin, and a small stdlib STOW peer.

Orthanc's view is read through its own REST API, not through our code: the SR and the KOS sit in the original
study, a resend after the agent was killed mid-send stores nothing twice, a destination down for a while gets
everything once it is back, wrong credentials are retried with a WARNING that never shows the password. The
stdlib peer (http.server, over TLS where asked) answers what Orthanc never does — 202 and 409 with a Failed SOP
Sequence, a 400 whose body echoes patient data — for the per-instance status mapping of PS3.18 10.5.
"""

from __future__ import annotations

import email.parser
import email.policy
import hashlib
import io
import json
import logging
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pydicom
import pytest

from edge_agent.testing.agent import PHI
from edge_agent.results.queue import Due, PacsQueue, QueuedObject
from edge_agent.results.sender import DestinationSender, SenderSettings
from edge_agent.results.stow import instance_outcomes
from pacs_helpers import (COMPREHENSIVE_3D_SR, KEY_OBJECT_SELECTION, all_done, closing_factory, delivered, delivery, destination_checks as _checks, failed_tries,
                          one_sentence, retried, rows, same_content, scan, server_context, submit)
from edge_agent.testing.proxy import TcpProxy
from edge_agent.testing.wait import wait_value as wait_for
from edge_agent.testing import orthanc as orthanc_support

PASSWORD = "Stow-Pa55word-never-logged"

pytestmark = pytest.mark.timeout(300)

needs_dicomweb = pytest.mark.skipif(
    not orthanc_support.available() or orthanc_support.dicomweb_plugin() is None,
    reason="Orthanc and its DICOMweb plugin are not installed (Debian packages orthanc, orthanc-dicomweb)")


@pytest.fixture
def orthanc_factory(tmp_path):
    def make(name: str = "orthanc", **kwargs) -> orthanc_support.Orthanc:
        return orthanc_support.Orthanc(tmp_path / name, dicomweb=True, **kwargs)

    yield from closing_factory(make, close="stop")


def _queued_bytes(tmp_path) -> dict[str, bytes]:
    queue = PacsQueue(tmp_path / "pacs.sqlite3")
    try:
        return {uid: bytes(data) for uid, data in queue._conn.execute("SELECT sop_instance_uid, dataset FROM objects")}
    finally:
        queue.close()


# --------------------------------------------------------------------------- a real Orthanc

@needs_dicomweb
def test_stow_files_the_sr_and_kos_in_the_original_study(tmp_path, series, orthanc_factory):
    orthanc = orthanc_factory(users={"edge": PASSWORD}).start()
    orthanc.upload(series)
    [study_id] = orthanc.get("/studies")
    (check,) = _checks(orthanc.dicomweb_root, stow_user="edge", stow_password=PASSWORD)
    assert check.ok and "QIDO-RS answered" in check.line and "user edge" in check.line, check.line
    pacs = delivery(tmp_path, orthanc.dicomweb_root, stow_user="edge", stow_password=PASSWORD)
    new, done = delivered(pacs, series, tmp_path, "STOW-RS delivery")
    assert {r["destination"] for r in done} == {orthanc.dicomweb_root}     # the queue key is the service root
    assert orthanc.get("/studies") == [study_id] and len(orthanc.get("/patients")) == 1
    by_sop = orthanc.instances_by_sop()
    study_uid = pydicom.dcmread(series[0], stop_before_pixels=True).StudyInstanceUID
    queued = _queued_bytes(tmp_path)
    assert {by_sop[uid]["SOPClassUID"] for uid in new} == {COMPREHENSIVE_3D_SR, KEY_OBJECT_SELECTION}
    for uid in new:
        assert by_sop[uid]["StudyInstanceUID"] == study_uid
        assert orthanc.get(f"/instances/{by_sop[uid]['_id']}/study")["ID"] == study_id
        assert same_content(orthanc, by_sop[uid]["_id"], queued[uid])
    assert pacs.stats()[orthanc.dicomweb_root]["done"] == 2


@needs_dicomweb
def test_the_agent_killed_mid_send_resends_and_orthanc_keeps_one_copy(tmp_path, orthanc_factory, broker, collector,
                                                                     agent_factory):
    from edge_agent.service.simulator import ROUTINE_HEAD, render

    orthanc = orthanc_factory(users={"edge": PASSWORD}).start()
    phantom, paths = render("ich", 61, tmp_path / "series", **ROUTINE_HEAD)
    orthanc.upload(paths)
    proxy = TcpProxy(orthanc.http_port, hold_answers=True, name="stow-proxy")   # Orthanc's answers swallowed
    try:
        root = f"http://127.0.0.1:{proxy.port}/dicom-web"
        env = {"EDGE_AGENT_PACS_STOW_USER": "edge", "EDGE_AGENT_PACS_STOW_PASSWORD": PASSWORD}
        agent = agent_factory(broker.url, "--pacs", root, env=env).start()
        scan(agent, paths)
        uid = phantom.headers.series_instance_uid
        collector.wait(lambda c: [r for r in c.results_for(uid) if r["slices"] == len(paths)], 120)
        # Orthanc stored the SR and KOS, but its answer was swallowed: the agent is still waiting for it.
        wait_for(lambda: len(orthanc.get("/instances")) >= len(paths) + 2
                 and any(r["state"] == "sending" for r in rows(agent.state)), 90, "a STOW-RS stored but unanswered")
        agent.kill()                                   # SIGKILL mid-send
        stored_once = sorted(orthanc.get("/instances"))
        assert any(r["state"] == "sending" for r in rows(agent.state))

        proxy.hold_answers = False
        agent.start()
        done = wait_for(lambda: all_done(agent.state), 90, "the resend after the restart")
        assert "were being sent when the agent stopped" in agent.log_text()
        assert sorted(orthanc.get("/instances")) == stored_once          # the resend added no second copy
        by_sop = orthanc.instances_by_sop()
        assert len(by_sop) == len(stored_once)
        queued = _queued_bytes(agent.state)
        for row in done:
            assert same_content(orthanc, by_sop[row["sop_instance_uid"]]["_id"], queued[row["sop_instance_uid"]])
        assert len(orthanc.get("/studies")) == 1
        assert agent.stop() == 0
        log = agent.log_text()
        assert PASSWORD not in log
        for marker in PHI:
            assert marker not in log, marker
    finally:
        proxy.close()


@needs_dicomweb
def test_orthanc_down_for_a_while_receives_everything_when_it_is_back(tmp_path, series, orthanc_factory, caplog):
    orthanc = orthanc_factory()                   # configured, not running yet
    (check,) = _checks(orthanc.dicomweb_root)
    assert not check.ok and "connection refused" in check.line, check.line
    one_sentence(check.line)
    pacs = delivery(tmp_path, orthanc.dicomweb_root)
    with caplog.at_level(logging.WARNING, logger="edge_agent.results"):
        pacs.start()
        try:
            new = submit(pacs, series)
            failed = wait_for(lambda: retried(tmp_path, 2), 30, "failed tries while Orthanc is down")
            assert all("connection refused" in r["last_error"] for r in failed)
            orthanc.start()
            wait_for(lambda: all_done(tmp_path), 30, "delivery once Orthanc is back")
        finally:
            pacs.stop()
    assert set(new) <= set(orthanc.instances_by_sop())
    assert any(orthanc.dicomweb_root in r.getMessage() and "connection refused" in r.getMessage()
               for r in caplog.records if r.levelno == logging.WARNING)
    (check,) = _checks(orthanc.dicomweb_root)
    assert check.ok, check.line


@needs_dicomweb
def test_wrong_credentials_are_retried_and_the_password_is_never_shown(tmp_path, series, orthanc_factory, caplog):
    orthanc = orthanc_factory(users={"edge": PASSWORD}).start()
    wrong = "Wrong-" + PASSWORD
    pacs = delivery(tmp_path, orthanc.dicomweb_root, stow_user="edge", stow_password=wrong)
    with caplog.at_level(logging.DEBUG):
        failed = failed_tries(pacs, series, tmp_path, 2, "tries refused for wrong credentials")
    assert orthanc.get("/instances") == []
    assert all("HTTP 401 Unauthorized" in r["last_error"] and "pacs.stow_password" in r["last_error"]
               for r in failed)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING
                and r.name.startswith("edge_agent")]
    assert any("HTTP 401 Unauthorized" in w for w in warnings), warnings
    everything = caplog.text + json.dumps(rows(tmp_path), default=str) + repr(pacs.settings)
    assert wrong not in everything and PASSWORD not in everything

    (refused,) = _checks(orthanc.dicomweb_root, stow_user="edge", stow_password=wrong)
    assert not refused.ok and "HTTP 401 Unauthorized" in refused.line and wrong not in refused.line, refused.line
    one_sentence(refused.line)
    (good,) = _checks(orthanc.dicomweb_root, stow_user="edge", stow_password=PASSWORD)
    assert good.ok, good.line
    (no_root,) = _checks(orthanc.url + "/not-dicom-web", stow_user="edge", stow_password=PASSWORD)
    assert not no_root.ok and "HTTP 404 Not Found" in no_root.line and "service root" in no_root.line, no_root.line


# --------------------------------------------------------------------------- a stdlib STOW-RS peer

class StowPeer:
    """A STOW-RS peer on 127.0.0.1 (over TLS with ``context``): each POST gets the next scripted answer
    ``(status, body dict or bytes)``; it keeps what it received (headers, the application/dicom parts)."""

    def __init__(self, answers, context: ssl.SSLContext | None = None) -> None:
        self.answers = list(answers)
        self.received: list[dict] = []
        peer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):  # QIDO-RS, for run --check
                peer.received.append({"method": "GET", "path": self.path, "headers": dict(self.headers)})
                self._answer(200, [])

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                if self.headers.get("Transfer-Encoding") == "chunked":
                    body = b""
                    while (size := int(self.rfile.readline().strip(), 16)):
                        body += self.rfile.read(size)
                        self.rfile.readline()
                    self.rfile.readline()
                else:
                    body = self.rfile.read(length)
                message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
                    b"Content-Type: " + self.headers["Content-Type"].encode() + b"\r\n\r\n" + body)
                parts = [p.get_payload(decode=True) for p in message.iter_parts()]
                peer.received.append({"method": "POST", "path": self.path, "headers": dict(self.headers),
                                      "parts": parts, "types": [p.get_content_type() for p in message.iter_parts()]})
                status, answer = peer.answers.pop(0) if peer.answers else (200, {})
                self._answer(status, answer)

            def _answer(self, status, answer):
                data = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain" if isinstance(answer, bytes)
                                 else "application/dicom+json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if context is not None:
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1},
                                       name="stow-peer")
        self.thread.start()

    def root(self, scheme: str = "http") -> str:
        return f"{scheme}://127.0.0.1:{self.port}/dicom-web"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def peer_factory():
    yield from closing_factory(StowPeer)


def _failed_item(uid: str, reason: int, **extra) -> dict:
    item = {"00081150": {"vr": "UI", "Value": [COMPREHENSIVE_3D_SR]}, "00081155": {"vr": "UI", "Value": [uid]},
            "00081197": {"vr": "US", "Value": [reason]}}
    item.update(extra)
    return item


def _referenced_item(uid: str) -> dict:
    return {"00081150": {"vr": "UI", "Value": [COMPREHENSIVE_3D_SR]}, "00081155": {"vr": "UI", "Value": [uid]}}


def _response(failed=(), referenced=()) -> dict:
    out = {}
    if failed:
        out["00081198"] = {"vr": "SQ", "Value": list(failed)}
    if referenced:
        out["00081199"] = {"vr": "SQ", "Value": list(referenced)}
    return out


def _dataset(uid: str) -> bytes:
    ds = pydicom.Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = COMPREHENSIVE_3D_SR, uid
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.3", "1.2.3.4"
    ds.PatientName = "PHANTOM^SECRET"
    ds.Modality = "SR"
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = COMPREHENSIVE_3D_SR, uid
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _queue(path, destination: str, uids: list[str]) -> dict[str, bytes]:
    data = {uid: _dataset(uid) for uid in uids}
    queue = PacsQueue(path)
    queue.add(series_instance_uid="1.2.3.4", model="ich", model_version="2", revision=1, digest="d",
              objects=[QueuedObject(uid, COMPREHENSIVE_3D_SR, "sr", b, hashlib.sha256(b).hexdigest())
                       for uid, b in data.items()], destinations=[destination])
    queue.close()
    return data


def _run_sender(path, destination: str, until, **settings) -> dict[str, dict]:
    from edge_agent.results.destination import parse_destination

    sender = DestinationSender(path, parse_destination(destination),
                               SenderSettings(retry_min=0.1, retry_max=0.2, timeout=3, **settings))
    sender.start()
    try:
        wait_for(lambda: until({r["sop_instance_uid"]: r for r in rows(path.parent)}), 20, "the peer's answers")
    finally:
        sender.stop()
    return {r["sop_instance_uid"]: r for r in rows(path.parent)}


def test_202_and_409_are_mapped_per_instance_and_error_bodies_are_never_logged(tmp_path, peer_factory, caplog):
    a, b, c = "2.25.1001", "2.25.1002", "2.25.1003"
    peer = peer_factory([
        # 1: a is a duplicate (done), b is refused for lack of resources (retry), c is stored (done)
        (202, _response(failed=[_failed_item(a, 0x0111), _failed_item(b, 0xA700)], referenced=[_referenced_item(c)])),
        # 2: b again: a 400 whose body echoes patient data (retry; the WARNING names the status only)
        (400, b"bad request for PHANTOM^SECRET in study 1.2.3"),
        # 3: b again: 409, its failure reason says the instance is already there (done)
        (409, _response(failed=[_failed_item(b, 0xC000, **{"00000902": {"vr": "LO",
                                                                          "Value": ["Instance already exists"]}})])),
    ])
    path = tmp_path / "pacs.sqlite3"
    queued = _queue(path, peer.root(), [a, b, c])
    with caplog.at_level(logging.INFO, logger="edge_agent.results"):
        final = _run_sender(path, peer.root(), lambda r: all(x["state"] == "done" for x in r.values()),
                            stow_token="tok-123-secret")
    assert {uid: r["state"] for uid, r in final.items()} == {a: "done", b: "done", c: "done"}
    assert final[b]["attempts"] == 3 and final[a]["attempts"] == final[c]["attempts"] == 1
    posts = [r for r in peer.received if r["method"] == "POST"]
    assert len(posts) == 3 and all(p["path"] == "/dicom-web/studies" for p in posts)
    assert all(p["headers"]["Authorization"] == "Bearer tok-123-secret" for p in posts)
    assert posts[0]["headers"]["Content-Type"].startswith('multipart/related; type="application/dicom"')
    assert set(posts[0]["types"]) == {"application/dicom"}
    # What went over the wire is the queued Part 10 file, byte for byte.
    assert sorted(posts[0]["parts"]) == sorted(queued.values()) and posts[1]["parts"] == [queued[b]]
    messages = [r.getMessage() for r in caplog.records]
    warnings = [m for r, m in zip(caplog.records, messages) if r.levelno == logging.WARNING]
    assert any(b in w and "failure reason 0xA700 (out of resources)" in w for w in warnings), warnings
    assert any("HTTP 400 Bad Request" in w for w in warnings), warnings
    assert any(a in w and "0x0111 (already there)" in w for w in warnings), warnings
    text = caplog.text + json.dumps(final, default=str)
    assert "PHANTOM^SECRET" not in text and "bad request for" not in text and "tok-123-secret" not in text


def test_server_errors_and_time_outs_are_retried(tmp_path, peer_factory):
    uid = "2.25.2001"
    peer = peer_factory([(503, b"busy"), (429, b"slow down"), (200, {})])
    path = tmp_path / "pacs.sqlite3"
    _queue(path, peer.root(), [uid])
    final = _run_sender(path, peer.root(), lambda r: r[uid]["state"] == "done")
    assert final[uid]["attempts"] == 3
    assert len([r for r in peer.received if r["method"] == "POST"]) == 3


def test_stow_over_https_trusts_pacs_tls_ca_only(tmp_path, pki, peer_factory):
    peer = peer_factory([(200, _response(referenced=[_referenced_item("2.25.3001")]))], context=server_context(pki))
    (trusted,) = _checks(peer.root("https"), tls_ca=str(pki.ca_cert))
    assert trusted.ok and "over TLS" in trusted.line, trusted.line
    (untrusted,) = _checks(peer.root("https"), tls_ca=str(pki.other_ca_cert))
    assert not untrusted.ok and "certificate is not trusted" in untrusted.line and "pacs.tls_ca" in untrusted.line
    one_sentence(untrusted.line)
    (system_store,) = _checks(peer.root("https"))            # the system store does not know the test CA either
    assert not system_store.ok and "not trusted" in system_store.line, system_store.line
    path = tmp_path / "pacs.sqlite3"
    _queue(path, peer.root("https"), ["2.25.3001"])
    final = _run_sender(path, peer.root("https"), lambda r: r["2.25.3001"]["state"] == "done",
                        tls_ca=str(pki.ca_cert))
    assert final["2.25.3001"]["destination"] == peer.root("https")

    demanding = peer_factory([], context=server_context(pki, require_client=True))
    (anonymous,) = _checks(demanding.root("https"), tls_ca=str(pki.ca_cert))
    assert not anonymous.ok and "TLS" in anonymous.line and "pacs.tls_cert" in anonymous.line, anonymous.line
    one_sentence(anonymous.line)
    (signed,) = _checks(demanding.root("https"), tls_ca=str(pki.ca_cert), tls_cert=str(pki.client_cert),
                        tls_key=str(pki.client_key))
    assert signed.ok, signed.line

    plain = peer_factory([])
    (wrong_scheme,) = _checks(plain.root("https"), tls_ca=str(pki.ca_cert))
    assert not wrong_scheme.ok and "TLS handshake" in wrong_scheme.line, wrong_scheme.line
    assert plain.root("http") + " for a plain port" in wrong_scheme.line
    one_sentence(wrong_scheme.line)


def _rows(*uids: str) -> list[Due]:
    return [Due(uid, COMPREHENSIVE_3D_SR, "sr", b"", 1, 0.0) for uid in uids]


def test_instance_outcomes_follow_ps3_18():
    answer = pydicom.Dataset.from_json(_response(
        failed=[_failed_item("1", 0x0111), _failed_item("2", 0xC122), _failed_item("3", 0x0110, **{
            "00000902": {"vr": "LO", "Value": ["duplicate instance"]}})],
        referenced=[_referenced_item("4")]))
    outcomes = instance_outcomes(answer, 202, _rows("1", "2", "3", "4", "5"))
    assert [o.state for o in outcomes] == ["done", "retry", "done", "done", "retry"]
    assert "0xC122 (transfer syntax not supported)" in outcomes[1].why
    assert "without naming this object" in outcomes[4].why
    assert [o.state for o in instance_outcomes(pydicom.Dataset(), 200, _rows("1", "2"))] == ["done", "done"]
    assert [o.state for o in instance_outcomes(pydicom.Dataset(), 202, _rows("1"))] == ["retry"]
