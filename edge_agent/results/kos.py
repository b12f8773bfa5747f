"""The Key Object Selection document (TID 2010) that flags one model's key slices.

Built with highdicom (``highdicom.ko.KeyObjectSelectionDocument``) in the
original study, titled "Of Interest" (DCM 113000, CID 7010), with a
description naming the finding and probability (and the disclaimer for a
model trained on synthetic data), so a viewer that lists key images jumps to
them. Only a positive result has one: a negative series has no slices of
interest to flag.
"""

from __future__ import annotations

import datetime as dt

import highdicom as hd
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian

from edge_agent.results.content import ModelResult
from edge_agent.results.sr import MANUFACTURER, device_observer, key_reference, pin_times
from edge_agent.results.study import StudyHeader

KEY_OBJECT_SELECTION = "1.2.840.10008.5.1.4.1.1.88.59"
KOS_SERIES_NUMBER = 9902


def kos_description(result: ModelResult) -> str:
    words = [f"{f['label']} p={f['probability']:.2f}" for f in result.findings if f["positive"]]
    text = f"AI {result.algorithm.name} {result.algorithm.version}: " + "; ".join(words)
    if result.algorithm.synthetic_training:
        text += ". Synthetic-trained model, not for diagnosis."
    return text[:1024]


def build_kos(result: ModelResult, header: StudyHeader, *, revision: int, site: str, device: str,
              decided_at: float) -> hd.ko.KeyObjectSelectionDocument | None:
    """The KOS flagging the key slices of ``result``'s positive findings; None when none is positive."""
    evidence, seen = [], set()
    for finding in result.findings:
        if not finding["positive"]:
            continue
        for key in finding["key_slices"]:
            uid, _ = key_reference(key["sop_instance_uid"], header)
            if uid not in seen:
                seen.add(uid)
                evidence.append(header.evidence(result.series_instance_uid, uid))
    if not evidence:
        return None
    content = hd.ko.KeyObjectSelection(
        document_title=codes.DCM.OfInterest, referenced_objects=evidence,
        observer_device_context=device_observer(site, device, result.algorithm.name),
        description=kos_description(result))
    when = dt.datetime.fromtimestamp(decided_at)
    kos = hd.ko.KeyObjectSelectionDocument(
        evidence=evidence, content=content, series_instance_uid=result.uid("kos-series"),
        series_number=KOS_SERIES_NUMBER, sop_instance_uid=result.uid("kos", revision), instance_number=revision,
        manufacturer=MANUFACTURER, transfer_syntax_uid=ExplicitVRLittleEndian,
        series_description=f"AI {result.algorithm.name} key images"[:64],
        content_date=when.date(), content_time=when.time())
    pin_times(kos, when)
    return kos
