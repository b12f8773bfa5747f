"""Applicability: header rules that keep a model off series it was not made for.

Pure functions of the DICOM header (a ``Slice``, a ``Series`` or anything
with the same attributes; a missing attribute counts as absent) and of a
manifest's ``applies_to`` (:class:`~edge_agent.inference.manifest.AppliesTo`),
never of pixels. :func:`checks` runs every rule and says for each whether
it ``matched``, ``refused`` or was ``not_checked`` (not set, or the header
does not say); :func:`refusal` is the first refusal as a :class:`Refusal`.

The rules, in order (docs/MANIFEST.md): ``kernels``, ``slice_thickness``,
``gantry_tilt``, ``contrast``, ``cardiac_gating``, ``kvp``,
``patient_age``, ``qa``. Patient Age decides its rule but is never put into
a sentence, a result or a log line.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from typing import Any

from edge_agent.inference.kernels import KIND_WORDS, KINDS, classify

CONTRAST_KEYWORDS = ("C+", "CONTRAST", "ARTERIAL", "VENOUS", "PORTAL", "ENHANCED", "POST CON")
CARDIAC_KEYWORDS = ("CALCIUM", "CA SCORE", "CA SCORING", "CASCORE", "CACS", "SMARTSCORE", "AGATSTON", "CARDIAC",
                    "CORONARY", "HEART", "GATED", "ECG")
QA_KEYWORDS = ("QA", "QC", "PHANTOM", "CATPHAN", "ACR", "CALIBRATION", "CONSTANCY", "DAILY CHECK", "WATER",
               "QUALITY ASSURANCE", "QUALITY CONTROL", "TEST SCAN", "ACCEPTANCE")
# Phrases that deny contrast or gating ("WO CONTRAST", "NON-CON", "W/WO"), removed before keywords are looked for.
_NO_CONTRAST = re.compile(
    r"(?<![A-Z])(?:W\s*/\s*W/?O|W\s*(?:&|\+|AND)\s*W/?O|WITH\s+AND\s+WITHOUT|WWO|W\s*/\s*O|WO|WITHOUT|NON|NO|PRE|UN)"
    r"[\s\-_/.]*(?:IV\s+)?(?:CONTRAST|CONTR|CONT|CON|ENHANCED|C)(?![A-Z+])")
_NO_GATING = re.compile(r"(?<![A-Z])(?:NON|UN|NOT|NO)[\s\-_]*(?:ECG[\s\-_]*)?GATED")
_NO_AGENT = {"NONE", "NO", "N", "0", "NIL", "NA", "N/A", "-"}
_AGE = re.compile(r"^\s*(\d{1,3})\s*([DWMY])\s*$")
_AGE_UNIT_YEARS = {"D": 1 / 365.25, "W": 7 / 365.25, "M": 1 / 12, "Y": 1.0}
POLICIES = ("refuse", "allow", "require")
RULES = ("kernels", "slice_thickness", "gantry_tilt", "contrast", "cardiac_gating", "kvp", "patient_age", "qa")


@dataclass(frozen=True)
class KernelRule:
    """``applies_to.kernels``: which reconstruction kernels a model takes.

    A kernel value is decided by the first that applies: a pattern of the
    series' manufacturer (``manufacturers``: ``{word: {allow, refuse}}``),
    ``allow`` patterns, ``refuse`` patterns (glob, case-insensitive), then
    its kind from the vendor table (:mod:`edge_agent.inference.kernels`):
    refused when listed in ``refuse_kinds``. A kernel neither matches nor
    knows follows ``unknown`` (``allow`` by default), as does a series
    whose header names no kernel.
    """

    refuse_kinds: tuple[str, ...] = ()
    allow: tuple[str, ...] = ()
    refuse: tuple[str, ...] = ()
    manufacturers: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = ()
    unknown: str = "allow"


class Refusal(str):
    """Why a model does not apply to a series: a plain sentence (``str``) that also knows its ``rule``.

    Coverage problems (too few slices, too short) stay plain ``str``; an
    applicability refusal is this type, so a caller can tell "not made for
    this series" (``isinstance(reason, Refusal)``) from "incomplete".
    """

    rule: str

    def __new__(cls, rule: str, sentence: str) -> "Refusal":
        obj = super().__new__(cls, sentence)
        obj.rule = rule
        return obj

    def __reduce__(self):
        return (Refusal, (self.rule, str(self)))

    def to_dict(self) -> dict:
        return {"rule": self.rule, "reason": str(self)}


@dataclass(frozen=True)
class Check:
    """One rule's verdict on one series: ``matched`` | ``refused`` | ``not_checked``, with a sentence."""

    rule: str
    result: str
    detail: str

    def to_dict(self) -> dict:
        return {"rule": self.rule, "result": self.result, "detail": self.detail}


