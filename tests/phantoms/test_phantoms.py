"""Phantom generator: anatomy from HU statistics, DICOM round trip, determinism, API checks."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from edge_agent.phantoms import (
    BLEED_TYPES, KINDS, chest_phantom, head_phantom, make_phantom, write_phantom,
)


def _true_hu(ph, values):
    """Undo the phantom's simulated vendor calibration quirk (offset and slope around water)."""
    return (np.asarray(values, float) - ph.details["hu_offset"]) / ph.details["hu_scale"]


def _mid_slice_centre(ph):
    k = ph.volume_hu.shape[0] // 2
    img = ph.volume_hu[k]
    rows, cols = np.nonzero(img > -500)
    return k, img, rows.mean(), cols.mean()


def test_head_has_skull_ring_and_brain_values():
    ph = head_phantom(101, bleed=None, slices=24, thickness_mm=5.0)
    k, img, r0, c0 = _mid_slice_centre(ph)
    px = ph.spacing[1]
    radii = np.arange(0, 150, px / 2) / px
    for angle in np.linspace(0, 2 * np.pi, 16, endpoint=False):
        rr = np.clip((r0 + radii * np.sin(angle)).astype(int), 0, img.shape[0] - 1)
        cc = np.clip((c0 + radii * np.cos(angle)).astype(int), 0, img.shape[1] - 1)
        assert img[rr, cc].max() >= 700, f"no skull (>= 700 HU) along the ray at {np.degrees(angle):.0f} deg"
    yy, xx = np.mgrid[: img.shape[0], : img.shape[1]]
    central = ((yy - r0) ** 2 + (xx - c0) ** 2) * px ** 2 < 40.0 ** 2
    brain = img[central & (img > -100) & (img < 150)]
    assert 20.0 <= np.median(_true_hu(ph, brain)) <= 45.0
    assert ph.finding is None and not ph.slice_labels.any() and ph.finding_mask is None
    assert ph.kind == "head" and ph.headers.body_part == "HEAD"


@pytest.mark.parametrize("bleed", BLEED_TYPES)
def test_each_bleed_type_is_hyperdense_on_its_labelled_slices(bleed):
    # a standard kernel without motion or metal: a bone kernel's edge enhancement and motion ghosts change
    # the HU of blood next to bone by design (they are tested below as confounders)
    ph = head_phantom(202, bleed=bleed, volume_ml=12.0, slices=30, thickness_mm=5.0,
                      force={"kernel": "standard", "motion": False, "metal": False})
    assert ph.finding == "ich" and ph.details["bleed_type"] == bleed
    assert ph.slice_labels.any()
    assert ph.details["volume_ml"] > 2.0
    labelled = ph.finding_mask[ph.slice_labels]
    assert labelled.any(axis=(1, 2)).all(), "a labelled slice without blood"
    assert not ph.finding_mask[~ph.slice_labels].sum(axis=(1, 2)).max(initial=0) > 50
    blood = _true_hu(ph, ph.volume_hu[ph.finding_mask])
    assert 50.0 <= ph.details["bleed_hu"] <= 90.0
    # voxels at least half blood; thin bleeds (sulcal, subdural) share voxels with brain or bone
    assert 40.0 < np.median(blood) < 110.0
    if bleed in ("iph", "edh", "ivh"):
        assert abs(np.median(blood) - ph.details["bleed_hu"]) < 12.0


def test_chest_lungs_and_nodule():
    ph = chest_phantom(303, nodule="solid", diameter_mm=14.0, slices=30, thickness_mm=5.0)
    assert ph.finding == "lung_nodule" and ph.slice_labels.any()
    lung = ph.volume_hu[(ph.volume_hu > -960) & (ph.volume_hu < -600)]
    assert -900.0 <= np.median(_true_hu(ph, lung)) <= -800.0
    # the slice through the nodule's centre (largest cross-section): away from its partial-volume ends
    k = int(np.argmax(ph.finding_mask.sum(axis=(1, 2))))
    nodule = _true_hu(ph, ph.volume_hu[k][ph.finding_mask[k]])
    assert -80.0 <= np.median(nodule) <= 90.0
    assert ph.headers.body_part == "CHEST"
    clear = chest_phantom(303, nodule=None, slices=10, thickness_mm=5.0)
    assert clear.finding is None and not clear.slice_labels.any()


