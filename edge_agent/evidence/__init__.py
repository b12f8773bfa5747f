"""Physically grounded evidence and domain checks computed from Hounsfield units.

A model's probability says "this looks like what I was trained on"; the checks
here say whether the CT numbers physically support the finding, and whether the
series is the kind of image the model was made for. The series decision requires
the evidence before a finding is positive, and answers ``not_assessable`` when
the domain check says so. See docs/EVIDENCE.md for thresholds and their sources.

Streaming: :func:`slice_features` runs once per slice while its pixels are in
memory and returns a small JSON-serialisable dict; the series functions combine
those dicts when the series is (or is nearly) complete::

    spec = parse_evidence({"kind": "ich_blood"}); dom = parse_domain({"kind": "head"})
    feats = [slice_features(hu[k], spacing_yx, spec, dom) for k in range(len(hu))]
    ev = series_evidence(spec, feats, positions, thickness)
    verdict = series_domain(dom, feats)

Pure numpy + scipy.ndimage; nothing here imports a model runtime.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from edge_agent.errors import EdgeAgentError
from edge_agent.evidence._grid import make_grid

__all__ = ["preload", "EvidenceError", "EvidenceSpec", "DomainSpec", "Evidence", "DomainVerdict", "parse_evidence",
           "parse_domain", "slice_features", "series_evidence", "series_domain"]


class EvidenceError(EdgeAgentError):
    """A manifest's ``evidence`` or ``domain`` block is invalid."""

    exit_code = 2


@dataclass(frozen=True)
class EvidenceSpec:
    """What physical evidence a finding needs (the manifest's ``evidence`` block).

    ``kind="ich_blood"``: acute blood inside the skull. ``kind="lung_blob"``: a compact
    solid or ground-glass blob in the lung that is not a vessel. Defaults are physics /
    literature values (docs/EVIDENCE.md), not tuned on any data set.
    """

    kind: str
    # ich_blood
    blood_hu: tuple[float, float] = (50.0, 90.0)
    bone_hu: float = 300.0
    calcification_hu: float = 100.0
    bone_margin_mm: float = 2.5
    min_component_mm2: float = 10.0
    min_compartment_mm2: float = 800.0
    max_fat_air_fraction: float = 0.10
    min_volume_ml: float = 0.3
    min_extent_mm: float = 4.0
    max_shift_hu: float = 25.0
    core_hu: float = 60.0
    min_core_mm2: float = 4.0
    hyperacute_contrast_hu: float = 20.0
    min_hyperacute_mm2: float = 150.0
    min_brain_to_bone: float = 1.0
    noise_hu: float = 2.0
    # lung_blob
    min_diameter_mm: float = 4.0
    max_diameter_mm: float = 30.0
    solid_hu: float = -100.0
    ggo_hu: tuple[float, float] = (-750.0, -300.0)
    ggo_contrast_hu: float = 150.0
    min_roundness: float = 0.5
    max_pleural_contact: float = 0.5
    max_extent_ratio: float = 2.0
    link_mm: float = 3.0
    # both
    # with the model's slice probabilities: the evidence counts only on or within this many slices of a slice
    # the model scores at or above its decision threshold (the HU and the model must agree on where)
    model_slices: int = 1
    smoothing_mm: float = 1.0
    grid_mm: float | None = None   # analysis grid (mm); None: 1.25 for heads, 1.5 for chests

    def to_dict(self) -> dict:
        return _spec_dict(self)


@dataclass(frozen=True)
class DomainSpec:
    """What a series must look like for the model to assess it (the manifest's ``domain`` block)."""

    kind: str
    # head
    min_skull_fraction: float = 0.5
    brain_median_hu: tuple[float, float] = (15.0, 50.0)
    min_bone_mm2: float = 200.0
    min_enclosed_mm2: float = 1500.0
    cylinder_axis_ratio: float = 0.97
    cylinder_fill: float = 0.93
    cylinder_area_cv: float = 0.05
    max_water_fraction: float = 0.5
    # chest
    min_lung_fraction: float = 0.10
    min_lung_slices: float = 0.5
    max_edge_cut: float = 0.3
    soft_median_hu: tuple[float, float] = (-120.0, 80.0)
    grid_mm: float | None = None   # analysis grid (mm); None: 1.25 for heads, 1.5 for chests

    def to_dict(self) -> dict:
        return _spec_dict(self)


_ICH = {"blood_hu", "bone_hu", "calcification_hu", "bone_margin_mm", "min_component_mm2", "min_compartment_mm2",
        "max_fat_air_fraction", "min_volume_ml", "min_extent_mm", "max_shift_hu", "core_hu", "min_core_mm2",
        "hyperacute_contrast_hu", "min_hyperacute_mm2", "min_brain_to_bone", "noise_hu", "smoothing_mm", "grid_mm",
        "model_slices"}
