"""The key-image thumbnails of the open series, and what is made of them (pipeline thread).

With previews on (``alerts.previews``), each model of an open series keeps thumbnails of its few
best-scoring slices, made from a slice's HU while its pixels are still here, in a bounded
:class:`~edge_agent.alerts.previews.PreviewCache` (``series.previews``), mirrored in the state DB after
each batch's alert check (never on an alert's path), so that a restart or a reopen still has them (for
``THUMBNAIL_MEMORY_S`` after the series went final; the pipeline prunes them). Of them are made the
key-image preview of every alert revision (published after the alert itself) and, for
``pacs.secondary_capture``, the key image of a positive result with the evidence regions found on its
slice (:func:`evidence_boxes`). Nothing here raises into the pipeline: a preview is a convenience and
never costs an alert or a result.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from edge_agent.decision.series import AlertAction
from edge_agent.logs import PIPELINE_LOG
from edge_agent.service.series import OpenSeries
from edge_agent.service.state import SeriesStore

log = logging.getLogger(PIPELINE_LOG)


def evidence_boxes(features) -> list[tuple[float, float, float, float]]:
    """The regions a slice's evidence numbers locate, ``(r0, c0, r1, c1)`` in the slice's pixels: each component
    ``[area, mean, r0, c0, r1, c1]`` of a ``comps`` list and each ``box`` ``[r0, c0, r1, c1]``, at any depth."""
    out: list = []
    if isinstance(features, dict):
        for key, value in features.items():
            if key == "comps" and isinstance(value, list):
                out += [tuple(float(v) for v in c[2:6]) for c in value if isinstance(c, list) and len(c) >= 6]
            elif key == "box" and isinstance(value, list) and len(value) == 4:
                out.append(tuple(float(v) for v in value))
            else:
                out += evidence_boxes(value)
    elif isinstance(features, list):
        for value in features:
            if isinstance(value, dict):
                out += evidence_boxes(value)
    return out


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

    def offer(self, series: OpenSeries, model, todo: list, probabilities: np.ndarray) -> None:
        """Thumbnails of the best-scoring slices, kept (bounded) for the key-image previews of its alerts."""
        try:
            cache = self.cache(series, model.manifest)
            for i, (_, s) in enumerate(todo):
                score = float(np.max(probabilities[i])) if probabilities.shape[1] else 0.0
                cache.offer(s.sop_instance_uid, score, s.hu_pixels, s.pixel_spacing)
        except Exception as exc:  # noqa: BLE001 - a preview must never cost an alert
            log.warning("series %s: no key-image previews from this batch (%s: %s)", series.series_instance_uid,
                        type(exc).__name__, exc)

    def offer_made(self, series: OpenSeries, model, held: list, probabilities: np.ndarray) -> None:
        """As :meth:`offer`, for 2.5-D slices whose thumbnails were made on arrival (``Held.meta[3]``)."""
        try:
            cache = self.cache(series, model.manifest)
            for i, h in enumerate(held):
                score = float(np.max(probabilities[i])) if probabilities.shape[1] else 0.0
                cache.offer_image(h.sop_instance_uid, score, lambda h=h: h.meta[3])
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
        found = None if cache is None else cache.image_for(k["sop_instance_uid"] for k in action.key_slices)
        if found is None:
            self.outputs.count("previews", "no_thumbnail")
            log.info("series %s: no key-image preview for alert %s revision %d (no thumbnail of its key slices: "
                     "none was among the best-scoring slices kept, or they were scored over a day before a reopen)",
                     series.series_instance_uid,
                     payload["alert_id"], payload["revision"])
            return
        try:
            preview = build_preview(payload, sop_instance_uid=found[0], image=found[1], window=cache.window,
                                    settings=self.settings)
            self.outputs.publish_preview(preview)
            self.outputs.count("previews", "published")
        except Exception as exc:  # noqa: BLE001 - the alert is out; its preview is a convenience
            self.outputs.count("previews", "failed")
            log.warning("series %s: the key-image preview of alert %s revision %d was not published (%s: %s)",
                        series.series_instance_uid, payload["alert_id"], payload["revision"],
                        type(exc).__name__, exc)

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
                found = None if manifest is None else self.cache(series, manifest).image_for(
                    k["sop_instance_uid"] for k in f.get("key_slices") or [])
                if found is None:
                    continue
                uid, image = found
                score = series.known_scores(self.store, name).get(uid)
                sy, sx = image.shape[0] / series.shape[0], image.shape[1] / series.shape[1]
                boxes = [(r0 * sy, c0 * sx, r1 * sy, c1 * sx)
                         for r0, c0, r1, c1 in evidence_boxes(score.features if score else None)]
                out[name] = {"sop_instance_uid": uid, "image": image, "boxes": boxes,
                             "orientation": series.info.get("orientation") or ()}
        except Exception as exc:  # noqa: BLE001 - a key image is a convenience; the SR and KOS go regardless
            log.warning("series %s: no key images for the PACS (%s: %s)", series.series_instance_uid,
                        type(exc).__name__, exc)
        return out