def test_same_seed_same_phantom_other_seed_other_phantom():
    a = head_phantom(7, bleed="random", slices=6, matrix=128)
    b = head_phantom(7, bleed="random", slices=6, matrix=128)
    c = head_phantom(8, bleed="random", slices=6, matrix=128)
    assert np.array_equal(a.volume_hu, b.volume_hu)
    assert np.array_equal(a.slice_labels, b.slice_labels)
    assert a.details == b.details
    assert not np.array_equal(a.volume_hu, c.volume_hu)


@pytest.mark.parametrize(
    "syntax, signed, intercept, padding",
    [("explicit", True, -1024.0, -2000), ("implicit", False, -1024.0, None), ("rle", True, 0.0, -2000),
     ("jpegls", True, -1000.0, None), ("deflated", False, -1024.0, None)],
)
def test_written_series_reads_back_with_the_same_hu(tmp_path, syntax, signed, intercept, padding):
    ph = head_phantom(11, bleed="iph", volume_ml=5.0, slices=4, thickness_mm=2.5, matrix=128)
    ph.headers.signed, ph.headers.rescale_intercept, ph.headers.padding_value = signed, intercept, padding
    paths = write_phantom(ph, tmp_path, transfer_syntax=syntax)
    assert len(paths) == 4 and all(p.suffix == ".dcm" for p in paths)
    zs = []
    for k, path in enumerate(paths):
        ds = pydicom.dcmread(path)
        assert ds.Modality == "CT" and ds.BodyPartExamined == "HEAD"
        assert float(ds.SliceThickness) == 2.5
        stored = ds.pixel_array
        hu = stored * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        inside = ~ph.outside_mask
        np.testing.assert_array_equal(hu[inside], ph.volume_hu[k][inside])
        if padding is None:
            assert "PixelPaddingValue" not in ds
            assert np.all(hu[ph.outside_mask] == -1024)
        else:
            assert int(ds.PixelPaddingValue) == padding
            assert np.all(stored[ph.outside_mask] == padding)
        zs.append(float(ds.ImagePositionPatient[2]))
        assert [float(v) for v in ds.PixelSpacing] == pytest.approx([ph.spacing[1]] * 2)
    assert np.allclose(np.diff(zs), 2.5)


def test_make_phantom_kinds_and_errors():
    assert KINDS == ("ich", "normal", "chest", "nodule")
    assert make_phantom("normal", 5, slices=3, matrix=128).finding is None
    assert make_phantom("chest", 5, slices=3, matrix=128).kind == "chest"
    with pytest.raises(ValueError, match="phantom kind"):
        make_phantom("knee", 1)
    with pytest.raises(ValueError, match="bleed must be"):
        head_phantom(1, bleed="stroke")


def test_varies_field_of_view_thickness_and_vendor():
    phs = [head_phantom(s, bleed=None, slices=2, matrix=64) for s in range(12)]
    spacings = {round(p.spacing[1] * 64 / 512, 2) for p in phs}
    assert min(spacings) >= 0.4 and max(spacings) <= 0.9 and len(spacings) > 6
    assert len({p.spacing[0] for p in phs}) >= 3
    assert len({p.headers.manufacturer for p in phs}) >= 3
    assert {p.headers.signed for p in phs} == {True, False}


# --------------------------------------------------------------------------- confounders (hard negatives)


def test_scalp_haematoma_is_blood_outside_the_skull_and_labelled_negative():
    ph = head_phantom(404, bleed=None, slices=20, thickness_mm=5.0, matrix=128,
                      force={"scalp_haematoma": True, "kernel": "standard", "motion": False, "metal": False})
    assert ph.finding is None and not ph.slice_labels.any()
    assert "scalp_haematoma" in ph.details["confounders"]
    blood = (_true_hu(ph, ph.volume_hu) > 45) & (_true_hu(ph, ph.volume_hu) < 95)
    assert blood.sum() > 50   # there is blood-density tissue in the series, and it is not ICH


