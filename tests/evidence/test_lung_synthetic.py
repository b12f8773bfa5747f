"""Lung-blob evidence and the chest domain on volumes drawn here: nodules end, vessels continue."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edge_agent.evidence import parse_domain, parse_evidence, series_domain, series_evidence, slice_features

from .drawn import chest_slice

SPEC = parse_evidence({"kind": "lung_blob"})
CHEST = parse_domain({"kind": "chest"})
PX, THICK, NZ = 0.7, 2.5, 16


def volume(draw):
    """NZ slices; ``draw(img, x, y, z)`` paints into each (z in mm from the first slice)."""
    rng = np.random.default_rng(11)
    out = []
    for k in range(NZ):
        img, x, y = chest_slice(rng)
        draw(img, x, y, k * THICK)
        out.append(img)
    return out


def run(slices):
    feats = [slice_features(s, (PX, PX), SPEC, CHEST) for s in slices]
    pos = [k * THICK for k in range(len(slices))]
    ipp = [(-224.0, -224.0, p) for p in pos]
    return feats, series_evidence(SPEC, feats, pos, THICK, ipp, (1, 0, 0, 0, 1, 0), (PX, PX)), \
        series_domain(CHEST, feats)


def sphere(cx, cy, cz, r, hu):
    def draw(img, x, y, z):
        rr2 = r * r - (z - cz) ** 2
        if rr2 > 0:
            img[np.hypot(x - cx, y - cy) < np.sqrt(rr2)] = hu
    return draw


def tube(cx, cy, r, hu, drift=0.0):
    def draw(img, x, y, z):
        img[np.hypot(x - cx - drift * z, y - cy) < r] = hu
    return draw


def both(*fs):
    def draw(img, x, y, z):
        for f in fs:
            f(img, x, y, z)
    return draw


def test_clear_lungs_have_no_blob_and_are_in_domain():
    feats, ev, dom = run(volume(lambda *a: None))
    assert not ev.present
    assert dom.in_domain, dom.reason
    assert all(len(json.dumps(f)) < 1500 for f in feats)


@pytest.mark.parametrize("hu,kind", [(30.0, "solid"), (-500.0, "ground-glass")])
def test_nodule_is_found_with_its_size_and_position(hu, kind):
    """A 10 mm sphere at (x=-70, y=-10, z=20 mm): largest cross-section on the slice through its centre."""
    feats, ev, _ = run(volume(sphere(-70.0, -10.0, 20.0, 5.0, hu)))
    assert ev.present, ev.reason
    assert kind in ev.reason
    assert ev.diameter_mm == pytest.approx(10.0, abs=2.0)
    assert ev.slices[0] == 8            # z = 20 mm
    assert ev.volume_ml == pytest.approx(4 / 3 * np.pi * 5.0 ** 3 / 1000, rel=0.5)
    lo, hi = ev.bbox_mm["min"], ev.bbox_mm["max"]
    assert lo[0] - 1.5 <= -70.0 <= hi[0] + 1.5 and lo[1] - 1.5 <= -10.0 <= hi[1] + 1.5
    assert lo[2] <= 20.0 <= hi[2]


def test_vessel_end_on_is_a_tube_not_a_nodule():
    """A 6 mm vessel running along the slice normal through every slice, and an oblique one drifting."""
    _, ev, _ = run(volume(both(tube(-70.0, -10.0, 3.0, 40.0), tube(60.0, 20.0, 2.5, 40.0, drift=1.5))))
    assert not ev.present, ev.reason
    assert "tube" in ev.reason or "none" in ev.reason


def test_nodule_next_to_vessels_is_still_found():
    _, ev, _ = run(volume(both(tube(-70.0, -30.0, 3.0, 40.0), sphere(75.0, 0.0, 20.0, 6.0, 20.0))))
    assert ev.present, ev.reason
    assert ev.diameter_mm == pytest.approx(12.0, abs=2.5)


def test_blob_cut_by_the_series_end_is_not_claimed():
    """A sphere whose centre is on the first slice may continue outside the series."""
    _, ev, _ = run(volume(sphere(-70.0, -10.0, 0.0, 5.0, 30.0)))
    assert not ev.present


def test_small_field_of_view_is_out_of_domain():
    """A 250 mm cardiac-style field centred on the heart: the body fills the field, lungs are cut."""
    rng = np.random.default_rng(12)
    slices = []
    for _ in range(4):
        img, x, y = chest_slice(rng)
        c = img.shape[0] // 2
        half = int(125 / PX)
        slices.append(np.ascontiguousarray(img[c - half:c + half, c - half + 40:c + half + 40]))
    _, _, dom = run(slices)
    assert not dom.in_domain
    assert "field of view" in dom.reason


def test_head_is_not_a_chest():
    from .drawn import head_slice
    rng = np.random.default_rng(13)
    feats = [slice_features(head_slice(rng)[0], (0.5, 0.5), None, CHEST) for _ in range(3)]
    dom = series_domain(CHEST, feats)
    assert not dom.in_domain and "lungs" in dom.reason
