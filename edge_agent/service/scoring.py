"""Scoring one model's slices of an open series as they land (pipeline thread).

A :class:`Scorer` scores a plain model's batch at once: HU or stored values in, each slice's
probabilities and its evidence/domain numbers (or a plug-in's features) out, the scores stored in the
state DB (``SeriesStore.add_scores``) and mirrored in ``OpenSeries.scores``, the best-scoring slices'
thumbnails offered (``previews.py``), then the pipeline's ``on_scored`` (its preliminary-rule check and
alert), then the thumbnails persisted — after the alert, so that the DB write stays off its path.

A :class:`ContextScorer` does the same for a 2.5-D model (manifest ``preprocessing.context``), whose
slice is scored with its neighbours at ±``offset_mm`` along the normal: on arrival the pixels still go,
but the slice's preprocessed planes stay in the series' :class:`~edge_agent.service.context.ContextWindow`
(bounded: a window around the slices still to be scored, never the series' HU) until it and the slices
that may take it as a neighbour are scored — as soon as its neighbours have landed, the rest at settle
(:meth:`ContextScorer.settle`; the ends of the series repeat the slice itself). Not persisted: after a
restart the ingest re-emits the files of every series not marked done, so slices scored before come
back as neighbours (planes only, not scored again) and the others are scored as they land; a series
reopened after its final decision has lost its planes, so its late slices see only each other (usually
none: the slice itself).
"""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np

from edge_agent.service.context import ContextWindow
from edge_agent.service.previews import Thumbnails
from edge_agent.service.series import OpenSeries
from edge_agent.service.state import SeriesStore, SliceScore

#: Called with ``(series, model, scores)`` once a batch's new scores are stored (the preliminary check).
OnScored = Callable[[OpenSeries, Any, list[SliceScore]], None]


class Scorer:
    """Scores the slices of a model that takes one slice at a time, each batch as it lands."""

    def __init__(self, store: SeriesStore, outputs: Any, thumbnails: Thumbnails | None, on_scored: OnScored):
        self.store, self.outputs, self.thumbnails, self.on_scored = store, outputs, thumbnails, on_scored

    def score(self, series: OpenSeries, model, good: list) -> None:
        """Score the batch's ``(file, slice)`` pairs not scored before (a resend, a re-emitted file: skipped)."""
        name = model.manifest.name
        scored = series.known_scores(self.store, name)
        todo = [(f, s) for f, s in good if (s.hu is not None or s.stored is not None)
                and s.sop_instance_uid not in scored]
        if not todo:
            return
        timings: dict[str, float] = {}
        # HU or stored values: a model on TensorRT prepares stored pixels on the GPU (Model.score_images);
        # each slice's evidence/domain numbers, or a plug-in's features, come from its HU before its pixels go
        probabilities, features = model.analyse_images([s for _, s in todo], timings=timings)
        probabilities = np.asarray(probabilities, dtype=np.float64)
        if probabilities.ndim == 1:
            probabilities = probabilities[:, None]
        self._observe(timings)
        scores = [SliceScore(s.sop_instance_uid, float(np.dot(np.asarray(s.position, float), series.normal)),
                             [float(p) for p in probabilities[i]], f.received_at,
                             getattr(f, "written_at", 0.0) or f.complete_at, features[i])
                  for i, (f, s) in enumerate(todo)]
        self.store.add_scores(series.series_instance_uid, name, scores)
        scored.update((s.sop_instance_uid, s) for s in scores)
        if self.thumbnails is not None:
            self.thumbnails.offer(series, model, todo, probabilities, features)
        self.on_scored(series, model, scores)
        if self.thumbnails is not None:
            self.thumbnails.persist(series, name)  # after the alert: the state DB write is not on its path

    def settle(self, series: OpenSeries, model) -> None:
        """Before the final decision: nothing of a plain model waits."""

    def _observe(self, timings: dict[str, float]) -> None:
        for stage in ("preprocess", "inference"):
            self.outputs.observe(stage, timings.get(stage, 0.0) / 1000.0)
        if "evidence" in timings:
            self.outputs.observe("evidence", timings["evidence"] / 1000.0)


