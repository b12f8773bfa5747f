"""The key image shows what the finding rests on: the evidence's best slice, with its region framed.

The shipped ICH model and its ``ich_blood`` evidence in the real SeriesPipeline, on the demo's bleed
phantom (written as DICOM, read back as the agent's ingest hands it over). Checked against the phantom's
own truth mask, not against the code under test: the preview's slice shows blood, the framed region holds
it, and the red frame is where the payload says. Before the thumbnail cache ranked evidence slices first,
this series' preview showed a slice the model scored high near the vertex, which the evidence does not
rest on, with no frame.
"""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest

from edge_agent.alerts.previews import PreviewSettings, framed
from edge_agent.engines import ENGINES_DIR
from edge_agent.inference.manifest import load_manifest
from edge_agent.inference.models import ModelSet
from edge_agent.service.pipeline import SeriesPipeline
from edge_agent.service.previews import preview_rank, region_boxes
from edge_agent.service.simulator import ROUTINE_HEAD, render
from edge_agent.testing.outputs import PreviewOutputs, ingested_file
from edge_agent.testing.wait import wait


def test_a_slice_with_evidence_keeps_its_thumbnail_before_one_that_only_scores_high():
    blood = {"ich": {"area_mm2": 40.0, "comps": [[40.0, 62.0, 1, 2, 3, 4]]}}
    assert preview_rank(0.5, blood) > preview_rank(0.99, {"ich": {"area_mm2": 0.0, "comps": []}}) == 0.99
    # among slices with evidence the model's score first (the lead key slice's order), the area breaks a tie
    big = {"ich": {"comps": [[400.0, 62.0, 1, 2, 3, 4]]}}
    assert preview_rank(0.99, blood) > preview_rank(0.5, big)
    assert preview_rank(0.5, big) > preview_rank(0.5, blood) > preview_rank(0.4999, big)
    blob = {"lung": {"cands": [[10.0, 20.0, 8.0, -40.0, 0.9, "solid", 50.0]], "map": {"box": [0, 0, 9, 9]}}}
    assert preview_rank(0.2, blob) > 1.0 and preview_rank(0.2, None) == 0.2


def test_region_boxes_are_the_key_slices_own_region_scaled_to_the_thumbnail():
    keys = [{"sop_instance_uid": "1.2.3", "region_px": [100.0, 50.0, 200.0, 150.0]},
            {"sop_instance_uid": "1.2.4"}]
    assert region_boxes(keys, "1.2.3", (0.5, 0.25)) == [(50.0, 12.5, 100.0, 37.5)]
    assert region_boxes(keys, "1.2.4", (0.5, 0.5)) == [] and region_boxes(None, "1.2.3", (1, 1)) == []


def test_framed_draws_red_only_around_the_box():
    grey = np.full((40, 40), 128, np.uint8)
    rgb = framed(grey, [(10.0, 12.0, 20.0, 30.0)])
    red = (rgb[..., 0] > 200) & (rgb[..., 1] < 80)
    rows, cols = np.nonzero(red)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (8, 22, 10, 32)
    assert not red[11:20, 13:30].any() and (rgb[15, 20] == 128).all()   # the region itself stays grey


def test_a_key_slice_without_a_kept_thumbnail_is_read_back_from_its_file(tmp_path):
    """The cache kept only another slice; the first key slice's thumbnail comes from its file, windowed
    (40/80) and block-averaged here, independently of the code under test."""
    from edge_agent.alerts.previews import BRAIN_WINDOW, PreviewCache
    from edge_agent.dicom.synth import write_series
    from edge_agent.service.previews import Thumbnails
    from edge_agent.service.series import OpenSeries

    yy, xx = np.mgrid[0:64, 0:64]
    hu = np.stack([np.rint(20 + 60 * xx / 63.0), np.rint(20 + 60 * yy / 63.0)]).astype(np.float32)
    paths = write_series(hu, tmp_path / "s", spacing=(5.0, 1.0, 1.0))
    uids = [ingested_file(p).sop_instance_uids[0] for p in paths]
    settings = PreviewSettings(size=32)
    cache = PreviewCache(BRAIN_WINDOW, settings, keep=1)
    cache.offer_image(uids[1], 0.9, lambda: np.zeros((32, 32), np.uint8))
    series = OpenSeries("1.2.3", {}, np.array([0.0, 0.0, 1.0]), (64, 64), [], 0.0, 0.0, 0.0)
    thumbs = Thumbnails(settings, None, None)
    keys = [{"sop_instance_uid": uids[0]}, {"sop_instance_uid": uids[1]}]
    assert thumbs.key_image(series, None, cache, keys)[0] == uids[1]       # file unknown: the next key slice
    series.files = {uids[0]: (paths[0], 0)}
    uid, image = thumbs.key_image(series, None, cache, keys)
    expected = (np.clip((hu[0] - 0.0) / 80.0, 0, 1) * 255).reshape(32, 2, 32, 2).mean(axis=(1, 3))
    assert uid == uids[0] and np.abs(image.astype(float) - expected).max() <= 1.0
    paths[0].unlink()                                                      # gone: the next key slice again
    assert thumbs.key_image(series, None, cache, keys)[0] == uids[1]


