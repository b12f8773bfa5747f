"""The Key Object Selection documents (TID 2010): the one that flags a model's key slices, and the IOCM
rejection note that withdraws it.

Built with highdicom (``highdicom.ko.KeyObjectSelectionDocument``) in the
original study, titled "Of Interest" (DCM 113000, CID 7010), with a
description naming the finding and probability (and the disclaimer for a
model trained on synthetic data), so a viewer that lists key images jumps to
them. Only a positive result has one: a negative series has no slices of
interest to flag.

When a later revision supersedes a revision that had one (the result turned
negative, or its key slices or description changed), that KOS is withdrawn
the IHE IOCM way (RAD-66 "Rejection Note Stored"): a KOS titled "Rejected
for Quality Reasons" (DCM 113001) that references it — see
:func:`build_rejection_note`.
"""

from __future__ import annotations

import datetime as dt

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian

from edge_agent.results.capture import SECONDARY_CAPTURE
from edge_agent.results.content import ModelResult
from edge_agent.results.sr import MANUFACTURER, device_observer, key_reference, pin_times
from edge_agent.results.study import StudyHeader

KEY_OBJECT_SELECTION = "1.2.840.10008.5.1.4.1.1.88.59"
KOS_SERIES_NUMBER = 9902
REJECTION_SERIES_NUMBER = 9903
#: Document Title of the rejection note (CID 7010). IOCM defines four rejection titles: 113001 "Rejected for
#: Quality Reasons" (the producer says the instances are not fit for use; an Image Manager hides them from
#: regular queries, may keep them for QA/audit), 113037 "Rejected for Patient Safety Reasons" (instances that
#: are dangerous to use at all - wrong patient, wrong laterality: removed even from consumers' caches, treated
#: as an incident), 113038 "Incorrect Modality Worklist Entry" and 113039 "Data Retention Policy Expired" (both
#: about the acquisition's bookkeeping, not its content). An AI key-image selection withdrawn by its own producer
#: after a re-decision is neither misidentified nor dangerous to keep on record - the patient and study are
#: right, the SR chain tells its history - it is simply no longer fit to direct a reader: 113001.
REJECTION_TITLE = codes.DCM.RejectedForQualityReasons
#: TID 2010 row 2: a 113001 title takes a Document Title Modifier from CID 7011. None of its concepts is about
#: a re-decision (they are acquisition failures: motion, exposure, positioning, ...), so "Other failure" (DCM
#: 111220); the Key Object Description says in words what happened.
REJECTION_MODIFIER = codes.DCM.OtherFailure


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


def sent_object_reference(result: ModelResult, header: StudyHeader, series_kind: str, sop_instance_uid: str,
                          sop_class_uid: str, modality: str) -> Dataset:
    """A header-only dataset of an object this agent sent (what highdicom references and copies the patient from):
    in the original study, in the model's ``series_kind`` series (``kos-series``, ``sc-series``), a COMPOSITE
    reference (no Rows/Columns: its size is not known here)."""
    ds = header.evidence(result.uid(series_kind), sop_instance_uid)
    ds.SOPClassUID, ds.Modality = sop_class_uid, modality
    for keyword in ("Rows", "Columns"):
        if keyword in ds:
            delattr(ds, keyword)
    return ds


def rejected_kos_reference(result: ModelResult, header: StudyHeader, kos_sop_instance_uid: str) -> Dataset:
    """A KOS this agent sent, as the rejection note references it."""
    return sent_object_reference(result, header, "kos-series", kos_sop_instance_uid, KEY_OBJECT_SELECTION, "KO")


def rejection_description(result: ModelResult, revision: int, replaced_by: str | None) -> str:
    """What the rejection note says it withdraws and why (UIDs and revisions only, no patient data)."""
    a = result.algorithm
    status = next((f.get("status") for f in result.findings if f.get("assessed", True) is False), None)
    why = f"replaced by the key images of revision {revision}" if replaced_by else (
        f"the series is now {status.replace('_', ' ')} for this model" if status
        else f"the result of revision {revision} is negative")
    return (f"AI {a.name} {a.version}: key images of revision {revision - 1} withdrawn by edge-agent after the "
            f"series was re-decided; {why}.")[:1024]


def build_rejection_note(result: ModelResult, header: StudyHeader, *, rejected_kos: str, revision: int, site: str,
                         device: str, decided_at: float, replaced_by: str | None = None,
                         rejected_captures: tuple[str, ...] = ()) -> hd.ko.KeyObjectSelectionDocument:
    """The IOCM rejection note of revision ``revision``: withdraws the KOS ``rejected_kos`` (of revision
    ``revision - 1``) in the original study. ``replaced_by``: the new revision's KOS, if it has one.

    Only the KOS is referenced - and so rejected. The superseded SR is not: it is the record of what the agent
    said then (the alert that went out was based on it), the new SR names it as its predecessor (PS3.3
    C.17.2.3, the SR's own way of superseding), and rejecting it would have an IOCM PACS hide the document that
    the new SR's Predecessor Documents Sequence points to.
    """
    targets = [rejected_kos_reference(result, header, rejected_kos)]
    # the superseded revision's secondary-capture key image, when one was sent: its burnt-in finding is withdrawn too
    targets += [sent_object_reference(result, header, "sc-series", uid, SECONDARY_CAPTURE, "OT")
                for uid in rejected_captures]
    content = hd.ko.KeyObjectSelection(
        document_title=REJECTION_TITLE, referenced_objects=targets,
        observer_device_context=device_observer(site, device, result.algorithm.name),
        description=rejection_description(result, revision, replaced_by))
    content[0].ContentSequence.insert(0, hd.sr.CodeContentItem(
        name=codes.DCM.DocumentTitleModifier, value=REJECTION_MODIFIER,
        relationship_type=hd.sr.RelationshipTypeValues.HAS_CONCEPT_MOD))
    when = dt.datetime.fromtimestamp(decided_at)
    note = hd.ko.KeyObjectSelectionDocument(
        evidence=targets, content=content, series_instance_uid=result.uid("rejection-series"),
        series_number=REJECTION_SERIES_NUMBER, sop_instance_uid=result.uid("rejection", revision),
        instance_number=revision, manufacturer=MANUFACTURER, transfer_syntax_uid=ExplicitVRLittleEndian,
        series_description=f"AI {result.algorithm.name} withdrawn key images"[:64],
        content_date=when.date(), content_time=when.time())
    pin_times(note, when)
    return note