class ContextScorer(Scorer):
    """Scores a 2.5-D model's slices once their neighbours have landed (see the module docstring)."""

    def score(self, series: OpenSeries, model, good: list) -> None:
        """A 2.5-D model's step: keep each landed slice's preprocessed planes, score the slices now settled.

        On arrival a slice still to be scored gives its own channels, its context planes and its
        evidence/domain numbers (from its HU, which go right after, as for every model); a slice scored
        before (a resend, or re-emitted after a restart) gives its planes only, as a neighbour. A pending
        slice is scored as soon as its neighbours are settled on both sides (``ContextWindow.ready``: the
        scanner has written ``offset_mm`` past it and no hole is left between), with the neighbours that
        ``infer`` would choose; the rest at settle (:meth:`settle`). The preliminary rule is checked
        on the slices scored now. Memory: only the window's planes, bounded (service/context.py).
        """
        name = model.manifest.name
        scored = series.known_scores(self.store, name)
        window = series.context.get(name)
        if window is None:
            window = series.context[name] = ContextWindow(model.context, series.info.get("slice_thickness"))
        model.tell_cpu_input()
        timings: dict[str, float] = {}
        arrived = [(f, s) for f, s in good if (s.hu is not None or s.stored is not None)
                   and s.sop_instance_uid not in window.held]  # held already: a batch retried after a full disk
        if arrived:
            new = [(f, s) for f, s in arrived if s.sop_instance_uid not in scored]
            features = model.slice_features_of([s for _, s in new], timings) if new else []
            meta = {s.sop_instance_uid: (features[i], f.received_at, getattr(f, "written_at", 0.0) or f.complete_at,
                                         self._thumbnail(series, model, s))
                    for i, (f, s) in enumerate(new)}
            t0 = time.perf_counter()
            groups: dict[tuple, list] = {}
            for f, s in arrived:
                groups.setdefault((tuple(float(v) for v in s.pixel_spacing), s.sop_instance_uid in meta),
                                  []).append(s)
            for (spacing, pending), slices in groups.items():
                own, planes = model.prepare_context(np.stack([s.hu_pixels() for s in slices]), spacing, own=pending)
                for i, s in enumerate(slices):
                    window.add(s.sop_instance_uid, float(np.dot(np.asarray(s.position, float), series.normal)),
                               planes[i], own[i] if pending else None, meta.get(s.sop_instance_uid))
            timings["preprocess"] = timings.get("preprocess", 0.0) + (time.perf_counter() - t0) * 1000.0
        self._score_window(series, model, window, window.ready(), timings, preliminary=True)
        window.drop()
        self._observe(timings)

    def settle(self, series: OpenSeries, model) -> None:
        """At settle: score every slice still pending with the neighbours held (at the ends and beside a hole
        nothing filled, the slice itself stands in for the missing neighbour)."""
        window = series.context.get(model.manifest.name)
        if window is None:
            return
        timings: dict[str, float] = {}
        self._score_window(series, model, window, window.pending(), timings, preliminary=False)
        window.drop()
        self._observe(timings)

    def _thumbnail(self, series: OpenSeries, model, s):
        """A pending slice's preview thumbnail, made while its pixels are here (None without previews)."""
        return None if self.thumbnails is None else self.thumbnails.thumbnail(series, model, s)

    def _score_window(self, series: OpenSeries, model, window: ContextWindow, uids: list[str],
                      timings: dict[str, float], *, preliminary: bool) -> None:
        """Score pending slices of a 2.5-D model in batches; store each batch before forgetting its inputs."""
        if not uids:
            return
        name = model.manifest.name
        known = series.known_scores(self.store, name)
        done: list[SliceScore] = []
        step = max(1, int(getattr(model, "batch_size", 16) or 16))
        for start in range(0, len(uids), step):
            part = uids[start:start + step]
            t0 = time.perf_counter()
            x = window.inputs(part)
            t1 = time.perf_counter()
            probabilities = np.asarray(model.infer_batched(x), dtype=np.float64)
            if probabilities.ndim == 1:
                probabilities = probabilities[:, None]
            timings["preprocess"] = timings.get("preprocess", 0.0) + (t1 - t0) * 1000.0
            timings["inference"] = timings.get("inference", 0.0) + (time.perf_counter() - t1) * 1000.0
            held = [window.held[uid] for uid in part]
            scores = [SliceScore(h.sop_instance_uid, h.position, [float(p) for p in probabilities[i]], h.meta[1],
                                 h.meta[2], h.meta[0]) for i, h in enumerate(held)]
            self.store.add_scores(series.series_instance_uid, name, scores)
            known.update((sc.sop_instance_uid, sc) for sc in scores)
            if self.thumbnails is not None:
                self.thumbnails.offer_made(series, model, held, probabilities)
            window.scored(part)
            done += scores
        if preliminary:
            self.on_scored(series, model, done)
        if self.thumbnails is not None:
            self.thumbnails.persist(series, name)  # after the alert: the state DB write is not on its path
