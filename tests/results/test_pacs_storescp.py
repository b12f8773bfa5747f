"""Delivery to DCMTK's storescp: a second, independent Storage SCP receives the SR and the KOS intact."""

from __future__ import annotations

import socket
import subprocess
import time

import pydicom
import pytest

from edge_agent.service.simulator import ROUTINE_HEAD as ROUTINE
from edge_agent.results.content import Algorithm
from edge_agent.results.delivery import PacsDelivery
from edge_agent.results.destination import parse_destination
from edge_agent.results.queue import read_deliveries
from edge_agent.results.sender import SenderSettings
from edge_agent.results.study import read_study_header
from edge_agent.service.simulator import render
from edge_agent.testing.dcmtk import dcmtk

STORESCP = dcmtk("storescp")
pytestmark = pytest.mark.skipif(STORESCP is None, reason="DCMTK storescp is not installed")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_storescp_receives_what_was_queued(tmp_path):
    _, paths = render("ich", 61, tmp_path / "series", slices=12, **ROUTINE)
    first = pydicom.dcmread(paths[0], stop_before_pixels=True)
    keys = [pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in paths[4:6]]
    result = {"series_instance_uid": first.SeriesInstanceUID, "study_instance_uid": first.StudyInstanceUID,
              "status": "analysed", "models": [{"name": "ich", "version": "2.0.0", "status": "analysed"}],
              "findings": [{"code": "ich", "label": "Intracranial haemorrhage", "probability": 0.91, "positive": True,
                            "threshold": 0.5, "model": "ich", "model_version": "2.0.0",
                            "key_slices": [{"sop_instance_uid": k, "probability": 0.9} for k in keys]}]}
    inbox = tmp_path / "storescp"
    inbox.mkdir()
    port = _port()
    scp = subprocess.Popen([STORESCP, "-aet", "STORESCP", "-od", str(inbox), "-uf", str(port)],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    delivery = PacsDelivery(tmp_path / "pacs.sqlite3", [parse_destination(f"STORESCP@127.0.0.1:{port}")],
                            SenderSettings(calling_ae_title="EDGE_TEST", retry_min=0.2, retry_max=0.5),
                            site="s", device="d")
    try:
        time.sleep(0.5)
        delivery.start()
        new = delivery.submit(result, read_study_header(paths[0]),
                              {"ich": Algorithm("ich", "2.0.0", "cd" * 32, "onnxrt", "fp32", True)}, "HEAD")
        assert len(new) == 2
        # The same result again: the same digest, nothing new.
        assert delivery.submit(result, read_study_header(paths[0]), {"ich": Algorithm(
            "ich", "2.0.0", "cd" * 32, "onnxrt", "fp32", True)}, "HEAD") == []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(list(inbox.iterdir())) < 2:
            time.sleep(0.2)
        time.sleep(0.5)
    finally:
        delivery.stop()
        scp.terminate()
        scp.wait(10)
        scp.stdout.close()
    received = {pydicom.dcmread(p).SOPInstanceUID: p for p in inbox.iterdir()}
    assert set(received) == set(new)
    rows = read_deliveries(tmp_path / "pacs.sqlite3")
    assert {r["state"] for r in rows} == {"done"}
    queued = {r["sop_instance_uid"]: r for r in rows}
    assert set(queued) == set(new) and {r["kind"] for r in rows} == {"sr", "kos"}
    for uid, path in received.items():
        dump = subprocess.run([dcmtk("dsrdump") or "dsrdump", str(path)], capture_output=True, text=True)
        assert dump.returncode == 0, dump.stdout + dump.stderr
        assert ("Comprehensive 3D SR" if queued[uid]["kind"] == "sr" else "Key Object Selection") in dump.stdout
        stored = pydicom.dcmread(path)
        assert stored.StudyInstanceUID == first.StudyInstanceUID and stored.PatientID == first.PatientID
        assert stored.file_meta.SourceApplicationEntityTitle.strip() == "EDGE_TEST"
