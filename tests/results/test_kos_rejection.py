"""Withdrawing a KOS (issue #14): the IOCM rejection note a new revision queues when the one it supersedes
flagged key images.

Through :class:`PacsDelivery` (never started: nothing is sent, the queue is read
back) on the header of a real phantom file; the note is checked by ``dciodvfy``
(dicom3tools) where installed, parsed by DCMTK's ``dsrdump`` and by pydicom.
"""

from __future__ import annotations

import hashlib
import io
import logging
import sqlite3
from pathlib import Path

import pydicom
import pytest

from edge_agent.results import delivery as delivery_module
from edge_agent.results.content import Algorithm, derived_uid, model_results
from edge_agent.results.delivery import PacsDelivery
from edge_agent.results.destination import parse_destination
from edge_agent.results.kos import KEY_OBJECT_SELECTION, build_rejection_note
from edge_agent.results.queue import PacsQueue, read_deliveries, read_stats
from edge_agent.results.sender import SenderSettings
from edge_agent.results.study import read_study_header
from edge_agent.service.simulator import ROUTINE_HEAD as ROUTINE
from edge_agent.service.simulator import render
from edge_agent.testing.dcmtk import validate_sr

ALGORITHM = Algorithm("ich", "2.0.0", "cd" * 32, "onnxrt", "fp32", True)
DESTINATIONS = ("PACS@127.0.0.1:11112", "ARCHIVE@127.0.0.1:11113")
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    folder = tmp_path_factory.mktemp("phantom")
    _, paths = render("ich", 61, folder, slices=12, **ROUTINE)
    return paths, [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]


def _result(datasets, positive=True, probability=0.93, keys=(5, 6)) -> dict:
    """A series' result as the pipeline hands it over (``edge-agent infer``'s object)."""
    first = datasets[0]
    return {"series_instance_uid": first.SeriesInstanceUID, "study_instance_uid": first.StudyInstanceUID,
            "models": [{"name": "ich", "version": "2.0.0", "status": "analysed"}],
            "findings": [{"model": "ich", "code": "ich", "label": "Intracranial haemorrhage",
                          "probability": probability, "positive": positive, "threshold": 0.5,
                          "key_slices": [{"sop_instance_uid": datasets[i].SOPInstanceUID, "probability": 0.9}
                                         for i in keys]}]}


class Agent:
    """A PacsDelivery on a queue in ``tmp_path``, never started, and what it queued."""

    def __init__(self, tmp_path: Path, paths) -> None:
        self.path = tmp_path / "pacs.sqlite3"
        self.delivery = PacsDelivery(self.path, [parse_destination(d) for d in DESTINATIONS], SenderSettings(),
                                     site="st-marys", device="ct1")
        self.header = read_study_header(paths[0])
        self.t = 1_800_000_000.0

    def submit(self, result: dict) -> list[str]:
        self.t += 60
        return self.delivery.submit(result, self.header, {"ich": ALGORITHM}, "HEAD", decided_at=self.t)

    def objects(self, revision: int | None = None) -> dict[str, tuple[str, bytes]]:
        """``{kind: (SOP Instance UID, bytes)}`` of one revision's queued objects."""
        conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
        try:
            rows = conn.execute("SELECT kind, sop_instance_uid, dataset, revision FROM objects").fetchall()
        finally:
            conn.close()
        return {kind: (uid, bytes(data)) for kind, uid, data, rev in rows if revision in (None, rev)}


def _dataset(data: bytes) -> pydicom.Dataset:
    return pydicom.dcmread(io.BytesIO(data))


