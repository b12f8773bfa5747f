"""Key-image previews survive a restart and a reopen: the preview cache is mirrored in the state DB.

Real DICOM (edge_agent.dicom.synth), a real tiny ONNX model, the real SeriesPipeline on a real SQLite state DB.
The first pipeline scores the bleed slice and stops before the series is final (its thumbnails go with it from
memory); a second pipeline on the same state DB gets the rest of the series and must still publish the final
alert's preview of the bleed slice, whose pixels it never saw. The expected image is computed here (window 40/80,
2x2 block means), not by the code under test.
"""

from __future__ import annotations

from functools import partial
import time

import numpy as np

from edge_agent.testing.models import write_model_folder  # noqa: E402

from edge_agent.alerts.previews import BRAIN_WINDOW, PreviewCache, PreviewSettings  # noqa: E402
from edge_agent.dicom import read_file  # noqa: E402
from edge_agent.dicom.synth import write_series  # noqa: E402
from edge_agent.inference.models import ModelSet  # noqa: E402
from edge_agent.service.pipeline import SeriesPipeline  # noqa: E402
from edge_agent.service.state import SeriesStore  # noqa: E402
from edge_agent.testing.outputs import PreviewOutputs, ingested_file  # noqa: E402
from edge_agent.testing.wait import wait  # noqa: E402

SETTINGS = PreviewSettings(size=32, max_bytes=8192)
DECISION = {"rule": "top_k_mean", "k": 2, "threshold": 0.9, "preliminary": {"min_slices": 1, "threshold": 0.6}}


def volume() -> np.ndarray:
    """8 slices of 64x64: flat 30 HU except slice 2 (a gradient) and slice 3 (the gradient with a 75 HU disc)."""
    yy, xx = np.mgrid[0:64, 0:64]
    gradient = np.rint(40 + 70 * xx / 63.0).astype(np.float32)
    bleed = gradient.copy()
    bleed[(yy - 30) ** 2 + (xx - 20) ** 2 < 12 ** 2] = 75.0
    flat = np.full((64, 64), 30.0, np.float32)
    return np.stack([flat, flat, gradient, bleed, flat, flat, flat, flat])


ingested = partial(ingested_file, stored_only=True)  # as the agent's ingest hands them over


def expected_thumbnail(hu: np.ndarray) -> np.ndarray:
    return (np.clip(hu / 80.0, 0.0, 1.0) * 255.0).reshape(32, 2, 32, 2).mean(axis=(1, 3))


def decoded(preview: dict) -> np.ndarray:
    import base64
    import io

    from PIL import Image

    with Image.open(io.BytesIO(base64.b64decode(preview["data"]))) as im:
        return np.asarray(im, np.float64)


def model_and_series(tmp_path):
    """The tiny ICH model's folder, the volume, its DICOM series (5 mm apart) and their SOP Instance UIDs."""
    engines = tmp_path / "engines"
    write_model_folder(engines / "tiny_ich", decision=DECISION)
    hu = volume()
    paths = write_series(hu, tmp_path / "series", spacing=(5.0, 1.0, 1.0))
    return engines, hu, paths, [read_file(p)[0].sop_instance_uid for p in paths]


def pipeline(engines, state, out, settle):
    return SeriesPipeline(lambda: ModelSet.load(engines), state, out, site="site", device="device", settle=settle,
                          batch=4, previews=SETTINGS)


def test_cache_drain_reports_what_to_keep_and_what_to_forget():
    cache = PreviewCache(BRAIN_WINDOW, SETTINGS, keep=2)
    image = np.zeros((4, 4), np.uint8)
    cache.load([("old", 0.5, image)])
    assert cache.drain() == ([], [])                     # loaded from the DB: nothing to write back
    cache.offer_image("a", 0.9, lambda: image)
    cache.offer_image("b", 0.7, lambda: image)           # evicts "old" (0.5)
    added, dropped = cache.drain()
    assert sorted(uid for uid, _, _ in added) == ["a", "b"] and dropped == ["old"]
    cache.offer_image("c", 0.95, lambda: image)          # evicts "b" (0.7)
    cache.offer_image("d", 0.99, lambda: image)          # evicts "a" (0.9)
    cache.offer_image("e", 0.999, lambda: image)         # evicts "c", added since the last drain: never written
    added, dropped = cache.drain()
    assert sorted(uid for uid, _, _ in added) == ["d", "e"] and dropped == ["a", "b"]