_LUNG = {"min_diameter_mm", "max_diameter_mm", "solid_hu", "ggo_hu", "ggo_contrast_hu", "min_roundness",
         "max_pleural_contact", "max_extent_ratio", "link_mm", "smoothing_mm", "grid_mm", "model_slices"}
_HEAD = {"min_skull_fraction", "brain_median_hu", "min_bone_mm2", "min_enclosed_mm2", "cylinder_axis_ratio",
         "cylinder_fill", "cylinder_area_cv", "max_water_fraction", "grid_mm"}
_CHEST = {"min_lung_fraction", "min_lung_slices", "max_edge_cut", "soft_median_hu", "grid_mm"}
_KEYS = {"ich_blood": _ICH, "lung_blob": _LUNG, "head": _HEAD, "chest": _CHEST}
_FRACTIONS = {"max_fat_air_fraction", "min_roundness", "max_pleural_contact", "min_skull_fraction",
              "cylinder_axis_ratio", "cylinder_fill", "max_water_fraction", "min_lung_fraction",
              "min_lung_slices", "max_edge_cut"}
_SIGNED = {"solid_hu", "max_shift_hu"}


def _spec_dict(spec) -> dict:
    """A spec as its manifest block: ``kind`` and the keys of that kind (pairs as lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(spec).items()
            if k == "kind" or k in _KEYS[spec.kind]}


def preload() -> None:
    """Import the analysis modules now (the agent does it at start, not on the first slice)."""
    from edge_agent.evidence import chest, domain, head, series  # noqa: F401, PLC0415


def _parse(cls, d: dict | None, block: str):
    if d is None:
        return None
    if not isinstance(d, dict):
        raise EvidenceError(f"The manifest's '{block}' block must be an object with a 'kind', not {type(d).__name__}.")
    kind = d.get("kind")
    kinds = sorted(k for k in _KEYS if (k in ("ich_blood", "lung_blob")) == (block == "evidence"))
    if kind not in kinds:
        raise EvidenceError(f"The manifest's '{block}.kind' must be one of {', '.join(kinds)}, not {kind!r}.")
    allowed = _KEYS[kind]
    types = {f.name: f.type for f in fields(cls)}
    values = {}
    for key, value in d.items():
        if key == "kind":
            continue
        if key not in allowed:
            raise EvidenceError(f"The manifest's '{block}.{key}' is not a setting of {block} kind '{kind}' "
                                f"(allowed: {', '.join(sorted(allowed))}).")
        if "tuple" in str(types[key]):
            if (not isinstance(value, (list, tuple)) or len(value) != 2
                    or not all(_is_number(v) for v in value) or not value[0] < value[1]):
                raise EvidenceError(f"The manifest's '{block}.{key}' must be a pair [low, high] of numbers with "
                                    f"low < high, not {value!r}.")
            values[key] = (float(value[0]), float(value[1]))
            continue
        if not _is_number(value):
            raise EvidenceError(f"The manifest's '{block}.{key}' must be a number, not {value!r}.")
        v = float(value)
        if key in _FRACTIONS and not 0.0 <= v <= 1.0:
            raise EvidenceError(f"The manifest's '{block}.{key}' must lie between 0 and 1, not {value!r}.")
        if key == "max_shift_hu" and v < 0:
            raise EvidenceError(f"The manifest's '{block}.max_shift_hu' must be 0 (no calibration shift) or more, "
                                f"not {value!r}.")
        if key == "model_slices" and (v < 0 or v != int(v)):
            raise EvidenceError(f"The manifest's '{block}.model_slices' must be a whole number of slices, 0 (the "
                                f"model's own slices) or more, not {value!r}.")
        if key not in _SIGNED and key not in _FRACTIONS and key != "model_slices" and not key.endswith("_hu") \
                and v <= 0:
            raise EvidenceError(f"The manifest's '{block}.{key}' must be positive, not {value!r}.")
        values[key] = int(v) if key == "model_slices" else v
    return cls(kind=kind, **values)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def parse_evidence(d: dict | None) -> EvidenceSpec | None:
    """The manifest's ``evidence`` block → :class:`EvidenceSpec` (None when absent)."""
    return _parse(EvidenceSpec, d, "evidence")


def parse_domain(d: dict | None) -> DomainSpec | None:
    """The manifest's ``domain`` block → :class:`DomainSpec` (None when absent)."""
    return _parse(DomainSpec, d, "domain")


