"""No patient name, ID, birth date or sex in any payload or log line, from a series whose headers carry them."""

from __future__ import annotations

import re

import logging

import numpy as np
import pydicom

from edge_agent.testing.alerts import fast_settings
from edge_agent.testing.wait import wait_until
from edge_agent.alerts import AlertListener, AlertPublisher, build_alert, build_result, utc_now
from edge_agent.dicom.synth import SeriesHeaders, write_series

PHI = {"patient_name": "DOE^JANE^Q", "patient_id": "MRN-4711-X", "patient_birth_date": "19470315",
       "patient_sex": "F"}


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def _careless_series_dict(ds: pydicom.Dataset) -> dict:
    """What a careless caller might pass: every header, PHI included, under both naming styles."""
    values = {elem.keyword: str(elem.value) for elem in ds if elem.keyword and elem.VR not in ("OB", "OW", "SQ")}
    values.update(study_instance_uid=ds.StudyInstanceUID, series_instance_uid=ds.SeriesInstanceUID,
                  accession_number=ds.AccessionNumber, modality=ds.Modality, body_part=ds.BodyPartExamined,
                  series_description=ds.SeriesDescription, patient_name=str(ds.PatientName),
                  patient_id=ds.PatientID)
    return values


def test_no_phi_in_payloads_or_logs(mosquitto, recorder_factory, tmp_path):
    paths = write_series(np.full((3, 16, 16), 40, np.int16), tmp_path / "series",
                         headers=SeriesHeaders(**PHI))
    ds = pydicom.dcmread(paths[0])
    assert str(ds.PatientName) == PHI["patient_name"] and ds.PatientSex == "F"   # the headers do carry PHI
    series = _careless_series_dict(ds)

    capture = _Capture()
    logger = logging.getLogger("edge_agent")
    old_level = logger.level
    logger.addHandler(capture)
    logger.setLevel(logging.DEBUG)
    rec = recorder_factory(mosquitto.url)
    settings = fast_settings(mosquitto.url)
    listener = AlertListener(settings, on_alert=lambda p, s: None, store_path=tmp_path / "l.db", consumer="c")
    publisher = AlertPublisher(settings, tmp_path / "outbox.db")
    try:
        listener.start()
        publisher.start()
        finding = {"code": "ich", "probability": 0.9, "positive": True, **series}
        publisher.raise_alert(build_alert(site="site", device="device", series=series,
                                          model={"name": "ich", "version": "1", "synthetic_training": True},
                                          finding=finding, state="final", revision=1,
                                          timestamps={"raised": utc_now()}))
        result = {"series_instance_uid": ds.SeriesInstanceUID, "study_instance_uid": ds.StudyInstanceUID,
                  "slices": 3, "status": "analysed", "findings": [], "PatientName": str(ds.PatientName),
                  "PatientID": ds.PatientID, "PatientBirthDate": ds.PatientBirthDate, "PatientSex": ds.PatientSex}
        publisher.publish_result(build_result(site="site", device="device", series=series, result=result,
                                              timestamps={"inferred": utc_now()}))
        assert publisher.wait_idle(10)
        assert wait_until(lambda: rec.payloads("alerts") and rec.payloads("results") and rec.payloads("receipts"))
    finally:
        publisher.stop()
        listener.stop()
        logger.removeHandler(capture)
        logger.setLevel(old_level)
    wire = b"\n".join(msg.payload for _, _, msg in rec.all).decode()
    logs = "\n".join(capture.lines)
    assert "edge-agent/alert/1" in wire and "edge-agent/result/2" in wire and len(capture.lines) > 5
    for value in (PHI["patient_name"], PHI["patient_id"], PHI["patient_birth_date"], "DOE",
                  "PatientName", "PatientSex", "patient_sex", "PatientBirthDate", '"F"', "'F'"):
        assert value not in wire, value
        assert value not in logs, value
    # the ID's number on its own, not as four digits inside a random UID (which failed once by chance)
    assert not re.search(r"(?<![\d.])4711(?![\d.])", wire) and not re.search(r"(?<![\d.])4711(?![\d.])", logs)
    assert ds.AccessionNumber in wire   # identifying but not PHI by the contract: protected by TLS/ACL
