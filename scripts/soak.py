"""Soak (issue 16 §4): hours of a realistic mix through a real ``edge-agent run``; is everything flat?

Four scanners (by default) deliver series into one agent's watch folder the
way scanners do — a series at scanner speed, then a pause while the next
patient is positioned (seeded, 20–90 s). The mix, per series: about one in
four with a bleed, the rest normal heads, and now and then junk dropped beside
them (a text file, a truncated DICOM file, an empty file) that must be
quarantined. A real Mosquitto is started here; a paho subscriber stamps every
result and alert. Finished series' files are removed (as a forwarding PACS
node would) so the disk stays bounded.

Every ``--sample`` seconds the agent's process tree is sampled: RSS (all and
main process), open file descriptors, threads, and from its status heartbeat
the pipeline queue, open series and files still decoding; the outbox depth
is read from ``outbox.sqlite3`` (read-only). At the end: a table per
``--window`` minutes, least-squares slopes over the second half, and the
accounting — the agent alerts on exactly the complete series that ``infer``
(offline, whole series, same models) alerts on, every junk file is
quarantined, every series is finalised.

    .venv/bin/python scripts/soak.py --hours 3 --json soak.json        # the figures in docs/RELIABILITY.md
    .venv/bin/python scripts/soak.py --minutes 5                       # a quick look

Exit status 1 if the accounting fails or the agent died.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
from contextlib import closing
from pathlib import Path

import numpy as np
import psutil


from _harness import (AgentProcess, MosquittoBroker, Recorder, decide_templates, make_templates,  # noqa: E402
                      replay, start_agent, subscriber)
from bench_latency import model_line  # noqa: E402

JUNK = ("text", "truncated", "empty")


def junk_bytes(kind: str, template_file: Path, rng: random.Random) -> bytes:
    if kind == "text":
        return b"scanner export log\n" * rng.randint(1, 200)
    if kind == "truncated":
        data = template_file.read_bytes()
        return data[: rng.randint(200, len(data) // 3)]
    return b""


class Sampler:
    """Samples the agent's process tree, its heartbeat counters and its outbox every ``period`` s."""

    def __init__(self, agent: AgentProcess, sub: Recorder, period: float):
        self.agent, self.sub, self.period = agent, sub, period
        self.rows: list[dict] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="soak-sampler", daemon=True)

    def outbox_depth(self) -> int:
        path = self.agent.state / "outbox.sqlite3"
        try:
            with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)) as db:  # closed, not only
                return int(db.execute("SELECT COUNT(*) FROM outbox WHERE state IN ('pending','inflight')")  # ended
                           .fetchone()[0])
        except sqlite3.Error:
            return -1

    def sample(self) -> None:
        ps = self.agent.ps
        try:
            procs = [ps] + ps.children(recursive=True)
        except psutil.Error:
            return
        rss = fds = threads = main_fds = main_threads = 0
        main_rss = 0.0
        for p in procs:
            try:
                r = p.memory_info().rss / 2**20
                fds += p.num_fds()
                threads += p.num_threads()
            except psutil.Error:
                continue
            rss += r
            if p is ps:
                main_rss = r
                main_fds, main_threads = p.num_fds(), p.num_threads()
        st = self.sub.status.get("counters", {})
        files = st.get("files", {})
        self.rows.append({"t": time.time(), "rss_mb": rss, "main_rss_mb": main_rss, "fds": fds,
                          "main_fds": main_fds, "threads": threads, "main_threads": main_threads,
                          "processes": len(procs), "pipeline_queue": st.get("pipeline_queue", 0),
                          "open_series": st.get("open_series", 0), "decoding": files.get("decoding", 0),
                          "pending": files.get("pending", 0), "outbox": self.outbox_depth()})

    def _loop(self) -> None:
        while not self.stop.wait(self.period):
            self.sample()


