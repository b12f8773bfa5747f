"""The key-image thumbnails of the open series, and what is made of them (pipeline thread).

With previews on (``alerts.previews``), each model of an open series keeps thumbnails of its few
best-scoring slices, made from a slice's HU while its pixels are still here, in a bounded
:class:`~edge_agent.alerts.previews.PreviewCache` (``series.previews``), mirrored in the state DB after
each batch's alert check (never on an alert's path), so that a restart or a reopen still has them (for
``THUMBNAIL_MEMORY_S`` after the series went final; the pipeline prunes them). Of them are made the
key-image preview of every alert revision (published after the alert itself) and, for
``pacs.secondary_capture``, the key image of a positive result; both frame the region the finding's
evidence found on that slice (its key slice's ``region_px``, :func:`region_boxes`). Slices that carry
evidence keep their thumbnails first (:func:`preview_rank`), so the lead key slice of a positive finding
(the evidence slice the model scores highest) has one. Nothing here raises into the pipeline: a preview is a convenience and
never costs an alert or a result.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from edge_agent.decision.series import AlertAction
from edge_agent.evidence import slice_evidence_mm2
from edge_agent.logs import PIPELINE_LOG
from edge_agent.service.series import OpenSeries
from edge_agent.service.state import SeriesStore

log = logging.getLogger(PIPELINE_LOG)


def preview_rank(probability: float, features) -> float:
    """A slice's rank for keeping its thumbnail: a slice that carries evidence (a blood component, a lung blob)
    ranks above every slice that only scores high, and among those the one the model scores higher first
    (the larger evidence breaks a tie) — the order in which the lead key slice of a positive finding is
    picked (``decision.series.evidence_lead``), so it is likely to have its thumbnail after a restart too
    (while the series is open its file is read back otherwise)."""
    area = slice_evidence_mm2(features)
    return float(probability) + (2.0 + min(area, 1e4) * 1e-8 if area > 0 else 0.0)


def region_boxes(key_slices, sop_instance_uid: str, scale: tuple[float, float]) -> list[tuple[float, float, float, float]]:
    """The evidence region (``region_px``) of the key slice ``sop_instance_uid``, in a thumbnail's pixels
    (``scale``: thumbnail rows / slice rows, thumbnail columns / slice columns); empty when it has none."""
    sy, sx = scale
    return [(r0 * sy, c0 * sx, r1 * sy, c1 * sx)
            for k in key_slices or [] if k.get("sop_instance_uid") == sop_instance_uid and k.get("region_px")
            for r0, c0, r1, c1 in [k["region_px"]]]


class Thumbnails:
    """The open series' preview thumbnails (``settings``: the ``PreviewSettings``); used only with previews on."""

    def __init__(self, settings, store: SeriesStore, outputs: Any):
        self.settings, self.store, self.outputs = settings, store, outputs

    def thumbnail(self, series: OpenSeries, model, s):
        """A pending 2.5-D slice's preview thumbnail, made while its pixels are here (None if it cannot be)."""
        try:
            from edge_agent.alerts.previews import thumbnail, window_for  # noqa: PLC0415 - Pillow on first use

            return thumbnail(s.hu_pixels(), window_for(model.manifest), s.pixel_spacing, self.settings.size)
        except Exception as exc:  # noqa: BLE001 - a preview must never cost an alert
            log.warning("series %s: no key-image preview for slice %s (%s: %s)", series.series_instance_uid,
                        s.sop_instance_uid, type(exc).__name__, exc)
            return None

    def offer(self, series: OpenSeries, model, todo: list, probabilities: np.ndarray, features: list) -> None:
        """Thumbnails of the slices with the most evidence, then the best-scoring (:func:`preview_rank`), kept
        (bounded) for the key-image previews of its alerts."""
        try:
            cache = self.cache(series, model.manifest)
            for i, (_, s) in enumerate(todo):
                score = float(np.max(probabilities[i])) if probabilities.shape[1] else 0.0
                cache.offer(s.sop_instance_uid, preview_rank(score, features[i]), s.hu_pixels, s.pixel_spacing)
        except Exception as exc:  # noqa: BLE001 - a preview must never cost an alert
            log.warning("series %s: no key-image previews from this batch (%s: %s)", series.series_instance_uid,
                        type(exc).__name__, exc)

    def offer_made(self, series: OpenSeries, model, held: list, probabilities: np.ndarray) -> None:
        """As :meth:`offer`, for 2.5-D slices whose thumbnails were made on arrival (``Held.meta[3]``)."""
        try:
            cache = self.cache(series, model.manifest)
            for i, h in enumerate(held):
                score = float(np.max(probabilities[i])) if probabilities.shape[1] else 0.0
                cache.offer_image(h.sop_instance_uid, preview_rank(score, h.meta[0]), lambda h=h: h.meta[3])
        except Exception as exc:  # noqa: BLE001 - a preview must never cost an alert
            log.warning("series %s: no key-image previews from this batch (%s: %s)", series.series_instance_uid,
                        type(exc).__name__, exc)

    def cache(self, series: OpenSeries, manifest):
        """The series' bounded thumbnail cache of one model (its key slices plus ``previews.keep``)."""
        from edge_agent.alerts.previews import PreviewCache, window_for  # noqa: PLC0415 - Pillow on first use

        cache = series.previews.get(manifest.name)
        if cache is None:
            keep = max(1, int(getattr(manifest.decision, "key_slices", 3) or 1)) + self.settings.keep
            cache = series.previews[manifest.name] = PreviewCache(window_for(manifest), self.settings, keep)
            # the thumbnails kept before a restart or before the series went final (a reopen)
            cache.load(self.store.thumbnails(series.series_instance_uid, manifest.name))
        return cache

    def persist(self, series: OpenSeries, name: str) -> None:
        """Mirror the cache's new and evicted thumbnails in the state DB (never raises: a preview is a convenience)."""
        cache = series.previews.get(name)
        if cache is None:
            return
        try:
            self.store.keep_thumbnails(series.series_instance_uid, name, *cache.drain())
        except Exception as exc:  # noqa: BLE001 - the preview of this run still works from memory
            log.warning("series %s: key-image thumbnails of %s not saved (%s: %s); a restart loses their previews",
                        series.series_instance_uid, name, type(exc).__name__, exc)

    def publish(self, series: OpenSeries, manifest, payload: dict, action: AlertAction) -> None:
        """The key-image preview of an alert revision, after the alert itself (never raises)."""
        from edge_agent.alerts.previews import build_preview  # noqa: PLC0415

        try:
            cache = self.cache(series, manifest)  # after a restart or a reopen: from the state DB
        except Exception as exc:  # noqa: BLE001 - the alert is out; its preview is a convenience
            log.warning("series %s: the key-image thumbnails could not be read (%s: %s)", series.series_instance_uid,
                        type(exc).__name__, exc)
            cache = None
        found = None if cache is None else self.key_image(series, manifest, cache, action.key_slices)
        if found is None:
            self.outputs.count("previews", "no_thumbnail")
            log.info("series %s: no key-image preview for alert %s revision %d (no thumbnail of its key slices: "
                     "none was among the best-scoring slices kept, or they were scored over a day before a reopen)",
                     series.series_instance_uid,
                     payload["alert_id"], payload["revision"])
            return
        try:
            image = found[1]
            boxes = region_boxes(action.key_slices, found[0],
                                 (image.shape[0] / series.shape[0], image.shape[1] / series.shape[1]))
            preview = build_preview(payload, sop_instance_uid=found[0], image=image, window=cache.window,
                                    settings=self.settings, boxes=boxes)
            self.outputs.publish_preview(preview)
            self.outputs.count("previews", "published")
        except Exception as exc:  # noqa: BLE001 - the alert is out; its preview is a convenience
            self.outputs.count("previews", "failed")
            log.warning("series %s: the key-image preview of alert %s revision %d was not published (%s: %s)",
                        series.series_instance_uid, payload["alert_id"], payload["revision"],
                        type(exc).__name__, exc)

    def key_image(self, series: OpenSeries, manifest, cache, key_slices) -> tuple[str, np.ndarray] | None:
        """``(uid, thumbnail)`` of the first key slice (the evidence's best slice on a positive finding): kept
        in the cache, else read back from its file (still on disk while the series is open; off the alert's
        path), else the next key slice the cache kept; None when there is none."""
        uids = [k["sop_instance_uid"] for k in key_slices]
        if not uids:
            return None
        found = cache.image_for(uids[:1]) or self.from_file(series, manifest, cache, uids[0])
        return found or cache.image_for(uids[1:])

    def from_file(self, series: OpenSeries, manifest, cache, uid: str) -> tuple[str, np.ndarray] | None:
        """A key slice's thumbnail made again from its file (None when the file is unknown, gone or unreadable)."""
        where = series.files.get(uid)
        if where is None:
            return None
        try:
            from edge_agent.alerts.previews import thumbnail  # noqa: PLC0415
            from edge_agent.dicom import read_file  # noqa: PLC0415

            path, index = where
            s = read_file(path)[index]
            if s.sop_instance_uid != uid:
                return None
            return uid, thumbnail(s.hu_pixels(), cache.window, s.pixel_spacing, self.settings.size)
        except Exception as exc:  # noqa: BLE001 - a preview is a convenience: the next key slice will do
            log.info("series %s: key slice %s not read back for its preview (%s: %s)", series.series_instance_uid,
                     uid, type(exc).__name__, exc)
            return None

    def key_images(self, series: OpenSeries, result: dict) -> dict:
        """Per positive live model: its best key slice's thumbnail, with the evidence regions found on that slice
        (``{sop_instance_uid, image, orientation, boxes}``; boxes in the thumbnail's pixels) — for the PACS's
        secondary capture. Never raises."""
        out: dict = {}
        try:
            for f in result.get("findings", []):
                name = f.get("model")
                if not f.get("positive") or f.get("shadow") or name in out:
                    continue
                manifest = next((m.manifest for m, reason in series.routes
                                 if reason is None and m.manifest.name == name), None)
                found = None if manifest is None else self.key_image(series, manifest, self.cache(series, manifest),
                                                                      f.get("key_slices") or [])
                if found is None:
                    continue
                uid, image = found
                boxes = region_boxes(f.get("key_slices"), uid,
                                     (image.shape[0] / series.shape[0], image.shape[1] / series.shape[1]))
                out[name] = {"sop_instance_uid": uid, "image": image, "boxes": boxes,
                             "orientation": series.info.get("orientation") or ()}
        except Exception as exc:  # noqa: BLE001 - a key image is a convenience; the SR and KOS go regardless
            log.warning("series %s: no key images for the PACS (%s: %s)", series.series_instance_uid,
                        type(exc).__name__, exc)
        return out
