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


def _positive_with_key_image(phantom, tmp_path):
    """Revision 1 of a positive result with its key image queued: (datasets, header, delivery, key image)."""
    paths, datasets = phantom
    header = read_study_header(paths[0])
    delivery = _delivery(tmp_path)
    key = dict(KEY, sop_instance_uid=datasets[6].SOPInstanceUID)
    delivery.submit(_result(datasets), header, {"ich": ALGORITHM}, "HEAD", decided_at=1_800_000_000.0,
                    key_images={"ich": key})
    return datasets, header, delivery, key


def test_positive_revision_queues_the_key_image_and_its_withdrawal_rejects_it(phantom, tmp_path):
    datasets, header, delivery, _ = _positive_with_key_image(phantom, tmp_path)
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


def test_a_positive_result_a_reopen_can_no_longer_assess_is_withdrawn(phantom, tmp_path):
    """Revision 1 flagged key images; a reopen made the series not assessable for the model (no findings in
    the result). Revision 2 is an SR whose finding — read back from revision 1 — is Indeterminate and says
    why, with the rejection note withdrawing revision 1's KOS and key image. Sent once; a later positive
    revision is an ordinary one again."""
    datasets, header, delivery, key = _positive_with_key_image(phantom, tmp_path)
    first = datasets[0]
    unassessable = {"series_instance_uid": first.SeriesInstanceUID, "study_instance_uid": first.StudyInstanceUID,
                    "status": "not_assessable", "reason": "out of the head domain",
                    "models": [{"name": "ich", "version": "2.0.0", "status": "not_assessable"}], "findings": []}
    assert delivery.submit(unassessable, header, {"ich": ALGORITHM}, "HEAD", decided_at=1_800_000_100.0)
    objects = _objects(delivery.queue_path)
    assert {k for (rev, k) in objects if rev == 2} == {"sr", "rejection"}
    sr_uid, sr_bytes = objects[(2, "sr")]
    sr = pydicom.dcmread(io.BytesIO(sr_bytes))
    codes_ = {(c.CodeValue, c.CodeMeaning) for item in _walk(sr) for c in item.get("ConceptCodeSequence", [])}
    assert ("82334004", "Indeterminate") in codes_ and ("52101004", "Present") not in codes_
    assert ("1386000", "Intracranial hemorrhage") in codes_
    texts = [str(item.TextValue) for item in _walk(sr) if item.ValueType == "TEXT"]
    assert any("now not assessable" in t and objects[(1, "kos")][0] in t for t in texts), texts
    assert not [i for i in _walk(sr) if i.ValueType == "NUM"]          # no probability: nothing was decided
    assert sr.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0] \
        .ReferencedSOPInstanceUID == objects[(1, "sr")][0]
    note = pydicom.dcmread(io.BytesIO(objects[(2, "rejection")][1]))
    rejected = {r.ReferencedSOPInstanceUID for study in note.CurrentRequestedProcedureEvidenceSequence
                for series in study.ReferencedSeriesSequence for r in series.ReferencedSOPSequence}
    assert rejected == {objects[(1, "kos")][0], objects[(1, "sc")][0]}
    if DCIODVFY:
        for name, data in (("sr2.dcm", sr_bytes), ("note2.dcm", objects[(2, "rejection")][1])):
            (tmp_path / name).write_bytes(data)
            out = subprocess.run([DCIODVFY, str(tmp_path / name)], capture_output=True, text=True)
            assert [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")] == []
    # the same answer again: nothing new; positive again: an ordinary revision 3, nothing left to withdraw
    assert delivery.submit(unassessable, header, {"ich": ALGORITHM}, "HEAD", decided_at=1_800_000_200.0) == []
    delivery.submit(_result(datasets), header, {"ich": ALGORITHM}, "HEAD", decided_at=1_800_000_300.0,
                    key_images={"ich": key})
    assert {k for (rev, k) in _objects(delivery.queue_path) if rev == 3} == {"sr", "kos", "sc"}


def test_a_model_that_never_flagged_anything_gets_no_withdrawal(phantom, tmp_path):
    paths, datasets = phantom
    header = read_study_header(paths[0])
    delivery = _delivery(tmp_path)
    delivery.submit(_result(datasets, positive=False, probability=0.1), header, {"ich": ALGORITHM}, "HEAD",
                    decided_at=1.8e9)
    first = datasets[0]
    skipped = {"series_instance_uid": first.SeriesInstanceUID, "study_instance_uid": first.StudyInstanceUID,
               "status": "skipped", "models": [{"name": "ich", "version": "2.0.0", "status": "skipped"}],
               "findings": []}
    assert delivery.submit(skipped, header, {"ich": ALGORITHM}, "HEAD", decided_at=1.8e9 + 60) == []


def _walk(ds):
    for item in ds.get("ContentSequence", []) or []:
        yield item
        yield from _walk(item)
