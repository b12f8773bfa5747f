"""ICH blood evidence on slices drawn here, with volumes checked against independent geometry."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edge_agent.evidence import (DomainSpec, EvidenceError, EvidenceSpec, parse_domain, parse_evidence,
                                 series_domain, series_evidence, slice_features)

from .drawn import PX, cylinder_slice, head_slice

SPEC = parse_evidence({"kind": "ich_blood"})
HEAD = parse_domain({"kind": "head"})
THICK = 5.0


def run(slices, px=PX, thickness=THICK, spec=SPEC, dom=HEAD):
    feats = [slice_features(s, (px, px), spec, dom) for s in slices]
    pos = [i * thickness for i in range(len(slices))]
    ipp = [(-100.0, -100.0, p) for p in pos]
    ev = series_evidence(spec, feats, pos, thickness, ipp, (1, 0, 0, 0, 1, 0), (px, px))
    return feats, ev, (series_domain(dom, feats) if dom is not None else None)


def test_parse_defaults_and_errors():
    assert parse_evidence(None) is None and parse_domain(None) is None
    assert parse_evidence({"kind": "ich_blood"}) == EvidenceSpec("ich_blood")
    assert parse_evidence({"kind": "ich_blood", "blood_hu": [55, 85]}).blood_hu == (55.0, 85.0)
    assert parse_domain({"kind": "chest", "min_lung_fraction": 0.2}) == DomainSpec("chest", min_lung_fraction=0.2)
    with pytest.raises(EvidenceError, match="evidence.kind"):
        parse_evidence({"kind": "tumour"})
    with pytest.raises(EvidenceError, match="evidence.min_diameter_mm"):
        parse_evidence({"kind": "ich_blood", "min_diameter_mm": 4})      # a lung_blob setting
    with pytest.raises(EvidenceError, match="evidence.blood_hu"):
        parse_evidence({"kind": "ich_blood", "blood_hu": [90, 50]})
    with pytest.raises(EvidenceError, match="evidence.min_volume_ml"):
        parse_evidence({"kind": "ich_blood", "min_volume_ml": "0.3"})
    with pytest.raises(EvidenceError, match="domain.kind"):
        parse_domain({"kind": "ich_blood"})
    with pytest.raises(EvidenceError, match="domain.min_skull_fraction"):
        parse_domain({"kind": "head", "min_skull_fraction": 2})
    assert str(EvidenceError("x.")).endswith(".")
    assert json.dumps(SPEC.to_dict()) and "min_diameter_mm" not in SPEC.to_dict()


def test_normal_head_has_no_blood_and_is_in_domain():
    rng = np.random.default_rng(1)
    feats, ev, dom = run([head_slice(rng, a=60 + 3 * k, b=75 + 3 * k)[0] for k in range(6)])
    assert not ev.present and ev.volume_ml == 0.0
    assert "acute-blood density" in ev.reason
    assert dom.in_domain, dom.reason
    assert all(len(json.dumps(f)) < 1200 for f in feats)


def test_disc_of_blood_volume_matches_geometry():
    """A 20 mm disc of 70 HU on 4 of 6 slices: 4 × π·10² mm² × 5 mm = 6.28 mL."""
    rng = np.random.default_rng(2)
    slices = []
    for k in range(6):
        img, x, y, d = head_slice(rng)
        if 1 <= k <= 4:
            img[np.hypot(x - 15, y + 10) < 10.0] = 70.0 + rng.normal(0, 3, img.shape)[np.hypot(x - 15, y + 10) < 10.0]
        slices.append(img)
    _, ev, _ = run(slices)
    assert ev.present, ev.reason
    expected = 4 * np.pi * 10.0 ** 2 * THICK / 1000.0
    assert ev.volume_ml == pytest.approx(expected, rel=0.15)
    assert sorted(ev.slices) == [1, 2, 3, 4]
    # bbox in patient coordinates: IPP (-100, -100) + 0.5 mm pixels; disc centre at (x=15, y=-10) mm
    lo, hi = ev.bbox_mm["min"], ev.bbox_mm["max"]
    assert lo[0] == pytest.approx(15 - 10 - 0.25, abs=2.0) and hi[0] == pytest.approx(15 + 10 - 0.25, abs=2.0)
    assert lo[1] == pytest.approx(-10 - 10 - 0.25, abs=2.0) and hi[1] == pytest.approx(-10 + 10 - 0.25, abs=2.0)
    assert lo[2] == 5.0 and hi[2] == 20.0
    assert ev.diameter_mm == pytest.approx(20.0, abs=2.5)
    assert json.dumps(ev.to_dict())


def _disc_series(rng, hu, radius_mm, *, brain=32.0, centre=(15.0, -10.0), slices=6, ry=None):
    """A disc (or an ellipse with ``ry``) of ``hu`` ± 3 HU noise on the middle four of six slices."""
    out = []
    for k in range(slices):
        img, x, y, _ = head_slice(rng, brain=brain)
        if 1 <= k <= slices - 2:
            m = ((x - centre[0]) / radius_mm) ** 2 + ((y - centre[1]) / (ry or radius_mm)) ** 2 < 1.0
            img[m] = hu + rng.normal(0, 3, int(m.sum()))
        out.append(img)
    return out


def test_large_unclotted_blood_counts_without_a_clotted_core():
    """Hyperacute or anaemic blood has not clotted: a 20 mm disc at 54 HU (below the 60 HU core) over 4
    slices, 20+ HU above this brain's parenchyma, is evidence; its volume is the disc's (6.28 mL)."""
    _, ev, _ = run(_disc_series(np.random.default_rng(21), 54.0, 10.0))
    assert ev.present, ev.reason
    assert ev.volume_ml == pytest.approx(4 * np.pi * 10.0 ** 2 * THICK / 1000.0, rel=0.25)
    # the same disc read with the clotted-core rule alone (the hyperacute branch switched off) is not
    strict = parse_evidence({"kind": "ich_blood", "min_hyperacute_mm2": 1e9})
    _, ev_strict, _ = run(_disc_series(np.random.default_rng(21), 54.0, 10.0), spec=strict)
    assert not ev_strict.present


def test_unclotted_density_that_is_small_or_close_to_the_brain_is_not_blood():
    """Without a clotted core, a region counts only when large and clearly denser than the brain: an
    obliquely cut straight sinus (a 6 × 13 mm ellipse at 58 HU, ~61 mm²) and a deep grey nucleus at 50 HU in
    a head whose scanner reads 6 HU hot (grey 46, white 33: 16 HU above the parenchyma) are not evidence."""
    _, sinus, _ = run(_disc_series(np.random.default_rng(22), 58.0, 3.0, ry=6.5, centre=(0.0, 30.0)))
    assert not sinus.present, sinus.reason
    _, nucleus, _ = run(_disc_series(np.random.default_rng(23), 50.0, 12.0, brain=38.0, centre=(12.0, 0.0)))
    assert not nucleus.present, nucleus.reason


def test_blood_that_a_cold_scanner_reads_below_50_hu_counts_against_its_own_brain():
    """A cold scanner (grey 34, white 21 HU: a parenchyma median of ~20 HU, 12 below nominal, which the ±8 HU
    anatomy band shifts the window for by only ~3 HU): intraventricular blood at 43 HU, 23 HU above this
    brain's parenchyma, in a 24 mm disc over four slices, is evidence — it lies below the shifted window
    (~47–87 HU), so only the parenchyma-relative lower bound makes it a candidate. A region 10 HU above the
    parenchyma (deep grey matter) is not."""
    _, ivh, _ = run(_disc_series(np.random.default_rng(24), 43.0, 12.0, brain=26.0, centre=(12.0, 0.0)))
    assert ivh.present, ivh.reason
    assert ivh.volume_ml == pytest.approx(4 * np.pi * 12.0 ** 2 * THICK / 1000.0, rel=0.3)
    _, grey, _ = run(_disc_series(np.random.default_rng(25), 30.0, 12.0, brain=26.0, centre=(12.0, 0.0)))
    assert not grey.present, grey.reason


def test_small_speck_below_minimum_volume():
    """4 mm disc on one 5 mm slice: 0.06 mL < 0.3 mL."""
    rng = np.random.default_rng(3)
    slices = [head_slice(rng)[0] for _ in range(3)]
    _, x, y, _ = head_slice(rng)
    slices[1][np.hypot(x, y) < 2.0] = 75.0
    _, ev, _ = run(slices)
    assert not ev.present


@pytest.mark.parametrize("thickness_mm", [5.0, 6.0, 8.0, 10.0])
def test_subdural_crescent_against_the_inner_table_counts(thickness_mm):
    """A crescent 5–10 mm thick, ~130 mm long and 20 mm high on the inner table (≈ 7–14 mL).

    Only the part beyond the bone margin (2.5 mm from the partial-volume edge) is evidence, so the
    evidence volume of a thin subdural is a small fraction of its true volume — but it counts.
    """
    rng = np.random.default_rng(4)
    slices = []
    for k in range(6):
        img, x, y, d = head_slice(rng)
        theta = np.arctan2(y, x)
        if 1 <= k <= 4:
            depth = thickness_mm * np.sqrt(np.clip(1 - ((theta - 0.3) / 0.9) ** 2, 0, 1))
            m = (d < 0) & (d > -depth)
            img[m] = 65.0 + rng.normal(0, 3, int(m.sum()))
        slices.append(img)
    _, ev, _ = run(slices)
    assert ev.present, ev.reason
    assert 0.3 <= ev.volume_ml


def test_scalp_haematoma_is_not_intracranial():
    rng = np.random.default_rng(5)
    slices = []
    for _ in range(4):
        img, x, y, d = head_slice(rng)
        m = (d > 6.0) & (d < 20.0) & (np.hypot(x - 60, y + 40) < 30)   # lens of 70 HU outside the skull
        img[m] = 70.0 + rng.normal(0, 3, int(m.sum()))
        slices.append(img)
    feats, ev, _ = run(slices)
    assert not ev.present and ev.volume_ml == 0.0


def test_calcification_and_its_rim_do_not_count():
    """Pineal / choroid calcifications (250 HU core, 60–90 HU partial-volume halo)."""
    rng = np.random.default_rng(6)
    slices = []
    for _ in range(4):
        img, x, y, d = head_slice(rng)
        for cx, cy in ((0, 20), (-15, 25), (15, 25)):
            r = np.hypot(x - cx, y - cy)
            img[r < 4.0] = 75.0
            img[r < 2.5] = 250.0
        slices.append(img)
    _, ev, _ = run(slices)
    assert not ev.present, ev.reason


def test_blood_without_a_skull_is_not_evidence():
    rng = np.random.default_rng(7)
    img, x, y, d = head_slice(rng)
    img[d > -1] = -1024.0      # skull stripped (e.g. a derived map)
    img[np.hypot(x, y) < 10] = 70.0
    _, ev, dom = run([img] * 3)
    assert not ev.present
    assert not dom.in_domain and "skull" in dom.reason


def test_qa_cylinder_is_out_of_domain_and_has_no_blood():
    rng = np.random.default_rng(8)
    slices = [cylinder_slice(rng, inserts=(k % 2 == 0)) for k in range(6)]
    _, ev, dom = run(slices)
    assert not ev.present
    assert not dom.in_domain and "phantom" in dom.reason


def test_miscalibrated_head_is_out_of_domain():
    rng = np.random.default_rng(9)
    slices = [head_slice(rng, brain=-20.0)[0] for _ in range(4)]    # brain median ≈ 0 HU
    _, _, dom = run(slices)
    assert not dom.in_domain and "HU" in dom.reason


def test_empty_and_odd_inputs():
    feats, ev, dom = run([np.full((64, 64), -1024.0, np.float32)] * 2, px=1.0)
    assert not ev.present and not dom.in_domain
    with pytest.raises(ValueError):
        series_evidence(SPEC, feats, [0.0], 5.0)


def _blood_on_slices(rng, n: int, on: range):
    """``n`` head slices with a 20 mm disc of 70 HU on the slices ``on``; the disc's pixels (rows, cols)."""
    out = []
    for k in range(n):
        img, x, y, _ = head_slice(rng)
        disc = np.hypot(x - 15, y + 10) < 10.0
        if k in on:
            img[disc] = 70.0 + rng.normal(0, 3, int(disc.sum()))
        out.append(img)
    return out, np.nonzero(disc)


