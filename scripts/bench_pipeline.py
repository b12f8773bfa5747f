"""Pipeline cost per slice along a long series: scores kept in memory vs re-read from the state DB.

A CT series of ``--slices`` thin slices (64 × 64 pixels, so that the model is
cheap and the pipeline's own work shows) arrives one file at a time; the
shipped ICH model scores each on ONNX Runtime CPU. The time of every
``SeriesPipeline._score`` call (one per file: scoring, the state-DB write and
the preliminary check) is recorded. Two runs, same files, same process:

- ``cached``: the pipeline as shipped (each open series keeps its scores);
- ``re-read``: the earlier behaviour, every batch re-reads all scores of the
  series from SQLite (``OpenSeries.known_scores`` patched to reload) — the baseline.

Prints ms per file for the first and the last 100 files and the ratio.

    python scripts/bench_pipeline.py [--slices 1000]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np


from edge_agent.dicom import read_file  # noqa: E402
from edge_agent.dicom.synth import SeriesHeaders, write_series  # noqa: E402
from edge_agent.inference.models import ModelSet  # noqa: E402
from edge_agent.ingest.settings import IngestedFile  # noqa: E402
from edge_agent.service import pipeline as pl  # noqa: E402
from edge_agent.service.series import OpenSeries  # noqa: E402


class _Quiet:
    def raise_alert(self, payload): pass
    def publish_result(self, payload): pass
    def series_done(self, uid): pass
    def observe(self, stage, seconds): pass
    def count(self, name, state=None): pass


def _files(folder: Path, n: int) -> list[IngestedFile]:
    volume = np.full((n, 64, 64), 30.0, np.float32)  # brain-like, no bleed: no alert
    # 2.5 mm slices: inside the shipped ich manifest's applies_to (2-5 mm), so every slice is scored
    headers = SeriesHeaders(series_description="HEAD 2.5mm", body_part="HEAD", study_description="CT HEAD")
    paths = write_series(volume, folder, spacing=(2.5, 3.0, 3.0), headers=headers)
    items = []
    for p in paths:
        slices = read_file(p, stored_only=True)
        now = time.time()
        items.append(IngestedFile(path=p, slices=slices, sop_instance_uids=[s.sop_instance_uid for s in slices],
                                  series_instance_uid=slices[0].series_instance_uid, received_at=now,
                                  complete_at=now, written_at=now))
    return items


def run(items: list[IngestedFile], work: Path, reread: bool) -> list[float]:
    durations: list[float] = []
    original_score, original_known = pl.SeriesPipeline._score, OpenSeries.known_scores

    def timed(self, series, model, good):
        t0 = time.perf_counter()
        original_score(self, series, model, good)
        durations.append((time.perf_counter() - t0) * 1000.0)

    def reload(self, store, name):
        self.scores.pop(name, None)
        return original_known(self, store, name)

    pl.SeriesPipeline._score = timed
    if reread:
        OpenSeries.known_scores = reload
    pipeline = pl.SeriesPipeline(lambda: ModelSet.load(threads=1, names=["ich"]), work / "series.sqlite3",
                                 _Quiet(), site="bench", device="ct", settle=3600, batch=1)
    try:
        pipeline.start()
        for item in items:
            for s, kept in zip(item.slices, item._pixels):
                s.stored = kept  # the pipeline drops pixels after scoring: hand each run its own
            pipeline.submit(item)
            while pipeline.queue_depth():  # one file at a time, as a scanner delivers them
                time.sleep(0.0005)
        deadline = time.monotonic() + 120.0
        while len(durations) < len(items):
            if time.monotonic() > deadline:
                raise SystemExit(f"only {len(durations)} of {len(items)} files were scored within 120 s: the "
                                 "ich model's applies_to refuses these slices, or scoring stalled")
            time.sleep(0.01)
    finally:
        pipeline.stop()
        pl.SeriesPipeline._score, OpenSeries.known_scores = original_score, original_known
    return durations


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--slices", type=int, default=1000)
    args = ap.parse_args()
    print(f"bench_pipeline: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPUs, "
          f"load avg {os.getloadavg()[0]:.2f}; {args.slices} slices of 64x64, shipped ICH model, ORT CPU 1 thread")
    with tempfile.TemporaryDirectory() as tmp:
        items = _files(Path(tmp) / "series", args.slices)
        for item in items:
            item._pixels = [s.stored for s in item.slices]
        results = {}
        for label, reread in (("re-read (baseline)", True), ("cached", False)):
            work = Path(tmp) / label.split()[0]
            work.mkdir()
            results[label] = run(items, work, reread)
    print(f"{'per file, ms':<22}{'first 100 p50':>14}{'last 100 p50':>14}{'last 100 p99':>14}{'total s':>10}")
    for label, d in results.items():
        first, last = np.array(d[:100]), np.array(d[-100:])
        print(f"{label:<22}{np.median(first):>14.2f}{np.median(last):>14.2f}{np.percentile(last, 99):>14.2f}"
              f"{sum(d) / 1000:>10.2f}")
    base, new = results["re-read (baseline)"], results["cached"]
    print(f"last 100 files: re-read / cached = {np.median(base[-100:]) / np.median(new[-100:]):.2f}x; "
          f"whole series: {sum(base) / sum(new):.2f}x")


if __name__ == "__main__":
    main()
