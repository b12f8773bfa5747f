"""What key-image previews cost the pipeline per file: off, in memory only, and mirrored in the state DB.

A routine 5 mm head phantom (512 x 512, the shipped ICH model on ONNX Runtime CPU) arrives one file at a time
through the real SeriesPipeline; the time of every ``SeriesPipeline._score`` call (scoring, evidence, the
state-DB write of the scores, the preview thumbnails, the preliminary check and, with persistence, the
thumbnails' state-DB write after it) is recorded. Three runs on the same files, in one process, in turn
(``--rounds`` times, so that a noisy machine hits all three alike):

- ``off``: ``alerts.previews = false``;
- ``memory``: previews on, the thumbnail cache not mirrored (``Thumbnails.persist`` patched to nothing) —
  what the agent did before previews survived restarts;
- ``persisted``: the agent as shipped.

Prints the median ms per file and the ratio to ``off``.

    python scripts/bench_previews.py [--series 3] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from edge_agent.alerts.previews import PreviewSettings
from edge_agent.dicom import read_file
from edge_agent.inference.models import ModelSet
from edge_agent.ingest.settings import IngestedFile
from edge_agent.service import pipeline as pl
from edge_agent.service.simulator import ROUTINE_HEAD, render


class _Quiet:
    def raise_alert(self, payload): pass
    def publish_result(self, payload): pass
    def publish_preview(self, payload): pass
    def series_done(self, uid): pass
    def observe(self, stage, seconds): pass
    def count(self, name, state=None): pass


def _files(root: Path, n: int) -> list[list[Path]]:
    out = []
    for i in range(n):
        _, paths = render("ich" if i % 2 == 0 else "normal", 100 + i, root / f"s{i}", **ROUTINE_HEAD)
        out.append(sorted(paths))
    return out


def _run(series: list[list[Path]], mode: str, state: Path) -> list[float]:
    """ms per ``_score`` call over every file of every series."""
    previews = None if mode == "off" else PreviewSettings()
    p = pl.SeriesPipeline(lambda: ModelSet.load(None), state, _Quiet(), site="b", device="b", settle=3600.0,
                          previews=previews)
    p._setup()  # what the pipeline thread does first: the models, the state DB and the parts using them
    p._warm()
    if mode == "memory":
        p._thumbnails.persist = lambda *_a, **_k: None
    times: list[float] = []
    score = p._score

    def timed(*args, **kwargs):
        t0 = time.perf_counter()
        score(*args, **kwargs)
        times.append((time.perf_counter() - t0) * 1000.0)

    p._score = timed
    try:
        for paths in series:
            for path in paths:
                slices = read_file(path, stored_only=True)
                now = time.time()
                item = IngestedFile(path=path, slices=slices, sop_instance_uids=[s.sop_instance_uid for s in slices],
                                    series_instance_uid=slices[0].series_instance_uid, received_at=now,
                                    complete_at=now)
                p._process([item])
    finally:
        p.models.close()
        p.store.close()
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--series", type=int, default=3, help="phantom series per run (alternately bleed / normal)")
    ap.add_argument("--rounds", type=int, default=3, help="times each mode runs, interleaved")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-previews-") as tmp:
        root = Path(tmp)
        series = _files(root, args.series)
        files = sum(len(s) for s in series)
        results: dict[str, list[float]] = {"off": [], "memory": [], "persisted": []}
        for r in range(args.rounds):
            for mode in results:
                results[mode] += _run(series, mode, root / f"state-{mode}-{r}.sqlite3")
    base = statistics.median(results["off"])
    print(f"{args.series} series, {files} files of 512x512, {args.rounds} rounds; ms per file (SeriesPipeline._score)")
    print(f"{'mode':<10} {'median':>8} {'p90':>8} {'ratio to off':>13}")
    for mode, times in results.items():
        times = sorted(times)
        med, p90 = statistics.median(times), times[int(0.9 * (len(times) - 1))]
        print(f"{mode:<10} {med:8.2f} {p90:8.2f} {med / base:13.2f}")


if __name__ == "__main__":
    main()
