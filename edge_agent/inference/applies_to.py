"""A manifest's ``applies_to``: the dataclass, its parser, and site overrides of it.

Routing keys (``modality``, ``body_part``, ``description_keywords``,
``exclude_keywords``), coverage keys (``min_slices``, ``min_coverage_mm``)
and the applicability rules of :mod:`edge_agent.inference.applicability`
(``kernels``, ``slice_thickness_mm``, ``max_gantry_tilt_deg``, ``contrast``,
``cardiac_gating``, ``kvp``, ``patient_age_years``, ``qa`` and their keyword
lists). The same parser validates a manifest and a site's
``[models.<name>.applies_to]`` override (:func:`override`), so both give the
same one-sentence errors.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from edge_agent.inference.applicability import (
    CARDIAC_KEYWORDS, CONTRAST_KEYWORDS, POLICIES, QA_KEYWORDS, KernelRule,
)
from edge_agent.inference.kernels import KINDS


@dataclass(frozen=True)
class AppliesTo:
    """Which series a model applies to, and what it can analyse (docs/MANIFEST.md)."""

    modality: tuple[str, ...]
    body_part: tuple[str, ...] = ()
    description_keywords: tuple[str, ...] = ()
    exclude_keywords: tuple[str, ...] = ()
    slice_thickness_mm: tuple[float, float] | None = None
    min_slices: int = 1
    min_coverage_mm: float = 0.0
    max_gantry_tilt_deg: float | None = None
    kernels: KernelRule | None = None
    contrast: str = "allow"
    contrast_keywords: tuple[str, ...] = CONTRAST_KEYWORDS
    cardiac_gating: str = "allow"
    cardiac_keywords: tuple[str, ...] = CARDIAC_KEYWORDS
    kvp: tuple[float, float] | None = None
    patient_age_years: tuple[float, float | None] | None = None
    qa: str = "allow"
    qa_keywords: tuple[str, ...] = QA_KEYWORDS


KEYS = tuple(f.name for f in fields(AppliesTo))


def _range(r: Any, value: Any, field: str, unit: str, *, open_top: bool = False) -> tuple | None:
    """[minimum, maximum] (maximum may be null when ``open_top``) or null."""
    if value is None:
        return None
    if not isinstance(value, list) or len(value) != 2:
        raise r.fail(field, f"must be [minimum, maximum] in {unit} or null")
    lo = float(r.number(value[0], f"{field}[0]", minimum=0))
    if value[1] is None and open_top:
        return (lo, None)
    return (lo, float(r.number(value[1], f"{field}[1]", minimum=lo)))


def _kernels(r: Any, value: Any, field: str) -> KernelRule | None:
    if value is None:
        return None
    d = r.obj(value, field, set(), {"refuse_kinds", "allow", "refuse", "manufacturers", "unknown"})
    kinds = tuple(k.lower() for k in r.strings(d.get("refuse_kinds", []), f"{field}.refuse_kinds"))
    for i, kind in enumerate(kinds):
        if kind not in KINDS:
            raise r.fail(f"{field}.refuse_kinds[{i}]", f"must be one of {', '.join(KINDS)}, not {kind!r}")
    makers = d.get("manufacturers", {})
    if not isinstance(makers, dict):
        raise r.fail(f"{field}.manufacturers", "must be an object of {manufacturer: {allow, refuse}}")
    tables = []
    for word, table in makers.items():
        where = f"{field}.manufacturers.{word}"
        if not word.strip():
            raise r.fail(where, "must name a manufacturer (a word of its Manufacturer attribute)")
        t = r.obj(table, where, set(), {"allow", "refuse"})
        tables.append((word.strip().upper(), r.strings(t.get("allow", []), f"{where}.allow"),
                       r.strings(t.get("refuse", []), f"{where}.refuse")))
    return KernelRule(refuse_kinds=kinds, allow=r.strings(d.get("allow", []), f"{field}.allow"),
                      refuse=r.strings(d.get("refuse", []), f"{field}.refuse"), manufacturers=tuple(tables),
                      unknown=r.string(d.get("unknown", "allow"), f"{field}.unknown", choices=("allow", "refuse")))


def parse(r: Any, d: Any, field: str = "applies_to") -> AppliesTo:
    """Validate an ``applies_to`` object (``r``: the manifest reader, one-sentence errors naming ``field``)."""
    d = r.obj(d, field, {"modality"}, set(KEYS) - {"modality"})
    tilt = d.get("max_gantry_tilt_deg")
    keywords = {}
    for key, default in (("contrast_keywords", CONTRAST_KEYWORDS), ("cardiac_keywords", CARDIAC_KEYWORDS),
                         ("qa_keywords", QA_KEYWORDS)):
        keywords[key] = r.strings(d[key], f"{field}.{key}") if key in d else default
    return AppliesTo(
        modality=r.strings(d["modality"], f"{field}.modality"),
        body_part=r.strings(d.get("body_part", []), f"{field}.body_part"),
        description_keywords=r.strings(d.get("description_keywords", []), f"{field}.description_keywords"),
        exclude_keywords=r.strings(d.get("exclude_keywords", []), f"{field}.exclude_keywords"),
        slice_thickness_mm=_range(r, d.get("slice_thickness_mm"), f"{field}.slice_thickness_mm", "mm"),
        min_slices=int(r.number(d.get("min_slices", 1), f"{field}.min_slices", minimum=1, integer=True)),
        min_coverage_mm=float(r.number(d.get("min_coverage_mm", 0.0), f"{field}.min_coverage_mm", minimum=0)),
        max_gantry_tilt_deg=None if tilt is None else float(r.number(tilt, f"{field}.max_gantry_tilt_deg",
                                                                      minimum=0)),
        kernels=_kernels(r, d.get("kernels"), f"{field}.kernels"),
        contrast=r.string(d.get("contrast", "allow"), f"{field}.contrast", choices=POLICIES),
        cardiac_gating=r.string(d.get("cardiac_gating", "allow"), f"{field}.cardiac_gating",
                                choices=("refuse", "allow")),
        kvp=_range(r, d.get("kvp"), f"{field}.kvp", "kV"),
        patient_age_years=_range(r, d.get("patient_age_years"), f"{field}.patient_age_years", "years",
                                 open_top=True),
        qa=r.string(d.get("qa", "allow"), f"{field}.qa", choices=("refuse", "allow")),
        **keywords,
    )


def override(r: Any, base: AppliesTo, changes: Any, field: str) -> AppliesTo:
    """``base`` with the keys of ``changes`` replaced (each key whole, validated like a manifest's)."""
    if not isinstance(changes, dict):
        raise r.fail(field, "must be a table of applies_to keys")
    parsed = parse(r, {"modality": list(base.modality), **changes}, field)
    return replace(base, **{key: getattr(parsed, key) for key in changes})