def slope_per_hour(rows: list[dict], key: str) -> float:
    if len(rows) < 3:
        return 0.0
    t = np.array([r["t"] for r in rows]) / 3600.0
    return float(np.polyfit(t - t[0], [r[key] for r in rows], 1)[0])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hours", type=float, default=0.0)
    ap.add_argument("--minutes", type=float, default=0.0)
    ap.add_argument("--scanners", type=int, default=4)
    ap.add_argument("--rate", type=float, default=6.0, help="slices/s while a scanner delivers a series")
    ap.add_argument("--gap", default="20:90", help="seconds between a scanner's series, MIN:MAX (seeded)")
    ap.add_argument("--bleed-share", type=float, default=0.3)
    ap.add_argument("--junk-share", type=float, default=0.15, help="chance of junk files after a series")
    ap.add_argument("--slices", type=int, default=30)
    ap.add_argument("--settle", type=float, default=3.0)
    ap.add_argument("--sample", type=float, default=10.0, help="seconds between samples")
    ap.add_argument("--window", type=float, default=30.0, help="minutes per row of the table")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--work", type=Path)
    ap.add_argument("--json", type=Path, help="write every sample and the accounting here")
    args = ap.parse_args(argv)
    seconds = args.hours * 3600 + args.minutes * 60
    if seconds <= 0:
        ap.error("say how long: --hours or --minutes (> 0)")
    if args.scanners < 1 or args.rate <= 0:
        ap.error("--scanners must be at least 1 and --rate above 0")
    gap_lo, gap_hi = (float(x) for x in args.gap.split(":"))

    work = args.work or Path(tempfile.mkdtemp(prefix="edge-agent-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"soak: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPUs, load avg "
          f"{os.getloadavg()[0]:.2f}; {args.scanners} scanners, {args.rate:g} slices/s per series, gaps "
          f"{args.gap} s, {seconds / 60:.0f} min, seed {args.seed}; synthetic phantoms, demo models")
    print(f"  {model_line(None)}")
    kinds = [("ich", 301 + i) for i in range(6)] + [("normal", 401 + i) for i in range(8)]
    # routine head protocols (5 mm, standard kernel), the series the ICH model is made for
    templates = make_templates(work / "templates", kinds, args.slices, thickness_mm=5.0,
                               force={"kernel": "standard", "motion": False, "metal": False})
    decide_templates(templates)  # what infer (offline, the whole series, the same models) decides
    expected = [t.positive for t in templates]
    for t, e in zip(templates, expected):
        print(f"  template {t.kind}-{t.seed}: {len(t.paths)} slices, {sum(t.labels)} with blood; "
              f"offline (infer) decision: {'alert' if e else 'no alert'}")
    bleeds = [i for i, t in enumerate(templates) if t.kind == "ich"]
    normals = [i for i, t in enumerate(templates) if t.kind == "normal"]

    broker = MosquittoBroker(work / "mqtt", persistence=False).start()
    sub = subscriber(broker.url)
    agent = start_agent(work / "agent", broker.url, args.settle, {}, None)
    sampler = Sampler(agent, sub, args.sample)
    sampler.sample()
    sampler.thread.start()
    stop = threading.Event()
    lock = threading.Lock()
    sent: list = []
    junk: list[Path] = []

    def scanner(k: int) -> None:
        rng = random.Random(args.seed * 1000 + k)
        n = 0
        while not stop.is_set():
            ti = rng.choice(bleeds) if rng.random() < args.bleed_share else rng.choice(normals)
            s = replay(templates[ti], ti, 10000 * (k + 1) + n, agent.watch / f"scanner{k}", args.rate, "inplace",
                       stop, work / f"staging{k}")
            with lock:
                sent.append(s)
            if rng.random() < args.junk_share and not stop.is_set():
                kind = rng.choice(JUNK)
                path = agent.watch / f"scanner{k}" / f"junk-{n:05d}-{kind}.dcm"
                path.write_bytes(junk_bytes(kind, templates[ti].paths[0], rng))
                with lock:
                    junk.append(path)
            n += 1
            stop.wait(rng.uniform(gap_lo, gap_hi))

    def cleaner() -> None:  # a finished series' files go, as a forwarding node would remove them
        cleaned: set[str] = set()
        while not stop_clean.wait(5.0):
            done = {p["result"]["series_instance_uid"] for _, p in sub.timed("results")}
            with lock:
                finished = [s for s in sent if s.series_uid in done and s.series_uid not in cleaned]
            for s in finished:
                shutil.rmtree(s.folder, ignore_errors=True)
                cleaned.add(s.series_uid)

    stop_clean = threading.Event()
    threads = [threading.Thread(target=scanner, args=(k,), name=f"scanner-{k}") for k in range(args.scanners)]
    threads.append(threading.Thread(target=cleaner, name="cleaner", daemon=True))
    t0 = time.time()
    for th in threads:
        th.start()
    died = False
    try:
        while time.time() - t0 < seconds:
            if agent.proc.poll() is not None:
                died = True
                break
            time.sleep(5)
            elapsed = time.time() - t0
            if int(elapsed) % 600 < 5 and sampler.rows:
                r = sampler.rows[-1]
                print(f"  +{elapsed / 60:5.0f} min: RSS {r['rss_mb']:.0f} MB, fds {r['fds']}, threads "
                      f"{r['threads']}, outbox {r['outbox']}, series sent {len(sent)}", flush=True)
    finally:
        stop.set()
        for th in threads[:-1]:
            th.join()
    t_end = time.time()
    uids = {s.series_uid for s in sent if s.done_at}
    deadline = time.time() + args.settle + 180
    while time.time() < deadline:
        if uids <= {p["result"]["series_instance_uid"] for _, p in sub.timed("results")}:
            break
        time.sleep(1)
    time.sleep(2)
    sampler.stop.set()
    sampler.sample()
    stop_clean.set()
    quarantine = agent.state / "quarantine"

    def quarantined() -> set[str]:
        return {p.name for p in quarantine.rglob("*") if p.is_file() and not p.name.endswith(".reason.json")} \
            if quarantine.exists() else set()

    deadline = time.time() + 45  # junk written last may still be inside ingest.retry_timeout (30 s)
    while time.time() < deadline and not {j.name for j in junk} <= quarantined():
        time.sleep(1)
    quarantined = quarantined()
    alive = agent.proc.poll() is None and not died
    agent.stop()
    sub.close()
    broker.stop()

    results = {p["result"]["series_instance_uid"] for _, p in sub.timed("results")}
    alerted = {p["study"]["series_instance_uid"] for _, p in sub.timed("alerts")}
    whole = [s for s in sent if len(s.done_at) == len(templates[s.template].paths)]
    acc = {
        "seconds": t_end - t0, "series": len(uids), "files": sum(len(s.done_at) for s in sent),
        "finalised": len(uids & results),
        "bleed_complete": sum(1 for s in whole if s.kind == "ich"),
        "bleed_alerted": sum(1 for s in whole if s.kind == "ich" and s.series_uid in alerted),
        "normal_complete": sum(1 for s in whole if s.kind == "normal"),
        "normal_alerted": sum(1 for s in whole if s.kind == "normal" and s.series_uid in alerted),
        # the agent (streaming) against infer (offline, whole series) on the same files
        "expected_alerts": sum(1 for s in whole if expected[s.template]),
        "agent_agrees": sum(1 for s in whole if (s.series_uid in alerted) == expected[s.template]),
        "complete": len(whole),
        "junk": len(junk), "junk_quarantined": sum(1 for j in junk if j.name in quarantined),
        "agent_alive_at_end": alive,
    }
    rows = sampler.rows
    print(f"\n{'window':<12} {'RSS MB':>8} {'main MB':>8} {'fds':>5} {'threads':>7} {'procs':>5} {'queue max':>9} "
          f"{'open max':>8} {'outbox max':>10}")
    width = args.window * 60
    k = 0
    while rows and rows[0]["t"] + k * width <= rows[-1]["t"]:
        w = [r for r in rows if rows[0]["t"] + k * width <= r["t"] < rows[0]["t"] + (k + 1) * width]
        if w:
            print(f"{f'{k * args.window:.0f}-{(k + 1) * args.window:.0f} min':<12} "
                  f"{np.mean([r['rss_mb'] for r in w]):8.0f} {np.mean([r['main_rss_mb'] for r in w]):8.0f} "
                  f"{max(r['fds'] for r in w):5d} {max(r['threads'] for r in w):7d} "
                  f"{max(r['processes'] for r in w):5d} {max(r['pipeline_queue'] for r in w):9d} "
                  f"{max(r['open_series'] for r in w):8d} {max(r['outbox'] for r in w):10d}")
        k += 1
    half = [r for r in rows if r["t"] >= rows[0]["t"] + (rows[-1]["t"] - rows[0]["t"]) / 2] if rows else []
    slopes = {key: slope_per_hour(half, key) for key in ("rss_mb", "main_rss_mb", "fds", "threads", "outbox")}
    print("second-half trend per hour: " + ", ".join(f"{k} {v:+.2f}" for k, v in slopes.items()))
    print(f"series {acc['series']} ({acc['files']} files), finalised {acc['finalised']}; complete bleed series "
          f"alerted {acc['bleed_alerted']}/{acc['bleed_complete']}; complete normal series alerted "
          f"{acc['normal_alerted']}/{acc['normal_complete']}; agent agrees with infer on {acc['agent_agrees']}/{acc['complete']} (infer alerts on {acc['expected_alerts']}); junk quarantined {acc['junk_quarantined']}/"
          f"{acc['junk']}; agent alive at the end: {'yes' if alive else 'NO'}")
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"work": str(work), "json": str(args.json)},
                                         "accounting": acc, "slopes_per_hour": slopes, "samples": rows},
                                        indent=1, default=str))
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    ok = (alive and acc["finalised"] == acc["series"] and acc["agent_agrees"] == acc["complete"]
          and acc["junk_quarantined"] == acc["junk"])
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
