"""A retracted alert withdraws its key images in a real Orthanc: the IOCM rejection note, end to end.

The real agent (a process), a real Mosquitto, a real Orthanc, the shipped ICH
model (a copy of its folder). The head series is positive: SR and KOS land in
the original study. Then the site makes the model stricter (the same model and
version, a decision threshold of 1.0 in its manifest), the agent restarts and
one late slice reopens the series: re-decided with every slice, it is
negative. Orthanc then holds — read back through its own REST API and the
stored file, not through our code — in the original study, the rejection note
(113001 "Rejected for Quality Reasons") whose referenced SOP Instance is the
earlier KOS, and the new SR that says the finding is withdrawn.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from edge_agent.testing.agent import PHI
from edge_agent.service.simulator import ROUTINE_HEAD as ROUTINE
from edge_agent.service.simulator import render
from pacs_helpers import COMPREHENSIVE_3D_SR, KEY_OBJECT_SELECTION, content_items, scan, state_deliveries
from edge_agent.testing.wait import wait_value as wait_for

SHIPPED_ICH = Path(__file__).resolve().parents[2] / "engines" / "ich"

pytestmark = pytest.mark.timeout(300)


def _delivered(state_dir: Path, kinds: set[tuple[int, str]]):
    rows = state_deliveries(state_dir)
    have = {(r["revision"], r["kind"]) for r in rows}
    return rows if kinds <= have and all(r["state"] == "done" for r in rows) else None


def _late_slice(paths: list[Path], folder: Path) -> Path:
    """One more slice of the series, past its last one (a new SOP instance: what reopens a final series)."""
    last, before = (pydicom.dcmread(p) for p in (paths[-1], paths[-2]))
    step = [float(a) - float(b) for a, b in zip(last.ImagePositionPatient, before.ImagePositionPatient)]
    last.SOPInstanceUID = generate_uid(entropy_srcs=[str(last.SOPInstanceUID), "late"])
    last.file_meta.MediaStorageSOPInstanceUID = last.SOPInstanceUID
    last.ImagePositionPatient = [round(float(a) + d, 4) for a, d in zip(last.ImagePositionPatient, step)]
    last.InstanceNumber = int(last.InstanceNumber) + 1
    if "SliceLocation" in last:
        last.SliceLocation = round(float(last.SliceLocation) + float(step[2]), 4)
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / "late.dcm"
    last.save_as(out, enforce_file_format=True)
    return out


def _positive_in_orthanc(orthanc, broker, collector, agent_factory, tmp_path):
    """The head series positive in a real Orthanc (revision 1: SR and KOS delivered), the agent stopped:
    (phantom, paths, engines folder, agent, series UID, KOS 1, SR 1)."""
    orthanc.start()
    phantom, paths = render("ich", 61, tmp_path / "series", **ROUTINE)
    orthanc.upload(paths)
    engines = tmp_path / "engines"
    shutil.copytree(SHIPPED_ICH, engines / "ich")
    agent = agent_factory(broker.url, "--pacs", orthanc.destination, "--engines", str(engines)).start()
    scan(agent, paths)
    uid = phantom.headers.series_instance_uid
    first = collector.wait(lambda c: [r for r in c.results_for(uid) if r["slices"] == len(paths)], 120)[-1]
    assert first["findings"][0]["positive"] is True and first["findings"][0]["probability"] < 1.0
    rows = wait_for(lambda: _delivered(agent.state, {(1, "sr"), (1, "kos")}), 60, "revision 1 (SR and KOS)")
    [kos1] = {r["sop_instance_uid"] for r in rows if r["kind"] == "kos"}
    [sr1] = {r["sop_instance_uid"] for r in rows if r["kind"] == "sr"}
    assert kos1 in orthanc.instances_by_sop()
    assert agent.stop() == 0
    return phantom, paths, engines, agent, uid, kos1, sr1


def _reopen_with(change, orthanc, collector, engines: Path, agent, paths: list[Path], uid: str, tmp_path):
    """``change(manifest)`` edits the model's manifest (same model and version); the agent restarts and one late
    slice reopens the series. Returns (the new result, the delivery rows once revision 2's SR and note are done)."""
    manifest_path = engines / "ich" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    change(manifest)
    manifest_path.write_text(json.dumps(manifest, indent=2))
    late = _late_slice(paths, tmp_path / "late")
    orthanc.upload([late])
    agent.start()
    scan(agent, [late])
    second = collector.wait(lambda c: [r for r in c.results_for(uid) if r["slices"] == len(paths) + 1], 120)[-1]
    rows = wait_for(lambda: _delivered(agent.state, {(2, "sr"), (2, "rejection")}), 60, "revision 2 (SR, note)")
    return second, rows


def test_a_retraction_after_a_reopen_rejects_the_earlier_kos_in_orthanc(orthanc, broker, collector, agent_factory,
                                                                       tmp_path):
    phantom, paths, engines, agent, uid, kos1, sr1 = _positive_in_orthanc(orthanc, broker, collector,
                                                                          agent_factory, tmp_path)
    [study_id] = orthanc.get("/studies")

    # The site raises the model's threshold (same model, same version); a late slice reopens the series.
    second, rows = _reopen_with(lambda m: m["decision"].update(threshold=1.0), orthanc, collector, engines, agent,
                                paths, uid, tmp_path)
    assert second["findings"][0]["positive"] is False
    assert {r["kind"] for r in rows if r["revision"] == 2} == {"sr", "rejection"}   # no new KOS
    [note_uid] = {r["sop_instance_uid"] for r in rows if r["kind"] == "rejection"}
    [sr2] = {r["sop_instance_uid"] for r in rows if r["revision"] == 2 and r["kind"] == "sr"}

    # Orthanc's view: the note sits in the original study and references the earlier KOS.
    assert orthanc.get("/studies") == [study_id]
    by_sop = orthanc.instances_by_sop()
    note = by_sop[note_uid]
    assert note["SOPClassUID"] == KEY_OBJECT_SELECTION and note["Modality"] == "KO"
    assert note["StudyInstanceUID"] == phantom.headers.study_instance_uid
    assert orthanc.get(f"/instances/{note['_id']}/study")["ID"] == study_id
    assert note["ConceptNameCodeSequence"][0]["CodeValue"] == "113001"
    assert note["ConceptNameCodeSequence"][0]["CodeMeaning"] == "Rejected for Quality Reasons"
    [evidence] = note["CurrentRequestedProcedureEvidenceSequence"]
    assert evidence["StudyInstanceUID"] == phantom.headers.study_instance_uid
    [series_ref] = evidence["ReferencedSeriesSequence"]
    assert series_ref["SeriesInstanceUID"] == by_sop[kos1]["SeriesInstanceUID"]
    assert [(r["ReferencedSOPClassUID"], r["ReferencedSOPInstanceUID"]) for r in series_ref["ReferencedSOPSequence"]] \
        == [(KEY_OBJECT_SELECTION, kos1)]
    assert [i["ReferencedSOPSequence"][0]["ReferencedSOPInstanceUID"] for i in content_items(note, "COMPOSITE")] \
        == [kos1]
    assert sr1 not in json.dumps(note)                         # the superseded SR is not rejected
    # The stored file itself, parsed by pydicom, says the same.
    stored = pydicom.dcmread(io.BytesIO(orthanc.get(f"/instances/{note['_id']}/file")))
    ref = stored.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert ref.ReferencedSOPInstanceUID == kos1 and stored.PatientID == by_sop[kos1]["PatientID"]
    queued = next(r["dataset"] for r in rows if r["sop_instance_uid"] == note_uid)
    assert stored.to_json_dict() == pydicom.dcmread(io.BytesIO(queued)).to_json_dict()

    # The new SR: Absent, after the earlier one, saying in words that the finding is withdrawn.
    sr = by_sop[sr2]
    assert sr["SOPClassUID"] == COMPREHENSIVE_3D_SR and int(sr["InstanceNumber"]) == 2
    codes = {c["ConceptCodeSequence"][0]["CodeMeaning"] for c in content_items(sr, "CODE")}
    assert "Absent" in codes and "Present" not in codes
    # (Orthanc's JSON leaves out long strings, so the comment is read from the stored file)
    stored_sr = pydicom.dcmread(io.BytesIO(orthanc.get(f"/instances/{sr['_id']}/file")))
    texts = []
    stored_sr.walk(lambda _, elem: texts.append(str(elem.value)) if elem.keyword == "TextValue" else None)
    [comment] = [t for t in texts if t.startswith("Earlier finding withdrawn")]
    assert sr1 in comment and kos1 in comment
    assert stored_sr.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0] \
        .ReferencedSOPInstanceUID == sr1
    # MQTT is unchanged: the alert was retracted there.
    assert any(a["state"] == "retracted" for a in collector.alerts_for(uid))

    assert agent.stop() == 0
    log = agent.log_text()
    assert f"rejection {note_uid}" in log
    for marker in PHI:
        assert marker not in log, marker


