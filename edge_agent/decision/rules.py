"""Decision rules: how per-slice probabilities become a series finding.

Rules (the manifest's ``decision.rule``):

- ``top_k_mean``: the series probability is the mean of the ``k`` highest
  slice probabilities (``k`` is clipped to the number of slices). Robust to
  one noisy slice, still sensitive to a small finding seen on few slices.
- ``max``: the highest slice probability.

The finding is *positive* when the series probability is ≥ ``threshold``.
A *slice* is called positive when its own probability is ≥ ``slice_threshold``
(default: ``threshold``; never above it, so a positive series always has a
positive slice): the per-slice operating point that marks where the finding
is seen, without moving the series decision.
A *preliminary* warning (streaming, before the series is complete) is due as
soon as ``preliminary.min_slices`` slices score ≥ ``preliminary.threshold``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np

from edge_agent.errors import EdgeAgentError

RULES = ("top_k_mean", "max")


class DecisionError(EdgeAgentError):
    """A decision rule is invalid or the model's scores cannot be decided on."""


@dataclass(frozen=True)
class PreliminaryRule:
    """Streaming early warning: ``min_slices`` slices scoring ≥ ``threshold``."""

    min_slices: int = 2
    threshold: float = 0.8

    def __post_init__(self) -> None:
        if isinstance(self.min_slices, bool) or not isinstance(self.min_slices, int) or self.min_slices < 1:
            raise DecisionError(f"preliminary.min_slices must be an integer ≥ 1, not {self.min_slices!r}.")
        if not 0.0 <= float(self.threshold) <= 1.0:
            raise DecisionError(f"preliminary.threshold must lie in [0, 1], not {self.threshold!r}.")


@dataclass(frozen=True)
class DecisionRule:
    """The manifest's ``decision`` block (docs/MANIFEST.md)."""

    rule: str = "top_k_mean"
    threshold: float = 0.5
    k: int = 1
    preliminary: PreliminaryRule | None = None
    key_slices: int = 3
    slice_threshold: float | None = None  # None: the series threshold

    def __post_init__(self) -> None:
        if self.rule not in RULES:
            raise DecisionError(f"decision.rule must be one of {', '.join(RULES)}, not {self.rule!r}.")
        if not 0.0 <= float(self.threshold) <= 1.0:
            raise DecisionError(f"decision.threshold must lie in [0, 1], not {self.threshold!r}.")
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise DecisionError(f"decision.k must be an integer ≥ 1, not {self.k!r}.")
        if isinstance(self.key_slices, bool) or not isinstance(self.key_slices, int) or self.key_slices < 0:
            raise DecisionError(f"decision.key_slices must be an integer ≥ 0, not {self.key_slices!r}.")
        if self.slice_threshold is not None:
            if not 0.0 <= float(self.slice_threshold) <= 1.0:
                raise DecisionError(f"decision.slice_threshold must lie in [0, 1], not {self.slice_threshold!r}.")
            if float(self.slice_threshold) > float(self.threshold):
                raise DecisionError(
                    f"decision.slice_threshold ({self.slice_threshold}) must not exceed decision.threshold "
                    f"({self.threshold}): a positive series must have a positive slice.")

    @property
    def slice_cut(self) -> float:
        """The probability from which a slice is called positive (``slice_threshold``, else ``threshold``)."""
        return float(self.threshold if self.slice_threshold is None else self.slice_threshold)

    def to_dict(self) -> dict:
        d = {"rule": self.rule, "threshold": self.threshold, "k": self.k, "key_slices": self.key_slices}
        if self.slice_threshold is not None:
            d["slice_threshold"] = self.slice_threshold
        if self.preliminary is not None:
            d["preliminary"] = asdict(self.preliminary)
        return d


