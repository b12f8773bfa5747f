"""An open series as the pipeline thread holds it in memory, and the description it keeps of it.

:class:`OpenSeries` is what the pipeline (``service/pipeline.py``) and the parts it runs — scoring
(``scoring.py``), the thumbnails (``previews.py``), the result (``finalise.py``) and the story
(``story.py``) — share of one series between its first slice and its final decision: its header
description (:func:`series_info`, no PHI), geometry, routes, arrival times, the scores known so far
(a mirror of the state DB, :meth:`OpenSeries.known_scores`), and, bounded, the preview thumbnails and
2.5-D context windows. Owned by the pipeline thread; no locking.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge_agent.decision.series import SeriesContext
from edge_agent.service.context import ContextWindow
from edge_agent.service.state import SeriesStore, SliceScore


@dataclass
class OpenSeries:
    series_instance_uid: str
    info: dict
    normal: np.ndarray
    shape: tuple[int, int]
    routes: list  # [(Model, reason | None)]
    first_received: float
    last_arrival: float  # monotonic
    opened: float  # monotonic
    slices: int = 0
    sops: set = field(default_factory=set)  # SOP Instance UIDs counted in ``slices`` (a retried batch counts once)
    retry_at: float = 0.0  # monotonic: a final decision that hit a full disk is tried again then
    warnings: list[str] = field(default_factory=list)
    decisive: dict[str, float] = field(default_factory=dict)  # alert_id -> complete_at of the decisive slice
    # model name -> {SOP Instance UID: score}: what the state DB holds, kept here so that each
    # batch costs O(batch), not a re-read of the whole series (loaded from the DB on first use).
    scores: dict[str, dict[str, SliceScore]] = field(default_factory=dict)
    # The original study's header (patient/study attributes, for DICOM results in that study; never logged),
    # read from this opening's first file when results go to PACS; None otherwise.
    study: Any = field(default=None, repr=False)
    # model name -> PreviewCache: thumbnails of the few best-scoring slices (alert key-image previews)
    previews: dict = field(default_factory=dict, repr=False)
    # SOP Instance UID -> (file, frame index) of the single-frame slices that arrived in this opening: a key
    # slice whose thumbnail was not kept is read back from its file (on disk until the series is final)
    files: dict = field(default_factory=dict, repr=False)
    # model name -> ContextWindow of a 2.5-D model: the preprocessed planes (never HU) of the slices that
    # are still to be scored or that a pending slice may still take as its neighbour (bounded; service/context.py)
    context: dict[str, ContextWindow] = field(default_factory=dict, repr=False)

    def known_scores(self, store: SeriesStore, name: str) -> dict[str, SliceScore]:
        """Model ``name``'s scores of this series so far, by SOP Instance UID (read from ``store`` once)."""
        known = self.scores.get(name)
        if known is None:  # first batch since the series opened (or reopened after a restart)
            known = self.scores[name] = {s.sop_instance_uid: s for s in
                                         store.scores(self.series_instance_uid, name)}
        return known


def series_info(first) -> dict:
    """The non-PHI description of a series, from its first slice."""
    return {
        "study_instance_uid": first.study_instance_uid,
        "series_instance_uid": first.series_instance_uid,
        "accession_number": first.accession_number or "",
        "modality": first.modality or "",
        "body_part": first.body_part or "",
        "series_description": first.series_description or "",
        "study_description": getattr(first, "study_description", "") or "",
        "slice_thickness": first.slice_thickness,
        "gantry_tilt": float(getattr(first, "gantry_tilt", 0.0) or 0.0),
        "scanner": " ".join(str(getattr(first, a, "") or "").strip()
                            for a in ("manufacturer", "manufacturer_model")).strip(),
        "orientation": [float(v) for v in first.orientation],
        "pixel_spacing": [float(v) for v in first.pixel_spacing],
    }


def series_context(info: dict) -> SeriesContext:
    """What the evidence and domain checks need of the series' header (kept in the state DB's info)."""
    return SeriesContext(slice_thickness_mm=info.get("slice_thickness"), orientation=info.get("orientation"),
                         pixel_spacing=info.get("pixel_spacing"))