@pytest.fixture(scope="module")
def demo_bleed(tmp_path_factory):
    """The demo's bleed (seed 7, 12 mL, routine 5 mm head) as the simulator writes it."""
    return render("ich", 7, tmp_path_factory.mktemp("bleed"), volume_ml=12.0, **ROUTINE_HEAD)


@pytest.mark.parametrize("files", ["kept", "gone"])
def test_the_alert_preview_shows_the_evidence_slice_and_frames_the_blood(demo_bleed, tmp_path, files):
    """``kept``: files stay on disk while the series is open; ``gone``: each file is deleted once read (a
    file that vanished, or the thumbnails after a restart), so the thumbnail cache itself must have kept
    the evidence's best slice."""
    phantom, paths = demo_bleed
    sops = [ingested_file(p).sop_instance_uids[0] for p in paths]
    if files == "gone":
        moved = []
        for p in paths:
            copy = tmp_path / p.name
            copy.write_bytes(p.read_bytes())
            moved.append(copy)
        batch = [ingested_file(p, stored_only=True) for p in moved]
        for p in moved:
            p.unlink()
    else:
        batch = [ingested_file(p, stored_only=True) for p in paths]
    out = PreviewOutputs()
    pipeline = SeriesPipeline(lambda: ModelSet.load(names=["ich"]), tmp_path / "series.sqlite3", out,
                              site="site", device="device", settle=0.5, batch=8,
                              # a cache of three slices only: slices with evidence first, by the model's score
                              previews=PreviewSettings(size=256, max_bytes=65536, keep=0))
    pipeline.start()
    try:
        for f in batch:
            pipeline.submit(f)
        assert wait(lambda: out.results and out.previews and len(out.previews) >= len(out.alerts), 120)
    finally:
        pipeline.stop()
    [finding] = [f for f in out.results[-1]["findings"] if f["code"] == "ich"]
    assert finding["positive"] and finding["evidence"]["present"], finding
    alert = out.alerts[-1]
    preview = next(p for p in out.previews if p["alert_id"] == alert["alert_id"]
                   and p["revision"] == alert["revision"])
    lead = alert["finding"]["key_slices"][0]
    # each key slice says whether the model calls it at its slice threshold; the result counts all it calls
    cut = finding["slice_threshold"]
    assert cut == load_manifest(ENGINES_DIR / "ich").decision.slice_cut
    assert all(k["positive"] == (k["probability"] >= cut) for k in alert["finding"]["key_slices"])
    assert finding["slices_positive"] >= sum(k["positive"] for k in alert["finding"]["key_slices"]) >= 1
    # the preview is the first key slice: of the evidence's slices, the one the model scores highest (scored
    # here again, by the model directly), and it shows blood
    assert preview["sop_instance_uid"] == lead["sop_instance_uid"]
    k = sops.index(lead["sop_instance_uid"])
    p = ModelSet.load(names=["ich"])["ich"].score_slices(phantom.volume_hu, phantom.spacing[1:])[:, 0]
    ev_slices = finding["evidence"]["slices"]
    assert k == max(ev_slices, key=lambda j: (round(float(p[j]), 4), -ev_slices.index(j)))
    assert phantom.slice_labels[k]
    # the region (slice pixels) holds the blood of the phantom's truth mask on that slice
    r0, c0, r1, c1 = lead["region_px"]
    rows, cols = np.nonzero(phantom.finding_mask[k])
    inside = (rows >= r0) & (rows <= r1) & (cols >= c0) & (cols <= c1)
    assert inside.mean() >= 0.5, (lead["region_px"], rows.min(), rows.max(), cols.min(), cols.max())
    # ... and is framed in red on the picture, where the payload's regions say
    from PIL import Image

    with Image.open(io.BytesIO(base64.b64decode(preview["data"]))) as im:
        rgb = np.asarray(im.convert("RGB"), np.int16)
    red = (rgb[..., 0] > 200) & (rgb[..., 1] < 80) & (rgb[..., 2] < 80)
    [(b0, d0, b1, d1)] = preview["regions"]
    scale = preview["height"] / phantom.volume_hu.shape[1]
    assert abs(b0 - r0 * scale) < 0.2 and abs(d1 - c1 * scale) < 0.2
    rr, cc = np.nonzero(red)
    assert rr.size and abs(rr.min() - (b0 - 2)) <= 1 and abs(cc.max() - (d1 + 2)) <= 1
