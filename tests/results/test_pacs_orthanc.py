"""DICOM results end to end: the real agent, a real Orthanc PACS, a real Mosquitto.

The original head series is stored into Orthanc first (as the scanner would
have), then written into the agent's watch folder. What Orthanc holds is then
read back through its own REST API — not through our code: the SR and the KOS
sit in the original study, and reference the original series' instances with
their SOP class. Then the two failures a PACS link must survive: the
destination down while results are made, and the agent killed (SIGKILL) while
an association is open.
"""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from edge_agent.testing.agent import PHI
from edge_agent.service.simulator import ROUTINE_HEAD as ROUTINE
from edge_agent.service.simulator import render
from pacs_helpers import (COMPREHENSIVE_3D_SR, KEY_OBJECT_SELECTION, content_items, same_content, scan,
                          state_deliveries)
from edge_agent.testing.proxy import TcpProxy
from edge_agent.testing.wait import wait_value as wait_for

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"

pytestmark = pytest.mark.timeout(300)


def _series(tmp_path: Path, seed: int):
    phantom, paths = render("ich", seed, tmp_path / f"series-{seed}", **ROUTINE)
    sops = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in paths}
    return phantom, paths, sops


def _final_result(collector, uid: str, slices: int) -> dict:
    return collector.wait(lambda c: [r for r in c.results_for(uid) if r["slices"] == slices], 120)[-1]


def _all_done(state_dir: Path, n_min: int = 2):
    rows = state_deliveries(state_dir)
    return rows if len(rows) >= n_min and all(r["state"] == "done" for r in rows) else None


def test_sr_kos_and_key_image_land_in_the_original_study(orthanc, broker, collector, agent_factory, tmp_path):
    orthanc.start()
    phantom, paths, sops = _series(tmp_path, 61)
    orthanc.upload(paths)
    [study_id] = orthanc.get("/studies")
    agent = agent_factory(broker.url, "--pacs", orthanc.destination,
                          env={"EDGE_AGENT_PACS_SECONDARY_CAPTURE": "true"}).start()
    scan(agent, paths)
    uid = phantom.headers.series_instance_uid
    result = _final_result(collector, uid, len(paths))
    assert result["status"] == "analysed" and result["findings"][0]["positive"] is True
    rows = wait_for(lambda: _all_done(agent.state), 60, "the SR and KOS to be delivered")

    # Orthanc's own view: still one patient and one study, now with an SR and a KO series in it.
    assert len(orthanc.get("/patients")) == 1 and orthanc.get("/studies") == [study_id]
    by_sop = orthanc.instances_by_sop()
    srs = [t for t in by_sop.values() if t["SOPClassUID"] == COMPREHENSIVE_3D_SR]
    kos = [t for t in by_sop.values() if t["SOPClassUID"] == KEY_OBJECT_SELECTION]
    assert srs and kos
    study_uid = phantom.headers.study_instance_uid
    ct = next(t for t in by_sop.values() if t["SOPClassUID"] == CT_IMAGE_STORAGE)
    final = result["findings"][0]
    keys = {k["sop_instance_uid"] for k in final["key_slices"]}
    assert keys <= sops
    for tags in srs + kos:
        assert tags["StudyInstanceUID"] == study_uid
        assert orthanc.get(f"/instances/{tags['_id']}/study")["ID"] == study_id
        assert tags["PatientID"] == ct["PatientID"] and tags["PatientName"] == ct["PatientName"]
        evidence = tags["CurrentRequestedProcedureEvidenceSequence"][0]
        assert evidence["StudyInstanceUID"] == study_uid
        [series_ref] = evidence["ReferencedSeriesSequence"]
        assert series_ref["SeriesInstanceUID"] == uid
        referenced = {r["ReferencedSOPInstanceUID"] for r in series_ref["ReferencedSOPSequence"]}
        assert {r["ReferencedSOPClassUID"] for r in series_ref["ReferencedSOPSequence"]} == {CT_IMAGE_STORAGE}
        assert referenced <= sops

    # The latest SR revision: the finding Present with the result's probability; its images are the key slices.
    sr = max(srs, key=lambda t: int(t["InstanceNumber"]))
    assert sr["CompletionFlag"] == "COMPLETE" and sr["VerificationFlag"] == "UNVERIFIED"
    images = {i["ReferencedSOPSequence"][0]["ReferencedSOPInstanceUID"] for i in content_items(sr, "IMAGE")}
    assert images == keys
    codes = [c["ConceptCodeSequence"][0] for c in content_items(sr, "CODE")]
    assert {"CodeValue": "52101004", "CodingSchemeDesignator": "SCT", "CodeMeaning": "Present"}.items() <= \
        next(c for c in codes if c["CodeValue"] == "52101004").items()
    numbers = {n["ConceptNameCodeSequence"][0]["CodeMeaning"]: float(n["MeasuredValueSequence"][0]["NumericValue"])
               for n in content_items(sr, "NUM")}
    assert numbers["Probability"] == pytest.approx(final["probability"], abs=1e-4)
    texts = " ".join(t.get("TextValue", "") for t in content_items(sr, "TEXT"))
    assert "not a medical device" in texts and "sha256=" in texts
    latest_kos = max(kos, key=lambda t: int(t["InstanceNumber"]))
    assert {i["ReferencedSOPSequence"][0]["ReferencedSOPInstanceUID"]
            for i in content_items(latest_kos, "IMAGE")} == keys

    # pacs.secondary_capture: a key image per positive revision, in the study, from the best key slice
    captures = [t for t in by_sop.values() if t["SOPClassUID"] == SECONDARY_CAPTURE]
    assert len(captures) == len(kos)
    latest_sc = max(captures, key=lambda t: int(t["InstanceNumber"]))
    assert latest_sc["StudyInstanceUID"] == study_uid and latest_sc["BurnedInAnnotation"] == "YES"
    assert orthanc.get(f"/instances/{latest_sc['_id']}/study")["ID"] == study_id
    assert latest_sc["SourceImageSequence"][0]["ReferencedSOPInstanceUID"] == final["key_slices"][0]["sop_instance_uid"]

    # What arrived is what was queued, and it is valid DICOM to an independent validator.
    for row in rows:
        assert same_content(orthanc, by_sop[row["sop_instance_uid"]]["_id"], row["dataset"])
    assert agent.stop() == 0
    log = agent.log_text()
    for marker in PHI:
        assert marker not in log, marker