@dataclass
class Evidence:
    """Whether the HU physically support a finding, why, and where."""

    present: bool
    reason: str
    slices: list[int] = field(default_factory=list)   # supporting slice indices, best first
    volume_ml: float | None = None
    diameter_mm: float | None = None
    bbox_mm: dict | None = None                       # patient LPS {"min": [x, y, z], "max": [x, y, z]}
    # where on each supporting slice: slice index -> [row0, col0, row1, col1] in that slice's pixels
    regions: dict[int, list[float]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"present": self.present, "reason": self.reason, "slices": list(self.slices),
                "volume_ml": self.volume_ml, "diameter_mm": self.diameter_mm, "bbox_mm": self.bbox_mm,
                "regions": [{"slice": int(k), "box_px": list(self.regions[k])} for k in self.slices
                            if k in self.regions]}


def slice_evidence_mm2(features: dict | None) -> float:
    """The area (mm²) of the largest evidence candidate on one slice (a blood component, a lung blob), 0 when none.

    The pipeline keeps the preview thumbnails of slices that carry evidence before those that only score
    high, so that the key image can show the slice the evidence rests on."""
    if not isinstance(features, dict):
        return 0.0
    comps = (features.get("ich") or {}).get("comps") or []
    cands = (features.get("lung") or {}).get("cands") or []
    return float(max([c[0] for c in comps if len(c) >= 6] + [c[6] for c in cands if len(c) >= 7], default=0.0))


@dataclass
class DomainVerdict:
    in_domain: bool
    reason: str
    stats: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"in_domain": self.in_domain, "reason": self.reason, "stats": dict(self.stats)}


def slice_features(hu: np.ndarray, pixel_spacing: tuple[float, float], evidence: EvidenceSpec | None,
                   domain: DomainSpec | None) -> dict:
    """One 2-D slice in HU → the small dict that :func:`series_evidence` and :func:`series_domain` need."""
    from edge_agent.evidence.chest import chest_features
    from edge_agent.evidence.head import head_features

    out: dict = {}
    ev_kind = evidence.kind if evidence is not None else None
    dom_kind = domain.kind if domain is not None else None
    if ev_kind == "ich_blood" or dom_kind == "head":
        grid_mm = (evidence.grid_mm if ev_kind == "ich_blood" else domain.grid_mm) or 1.25
        g = make_grid(hu, pixel_spacing, grid_mm)
        out.update(head_features(g, evidence if ev_kind == "ich_blood" else None,
                                 domain if dom_kind == "head" else None))
    if ev_kind == "lung_blob" or dom_kind == "chest":
        grid_mm = (evidence.grid_mm if ev_kind == "lung_blob" else domain.grid_mm) or 1.5
        g = make_grid(hu, pixel_spacing, grid_mm)
        out.update(chest_features(g, evidence if ev_kind == "lung_blob" else None,
                                  domain if dom_kind == "chest" else None, pixel_spacing))
    return out


def series_evidence(spec: EvidenceSpec, features: list[dict], positions_mm: list[float],
                    slice_thickness_mm: float | None, image_positions: list | None = None,
                    orientation: tuple | None = None, pixel_spacing: tuple | None = None,
                    support=None, support_threshold: float | None = None) -> Evidence:
    """Per-slice features (in order along the normal) → :class:`Evidence` for the series.

    ``support`` (the model's probability per slice, same order) and ``support_threshold`` (its decision
    threshold): only evidence on or within ``spec.model_slices`` slices of a slice the model scores at or
    above the threshold counts — blood-dense HU at the vertex do not support a model that fires on the
    skull base. Without them the evidence may lie anywhere in the series."""
    from edge_agent.evidence.series import ich_series, lung_series

    if len(positions_mm) != len(features):
        raise ValueError("series_evidence needs one position per slice feature dict")
    near = None
    if support is not None and support_threshold is not None:
        p = np.asarray(support, dtype=float)
        if len(p) != len(features):
            raise ValueError("series_evidence needs one support probability per slice feature dict")
        gap = spec.model_slices
        hot = np.flatnonzero(p >= float(support_threshold))
        near = {int(k) for h in hot for k in range(h - gap, h + gap + 1) if 0 <= k < len(features)}
    fn = ich_series if spec.kind == "ich_blood" else lung_series
    return fn(spec, features, positions_mm, slice_thickness_mm, image_positions, orientation, pixel_spacing,
              near=near)


def series_domain(spec: DomainSpec, features: list[dict]) -> DomainVerdict:
    """Per-slice features → whether the series lies inside the model's domain, and why."""
    from edge_agent.evidence.domain import chest_domain, head_domain

    return head_domain(spec, features) if spec.kind == "head" else chest_domain(spec, features)