@dataclass(frozen=True)
class Decision:
    """One finding's series-level result.

    ``key_slices``: JSON-ready dicts ``{index, sop_instance_uid, position_mm,
    probability, positive}``, highest probability first (``positive``: the
    slice is at or above the rule's slice threshold).
    """

    probability: float
    positive: bool
    key_slices: list[dict] = field(default_factory=list)
    alert: bool | None = None  # whether it raises an alert; None: when positive (a graded finding may not)

    @property
    def raises_alert(self) -> bool:
        return bool(self.positive if self.alert is None else self.alert and self.positive)

    def to_dict(self) -> dict:
        return {"probability": self.probability, "positive": self.positive,
                "key_slices": [dict(k) for k in self.key_slices]}


def _checked(probabilities: np.ndarray) -> np.ndarray:
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim == 2 and p.shape[1] == 1:
        p = p[:, 0]
    if p.ndim != 1:
        raise DecisionError(f"Per-slice probabilities must be one value per slice, got shape {p.shape}.")
    if not np.all(np.isfinite(p)):
        raise DecisionError("The model produced non-finite slice probabilities (NaN/inf); check the model and its input.")
    if p.size and (p.min() < 0.0 or p.max() > 1.0):
        raise DecisionError(
            "The model produced slice scores outside [0, 1]; its output must be a probability (sigmoid in the graph).")
    return p


def series_probability(probabilities: np.ndarray, rule: DecisionRule) -> float:
    """The series probability under ``rule`` (0.0 for an empty series)."""
    p = _checked(probabilities)
    if p.size == 0:
        return 0.0
    if rule.rule == "max":
        return float(p.max())
    k = min(rule.k, p.size)
    return float(np.mean(np.partition(p, p.size - k)[p.size - k:]))


def decide(
    probabilities: np.ndarray,
    rule: DecisionRule,
    positions_mm: Sequence[float] | np.ndarray | None = None,
    sop_instance_uids: Sequence[str] | None = None,
) -> Decision:
    """Per-slice probabilities ``(N,)`` (in series order) → :class:`Decision`.

    ``key_slices`` lists up to ``rule.key_slices`` slices with the highest
    probabilities, highest first (ties: lower index first), with their
    SOPInstanceUID and position along the slice normal when given.
    """
    p = _checked(probabilities)
    for name, seq in (("positions_mm", positions_mm), ("sop_instance_uids", sop_instance_uids)):
        if seq is not None and len(seq) != p.size:
            raise DecisionError(f"{name} has {len(seq)} entries but there are {p.size} slice probabilities.")
    prob = series_probability(p, rule)
    order = np.argsort(-p, kind="stable")[: rule.key_slices]
    keys = [key_slice(int(i), float(p[i]), None if positions_mm is None else positions_mm[i],
                      None if sop_instance_uids is None else sop_instance_uids[i], rule.slice_cut) for i in order]
    return Decision(probability=prob, positive=bool(p.size > 0 and prob >= rule.threshold), key_slices=keys)


def key_slice(index: int, probability: float, position_mm: float | None, sop_instance_uid: str | None,
              slice_cut: float) -> dict:
    """One key slice as a decision lists it: where it is, what the model scores it, whether it is called
    ``positive`` (its probability ≥ ``slice_cut``, the rule's :attr:`DecisionRule.slice_cut`)."""
    return {
        "index": int(index),
        "sop_instance_uid": None if sop_instance_uid is None else str(sop_instance_uid),
        "position_mm": None if position_mm is None else round(float(position_mm), 3),
        "probability": round(float(probability), 6),
        "positive": bool(probability >= slice_cut),
    }


def preliminary_met(probabilities_so_far: np.ndarray, rule: DecisionRule) -> bool:
    """Whether the slices seen so far justify a preliminary (streaming) warning.

    False when the rule has no ``preliminary`` block.
    """
    if rule.preliminary is None:
        return False
    p = _checked(probabilities_so_far)
    return int(np.count_nonzero(p >= rule.preliminary.threshold)) >= rule.preliminary.min_slices