def test_a_destination_that_is_down_receives_everything_when_it_returns(orthanc, broker, collector,
                                                                        agent_factory, tmp_path):
    phantom, paths, sops = _series(tmp_path, 61)
    agent = agent_factory(broker.url, "--pacs", orthanc.destination,
                          env={"EDGE_AGENT_PACS_RETRY_MAX": "2"}).start()
    scan(agent, paths)
    uid = phantom.headers.series_instance_uid
    assert _final_result(collector, uid, len(paths))["findings"][0]["positive"] is True  # so an SR and a KOS
    # Down: queued, tried, failed, waiting.
    rows = wait_for(lambda: [r for r in state_deliveries(agent.state) if r["attempts"] >= 2 and r["last_error"]], 60,
                 "failed attempts while the PACS is down")
    assert all(r["state"] in ("pending", "sending") for r in state_deliveries(agent.state))
    assert "did not answer" in rows[0]["last_error"]
    log = agent.log_text()
    assert "PACS " in log and "did not answer" in log                   # our sentence, with what failed
    assert "Association request failed" not in log and "TCP Initialisation Error" not in log   # not pynetdicom's

    orthanc.start()
    orthanc.upload(paths)
    rows = wait_for(lambda: _all_done(agent.state), 60, "delivery once the PACS is back")
    by_sop = orthanc.instances_by_sop()
    assert {r["sop_instance_uid"] for r in rows} <= set(by_sop)
    assert {r["kind"] for r in rows} == {"sr", "kos"}
    assert len(orthanc.get("/studies")) == 1
    assert agent.stop() == 0


def test_killed_mid_send_resends_on_restart_without_a_changed_duplicate(orthanc, broker, collector,
                                                                        agent_factory, tmp_path):
    orthanc.start()
    phantom, paths, sops = _series(tmp_path, 61)
    orthanc.upload(paths)
    proxy = TcpProxy(orthanc.dicom_port, hold_requests=True)   # accepts, answers nothing: stuck mid-way
    try:
        destination = f"{orthanc.aet}@127.0.0.1:{proxy.port}"
        agent = agent_factory(broker.url, "--pacs", destination).start()
        scan(agent, paths)
        uid = phantom.headers.series_instance_uid
        _final_result(collector, uid, len(paths))
        wait_for(lambda: [r for r in state_deliveries(agent.state) if r["state"] == "sending"] and proxy.held, 60,
              "an association held open mid-send")
        agent.kill()                                   # SIGKILL while the association is open
        before = {r["sop_instance_uid"]: r["dataset"] for r in state_deliveries(agent.state)}
        assert any(r["state"] == "sending" for r in state_deliveries(agent.state))

        proxy.hold_requests = False                   # from now on relayed to Orthanc
        agent.start()
        rows = wait_for(lambda: _all_done(agent.state), 90, "the resend after the restart")
        # The same objects, byte for byte, under the same UIDs; and Orthanc holds exactly what was queued.
        assert {r["sop_instance_uid"]: r["dataset"] for r in rows if r["sop_instance_uid"] in before} == before
        by_sop = orthanc.instances_by_sop()
        for row in rows:
            assert same_content(orthanc, by_sop[row["sop_instance_uid"]]["_id"], row["dataset"])
        assert "were being sent when the agent stopped" in agent.log_text()
        assert agent.stop() == 0
    finally:
        proxy.close()