def _attr(info: Any, name: str) -> Any:
    value = getattr(info, name, None)
    return None if value is None or (isinstance(value, str) and not value.strip()) else value


def _upper(value: Any) -> str:
    return " ".join(str(value or "").upper().split())


def keyword_pattern(words: tuple[str, ...]) -> re.Pattern:
    """One regex finding any of ``words`` as whole words (letters around them break a match: QA ≠ AQUA)."""
    parts = [r"[\s_\-]*".join(re.escape(piece) for piece in word.split()) for word in words]
    return re.compile(r"(?<![A-Z])(" + "|".join(parts) + r")(?![A-Z])") if parts else re.compile(r"(?!)")


_DESCRIPTIONS = (("series description", "series_description"), ("study description", "study_description"),
                 ("protocol name", "protocol_name"))


def _find(info: Any, words: tuple[str, ...], strip: re.Pattern | None = None,
          with_body_part: bool = False) -> tuple[str, str, str] | None:
    """(what, its text, keyword) of the first description naming one of ``words``, or None.

    ``strip`` removes denying phrases first ("WO CONTRAST", "NON-GATED").
    """
    pattern = keyword_pattern(words)
    fields = _DESCRIPTIONS + ((("body part", "body_part"),) if with_body_part else ())
    for what, name in fields:
        text = _attr(info, name)
        if text is None:
            continue
        upper = _upper(text)
        found = pattern.search(strip.sub(" ", upper) if strip is not None else upper)
        if found:
            return what, str(text).strip(), found.group(1)
    return None


def _glob(value: str, patterns: tuple[str, ...]) -> str | None:
    return next((p for p in patterns if fnmatch.fnmatchcase(value.upper(), p.upper())), None)


def _kernel(rule: KernelRule | None, info: Any, model: str) -> Check:
    if rule is None:
        return Check("kernels", "not_checked", "the manifest sets no kernel rule")
    if not hasattr(info, "convolution_kernel"):  # a caller's partial view (no header fields), not "no kernel"
        return Check("kernels", "not_checked", "no reconstruction kernel information was given")
    raw = _attr(info, "convolution_kernel")
    values = tuple(v for v in (str(x).strip() for x in ((raw,) if isinstance(raw, str) else raw or ())) if v)
    manufacturer = _attr(info, "manufacturer")
    shown = "\\".join(values)
    if not values:
        if rule.unknown == "refuse":
            return Check("kernels", "refused", f"the header names no reconstruction kernel; model {model} only "
                                               "takes series whose kernel it knows")
        return Check("kernels", "matched", "the header names no reconstruction kernel: allowed (kernels.unknown "
                                           "is allow)")
    maker = _upper(manufacturer)
    own = [(allow, refuse) for word, allow, refuse in rule.manufacturers
           if re.search(rf"(?<![A-Z]){re.escape(word.upper())}(?![A-Z])", maker)]
    for value in (shown, *values) if len(values) > 1 else values:  # the whole "Hr40f\\3" first, then each value
        for allow, refuse in own:
            if _glob(value, allow):
                return Check("kernels", "matched", f"reconstruction kernel {shown} is on the site's list for "
                                                   f"{manufacturer}")
            if _glob(value, refuse):
                return Check("kernels", "refused", f"reconstruction kernel {shown} is on the list of kernels model "
                                                   f"{model} does not take on {manufacturer} scanners")
        if _glob(value, rule.allow):
            return Check("kernels", "matched", f"reconstruction kernel {shown} is on model {model}'s kernel list")
        if _glob(value, rule.refuse):
            return Check("kernels", "refused", f"reconstruction kernel {shown} is on the list of kernels model "
                                               f"{model} does not take")
    verdicts = [(value, kind) for value in values if (kind := classify(value, manufacturer)) is not None]
    refused = [(v, k) for v, k in verdicts if k in rule.refuse_kinds]
    if refused:
        value, kind = refused[0]
        taken = [k for k in KINDS if k not in rule.refuse_kinds]
        if taken == ["soft"]:
            wanted = "is made for soft-tissue kernels"
        else:
            wanted = "does not take " + " or ".join(KIND_WORDS[k] for k in rule.refuse_kinds) + " kernels"
        return Check("kernels", "refused", f"reconstruction kernel {value} is a {KIND_WORDS[kind]} kernel; model "
                                           f"{model} {wanted}")
    if verdicts:
        value, kind = verdicts[0]
        return Check("kernels", "matched", f"reconstruction kernel {value} is a {KIND_WORDS[kind]} kernel")
    if rule.unknown == "refuse":
        return Check("kernels", "refused", f"reconstruction kernel {shown} is not one model {model} knows; it only "
                                           "takes kernels it knows")
    return Check("kernels", "matched", f"reconstruction kernel {shown} is not in the kernel table: allowed "
                                       "(kernels.unknown is allow)")