def test_evidence_must_lie_where_the_model_finds_the_bleed():
    """Blood on slices 1-3 of 10. A model that scores only slice 8 high gets no support from it (blood
    elsewhere is no evidence for what the model saw); one that scores slice 4 — beside the blood — does,
    with the default one slice of tolerance, and not with ``model_slices`` 0."""
    rng = np.random.default_rng(21)
    slices, (rows, cols) = _blood_on_slices(rng, 10, range(1, 4))
    feats = [slice_features(s, (PX, PX), SPEC, None) for s in slices]
    pos = [i * THICK for i in range(len(slices))]

    def evidence(hot: int, spec=SPEC):
        p = np.full(len(slices), 0.1)
        p[hot] = 0.95
        return series_evidence(spec, feats, pos, THICK, pixel_spacing=(PX, PX), support=p, support_threshold=0.9)

    assert series_evidence(SPEC, feats, pos, THICK, pixel_spacing=(PX, PX)).present   # anywhere: present
    far = evidence(8)
    assert not far.present and "none of it on or beside the slices the model scores" in far.reason
    assert evidence(2).present and evidence(4).present
    assert not evidence(4, parse_evidence({"kind": "ich_blood", "model_slices": 0})).present
    # the region on each supporting slice is the drawn disc (0.5 mm pixels, 20 mm across)
    ev = evidence(2)
    assert sorted(ev.regions) == [1, 2, 3]
    r0, c0, r1, c1 = ev.regions[ev.slices[0]]
    assert abs(r0 - rows.min()) <= 3 and abs(r1 - rows.max()) <= 3 and abs(c0 - cols.min()) <= 3 \
        and abs(c1 - cols.max()) <= 3


