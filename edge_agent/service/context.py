"""A 2.5-D model's window on an open series in the daemon: the slices it holds and when each can be scored.

A model whose manifest has ``preprocessing.context`` scores each slice with the slice nearest to
``offset_mm`` below and above it along the normal (:func:`edge_agent.preprocess.neighbour_of`). Slices
arrive one at a time, in any order, and their HU are dropped as soon as they land; what a slice needs
later is kept here instead, already preprocessed: its own channels while it waits to be scored
(*pending*), and the small context planes it contributes as a neighbour while a pending slice may still
pick it.

When a pending slice is scored (:meth:`ContextWindow.ready`): as soon as, on each side, a received slice
lies at or beyond ``position ± offset_mm`` (less :data:`~edge_agent.preprocess.SAME_POSITION_MM`) and the
slices received between them leave no hole — no step longer than :data:`GAP_FACTOR` × the series' slice
step (the smallest step between the positions received, or the slice thickness when that is smaller: a
slice may still arrive there, and it could be the nearer neighbour). In order of arrival that is the
moment the scanner has written ``offset_mm`` past the slice; out of order it waits until the holes are
filled, so the neighbours chosen are those a whole-series ``infer`` chooses. Whatever is still pending
when the series settles is scored with the slices held (:meth:`ContextWindow.pending`): at the ends of the
series, or beside a hole nothing filled, the slice itself stands in (the ends replicate).

Memory is bounded by the window, not the series: a scored slice's planes are dropped once it lies more
than ``2 × offset_mm`` from every pending slice (no pending slice can pick it: :func:`neighbour_of` takes
nothing farther away), and the whole window goes when the series is final. A series arriving in order
holds about ``3 × offset_mm`` of slices at each end of what has landed (the first slices wait for settle,
having nothing below), plus the batch being taken; out of order, at most the series' pending slices (their
own channels and planes) and the planes within ``2 × offset_mm`` of them. Known limit: before the slice step
is known (no two adjacent slices received, and no slice thickness in the header) a far step may pass for a
regular one, so a slice scored that early may keep a neighbour a later slice would have bettered.

Pure and thread-free: the pipeline thread owns one per open series and 2.5-D model.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge_agent.preprocess import SAME_POSITION_MM, ContextSpec, neighbour_of, stack_context

#: A step between received positions this many times the series' slice step is a hole a slice may still fill
#: (the factor edge_agent.dicom.geometry calls a gap).
GAP_FACTOR = 1.5


@dataclass
class Held:
    """One slice in the window: where it lies, what it gives as a neighbour, and (while pending) its own input."""

    sop_instance_uid: str
    position: float  # mm along the series normal
    planes: np.ndarray  # (len(context.windows), rows, cols): what it contributes as a neighbour
    own: np.ndarray | None = None  # (len(windows), rows, cols) while pending; None once scored
    # what the score needs besides the probabilities, pending only; the pipeline's is
    # (features, received_at, complete_at, preview thumbnail or None)
    meta: Any = None

    @property
    def pending(self) -> bool:
        return self.own is not None


@dataclass
class ContextWindow:
    """The slices of one open series a 2.5-D model holds (see the module docstring)."""

    context: ContextSpec
    slice_thickness: float | None = None
    held: dict[str, Held] = field(default_factory=dict)
    _positions: list[float] = field(default_factory=list)  # every distinct position received, sorted (8 bytes each)
    _min_step: float | None = None  # the smallest step between them
    peak: int = 0  # the most slices held at once (what memory the window took)

    def __len__(self) -> int:
        return len(self.held)

    def add(self, sop_instance_uid: str, position: float, planes: np.ndarray, own: np.ndarray | None = None,
            meta: Any = None) -> None:
        """A slice landed: ``own`` (its own channels) when it is still to be scored, None when it was scored
        before (a resend, or a file re-emitted after a restart: it is held as a neighbour only)."""
        if sop_instance_uid in self.held:
            return
        self.held[sop_instance_uid] = Held(sop_instance_uid, float(position), planes, own, meta)
        at = bisect.bisect_left(self._positions, position)
        near = self._positions[max(0, at - 1):at + 1]
        if not any(abs(p - position) <= SAME_POSITION_MM for p in near):
            self._positions.insert(at, float(position))
            steps = [abs(p - position) for p in near] + ([self._min_step] if self._min_step is not None else [])
            self._min_step = min(steps) if steps else None
        self.peak = max(self.peak, len(self.held))

    def pending(self) -> list[str]:
        """SOP Instance UIDs of the held slices still to be scored, along the normal."""
        return [h.sop_instance_uid for h in self._along() if h.pending]

    def step(self) -> float | None:
        """The series' slice step as far as seen: the smallest step between received positions, or the slice
        thickness when that is smaller (slices are rarely farther apart than thick); None before two slices."""
        candidates = ([self._min_step] if self._min_step is not None else []) + (
            [float(self.slice_thickness)] if self.slice_thickness and self.slice_thickness > 0.01 else [])
        return min(candidates) if candidates else None

    def ready(self) -> list[str]:
        """Pending slices whose neighbours are settled on both sides (the rule in the module docstring)."""
        along = self._along()
        positions = np.array([h.position for h in along], dtype=np.float64)
        step = self.step()
        hole = None if step is None else GAP_FACTOR * step + SAME_POSITION_MM
        out = []
        for k, h in enumerate(along):
            if h.pending and self._side_ready(positions, k, -1, hole) and self._side_ready(positions, k, +1, hole):
                out.append(h.sop_instance_uid)
        return out

    def _side_ready(self, positions: np.ndarray, k: int, side: int, hole: float | None) -> bool:
        p, last = positions[k], positions[k]
        j = k + side
        while 0 <= j < len(positions):
            q = positions[j]
            j += side
            if abs(q - p) <= SAME_POSITION_MM:  # the same position (a second reconstruction): never a neighbour
                continue
            if hole is not None and abs(q - last) > hole:
                return False
            if (q - p) * side >= self.context.offset_mm - SAME_POSITION_MM:
                return True
            last = q
        return False

    def inputs(self, sop_instance_uids: list[str]) -> np.ndarray:
        """The model input ``(N, channels, rows, cols)`` of pending slices, neighbours chosen among those held."""
        along = self._along()
        index = {h.sop_instance_uid: k for k, h in enumerate(along)}
        positions = np.array([h.position for h in along], dtype=np.float64)
        own, below, above = [], [], []
        for uid in sop_instance_uids:
            k = index[uid]
            own.append(along[k].own)
            below.append(along[neighbour_of(positions, k, self.context.offset_mm, -1)].planes)
            above.append(along[neighbour_of(positions, k, self.context.offset_mm, +1)].planes)
        return stack_context(np.stack(own), np.stack(below), np.stack(above))

    def scored(self, sop_instance_uids: list[str]) -> None:
        """These slices' scores are stored: forget their own channels, keep their planes for the neighbours."""
        for uid in sop_instance_uids:
            h = self.held[uid]
            h.own = h.meta = None

    def drop(self) -> int:
        """Forget the planes no pending slice can pick (farther than 2 × offset from each); how many went."""
        pending = np.array([h.position for h in self.held.values() if h.pending], dtype=np.float64)
        reach = 2.0 * self.context.offset_mm + SAME_POSITION_MM
        gone = [uid for uid, h in self.held.items() if not h.pending
                and (pending.size == 0 or np.min(np.abs(pending - h.position)) > reach)]
        for uid in gone:
            del self.held[uid]
        return len(gone)

    def _along(self) -> list[Held]:
        # ties by SOP Instance UID, as the state DB orders them
        return sorted(self.held.values(), key=lambda h: (h.position, h.sop_instance_uid))