def _thickness(rule: Any, info: Any, model: str) -> Check:
    thickness = _attr(info, "slice_thickness")
    if rule.slice_thickness_mm is None:
        return Check("slice_thickness", "not_checked", "the manifest accepts any slice thickness")
    lo, hi = rule.slice_thickness_mm
    if thickness is None:
        return Check("slice_thickness", "not_checked", "the header gives no slice thickness")
    if not lo <= float(thickness) <= hi:
        return Check("slice_thickness", "refused", f"slice thickness {float(thickness):g} mm is outside the "
                                                   f"{lo:g}–{hi:g} mm model {model} accepts")
    return Check("slice_thickness", "matched", f"slice thickness {float(thickness):g} mm is within {lo:g}–{hi:g} mm")


def _tilt(rule: Any, info: Any, model: str) -> Check:
    if rule.max_gantry_tilt_deg is None:
        return Check("gantry_tilt", "not_checked", "the manifest accepts any gantry tilt")
    tilt = 0.0 if getattr(info, "tilt_corrected", False) else abs(float(getattr(info, "gantry_tilt", 0.0) or 0.0))
    if tilt > rule.max_gantry_tilt_deg:
        return Check("gantry_tilt", "refused", f"gantry tilt {tilt:g}° is beyond the {rule.max_gantry_tilt_deg:g}° "
                                               f"model {model} accepts and was not corrected")
    return Check("gantry_tilt", "matched", f"gantry tilt {tilt:g}° is within {rule.max_gantry_tilt_deg:g}°")


def contrast_evidence(info: Any, keywords: tuple[str, ...] = CONTRAST_KEYWORDS) -> str | None:
    """What in the header says contrast was given (a phrase), or None."""
    agent = _attr(info, "contrast_agent")
    if agent is not None and _upper(agent) not in _NO_AGENT:
        route = _attr(info, "contrast_route")
        return f"the header names the contrast agent {str(agent).strip()}" + (f" (route {route})" if route else "")
    found = _find(info, keywords, _NO_CONTRAST)
    if found:
        what, text, word = found
        return f"the {what} '{text}' says contrast ({word})"
    return None


def _contrast(rule: Any, info: Any, model: str) -> Check:
    evidence = contrast_evidence(info, rule.contrast_keywords)
    if rule.contrast == "allow":
        return Check("contrast", "not_checked", f"model {model} takes scans with and without contrast")
    if rule.contrast == "refuse" and evidence:
        return Check("contrast", "refused", f"{evidence}; model {model} is made for non-contrast scans")
    if rule.contrast == "require" and not evidence and not hasattr(info, "contrast_agent"):
        return Check("contrast", "not_checked", "no contrast information was given")
    if rule.contrast == "require" and not evidence:
        return Check("contrast", "refused", f"nothing in the header shows contrast; model {model} is made for "
                                            "contrast-enhanced scans")
    return Check("contrast", "matched", evidence or "no contrast agent in the header and no contrast keyword in "
                                                    "the descriptions")


def gating_evidence(info: Any, keywords: tuple[str, ...] = CARDIAC_KEYWORDS) -> str | None:
    """What in the header says the scan was ECG-gated / cardiac (a phrase), or None."""
    sync = _attr(info, "cardiac_sync")
    if sync is not None and _upper(sync) != "NONE":
        return f"the header says the scan was ECG-synchronised (Cardiac Synchronization Technique {sync})"
    trigger = _attr(info, "trigger_time")
    if trigger is not None and float(trigger) != 0.0:
        return "the header gives an ECG trigger time"
    found = _find(info, keywords, _NO_GATING)
    if found:
        what, text, word = found
        return f"the {what} '{text}' names a cardiac or gated scan ({word})"
    return None


def _gating(rule: Any, info: Any, model: str) -> Check:
    if rule.cardiac_gating == "allow":
        return Check("cardiac_gating", "not_checked", f"model {model} takes gated and non-gated scans")
    evidence = gating_evidence(info, rule.cardiac_keywords)
    if evidence:
        return Check("cardiac_gating", "refused", f"{evidence}; model {model} is not made for ECG-gated cardiac "
                                                  "or calcium-score CT")
    return Check("cardiac_gating", "matched", "nothing in the header says the scan was ECG-gated or cardiac")