def test_model_slices_must_be_a_whole_number_of_slices():
    assert parse_evidence({"kind": "ich_blood", "model_slices": 0}).model_slices == 0
    assert parse_evidence({"kind": "lung_blob", "model_slices": 2}).model_slices == 2
    assert type(parse_evidence({"kind": "ich_blood", "model_slices": 2.0}).model_slices) is int   # a count
    for bad in (-1, 1.5):
        with pytest.raises(EvidenceError, match="model_slices"):
            parse_evidence({"kind": "ich_blood", "model_slices": bad})
    with pytest.raises(ValueError, match="support"):
        series_evidence(SPEC, [{}, {}], [0.0, 5.0], 5.0, support=[0.9], support_threshold=0.5)


def test_the_decider_refuses_a_finding_whose_evidence_lies_elsewhere(tmp_path):
    """Through ``decide_model`` (the one decider of infer and the daemon): a model positive on slices 7-9
    with blood only on slices 1-3 is not positive, and says why; with blood under its slices it is, and its
    first key slice is the evidence slice the model scores highest (ties: the larger blood area first), with
    the disc as ``region_px``."""
    import json as _json

    from edge_agent.decision.series import ScoredSlice, decide_model
    from edge_agent.inference.manifest import load_manifest
    from edge_agent.testing.models import write_model_folder

    folder = write_model_folder(tmp_path / "m", name="m", decision={"rule": "top_k_mean", "k": 2, "threshold": 0.9})
    manifest = _json.loads((folder / "manifest.json").read_text())
    manifest["evidence"] = {"kind": "ich_blood"}
    (folder / "manifest.json").write_text(_json.dumps(manifest))
    m = load_manifest(folder)
    rng = np.random.default_rng(22)
    slices, (rows, cols) = _blood_on_slices(rng, 10, range(1, 4))
    feats = [slice_features(s, (PX, PX), m.evidence, None) for s in slices]

    def decided(hot):
        scored = [ScoredSlice(f"1.2.{k}", k * THICK, [0.97 if k in hot else 0.05], features=dict(feats[k],
                              ipp=[-100.0, -100.0, k * THICK])) for k in range(len(slices))]
        [finding] = decide_model(m, scored).findings
        return finding

    elsewhere = decided({7, 8, 9})
    assert elsewhere["probability"] > 0.9 and not elsewhere["positive"]
    assert "none of it on or beside" in elsewhere["evidence"]["reason"]
    under = decided({2, 3})
    ev_slices = under["evidence"]["slices"]             # blood on 1-3, the largest area first
    assert under["positive"] and sorted(ev_slices) == [1, 2, 3]
    # the lead: of the evidence's slices, one the model scores 0.97 (2 or 3), the larger blood area of the two
    assert under["key_slices"][0]["index"] == next(k for k in ev_slices if k in (2, 3))
    r0, c0, r1, c1 = under["key_slices"][0]["region_px"]
    assert abs(r0 - rows.min()) <= 3 and abs(c1 - cols.max()) <= 3


def test_a_quiet_model_is_told_apart_from_blood_elsewhere():
    rng = np.random.default_rng(23)
    slices, _ = _blood_on_slices(rng, 6, range(1, 4))
    feats = [slice_features(s, (PX, PX), SPEC, None) for s in slices]
    ev = series_evidence(SPEC, feats, [i * THICK for i in range(6)], THICK, support=np.full(6, 0.2),
                         support_threshold=0.9)
    assert not ev.present and "the model scores no slice at or above its threshold" in ev.reason
