"""What the ingest ledger's crash-loop guard costs per file (issue 16): claims with and without ``reading`` marks.

The ingest notes the files it hands to decoders (``Ledger.begin_reading``, one commit per batch) and clears
them once judged (``end_reading``, one commit per pass of ingest-main), beside the one ``claim`` commit
every accepted file always had. This times, on a real SQLite file in ``--dir`` (the state disk), N claims
alone against N claims with the marks in batches of ``--batch``, each repeated and the best kept; it
prints µs per file and the ratio (same run, same disk: the ratio is what to read on a noisy machine).

    .venv/bin/python scripts/bench_ledger.py --files 2000 --batch 8
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path


from edge_agent.ingest import ledger as L  # noqa: E402


def run(folder: Path, files: int, batch: int, marks: bool) -> float:
    db = folder / f"ledger-{'marks' if marks else 'plain'}.sqlite3"
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    ledger = L.Ledger(db)
    paths = [folder / f"s{k:06d}.dcm" for k in range(files)]
    start = time.perf_counter()
    for i in range(0, files, batch):
        chunk = paths[i:i + batch]
        if marks:
            ledger.begin_reading(chunk, "bench")
        for k, p in enumerate(chunk, start=i):
            ledger.claim(p, 1000 + k, k, [f"1.2.3.{k}"], "1.2.3", f"h{k}")
        if marks:
            ledger.end_reading(chunk)
    spent = time.perf_counter() - start
    ledger.close()
    return spent / files * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=8, help="files per decode batch (workers × 4 at most)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", type=Path, help="folder on the disk to measure (default: a temp folder)")
    args = ap.parse_args()
    if args.files < 1 or args.batch < 1 or args.repeat < 1:
        ap.error("--files, --batch and --repeat must be at least 1")
    folder = Path(tempfile.mkdtemp(prefix="bench-ledger-", dir=args.dir))
    try:
        plain = min(run(folder, args.files, args.batch, False) for _ in range(args.repeat))
        marks = min(run(folder, args.files, args.batch, True) for _ in range(args.repeat))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(f"bench_ledger: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPUs, load avg "
          f"{os.getloadavg()[0]:.2f}; {args.files} files, batches of {args.batch}, best of {args.repeat}; {folder}")
    print(f"{'ledger writes per accepted file':<44} {'µs/file':>9}")
    print(f"{'claim (one commit)':<44} {plain:9.1f}")
    print(f"{'claim + reading marks (2 commits per batch)':<44} {marks:9.1f}")
    print(f"ratio {marks / plain:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