def _references(note: pydicom.Dataset) -> tuple[set, set]:
    """(evidence references, content-tree references) of a KOS: {(SOP Class UID, SOP Instance UID)}."""
    evidence = {(r.ReferencedSOPClassUID, r.ReferencedSOPInstanceUID)
                for study in note.CurrentRequestedProcedureEvidenceSequence
                for series in study.ReferencedSeriesSequence for r in series.ReferencedSOPSequence}
    tree = {(i.ReferencedSOPSequence[0].ReferencedSOPClassUID, i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
            for i in note.ContentSequence if i.ValueType in ("COMPOSITE", "IMAGE")}
    return evidence, tree


def _texts(ds: pydicom.Dataset) -> list[str]:
    found = []
    ds.walk(lambda _, elem: found.append(str(elem.value)) if elem.keyword == "TextValue" else None)
    return found


def test_a_retraction_queues_the_sr_and_a_rejection_note_of_the_earlier_kos(phantom, tmp_path):
    paths, datasets = phantom
    agent = Agent(tmp_path, paths)
    first = agent.submit(_result(datasets))
    one = agent.objects(1)
    assert set(one) == {"sr", "kos"} and first == [one["sr"][0], one["kos"][0]]
    kos1 = one["kos"][0]

    second = agent.submit(_result(datasets, positive=False, probability=0.12))
    two = agent.objects(2)
    assert set(two) == {"sr", "rejection"}                       # no new KOS: nothing is of interest now
    assert second == [two["sr"][0], two["rejection"][0]]

    # Queued like the others: for every destination, in the same transaction as the revision's SR.
    rows = [r for r in read_deliveries(agent.path) if r["revision"] == 2]
    assert sorted((r["destination"], r["kind"]) for r in rows) == sorted(
        (d, k) for d in DESTINATIONS for k in ("sr", "rejection"))
    assert all(r["state"] == "pending" for r in rows) and len({r["created_at"] for r in rows}) == 1

    note = _dataset(two["rejection"][1])
    dump = validate_sr(tmp_path / "rejection.dcm", two["rejection"][1])
    assert '"Rejected for Quality Reasons"' in dump
    assert note.SOPClassUID == KEY_OBJECT_SELECTION and note.Modality == "KO"
    [title] = note.ConceptNameCodeSequence
    assert (title.CodeValue, title.CodingSchemeDesignator, title.CodeMeaning) == \
        ("113001", "DCM", "Rejected for Quality Reasons")
    [modifier] = [i for i in note.ContentSequence if i.RelationshipType == "HAS CONCEPT MOD"]
    assert modifier.ConceptNameCodeSequence[0].CodeValue == "113011"      # Document Title Modifier (CID 7011)
    assert modifier.ConceptCodeSequence[0].CodeValue == "111220"          # Other failure
    # It references the withdrawn KOS, and only it, both in its evidence and in its content tree.
    evidence, tree = _references(note)
    assert evidence == tree == {(KEY_OBJECT_SELECTION, kos1)}
    [study] = note.CurrentRequestedProcedureEvidenceSequence
    assert study.StudyInstanceUID == datasets[0].StudyInstanceUID
    assert study.ReferencedSeriesSequence[0].SeriesInstanceUID == _dataset(one["kos"][1]).SeriesInstanceUID
    # ... in the original study, as the patient's.
    for keyword in ("StudyInstanceUID", "PatientID", "PatientName", "PatientBirthDate", "AccessionNumber"):
        assert str(note.get(keyword)) == str(datasets[0].get(keyword)), keyword
    assert note.SeriesInstanceUID not in {_dataset(one["kos"][1]).SeriesInstanceUID, datasets[0].SeriesInstanceUID}
    assert "withdrawn" in " ".join(_texts(note)) and "revision 2 is negative" in " ".join(_texts(note))

    # The new SR: Absent, names its predecessor, and says that the earlier finding is withdrawn.
    sr = _dataset(two["sr"][1])
    sr_dump = validate_sr(tmp_path / "sr2.dcm", two["sr"][1])
    assert '(272519000,SCT,"Absent")' in sr_dump
    [predecessor] = sr.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence
    assert predecessor.ReferencedSOPInstanceUID == one["sr"][0]
    [comment] = [t for t in _texts(sr) if t.startswith("Earlier finding withdrawn")]
    assert one["sr"][0] in comment and kos1 in comment
    assert not [t for t in _texts(_dataset(one["sr"][1])) if "withdrawn" in t]

    # The queue knows the latest revision has no KOS: nothing is left to withdraw.
    queue = PacsQueue(agent.path)
    latest = queue.latest_revision(datasets[0].SeriesInstanceUID, "ich", "2.0.0")
    queue.close()
    assert (latest.revision, latest.kos_sop_instance_uid, latest.kos_known) == (2, None, True)


def test_new_key_slices_queue_a_new_kos_and_withdraw_the_old_one(phantom, tmp_path):
    paths, datasets = phantom
    agent = Agent(tmp_path, paths)
    agent.submit(_result(datasets, keys=(5, 6)))
    kos1 = agent.objects(1)["kos"][0]
    second = agent.submit(_result(datasets, probability=0.97, keys=(6, 7)))
    two = agent.objects(2)
    assert set(two) == {"sr", "kos", "rejection"} and len(second) == 3
    evidence, tree = _references(_dataset(two["rejection"][1]))
    assert evidence == tree == {(KEY_OBJECT_SELECTION, kos1)}
    validate_sr(tmp_path / "rejection.dcm", two["rejection"][1])
    new_kos = _dataset(two["kos"][1])
    assert {i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for i in new_kos.ContentSequence
            if i.ValueType == "IMAGE"} == {datasets[6].SOPInstanceUID, datasets[7].SOPInstanceUID}
    # A positive revision: the SR does not call the finding withdrawn.
    assert not [t for t in _texts(_dataset(two["sr"][1])) if "withdrawn" in t]
    assert "replaced by the key images of revision 2" in " ".join(_texts(_dataset(two["rejection"][1])))

    # Then negative: it is the revision-2 KOS (the one in force) that is withdrawn, not revision 1's again.
    agent.submit(_result(datasets, positive=False, probability=0.1))
    three = agent.objects(3)
    assert set(three) == {"sr", "rejection"}
    assert _references(_dataset(three["rejection"][1]))[0] == {(KEY_OBJECT_SELECTION, two["kos"][0])}
    # And positive again: revision 3 flagged nothing, so there is nothing to withdraw.
    agent.submit(_result(datasets))
    assert set(agent.objects(4)) == {"sr", "kos"}


def test_the_same_answer_queues_nothing_and_negative_to_negative_no_note(phantom, tmp_path):
    paths, datasets = phantom
    agent = Agent(tmp_path, paths)
    agent.submit(_result(datasets))
    before = read_deliveries(agent.path)
    assert agent.submit(_result(datasets)) == []                      # positive → the same positive
    assert read_deliveries(agent.path) == before

    other = Agent(tmp_path / "negative", paths)
    other.submit(_result(datasets, positive=False, probability=0.2))
    assert set(other.objects(1)) == {"sr"}
    assert len(other.submit(_result(datasets, positive=False, probability=0.3))) == 1
    two = other.objects(2)
    assert set(two) == {"sr"}                                         # negative → negative: nothing to withdraw
    assert not [t for t in _texts(_dataset(two["sr"][1])) if "withdrawn" in t]


def test_the_note_is_deterministic_and_its_uid_derived_like_the_others(phantom):
    paths, datasets = phantom
    header = read_study_header(paths[0])
    [negative] = model_results(_result(datasets, positive=False), {"ich": ALGORITHM}, "HEAD")
    kos1 = negative.uid("kos", 1)
    args = dict(rejected_kos=kos1, site="s", device="d", decided_at=1_800_000_000.0)
    one = delivery_module.encode(build_rejection_note(negative, header, revision=2, **args))
    again = delivery_module.encode(build_rejection_note(negative, read_study_header(paths[0]), revision=2, **args))
    assert one == again                                               # the same bytes, forever, under one UID
    uid = _dataset(one).SOPInstanceUID
    assert uid == derived_uid("rejection", datasets[0].SeriesInstanceUID, "ich", "2.0.0", 2)
    assert uid.startswith("2.25.") and len(uid) <= 64
    three = _dataset(delivery_module.encode(build_rejection_note(negative, header, revision=3, **args)))
    assert three.SOPInstanceUID != uid
    assert three.SeriesInstanceUID == _dataset(one).SeriesInstanceUID == negative.uid("rejection-series")
    assert uid not in {negative.uid("sr", 2), negative.uid("kos", 2)}


def test_the_note_is_delivered_per_destination_and_resent_after_a_crash(phantom, tmp_path):
    paths, datasets = phantom
    agent = Agent(tmp_path, paths)
    agent.submit(_result(datasets))
    agent.submit(_result(datasets, positive=False, probability=0.1))
    queue = PacsQueue(agent.path)
    a, b = DESTINATIONS
    assert [d.kind for d in queue.due(a, 10)] == ["sr", "kos", "sr", "rejection"]
    for due in queue.due(b, 10):
        queue.mark_done(b, due.sop_instance_uid)
    # killed while sending to A: its rows go back to pending and the same bytes go out again
    assert queue.reset_sending(a) == 4
    again = {d.kind: d.dataset for d in queue.due(a, 10) if d.kind == "rejection"}
    assert hashlib.sha256(again["rejection"]).hexdigest() == hashlib.sha256(
        agent.objects(2)["rejection"][1]).hexdigest()
    queue.close()
    stats = read_stats(agent.path)
    assert stats[b]["done"] == 4 and stats[a]["sending"] == 4


def test_a_note_that_cannot_be_built_keeps_the_revision_and_logs_one_error(phantom, tmp_path, monkeypatch, caplog):
    paths, datasets = phantom
    agent = Agent(tmp_path, paths)
    agent.submit(_result(datasets))

    def broken(*args, **kwargs):
        raise ValueError(f"bad value {datasets[0].PatientName} {datasets[0].PatientID}")   # as highdicom might

    monkeypatch.setattr(delivery_module, "build_rejection_note", broken)
    with caplog.at_level(logging.INFO, logger="edge_agent.results"):
        queued = agent.submit(_result(datasets, positive=False, probability=0.1))
    assert set(agent.objects(2)) == {"sr"} and queued == [agent.objects(2)["sr"][0]]
    [error] = [r for r in caplog.records if r.levelno == logging.ERROR]
    text = error.getMessage()
    assert "rejection note" in text and agent.objects(1)["kos"][0] in text and "ValueError" in text
    assert str(datasets[0].PatientName) not in caplog.text and str(datasets[0].PatientID) not in caplog.text
    assert error.exc_info is None


_OLD_SCHEMA = """
CREATE TABLE objects (sop_instance_uid TEXT PRIMARY KEY, sop_class_uid TEXT NOT NULL, kind TEXT NOT NULL,
    series_instance_uid TEXT NOT NULL, model TEXT NOT NULL, model_version TEXT NOT NULL, revision INTEGER NOT NULL,
    dataset BLOB NOT NULL, sha256 TEXT NOT NULL, created_at REAL NOT NULL);
CREATE TABLE deliveries (destination TEXT NOT NULL, sop_instance_uid TEXT NOT NULL, state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, next_attempt_at REAL NOT NULL, created_at REAL NOT NULL, sent_at REAL,
    last_error TEXT, PRIMARY KEY (destination, sop_instance_uid));
CREATE INDEX deliveries_due ON deliveries (destination, state, next_attempt_at);
CREATE TABLE revisions (series_instance_uid TEXT NOT NULL, model TEXT NOT NULL, model_version TEXT NOT NULL,
    revision INTEGER NOT NULL, digest TEXT NOT NULL, decided_at REAL NOT NULL,
    PRIMARY KEY (series_instance_uid, model, model_version));
"""


def _old_queue(path: Path, agent_objects: dict[str, tuple[str, bytes]], series: str) -> None:
    """A ``pacs.sqlite3`` as the agent before this change wrote it: revisions without their KOS."""
    conn = sqlite3.connect(path)
    conn.executescript(_OLD_SCHEMA)
    for kind, (uid, data) in agent_objects.items():        # the positive revision 1, objects still held
        cls = KEY_OBJECT_SELECTION if kind == "kos" else COMPREHENSIVE_3D_SR
        conn.execute("INSERT INTO objects VALUES (?,?,?,?,?,?,?,?,?,?)",
                     (uid, cls, kind, series, "ich", "2.0.0", 1, data, hashlib.sha256(data).hexdigest(), 1.0))
        conn.execute("INSERT INTO deliveries VALUES (?,?, 'done', 1, 1.0, 1.0, 2.0, NULL)", (DESTINATIONS[0], uid))
    conn.execute("INSERT INTO revisions VALUES (?, 'ich', '2.0.0', 1, 'old-digest', 1.0)", (series,))
    conn.execute("INSERT INTO objects VALUES ('2.25.7', ?, 'sr', '1.2.3', 'ich', '2.0.0', 4, x'00', 'x', 1.0)",
                 (COMPREHENSIVE_3D_SR,))
    conn.execute("INSERT INTO revisions VALUES ('1.2.3', 'ich', '2.0.0', 4, 'negative', 1.0)")   # an SR only
    conn.execute("INSERT INTO revisions VALUES ('1.2.4', 'ich', '2.0.0', 2, 'forgotten', 1.0)")  # objects pruned
    conn.commit()
    conn.close()


def test_an_old_queue_file_opens_is_upgraded_and_its_kos_withdrawn(phantom, tmp_path, caplog):
    paths, datasets = phantom
    series = datasets[0].SeriesInstanceUID
    made = Agent(tmp_path / "made", paths)                  # real revision-1 objects, to put in an old file
    made.submit(_result(datasets))
    old = tmp_path / "old" / "pacs.sqlite3"
    old.parent.mkdir()
    _old_queue(old, made.objects(1), series)

    assert read_stats(old)[DESTINATIONS[0]]["done"] == 2    # doctor reads it as it is (read-only: no upgrade)
    with caplog.at_level(logging.INFO, logger="edge_agent.results"):
        queue = PacsQueue(old)
    assert "upgraded" in caplog.text and "1 revision(s)" in caplog.text
    kos1 = made.objects(1)["kos"][0]
    assert queue.latest_revision(series, "ich", "2.0.0").kos_sop_instance_uid == kos1
    assert queue.latest_revision("1.2.3", "ich", "2.0.0").kos_known is True
    assert queue.latest_revision("1.2.3", "ich", "2.0.0").kos_sop_instance_uid is None
    assert queue.latest_revision("1.2.4", "ich", "2.0.0").kos_known is False
    assert queue.latest("1.2.4", "ich", "2.0.0") == (2, "forgotten")
    queue.close()
    PacsQueue(old).close()                                  # a second open finds it done

    # The agent on the upgraded file: the retraction withdraws the KOS the old agent sent.
    agent = Agent(tmp_path / "old", paths)
    assert agent.path == old
    agent.submit(_result(datasets, positive=False, probability=0.1))
    two = agent.objects(2)
    assert set(two) == {"sr", "rejection"}
    assert _references(_dataset(two["rejection"][1]))[0] == {(KEY_OBJECT_SELECTION, kos1)}


def test_an_unknown_earlier_kos_is_warned_about_not_guessed(phantom, tmp_path, caplog):
    """A revision queued by an older agent whose objects are forgotten: no note for a KOS that may not exist."""
    paths, datasets = phantom
    series = datasets[0].SeriesInstanceUID
    path = tmp_path / "pacs.sqlite3"
    conn = sqlite3.connect(path)
    conn.executescript(_OLD_SCHEMA)
    conn.execute("INSERT INTO revisions VALUES (?, 'ich', '2.0.0', 1, 'forgotten', 1.0)", (series,))
    conn.commit()
    conn.close()
    agent = Agent(tmp_path, paths)
    with caplog.at_level(logging.WARNING, logger="edge_agent.results"):
        queued = agent.submit(_result(datasets, positive=False, probability=0.1))
    two = agent.objects(2)
    assert set(two) == {"sr"} and queued == [two["sr"][0]]
    assert not [t for t in _texts(_dataset(two["sr"][1])) if "withdrawn" in t]
    [warning] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "no longer known" in warning.getMessage() and series in warning.getMessage()
    queue = PacsQueue(path)
    latest = queue.latest_revision(series, "ich", "2.0.0")
    queue.close()
    assert (latest.revision, latest.kos_sop_instance_uid, latest.kos_known) == (2, None, True)
