"""Series decision: per-slice probabilities → one finding per series.

A model scores every slice; the manifest's ``decision`` block says how those
scores become a series probability, whether the finding is positive, and
when a streaming *preliminary* warning may be raised before the series is
complete (see docs/MANIFEST.md). Pure numpy, no I/O: the daemon, ``infer``
and the evaluation scripts share exactly this code.
"""

from __future__ import annotations

from edge_agent.decision.rules import (
    RULES,
    Decision,
    DecisionError,
    DecisionRule,
    PreliminaryRule,
    decide,
    preliminary_met,
)

__all__ = [
    "RULES",
    "Decision",
    "DecisionError",
    "DecisionRule",
    "PreliminaryRule",
    "decide",
    "preliminary_met",
]