def test_a_reopen_that_leaves_the_series_not_assessable_withdraws_its_key_images_in_orthanc(
        orthanc, broker, collector, agent_factory, tmp_path):
    """As above, but the site narrows the model's head domain (a brain median of 100-200 HU, which no head has):
    re-decided after the late slice, the series is not assessable for the model. Orthanc then holds revision 2:
    the rejection note of revision 1's KOS and an SR whose finding is Indeterminate, saying why."""
    phantom, paths, engines, agent, uid, kos1, _ = _positive_in_orthanc(orthanc, broker, collector, agent_factory,
                                                                        tmp_path)
    second, rows = _reopen_with(lambda m: m["domain"].update(brain_median_hu=[100, 200]), orthanc, collector,
                                engines, agent, paths, uid, tmp_path)
    assert second["status"] == "not_assessable" and not second["findings"]
    assert {r["kind"] for r in rows if r["revision"] == 2} == {"sr", "rejection"}
    [note_uid] = {r["sop_instance_uid"] for r in rows if r["kind"] == "rejection"}
    [sr2] = {r["sop_instance_uid"] for r in rows if r["revision"] == 2 and r["kind"] == "sr"}
    by_sop = orthanc.instances_by_sop()
    note = by_sop[note_uid]
    assert note["ConceptNameCodeSequence"][0]["CodeValue"] == "113001"
    assert [i["ReferencedSOPSequence"][0]["ReferencedSOPInstanceUID"] for i in content_items(note, "COMPOSITE")] \
        == [kos1]
    codes = {c["ConceptCodeSequence"][0]["CodeMeaning"] for c in content_items(by_sop[sr2], "CODE")}
    assert "Indeterminate" in codes and "Present" not in codes and "Absent" not in codes
    stored_sr = pydicom.dcmread(io.BytesIO(orthanc.get(f"/instances/{by_sop[sr2]['_id']}/file")))
    texts = []
    stored_sr.walk(lambda _, elem: texts.append(str(elem.value)) if elem.keyword == "TextValue" else None)
    assert any(t.startswith("Earlier finding withdrawn") and "now not assessable" in t and kos1 in t for t in texts)
    assert agent.stop() == 0
