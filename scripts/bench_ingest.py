"""Ingest benchmark: ``read_series`` against the naive pydicom loop, per transfer syntax.

For each syntax a synthetic 512x512 head series (default 300 slices) is
written with ``edge_agent.dicom.synth`` (JPEG Lossless process 14 SV1 with
DCMTK's ``dcmcjpeg``, since pydicom has no encoder for it), then timed:

- naive: ``ds = pydicom.dcmread(f); ds.pixel_array * slope + intercept`` per
  file, then ``np.stack`` — the loop a user would write;
- ours 1w: ``edge_agent.dicom.scan(folder, workers=1)`` — one core, same load as naive;
- ours: ``scan(folder)`` with all cores (mode: threads or processes, chosen per syntax).

Wall times depend on what else runs on the machine (the load average is
printed); CPU ms/slice of the single-core runs does not.

Each is run ``--repeat`` times (warm page cache) and the best time kept.
Peak memory of ``read_series`` on a ``--memory-slices`` series is measured
in a fresh subprocess (``ru_maxrss`` of the parent and of the largest worker).

    .venv/bin/python scripts/bench_ingest.py                    # full table
    .venv/bin/python scripts/bench_ingest.py --syntax explicit --slices 100
    .venv/bin/python scripts/bench_ingest.py --profile j2k-lossless
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom

from edge_agent.dicom import read_series, scan
from edge_agent.dicom.parallel import choose_mode
from edge_agent.dicom.synth import SeriesHeaders, write_series

SYNTAXES = ["explicit", "implicit", "deflated", "rle", "jpeg-lossless", "jpegls", "j2k-lossless", "j2k"]


def phantom(slices: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A noisy head-like phantom in HU and the outside-field mask."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    c = (size - 1) / 2
    r2 = ((yy - c) / (0.42 * size)) ** 2 + ((xx - c) / (0.36 * size)) ** 2
    base = np.full((size, size), -1000.0, np.float32)
    base[r2 < 1.0] = 900.0                       # skull
    base[r2 < 0.85] = 35.0                       # brain
    outside = ((yy - c) ** 2 + (xx - c) ** 2) > (0.5 * size) ** 2
    vol = np.empty((slices, size, size), np.float32)
    for k in range(slices):
        vol[k] = base + rng.normal(0, 6, (size, size)).astype(np.float32)
    return vol, np.broadcast_to(outside, vol.shape)


def make_series(out: Path, syntax: str, slices: int, size: int) -> list[Path]:
    vol, outside = phantom(slices, size)
    headers = SeriesHeaders(signed=True, rescale_intercept=-1024.0, padding_value=-2000)
    if syntax != "jpeg-lossless":
        return write_series(vol, out, (1.0, 0.5, 0.5), headers, transfer_syntax=syntax, outside_mask=outside)
    paths = write_series(vol, out, (1.0, 0.5, 0.5), headers, transfer_syntax="explicit", outside_mask=outside)
    if not shutil.which("dcmcjpeg"):
        raise SystemExit("dcmcjpeg (DCMTK) is needed to write JPEG Lossless; install dcmtk or skip that syntax")
    for p in paths:
        subprocess.run(["dcmcjpeg", "+e1", str(p), str(p)], check=True)
    return paths


def naive(files: list[Path]) -> np.ndarray:
    """The loop a user would write (no sorting, no checks, float64 rescale)."""
    out = []
    for f in files:
        ds = pydicom.dcmread(f)
        out.append(ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept))
    return np.stack(out)


def best_of(fn, repeat: int) -> tuple[float, float]:
    """Best wall time and the CPU time (user+sys, this process and its finished children) of that run."""
    best, best_cpu = float("inf"), 0.0
    for _ in range(repeat):
        c0 = os.times()
        t0 = time.perf_counter()
        result = fn()
        wall = time.perf_counter() - t0
        c1 = os.times()
        del result
        if wall < best:
            best = wall
            best_cpu = (c1.user - c0.user) + (c1.system - c0.system) + (c1.children_user - c0.children_user) \
                + (c1.children_system - c0.children_system)
    return best, best_cpu


def _status_mb(field: str) -> float:
    """A VmHWM/VmRSS line of /proc/self/status in MB (reset by exec, unlike ru_maxrss)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def memory_child(folder: str, workers: int | None) -> None:
    """Run in a fresh process: read one series, print peak RSS (MB) of this process."""
    before = _status_mb("VmRSS")
    series = read_series(folder, workers=workers)
    volume_mb = series[0].hu.nbytes / 2**20
    print(json.dumps({"volume_mb": volume_mb, "rss_before_mb": before, "peak_rss_mb": _status_mb("VmHWM")}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--syntax", action="append", choices=SYNTAXES, help="repeatable; default all")
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--executor", choices=["auto", "process", "thread"], default="auto")
    parser.add_argument("--memory-slices", type=int, default=600, help="0 skips the memory run")
    parser.add_argument("--profile", choices=SYNTAXES, help="profile read_series (1 worker) on one syntax")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.memory_child, args.workers)
        return
    tmp = Path(tempfile.mkdtemp(prefix="bench_ingest_"))
    try:
        if args.profile:
            files = make_series(tmp / args.profile, args.profile, args.slices, args.size)
            profiler = cProfile.Profile()
            profiler.enable()
            scan(tmp / args.profile, workers=1)
            profiler.disable()
            text = io.StringIO()
            pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(15)
            print(f"profile of scan(workers=1), {len(files)} files, {args.profile}:")
            print("\n".join(text.getvalue().splitlines()[:40]))
            return
        print(f"# {args.slices} slices {args.size}x{args.size}, cpus={os.cpu_count()}, workers="
              f"{args.workers or os.cpu_count()} ({args.executor}), best of {args.repeat}")
        print(f"# load average before: {os.getloadavg()[0]:.1f} (other work on this machine skews wall times; "
              "CPU ms/slice does not depend on it)")
        print(f"{'syntax':<14}{'naive sl/s':>11}{'ours 1w sl/s':>13}{'ours sl/s':>11}{'speedup':>9}"
              f"{'mode':>9}{'naive cpu ms':>13}{'1w cpu ms':>10}{'MB/series':>11}")
        for syntax in args.syntax or SYNTAXES:
            folder = tmp / syntax
            files = make_series(folder, syntax, args.slices, args.size)
            size_mb = sum(p.stat().st_size for p in files) / 2**20
            n = len(files)
            workers = args.workers or os.cpu_count() or 1
            mode = choose_mode([str(p) for p in files], workers, args.executor)
            t_naive, cpu_naive = best_of(lambda: naive(files), args.repeat)
            t_one, cpu_one = best_of(lambda: scan(folder, workers=1), args.repeat)
            t_ours, _ = best_of(lambda: scan(folder, workers=workers, executor=args.executor), args.repeat)
            print(f"{syntax:<14}{n / t_naive:>11.0f}{n / t_one:>13.0f}{n / t_ours:>11.0f}{t_naive / t_ours:>8.2f}x"
                  f"{mode:>9}{1e3 * cpu_naive / n:>13.2f}{1e3 * cpu_one / n:>10.2f}{size_mb:>11.1f}", flush=True)
            shutil.rmtree(folder)
        if args.memory_slices:
            folder = tmp / "memory"
            make_series(folder, "explicit", args.memory_slices, args.size)
            cmd = [sys.executable, __file__, "--memory-child", str(folder)]
            if args.workers:
                cmd += ["--workers", str(args.workers)]
            result = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
            budget = 2 * result["volume_mb"] + 200
            print(f"# memory, {args.memory_slices} slices explicit: volume {result['volume_mb']:.0f} MB, "
                  f"peak RSS {result['peak_rss_mb']:.0f} MB (after imports {result['rss_before_mb']:.0f} MB); "
                  f"budget 2x volume + 200 = {budget:.0f} MB")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
