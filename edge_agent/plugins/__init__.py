"""Named, non-neural model steps (``"plugin"`` in a manifest, docs/MANIFEST.md).

A finding that is *measured* rather than learnt — coronary artery calcium by
the Agatston method — plugs into the same model mechanism as a user's ONNX
network: its manifest names the step instead of the network, the agent routes
series to it by the same ``applies_to`` rules, the pipeline streams every
slice through it as the slice lands, and the one series decider
(``edge_agent.decision.series``) turns its measurement into the finding and
into alerts. A plug-in never decides policy: it measures and grades; the
decider decides (``positive``, and whether the grade reaches the manifest's
``alert_at``).

A plug-in has three pure steps:

- ``slice_features(hu, pixel_spacing, params, geometry)`` — one slice's
  numbers (a small JSON-ready dict, kept in the state DB instead of pixels);
- ``slice_scores(features, params)`` — one value in [0, 1] per finding for
  that slice (what key slices are ranked by);
- ``measure(features, positions_mm, thickness_mm, params)`` — the series'
  :class:`Measurement` per finding, from the slices' features ordered along
  the slice normal.

Registered plug-ins: :data:`PLUGINS` (name → ``module:attribute``), imported
on first use.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

PLUGINS = {"agatston": "edge_agent.plugins.agatston:PLUGIN"}


@dataclass(frozen=True)
class Measurement:
    """What a plug-in measured for one finding on one series.

    ``grade``: one of the plug-in's ``grades`` (ordered, lowest first);
    ``fields``: extra JSON-ready keys for the finding (e.g. ``agatston``);
    ``key_slices``: slice indices (series order), most telling first;
    ``probability``: in [0, 1] (a deterministic measurement says 1.0 or 0.0).
    """

    positive: bool
    grade: str
    probability: float
    fields: dict = field(default_factory=dict)
    key_slices: list[int] = field(default_factory=list)


class PluginError(Exception):
    """A plug-in's parameters are invalid (the manifest reader words the sentence)."""


def names() -> tuple[str, ...]:
    return tuple(sorted(PLUGINS))


def get(name: str) -> Any:
    """The registered plug-in object ``name`` (KeyError when there is none)."""
    module, attr = PLUGINS[name].split(":")
    return getattr(importlib.import_module(module), attr)


Fail = Callable[[str, str], Exception]  # (field, problem) -> the manifest reader's one-sentence error