def _kvp(rule: Any, info: Any, model: str) -> Check:
    if rule.kvp is None:
        return Check("kvp", "not_checked", "the manifest accepts any tube voltage")
    lo, hi = rule.kvp
    kvp = _attr(info, "kvp")
    if kvp is None:
        return Check("kvp", "not_checked", "the header gives no tube voltage (KVP): allowed")
    if not lo <= float(kvp) <= hi:
        return Check("kvp", "refused", f"the tube voltage {float(kvp):g} kV is outside the {lo:g}–{hi:g} kV model "
                                       f"{model} was made for")
    return Check("kvp", "matched", f"tube voltage {float(kvp):g} kV is within {lo:g}–{hi:g} kV")


def age_years(value: Any) -> float | None:
    """Patient Age (AS: ``045Y``, ``006M``, ``010D``, ``002W``) in years, or None when absent or malformed."""
    found = _AGE.match(str(value or "").upper())
    return int(found.group(1)) * _AGE_UNIT_YEARS[found.group(2)] if found else None


def _age(rule: Any, info: Any, model: str) -> Check:
    # The age itself never goes into a sentence: these sentences reach results, logs and screens.
    if rule.patient_age_years is None:
        return Check("patient_age", "not_checked", "the manifest accepts any patient age")
    lo, hi = rule.patient_age_years
    span = f"{lo:g} years and over" if hi is None else f"{lo:g}–{hi:g} years"
    years = age_years(_attr(info, "patient_age"))
    if years is None:
        return Check("patient_age", "not_checked", "the header gives no usable patient age: allowed")
    if years < lo:
        return Check("patient_age", "refused", f"the patient is younger than the {lo:g} years model {model} is "
                                               "made for (children's scans differ)")
    if hi is not None and years > hi:
        return Check("patient_age", "refused", f"the patient is older than the {hi:g} years model {model} is made "
                                               "for")
    return Check("patient_age", "matched", f"patient age within {span}")


def _qa(rule: Any, info: Any, model: str) -> Check:
    if rule.qa == "allow":
        return Check("qa", "not_checked", f"model {model} does not look for QA or phantom scans")
    found = _find(info, rule.qa_keywords, with_body_part=True)
    if found:
        what, text, word = found
        return Check("qa", "refused", f"the {what} '{text}' names a QA or phantom scan ({word}); model {model} "
                                      "analyses patient scans only")
    return Check("qa", "matched", "no QA or phantom keyword in the descriptions")


def _plain(value: Any) -> str:
    return "" if value is None else str(value).strip().upper()  # exactly as models.applies() reads them


def routing_checks(rule: Any, info: Any) -> list[dict]:
    """The routing rules (modality, excluded keywords, anatomy) as explain entries (``result``: matched |
    not_matched | not_checked), the same tests as ``edge_agent.inference.models.applies``."""
    modality = _plain(getattr(info, "modality", None))
    out = [{"rule": "modality", "result": "matched" if modality in rule.modality else "not_matched",
            "detail": f"modality {modality or 'none'} {'is' if modality in rule.modality else 'is not'} one of "
                      f"{', '.join(rule.modality)}"}]
    descriptions = " ".join((_plain(getattr(info, "series_description", None)),
                             _plain(getattr(info, "study_description", None))))
    excluded = next((w for w in rule.exclude_keywords if w in descriptions), None)
    out.append({"rule": "exclude_keywords", "result": "not_matched" if excluded else "matched",
                "detail": f"the descriptions contain the excluded keyword {excluded}" if excluded
                else "no excluded keyword in the descriptions"})
    body = _plain(getattr(info, "body_part", None))
    if not rule.body_part and not rule.description_keywords:
        out.append({"rule": "anatomy", "result": "not_checked", "detail": "the model takes every series of "
                                                                          "its modality"})
    else:
        word = next((w for w in rule.description_keywords if w in descriptions), None)
        hit = body in rule.body_part or word is not None
        detail = (f"body part {body} is listed" if body in rule.body_part else
                  f"the descriptions mention {word}" if word else
                  f"neither body part {body or 'none'} nor the descriptions match the model's anatomy")
        out.append({"rule": "anatomy", "result": "matched" if hit else "not_matched", "detail": detail})
    return out


def checks(applies_to: Any, info: Any, model: str) -> list[Check]:
    """Every applicability rule of ``applies_to`` on the header ``info``, in :data:`RULES` order."""
    return [_kernel(applies_to.kernels, info, model), _thickness(applies_to, info, model),
            _tilt(applies_to, info, model), _contrast(applies_to, info, model), _gating(applies_to, info, model),
            _kvp(applies_to, info, model), _age(applies_to, info, model), _qa(applies_to, info, model)]


def refusal(applies_to: Any, info: Any, model: str) -> Refusal | None:
    """The first rule that refuses the series, as a :class:`Refusal`, or None when every rule lets it through."""
    for check in checks(applies_to, info, model):
        if check.result == "refused":
            return Refusal(check.rule, check.detail)
    return None
