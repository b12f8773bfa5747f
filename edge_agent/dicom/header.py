"""Acquisition and reconstruction header fields for the applicability rules.

:func:`header_fields` reads, from a pydicom Dataset or the fast path's
:class:`~edge_agent.dicom.fastpath.Header`, what
:mod:`edge_agent.inference.applicability` judges a series by: manufacturer,
reconstruction kernel, contrast, cardiac synchronisation, kVp, protocol,
reconstruction diameter and Patient Age. Absent or empty → None, never an
exception. Patient Age is the only patient attribute read, for the age rule
only: it is never printed, published or logged.
"""

from __future__ import annotations

from typing import Any

# Slice/Series fields read for the applicability rules (edge_agent.inference.applicability).
HEADER_FIELDS = ("manufacturer", "manufacturer_model", "convolution_kernel", "contrast_agent", "contrast_route",
                 "cardiac_sync", "trigger_time", "kvp", "protocol_name", "reconstruction_diameter", "patient_age")


def _text_or_none(value: Any) -> str | None:
    text = "" if value is None else str(value).strip()
    return text or None


def _get(ds: Any, keyword: str) -> Any:
    """``ds.get(keyword)``, None when the value cannot even be converted (a damaged DS/IS)."""
    try:
        return ds.get(keyword)
    except Exception:  # noqa: BLE001 - pydicom raises many types for malformed values; absent it is
        return None


def _enhanced(ds: Any, sequence: str, keyword: str) -> Any:
    """``keyword`` from the first item of a shared functional group (Enhanced CT, PS3.3 C.8.15.3), or None."""
    try:
        shared = ds.get("SharedFunctionalGroupsSequence")
        item = shared[0].get(sequence)[0] if shared else None
        return item.get(keyword) if item is not None else None
    except Exception:  # noqa: BLE001 - a malformed or empty sequence: absent
        return None


def _enhanced_contrast(ds: Any) -> tuple[str | None, str | None]:
    """(agent, route) from the Enhanced Contrast/Bolus module (PS3.3 C.7.6.4b) when it was administered."""
    try:
        agents = ds.get("ContrastBolusAgentSequence")
        if not agents:
            return None, None
        usage = None
        for groups in (ds.get("SharedFunctionalGroupsSequence"), ds.get("PerFrameFunctionalGroupsSequence")):
            if groups and groups[0].get("ContrastBolusUsageSequence"):
                usage = groups[0].ContrastBolusUsageSequence[0].get("ContrastBolusAgentAdministered")
                break
        if str(usage or "YES").strip().upper() != "YES":
            return None, None
        agent = agents[0].get("CodeMeaning") or agents[0].get("CodeValue") or "a contrast agent"
        routes = agents[0].get("ContrastBolusAdministrationRouteSequence")
        return str(agent).strip(), (str(routes[0].get("CodeMeaning") or "").strip() or None) if routes else None
    except Exception:  # noqa: BLE001 - a malformed sequence: absent
        return None, None


def header_fields(ds: Any) -> dict:
    """Acquisition/reconstruction fields for the applicability rules; absent or empty → None.

    Enhanced CT keeps kernel and kVp in functional groups (CT Reconstruction,
    CT X-Ray Details) and contrast in the Enhanced Contrast/Bolus module;
    they are looked up there when the top level has none.
    PatientAge is the only patient attribute read, for the age rule only.
    """
    kernel = _get(ds, "ConvolutionKernel")
    if kernel in (None, ""):
        kernel = _enhanced(ds, "CTReconstructionSequence", "ConvolutionKernel")
    kernels = tuple(k for k in (str(v).strip() for v in multi(kernel)) if k) or None
    kvp = _get(ds, "KVP")
    if kvp in (None, ""):
        kvp = _enhanced(ds, "CTXRayDetailsSequence", "KVP")
    trigger = _get(ds, "TriggerTime")
    agent, route = _text_or_none(_get(ds, "ContrastBolusAgent")), _text_or_none(_get(ds, "ContrastBolusRoute"))
    if agent is None:
        agent, route = _enhanced_contrast(ds)
    return dict(
        manufacturer=_text_or_none(_get(ds, "Manufacturer")),
        manufacturer_model=_text_or_none(_get(ds, "ManufacturerModelName")),
        convolution_kernel=kernels,
        contrast_agent=agent,
        contrast_route=route,
        cardiac_sync=_text_or_none(_get(ds, "CardiacSynchronizationTechnique")),
        trigger_time=to_float(multi(trigger)[0] if multi(trigger) else None, None),
        kvp=to_float(multi(kvp)[0] if multi(kvp) else None, None),
        protocol_name=_text_or_none(_get(ds, "ProtocolName")),
        reconstruction_diameter=to_float(_get(ds, "ReconstructionDiameter"), None),
        patient_age=_text_or_none(_get(ds, "PatientAge")),
    )


def multi(value: Any) -> list:
    """A DICOM value as a list of its values (empty for absent or empty)."""
    if value is None or value == "":
        return []
    if isinstance(value, (str, bytes, int, float)):
        return [value]
    return list(value)


def to_float(value: Any, default: float | None) -> float | None:
    """A DS/IS/number value as float, or ``default`` when absent or not a number."""
    try:
        return default if value is None or value == "" else float(value)
    except (TypeError, ValueError):
        return default
