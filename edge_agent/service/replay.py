"""Scenario replay: phantom series rendered once, then delivered again and again as new series.

The harnesses (scripts/bench_latency.py, soak.py, fleet.py, fault_inject.py, fuzz_ingest.py) must not spend
CPU on rendering while the agent runs, so each :class:`Template` is rendered once by the simulator
(:func:`edge_agent.service.simulator.render`) and :func:`replay` writes its files with fresh UIDs (a
same-length byte patch of the Study, Series, Frame of Reference and SOP Instance UIDs), shuffled, at a
cadence, the way :func:`~edge_agent.service.simulator.write_bytes` writes like a scanner: in place in two
chunks, dot-temp + rename, or moved in from a staging folder beside the watch folder.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_agent.service.simulator import render, write_bytes


@dataclass
class Template:
    kind: str
    seed: int
    paths: list[Path]            # slice order (lowest position first)
    labels: list[bool]
    uids: list[list[str]]        # per file: the UIDs to patch (study, series, FoR, SOP)
    probs: np.ndarray | None = None
    positive: bool | None = None  # the offline (``infer``) decision on the whole series, when computed


@dataclass
class Sent:
    """One replayed series as delivered."""
    kind: str
    template: int
    series_uid: str
    folder: Path
    order: list[int] = field(default_factory=list)      # slice indices in delivery order
    done_at: list[float] = field(default_factory=list)  # completion time of each delivered file
    paths: list[Path] = field(default_factory=list)     # the delivered files


def make_templates(staging: Path, kinds: list[tuple[str, int]], slices: int, **phantom_kwargs) -> list[Template]:
    import pydicom

    out = []
    for kind, seed in kinds:
        phantom, paths = render(kind, seed, staging / f"{kind}-{seed}", slices=slices, **phantom_kwargs)
        uids = []
        for p in paths:
            ds = pydicom.dcmread(p, stop_before_pixels=True)
            uids.append([str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.FrameOfReferenceUID),
                         str(ds.SOPInstanceUID)])
        out.append(Template(kind, seed, paths, [bool(x) for x in phantom.slice_labels], uids))
    return out


def decide_templates(templates: list[Template], engines: Path | None = None) -> None:
    """Set each template's ``positive``: what ``infer`` (the whole series, the same models) decides."""
    from edge_agent.dicom import read_series
    from edge_agent.inference.models import ModelSet
    from edge_agent.service.analyse import analyse_series

    models = ModelSet.load(engines)
    try:
        for t in templates:
            result = analyse_series(read_series([t.paths[0].parent])[0], models)
            t.positive = any(f["positive"] for f in result["findings"])
    finally:
        models.close()


def patch(uid: str, replay: int, k: int) -> str:
    """Same-length new UID: the last 10 digits of the (38-digit) last component replaced."""
    return uid[:-10] + f"9{replay:05d}{k:04d}"


def replay_bytes(t: Template, replay_id: int) -> tuple[str, list[bytes]]:
    """The template's files with fresh UIDs for replay ``replay_id``: (series UID, bytes per slice)."""
    mapping: dict[str, str] = {}
    for uids in t.uids:
        for u in uids:
            mapping.setdefault(u, patch(u, replay_id, len(mapping)))
    out = []
    for i, path in enumerate(t.paths):
        data = path.read_bytes()
        for u in t.uids[i]:
            data = data.replace(u.encode(), mapping[u].encode())
        out.append(data)
    return mapping[t.uids[0][1]], out


def replay(t: Template, index: int, replay_id: int, target: Path, rate: float, style: str,
           stop: threading.Event, staging: Path, on_file=None, on_start=None, *, before_file=None,
           folder_name: str | None = None) -> Sent:
    """Deliver one template as a new series, shuffled, at ``rate`` slices/s.

    ``before_file(sent, n)`` is called before the n-th file (0-based, delivery order) is written; it may
    block (a harness injecting a fault there) and may return a callable that writes the file itself
    (``writer(data, dst) -> completion time``) instead of the scanner-like write.
    """
    series_uid, files = replay_bytes(t, replay_id)
    folder = target / (folder_name or f"{t.kind}-{replay_id:05d}")
    folder.mkdir(parents=True, exist_ok=True)
    sent = Sent(t.kind, index, series_uid, folder)
    if on_start:
        on_start(sent)
    order = list(range(len(t.paths)))
    random.Random(replay_id).shuffle(order)
    interval = 1.0 / rate
    next_at = time.monotonic() + interval  # the cadence runs on across series
    for n, i in enumerate(order):
        if stop.is_set():
            break
        delay = next_at - time.monotonic()
        if delay > 0 and stop.wait(delay):
            break
        next_at += interval
        writer = before_file(sent, n) if before_file else None
        dst = folder / t.paths[i].name
        if writer is not None:
            done = writer(files[i], dst)
            next_at = max(next_at, time.monotonic() + interval)
        else:
            done = write_bytes(files[i], dst, style, min(0.05, interval / 4), staging)
        sent.order.append(i)
        sent.done_at.append(done)
        sent.paths.append(dst)
        if on_file:
            on_file(sent, done)
    return sent