def test_forced_confounders_are_reported_and_deterministic():
    force = {"atrophy": True, "infarct": True, "calcification": True, "metal": True, "motion": True,
             "kernel": "sharp"}
    a = head_phantom(505, bleed=None, slices=6, matrix=96, force=force)
    b = head_phantom(505, bleed=None, slices=6, matrix=96, force=force)
    assert np.array_equal(a.volume_hu, b.volume_hu) and a.details == b.details
    for name in ("atrophy", "old_infarct", "metal", "motion", "sharp_kernel", "pineal"):
        assert name in a.details["confounders"], name
    assert a.finding is None
    off = head_phantom(505, bleed=None, slices=6, matrix=96, force={k: False for k in force if k != "kernel"})
    assert not {"atrophy", "old_infarct", "metal", "motion"} & set(off.details["confounders"])


def test_skull_base_has_air_fat_and_partial_volume_bone():
    from edge_agent.phantoms.head import generate_head

    gen = generate_head(606, bleed=None, volume_ml=None, slices=None, thickness_mm=5.0, matrix=192,
                        only=lambda acq, bz, rng: [int(np.argmin(np.abs(acq.z_positions - z))) for z in (-40.0, -30.0)],
                        force={"kernel": "standard", "motion": False, "metal": False})
    img = np.stack(gen["images"])
    assert (img < -500).sum() > 20              # sinus / air cells
    assert ((img > -150) & (img < -40)).sum() > 20   # orbital fat
    assert ((img > 100) & (img < 400)).sum() > 100   # partial-volume bone (the pseudo-bleed of 5 mm slices)


def test_qa_phantom_is_a_negative_head_series():
    from edge_agent.phantoms import qa_phantom

    a = qa_phantom(7, slices=5, thickness_mm=2.5, matrix=128)
    b = qa_phantom(7, slices=5, thickness_mm=2.5, matrix=128)
    assert np.array_equal(a.volume_hu, b.volume_hu)
    assert a.kind == "head" and a.finding is None and not a.slice_labels.any() and a.headers.body_part == "HEAD"
    water = _true_hu(a, a.volume_hu[2][64 - 10:64 + 10, 64 - 10:64 + 10])
    assert -30 < np.median(water) < 30


def test_head_slices_span_thin_and_thick_reconstructions():
    thick = {head_phantom(s, bleed=None, slices=2, matrix=32).spacing[0] for s in range(40)}
    assert min(thick) < 1.5 and max(thick) >= 4.0


@pytest.mark.parametrize("kernel", ["standard", "sharp"])
def test_head_series_names_its_kernel_as_its_scanner_would(tmp_path, kernel):
    """The written head series carries the vendor's kernel name (ConvolutionKernel), so a model's kernel rule
    sees it end to end: the shipped ich manifest takes the soft-tissue kernel and refuses the bone one."""
    from edge_agent.dicom import read_series
    from edge_agent.inference.kernels import classify
    from edge_agent.inference.models import ModelSet

    makers = set()
    for seed in range(12):   # each vendor's name reads as soft tissue, or as bone / sharp, by our classifier
        ph = head_phantom(seed, bleed=None, slices=2, thickness_mm=5.0, matrix=128, force={"kernel": kernel})
        name, maker = ph.headers.extra["ConvolutionKernel"], ph.headers.manufacturer
        makers.add(maker)
        assert classify(name, maker) in (("bone", "sharp") if kernel == "sharp" else ("soft",)), (name, maker)
    assert len(makers) >= 3
    ph = head_phantom(5, bleed=None, slices=10, thickness_mm=5.0, matrix=128, force={"kernel": kernel})
    write_phantom(ph, tmp_path)
    series = read_series(tmp_path)[0]
    assert series.convolution_kernel == (ph.headers.extra["ConvolutionKernel"],)
    models = ModelSet.load(None, backend="onnxrt", names=["ich"])
    reason = models.check_series(models["ich"], series)
    if kernel == "sharp":
        assert reason is not None and "kernel" in str(reason), reason
    else:
        assert reason is None, reason
