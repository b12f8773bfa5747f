"""Synthetic CT phantoms (head with or without haemorrhage, chest with or without nodule).

The phantoms train and test the shipped demo models, feed ``edge-agent
simulate`` and ``demo``, and give the tests real DICOM series to read. They
are analytic volumes with partial-volume edges, correlated noise, vendor HU
quirks, random field of view, position, rotation and slice thickness, written
as CT Image Storage series (PS3.3 A.3) through :mod:`edge_agent.dicom.synth`.

Synthetic anatomy is a caricature of real anatomy: models trained on it are
demonstrations, not medical devices.

Example::

    from edge_agent.phantoms import make_phantom, write_phantom
    ph = make_phantom("ich", seed=3)
    write_phantom(ph, "/tmp/series")
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_agent.dicom.synth import SeriesHeaders, write_series
from edge_agent.phantoms._geometry import AIR_HU, Acquisition
from edge_agent.phantoms.chest import MIN_LABEL_AREA_MM2 as CHEST_MIN_AREA, NODULE_TYPES, generate_chest
from edge_agent.phantoms.head import BLEED_TYPES, MIN_LABEL_AREA_MM2, generate_head, head_confounders

__all__ = [
    "BLEED_TYPES", "NODULE_TYPES", "KINDS", "Phantom", "head_phantom", "chest_phantom", "make_phantom",
    "write_phantom", "qa_phantom",
]

KINDS = ("ich", "normal", "chest", "nodule")


@dataclass
class Phantom:
    """A synthetic CT series: HU volume, geometry, per-slice truth and DICOM headers."""

    volume_hu: np.ndarray                  # float32 (z, y, x); outside the field = -1024
    spacing: tuple[float, float, float]    # (z, y, x) mm
    outside_mask: np.ndarray | None        # (y, x) bool, outside the reconstruction circle (stored as padding)
    slice_labels: np.ndarray               # bool (z,): the finding is visible on that slice
    kind: str                              # "head" | "chest"
    finding: str | None                    # "ich" | "lung_nodule" | None
    details: dict                          # bleed type, volume_ml, nodule diameter, confounders, seed...
    headers: SeriesHeaders
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)    # Image Position (Patient) of slice 0, mm
    orientation: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    slice_positions: np.ndarray = field(default_factory=lambda: np.zeros(0))   # mm along the normal
    finding_mask: np.ndarray | None = None   # bool (z, y, x): voxels at least half finding; None without one


def _finish(gen: dict, kind: str, finding: str | None, details: dict, labels: np.ndarray, seed: int) -> Phantom:
    acq: Acquisition = gen["acq"]
    outside = acq.outside_mask()
    volume = np.stack(gen["images"]).astype(np.float32)
    volume[:, outside] = AIR_HU
    np.maximum(volume, AIR_HU, out=volume)   # scanners clip below air
    np.round(volume, out=volume)   # scanners store integers; keeps written and in-memory HU identical
    n = acq.matrix
    half = (n - 1) / 2.0 * acq.pixel_spacing
    table_z = float(np.random.default_rng([seed, 99]).uniform(-400.0, 200.0))
    z_positions = acq.z_positions + table_z
    details = dict(details, seed=seed, vendor=acq.vendor.manufacturer, pixel_spacing_mm=acq.pixel_spacing,
                   thickness_mm=acq.thickness, noise_sd_hu=acq.noise_sd, hu_offset=acq.hu_offset,
                   hu_scale=acq.hu_scale, centre_mm=acq.centre)
    return Phantom(
        volume_hu=volume,
        spacing=(acq.thickness, acq.pixel_spacing, acq.pixel_spacing),
        outside_mask=outside,
        slice_labels=np.asarray(labels, bool),
        kind=kind,
        finding=finding,
        details=details,
        headers=gen["headers"],
        origin=(-half, -half, float(z_positions[0])),
        slice_positions=z_positions,
        finding_mask=np.stack(gen["masks"]) if finding else None,
    )


def head_phantom(seed: int, *, bleed: str | None = "random", volume_ml: float | None = None,
                 slices: int | None = None, thickness_mm: float | None = None, matrix: int = 512,
                 force: dict | None = None) -> Phantom:
    """A non-contrast head CT; ``bleed`` is "random", None or one of :data:`BLEED_TYPES`.

    ``volume_ml`` fixes the haemorrhage volume (default log-uniform 0.3–60 mL);
    ``slices``/``thickness_mm`` fix the series length and slice thickness
    (default: 0.6–5 mm slices covering 120–165 mm, at most 80 slices). ``force`` switches confounders
    on or off (:mod:`edge_agent.phantoms.head`). Deterministic per seed.
    """
    if bleed is not None and bleed != "random" and bleed not in BLEED_TYPES:
        raise ValueError(f"bleed must be None, 'random' or one of {BLEED_TYPES}, not {bleed!r}")
    gen = generate_head(seed, bleed=bleed, volume_ml=volume_ml, slices=slices, thickness_mm=thickness_mm,
                        matrix=matrix, force=force)
    b = gen["bleed"]
    areas = gen["areas"]
    a = gen["anatomy"]
    details = {"confounders": head_confounders(gen), "kernel": gen["acq"].extras["recon"]["kernel"],
               "recon": gen["acq"].extras["recon"]["recon"]}
    if b is not None:
        details.update(bleed_type=b["type"], bleed_hu=round(b["hu"], 1),
                       volume_ml=round(float(gen["amounts"].sum()) * gen["acq"].thickness / 1000.0, 3),
                       requested_volume_ml=round(b["requested_ml"], 3))
    labels = areas >= MIN_LABEL_AREA_MM2
    return _finish(gen, "head", "ich" if b is not None and labels.any() else None, details, labels, seed)


def qa_phantom(seed: int, *, slices: int | None = None, thickness_mm: float | None = None, matrix: int = 512,
               force: dict | None = None) -> Phantom:
    """A physical QA phantom (water/acrylic cylinder with inserts) scanned with a head protocol: never ICH."""
    from edge_agent.phantoms.qa import generate_qa

    gen = generate_qa(seed, slices=slices, thickness_mm=thickness_mm, matrix=matrix, force=force)
    details = {"confounders": ["qa_phantom"], "modules": gen["modules"],
               "kernel": gen["acq"].extras["recon"]["kernel"], "recon": gen["acq"].extras["recon"]["recon"]}
    labels = np.zeros(len(gen["images"]), bool)
    return _finish(gen, "head", None, details, labels, seed)


def chest_phantom(seed: int, *, nodule: str | None = "random", diameter_mm: float | None = None,
                  slices: int | None = None, thickness_mm: float | None = None, matrix: int = 512,
                  force: dict | None = None) -> Phantom:
    """A chest CT; ``nodule`` is "random", None or one of :data:`NODULE_TYPES` (4–30 mm).

    ``force`` switches confounders and scanner effects on or off, and fixes the nodule's shape or location
    (:mod:`edge_agent.phantoms.chest`). Deterministic per seed.
    """
    if nodule is not None and nodule != "random" and nodule not in NODULE_TYPES:
        raise ValueError(f"nodule must be None, 'random' or one of {NODULE_TYPES}, not {nodule!r}")
    gen = generate_chest(seed, nodule=nodule, diameter_mm=diameter_mm, slices=slices, thickness_mm=thickness_mm,
                         matrix=matrix, force=force)
    nod = gen["nodule"]
    rec = gen["acq"].extras["recon"]
    details = {"confounders": gen["confounders"], "kernel": rec["kernel"], "recon": rec["recon"]}
    if nod is not None:
        details.update(nodule_type=nod["type"], diameter_mm=round(nod["diameter"], 2), nodule_hu=round(nod["hu"], 1),
                       nodule_shape=nod["shape"], nodule_location=nod["location"],
                       volume_ml=round(float(gen["amounts"].sum()) * gen["acq"].thickness / 1000.0, 4))
    labels = gen["areas"] >= CHEST_MIN_AREA
    return _finish(gen, "chest", "lung_nodule" if nod is not None and labels.any() else None, details, labels, seed)


def make_phantom(kind: str, seed: int, **kwargs) -> Phantom:
    """``kind``: "ich" (head with a bleed), "normal" (head), "chest" (no nodule), "nodule" (chest with one).

    Unless given, "ich" bleeds are 3–40 mL and "nodule" nodules 8–25 mm: clearly present findings for
    demos and simulations (the generators' own defaults also reach down to barely visible ones).
    """
    rng = np.random.default_rng([seed, 77])
    if kind == "ich":
        kwargs.setdefault("volume_ml", float(np.exp(rng.uniform(np.log(3.0), np.log(40.0)))))
        return head_phantom(seed, bleed="random", **kwargs)
    if kind == "normal":
        return head_phantom(seed, bleed=None, **kwargs)
    if kind == "chest":
        return chest_phantom(seed, nodule=None, **kwargs)
    if kind == "nodule":
        kwargs.setdefault("diameter_mm", float(rng.uniform(8.0, 25.0)))
        return chest_phantom(seed, nodule="random", **kwargs)
    raise ValueError(f"phantom kind must be one of {KINDS}, not {kind!r}")


def write_phantom(phantom: Phantom, out_dir: str | Path, *, transfer_syntax: str = "explicit",
                  extension: str = ".dcm") -> list[Path]:
    """Write the phantom as one DICOM series (one file per slice); returns the paths in slice order."""
    return write_series(
        phantom.volume_hu, out_dir, phantom.spacing, phantom.headers, transfer_syntax=transfer_syntax,
        extension=extension, origin=phantom.origin, orientation=phantom.orientation,
        outside_mask=None if phantom.outside_mask is None
        else np.broadcast_to(phantom.outside_mask, phantom.volume_hu.shape),
    )

