"""What the agent did over a period, from its series state DB (``edge-agent report``).

Reads the ``outcomes`` the pipeline records at every final decision (see
:mod:`edge_agent.service.state`) and sums them per model and scanner: how
many series each model analysed, skipped, rejected or found not
assessable (and why), how many findings were positive — alerts in live
mode, *would have alerted* in shadow mode — and how long decisions took.
That is the evidence a site needs before it switches a model from shadow to
live (docs/GOVERNANCE.md).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_agent.errors import EdgeAgentError
from edge_agent.service.state import Outcome, read_outcomes

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class ReportError(EdgeAgentError):
    """The report cannot be made (no state DB, a bad period)."""


def parse_period(text: str) -> float:
    """``7d``, ``24h``, ``30m``, ``2w``, ``90s`` → seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", str(text).lower())
    if not match or float(match.group(1)) <= 0:
        raise ReportError(f"--since {text!r} is not a period; write a number and a unit, e.g. 7d, 24h or 30m.")
    return float(match.group(1)) * _UNITS[match.group(2)]


@dataclass
class Row:
    model: str
    scanner: str
    mode: str
    series: int = 0
    statuses: Counter = field(default_factory=Counter)
    positive: int = 0
    reasons: Counter = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)

    def to_dict(self) -> dict:
        lat = np.asarray(self.latencies, dtype=np.float64)
        return {
            "model": self.model, "scanner": self.scanner or "unknown", "mode": self.mode, "series": self.series,
            **{status: self.statuses.get(status, 0) for status in ("analysed", "skipped", "rejected",
                                                                      "not_assessable", "failed")},
            ("would_alert" if self.mode == "shadow" else "alerted"): self.positive,
            "latency_s_p50": float(np.percentile(lat, 50)) if lat.size else None,
            "latency_s_p95": float(np.percentile(lat, 95)) if lat.size else None,
            "reasons": dict(self.reasons.most_common(5)),
        }


def summarise(outcomes: list[Outcome]) -> list[dict]:
    """Per model, scanner and mode: series counts by status, positives, latency, top reasons."""
    rows: dict[tuple, Row] = {}
    seen: set[tuple] = set()
    for o in outcomes:
        key = (o.model or "(no model)", o.scanner, o.mode)
        row = rows.setdefault(key, Row(*key))
        series_key = (key, o.series_instance_uid)
        if series_key not in seen:  # one series counts once per model, whatever its number of findings
            seen.add(series_key)
            row.series += 1
            row.statuses[o.status] += 1
            if o.reason:
                row.reasons[o.reason] += 1
            if o.latency_s is not None:
                row.latencies.append(o.latency_s)
        if o.positive:
            row.positive += 1
    return [rows[k].to_dict() for k in sorted(rows)]


def load(state_dir: Path, since_s: float, now: float) -> list[Outcome]:
    db = Path(state_dir) / "series.sqlite3"
    if not db.is_file():
        raise ReportError(f"No agent state in {state_dir} (series.sqlite3 is missing); pass --state-dir with the "
                          "folder the agent runs with (agent.state_dir).")
    return read_outcomes(db, now - since_s)


def table(rows: list[dict]) -> str:
    """A plain-text table, one line per model, scanner and mode."""
    head = ("model", "scanner", "mode", "series", "analysed", "skipped", "rejected", "not_assessable",
            "alerts", "p50 s", "p95 s")
    lines = [head]
    for r in rows:
        alerts = r.get("alerted", r.get("would_alert", 0))
        lines.append((r["model"], r["scanner"], r["mode"], str(r["series"]), str(r["analysed"]), str(r["skipped"]),
                      str(r["rejected"]), str(r["not_assessable"]),
                      f"{alerts} (would)" if r["mode"] == "shadow" else str(alerts),
                      "-" if r["latency_s_p50"] is None else f"{r['latency_s_p50']:.1f}",
                      "-" if r["latency_s_p95"] is None else f"{r['latency_s_p95']:.1f}"))
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines)