def test_state_db_keeps_thumbnails_until_a_day_after_final(tmp_path):
    store = SeriesStore(tmp_path / "s.sqlite3")
    try:
        image = (np.arange(12, dtype=np.uint8) * 20).reshape(3, 4)
        for uid in ("1.2.3", "1.2.4"):
            store.touch_series(uid, {}, time.time())
            store.keep_thumbnails(uid, "m", [("sop-a", 0.8, image), ("sop-b", 0.6, image)], [])
        store.keep_thumbnails("1.2.3", "m", [], ["sop-b"])
        [(sop, score, back)] = store.thumbnails("1.2.3", "m")
        assert (sop, score) == ("sop-a", 0.8) and back.dtype == np.uint8 and np.array_equal(back, image)
        assert store.thumbnails("1.2.3", "other") == []
        store.mark_final("1.2.3")                        # 1.2.4 stays open
        assert store.forget_thumbnails(time.time() - 3600) == 0   # final less than an hour ago: kept
        assert store.forget_thumbnails(time.time() + 1) == 1
        assert store.thumbnails("1.2.3", "m") == [] and len(store.thumbnails("1.2.4", "m")) == 2
    finally:
        store.close()


def test_final_alert_after_a_restart_has_the_preview_of_a_slice_scored_before_it(tmp_path):
    engines, hu, paths, sops = model_and_series(tmp_path)
    state = tmp_path / "series.sqlite3"

    first = PreviewOutputs()
    p1 = pipeline(engines, state, first, settle=120.0)   # never final in this run
    p1.start()
    try:
        for p in paths[:5]:
            p1.submit(ingested(p))
        assert wait(lambda: first.alerts, 30), "the bleed slice raised no preliminary alert"
    finally:
        p1.stop()
    # (which high slice the preliminary alert shows depends on how the slices were batched)
    assert not first.results and first.previews[0]["sop_instance_uid"] in (sops[2], sops[3])

    second = PreviewOutputs()
    p2 = pipeline(engines, state, second, settle=0.3)
    p2.start()
    try:
        for p in paths[5:]:                              # only flat slices: the bleed slice's pixels are gone
            p2.submit(ingested(p))
        assert wait(lambda: second.results, 30)
    finally:
        p2.stop()
    final = [a for a in second.alerts if a["state"] == "final"]
    assert final and final[0]["finding"]["key_slices"][0]["sop_instance_uid"] == sops[3]
    [preview] = [p for p in second.previews if p["state"] == "final"]
    assert preview["alert_id"] == final[0]["alert_id"] and preview["revision"] == final[0]["revision"]
    assert preview["sop_instance_uid"] == sops[3]
    assert np.abs(decoded(preview) - expected_thumbnail(hu[3])).max() <= 1.0
    assert ("previews", "no_thumbnail") not in second.counts and ("previews", "published") in second.counts


def test_a_reopen_that_raises_the_final_alert_has_the_preview_of_a_slice_scored_before_the_reopen(tmp_path):
    engines, hu, paths, sops = model_and_series(tmp_path)
    out = PreviewOutputs()
    p = pipeline(engines, tmp_path / "series.sqlite3", out, settle=0.3)
    p.start()
    try:
        for i, path in enumerate(paths):
            if i != 2:                                   # without the gradient slice: one high slice, top-2 < 0.9
                p.submit(ingested(path))
        assert wait(lambda: out.results, 30)
        assert wait(lambda: p.open_series() == 0, 10)    # final: the open series (and its memory) is gone
        assert not [a for a in out.alerts if a["state"] == "final"]
        p.submit(ingested(paths[2]))                     # the late slice reopens the series: now positive
        assert wait(lambda: len(out.results) == 2, 30)
    finally:
        p.stop()
    [final] = [a for a in out.alerts if a["state"] == "final"]
    assert final["finding"]["key_slices"][0]["sop_instance_uid"] == sops[3]   # scored before the reopen
    [preview] = [pv for pv in out.previews if pv["state"] == "final"]
    assert (preview["alert_id"], preview["revision"]) == (final["alert_id"], final["revision"])
    assert preview["sop_instance_uid"] == sops[3]
    assert np.abs(decoded(preview) - expected_thumbnail(hu[3])).max() <= 1.0
