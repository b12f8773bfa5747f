"""The secondary-capture key image through PacsDelivery: queued with a positive revision when
``pacs.secondary_capture`` is on, never without a thumbnail, and withdrawn with the KOS by the rejection note.

Never started (nothing is sent): the queue is read back. The header is a real phantom file's; the
rejection note is checked by ``dciodvfy`` where installed.
"""

from __future__ import annotations

import io
import sqlite3
import subprocess

import numpy as np
import pydicom
import pytest

from edge_agent.results.capture import SECONDARY_CAPTURE
from edge_agent.results.content import Algorithm
from edge_agent.results.delivery import PacsDelivery
from edge_agent.results.destination import parse_destination
from edge_agent.results.sender import SenderSettings
from edge_agent.results.study import read_study_header
from edge_agent.service.simulator import ROUTINE_HEAD, render
from edge_agent.testing.dcmtk import DCIODVFY

ALGORITHM = Algorithm("ich", "2.0.0", "cd" * 32, "onnxrt", "fp32", True)


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    _, paths = render("ich", 61, tmp_path_factory.mktemp("phantom"), slices=12, **ROUTINE_HEAD)
    return paths, [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]


def _result(datasets, positive=True, probability=0.93) -> dict:
    first = datasets[0]
    return {"series_instance_uid": first.SeriesInstanceUID, "study_instance_uid": first.StudyInstanceUID,
            "models": [{"name": "ich", "version": "2.0.0", "status": "analysed"}],
            "findings": [{"model": "ich", "code": "ich", "label": "Intracranial haemorrhage",
                          "probability": probability, "positive": positive, "threshold": 0.5,
                          "key_slices": [{"sop_instance_uid": datasets[6].SOPInstanceUID, "probability": 0.9}]}]}


def _objects(path) -> dict:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return {(rev, kind): (uid, bytes(data)) for kind, uid, data, rev in
                conn.execute("SELECT kind, sop_instance_uid, dataset, revision FROM objects")}
    finally:
        conn.close()


def _delivery(tmp_path, on=True):
    return PacsDelivery(tmp_path / "pacs.sqlite3", [parse_destination("PACS@127.0.0.1:11112")], SenderSettings(),
                        site="s", device="d", secondary_capture=on)


KEY = {"image": np.tile(np.arange(128, dtype=np.uint8), (128, 1)), "boxes": [(40.0, 30.0, 60.0, 70.0)],
       "orientation": [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]}


def test_positive_revision_queues_the_key_image_and_its_withdrawal_rejects_it(phantom, tmp_path):
    paths, datasets = phantom
    header = read_study_header(paths[0])
    delivery = _delivery(tmp_path)
    key = dict(KEY, sop_instance_uid=datasets[6].SOPInstanceUID)
    delivery.submit(_result(datasets), header, {"ich": ALGORITHM}, "HEAD", decided_at=1_800_000_000.0,
                    key_images={"ich": key})
    objects = _objects(delivery.queue_path)
    assert {k for (rev, k) in objects if rev == 1} == {"sr", "kos", "sc"}
    sc_uid, data = objects[(1, "sc")]
    sc = pydicom.dcmread(io.BytesIO(data))
    assert sc.SOPClassUID == SECONDARY_CAPTURE and sc.BurnedInAnnotation == "YES"
    assert sc.StudyInstanceUID == datasets[0].StudyInstanceUID
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == datasets[6].SOPInstanceUID

    delivery.submit(_result(datasets, positive=False, probability=0.1), header, {"ich": ALGORITHM}, "HEAD",
                    decided_at=1_800_000_100.0, key_images={})
    objects = _objects(delivery.queue_path)
    assert {k for (rev, k) in objects if rev == 2} == {"sr", "rejection"}   # negative: no new KOS, no new SC
    uid, note_bytes = objects[(2, "rejection")]
    note = pydicom.dcmread(io.BytesIO(note_bytes))
    evidence = {(r.ReferencedSOPClassUID, r.ReferencedSOPInstanceUID)
                for study in note.CurrentRequestedProcedureEvidenceSequence
                for series in study.ReferencedSeriesSequence for r in series.ReferencedSOPSequence}
    assert (SECONDARY_CAPTURE, sc_uid) in evidence and objects[(1, "kos")][0] in {u for _, u in evidence}
    tree = {i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for i in note.ContentSequence
            if i.ValueType in ("COMPOSITE", "IMAGE")}
    assert sc_uid in tree
    if DCIODVFY:
        path = tmp_path / "note.dcm"
        path.write_bytes(note_bytes)
        out = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True)
        assert [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")] == []


def test_no_key_image_when_off_or_without_a_thumbnail(phantom, tmp_path):
    paths, datasets = phantom
    header = read_study_header(paths[0])
    key = dict(KEY, sop_instance_uid=datasets[6].SOPInstanceUID)
    off = _delivery(tmp_path / "off", on=False)
    off.submit(_result(datasets), header, {"ich": ALGORITHM}, "HEAD", decided_at=1.8e9, key_images={"ich": key})
    assert {k for (_, k) in _objects(off.queue_path)} == {"sr", "kos"}
    missing = _delivery(tmp_path / "missing")
    missing.submit(_result(datasets), header, {"ich": ALGORITHM}, "HEAD", decided_at=1.8e9, key_images={})
    assert {k for (_, k) in _objects(missing.queue_path)} == {"sr", "kos"}
    negative = _delivery(tmp_path / "negative")
    negative.submit(_result(datasets, positive=False), header, {"ich": ALGORITHM}, "HEAD", decided_at=1.8e9,
                    key_images={"ich": key})
    assert {k for (_, k) in _objects(negative.queue_path)} == {"sr"}
