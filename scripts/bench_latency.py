"""Daemon benchmark (issue 5): decisive slice → alert latency, final-result latency, soak throughput.

Everything is real: a Mosquitto broker started here, ``edge-agent run`` as a
subprocess (its RSS, children included, sampled with psutil), files written
into its watch folder the way :mod:`edge_agent.service.simulator` writes them
(same two-chunk in-place write or dot-temp + rename, shuffled order, fixed
cadence), and a paho (v5) subscriber stamping the arrival of every alert and
result. Phantom series are rendered once (``simulator.render``) and replayed
with fresh UIDs (same-length byte patch of Study/Series/FoR/SOP Instance UIDs),
so rendering costs no CPU while the agent is measured.

Latency: the *decisive slice* of a series is found offline from per-slice
scores of the same model: the slices are replayed in their delivery order and
the first one after which the manifest's preliminary rule holds is decisive.
Latency = arrival of the series' first alert at the subscriber − the moment
that slice's file was complete on disk (``time.time()`` after ``close``).

Baseline, in the same run: a consumer of the same files that waits until a
series has been quiet for ``settle``, then ``read_series`` + ``analyse_series``
(the Orthanc "stable series" / MONAI Deploy way) and publishes its decision
over the same broker. It is told of every file the moment it is written (no
watcher, no stable check), which favours it.

    .venv/bin/python scripts/bench_latency.py                       # ~10 min
    .venv/bin/python scripts/bench_latency.py --skip-soak --series 10
    .venv/bin/python scripts/bench_latency.py --skip-latency --soak-seconds 60
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

# The shared harness (re-exported here: scripts/soak.py imports these names from this module).
from _harness import (DEVICE, ROOT, SITE, MosquittoBroker, Sent, Template, log_problems,  # noqa: E402,F401
                      make_templates, patch, Recorder, replay, start_agent, subscriber, wait_until)

from edge_agent.service.demo import parse_utc  # noqa: E402

BASELINE_TOPIC = "bench-baseline/results"


def score_templates(templates: list[Template], engines: Path | None) -> object:
    """Per-slice ICH probabilities of each template (offline, before any timing); returns the rule."""
    from edge_agent.dicom import read_series
    from edge_agent.inference.models import ModelSet

    from edge_agent.dicom import read_file
    from edge_agent.service.series import series_context, series_info
    from edge_agent.service.state import SliceScore

    models = ModelSet.load(engines)
    ich = next(m for m in models.models if m.manifest.name == "ich")
    for t in templates:
        series = read_series([t.paths[0].parent])[0]
        p = ich.score_slices(series.hu, tuple(series.pixel_spacing))[:, 0]
        by_sop = dict(zip(series.sop_instance_uids, p))
        t.probs = np.array([by_sop[u[3]] for u in t.uids], dtype=float)
        # What the agent's own preliminary rule sees: each slice's scores *and* its evidence/domain numbers
        slices = [read_file(path)[0] for path in t.paths]
        probabilities, features = ich.analyse_images(slices)
        probabilities = np.asarray(probabilities, float).reshape(len(slices), -1)
        o = np.asarray(slices[0].orientation, float)
        normal = np.cross(o[:3], o[3:])
        t.agent_slices = [SliceScore(s.sop_instance_uid, float(np.dot(s.position, normal)),
                                     [float(v) for v in probabilities[i]], 0.0, float(i), features[i])
                          for i, s in enumerate(slices)]
        t.context = series_context(series_info(slices[0]))
        t.manifest = ich.manifest
        # a series the model refuses by its header (e.g. a bone kernel) is never scored by the agent
        t.refused = models.check_series(ich, series)
    rule = ich.manifest.decision
    models.close()
    return rule


def model_line(engines: Path | None) -> str:
    """Which ICH model is measured: sha256 prefix and the validation line of its README."""
    folder = (engines or ROOT / "engines") / "ich"
    try:
        sha = hashlib.sha256((folder / "model.onnx").read_bytes()).hexdigest()[:12]
        version = json.loads((folder / "manifest.json").read_text()).get("version", "?")
        lines = (folder / "README.md").read_text().splitlines()
    except (OSError, ValueError):
        return f"ICH model in {folder}: not readable"
    validation = []
    for line in lines:  # the README's "- Validation ..." bullet with its continuation lines
        if validation and not line.startswith("  "):
            break
        if validation or line.startswith("- Validation"):
            validation.append(line.strip("- ").strip())
    return f"ICH model {version}, model.onnx sha256 {sha}…; {' '.join(validation)}"


# --- the baseline: series-at-a-time after the quiet period ---------------------------------------
class Baseline:
    """Waits until a series is quiet for ``settle`` s, then reads and analyses it whole, one at a time."""

    def __init__(self, settle: float, sub: Recorder, engines: Path | None):
        self.settle, self.sub, self.engines = settle, sub, engines
        self.last: dict[str, tuple[Path, float]] = {}
        self.decided: dict[str, tuple[float, bool, float]] = {}  # uid -> (decided at, positive, analyse s)
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, name="baseline", daemon=True)
        self.thread.start()
        self.ready.wait(120)

    def on_file(self, sent: Sent, done: float) -> None:
        with self.lock:
            self.last[sent.series_uid] = (sent.folder, time.monotonic())

    def _run(self) -> None:
        from edge_agent.dicom import read_series
        from edge_agent.inference.models import ModelSet
        from edge_agent.service.analyse import analyse_series

        models = ModelSet.load(self.engines)
        self.ready.set()
        try:
            while not self.stop_event.wait(0.02):
                now = time.monotonic()
                with self.lock:
                    due = [(t, uid, folder) for uid, (folder, t) in self.last.items()
                           if uid not in self.decided and now - t >= self.settle]
                for _, uid, folder in sorted(due):
                    t0 = time.perf_counter()
                    try:
                        results = [analyse_series(s, models) for s in read_series([folder])]
                    except Exception as exc:  # noqa: BLE001 - the baseline must not stop the benchmark
                        print(f"  baseline failed on {folder.name}: {exc}")
                        results = []
                    positive = any(f["positive"] for r in results for f in r["findings"])
                    self.decided[uid] = (time.time(), positive, time.perf_counter() - t0)
                    self.sub.client.publish(BASELINE_TOPIC, json.dumps(
                        {"series_instance_uid": uid, "positive": positive}), qos=1)
        finally:
            models.close()

    def close(self) -> None:
        self.stop_event.set()
        self.thread.join(30)


# --- measurements ---------------------------------------------------------------------------------
def decisive_index(t: Template, sent: Sent, rule, *, scores_only: bool = False) -> int | None:
    """Position in delivery order of the slice after which the agent's preliminary rule first holds: the
    scores *and*, where the manifest declares them, the domain and the evidence (``preliminary_actions``, the
    agent's own code). ``scores_only``: the probability rule alone (how much later the guards let it fire is
    the guards' wait, not a delivery delay)."""
    from edge_agent.decision import preliminary_met
    from edge_agent.decision.series import preliminary_actions

    agent = getattr(t, "agent_slices", None)
    if getattr(t, "refused", None):
        return None
    for n in range(1, len(sent.order) + 1):
        if scores_only or agent is None:
            if preliminary_met(t.probs[sent.order[:n]], rule):
                return n - 1
            continue
        seen = sorted((agent[j] for j in sent.order[:n]), key=lambda x: (x.position_mm, x.sop_instance_uid))
        if preliminary_actions(t.manifest, seen, [agent[sent.order[n - 1]]], lambda m, c: c, lambda a: None,
                               context=t.context):
            return n - 1
    return None


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def row(name: str, values_s: list[float]) -> str:
    ms = [1000 * v for v in values_s]
    if not ms:
        return f"  {name:<46} {'n=0':>5}"
    return (f"  {name:<46} {len(ms):>5} {pct(ms, 50):>8.0f} {pct(ms, 90):>8.0f} {pct(ms, 99):>8.0f} "
            f"{max(ms):>8.0f}")


def latency_run(args, broker: MosquittoBroker, sub: Recorder, templates: list[Template], rule, style: str,
                stable: float, work: Path, replay_base: int) -> dict:
    root = work / f"latency-{style}-stable{stable:g}"
    agent = start_agent(root, broker.url, args.settle, {"EDGE_AGENT_INGEST_STABLE_SECONDS": str(stable)},
                         args.engines)
    baseline = Baseline(args.settle, sub, args.engines)
    load0 = os.getloadavg()
    ich = [i for i, t in enumerate(templates) if t.kind == "ich"]
    normal = [i for i, t in enumerate(templates) if t.kind == "normal"]
    plan = [normal[(n // 5) % len(normal)] if normal and n % 5 == 4 else ich[n % len(ich)]
            for n in range(args.series)]
    stop = threading.Event()
    sent: list[Sent] = []
    try:
        for n, ti in enumerate(plan):
            sent.append(replay(templates[ti], ti, replay_base + n, agent.watch, args.rate, style, stop,
                               root / "staging", on_file=baseline.on_file))
        uids = {s.series_uid for s in sent}
        wait_until(lambda: uids <= {p["result"]["series_instance_uid"] for _, p in sub.timed("results")}
                   and uids <= set(baseline.decided), args.settle + 60)
        time.sleep(0.5)
    finally:
        baseline.close()
        agent.stop()
    load1 = os.getloadavg()
    m: dict[str, list[float]] = {k: [] for k in (
        "stream_alert", "base_alert", "stream_final", "base_final", "payload_ingest", "payload_pipeline",
        "payload_publish", "base_analyse", "guard_wait")}
    counts = {"series": len(sent), "ich": 0, "decisive": 0, "stream_alerts": 0, "base_positive": 0,
              "false_stream": 0, "false_base": 0, "missed_stream": 0, "states": {}}
    base_arrivals: dict[str, float] = {}
    with sub.lock:
        for at, topic, p in ((m.at, m.topic, m.payload or {}) for m in sub.entries):
            if topic == BASELINE_TOPIC:
                base_arrivals.setdefault(p.get("series_instance_uid"), at)
    for s in sent:
        t = templates[s.template]
        last = max(s.done_at)
        res = sub.first("results", s.series_uid)
        if res:
            m["stream_final"].append(res[0] - last)
        b = baseline.decided.get(s.series_uid)
        arrival_b = base_arrivals.get(s.series_uid)
        if arrival_b is not None:
            m["base_final"].append(arrival_b - last)
        if b:
            m["base_analyse"].append(b[2])
        alert = sub.first("alerts", s.series_uid)
        if t.kind == "normal":
            counts["false_stream"] += alert is not None
            counts["false_base"] += bool(b and b[1])
            continue
        counts["ich"] += 1
        counts["stream_alerts"] += alert is not None
        counts["base_positive"] += bool(b and b[1])
        d = decisive_index(t, s, rule)
        if d is None:
            continue
        counts["decisive"] += 1
        t_dec = s.done_at[d]
        d_scores = decisive_index(t, s, rule, scores_only=True)
        if d_scores is not None:
            m["guard_wait"].append(max(0.0, t_dec - s.done_at[d_scores]))
        if alert is None:
            counts["missed_stream"] += 1
        else:
            at, payload = alert
            counts["states"][payload["state"]] = counts["states"].get(payload["state"], 0) + 1
            m["stream_alert"].append(at - t_dec)
            stamps = payload.get("timestamps", {})
            if "decisive_slice_received" in stamps and "raised" in stamps:
                handed = parse_utc(stamps["decisive_slice_received"])
                raised = parse_utc(stamps["raised"])
                m["payload_ingest"].append(handed - t_dec)
                m["payload_pipeline"].append(raised - handed)
                m["payload_publish"].append(at - raised)
        if b and b[1] and arrival_b is not None:
            m["base_alert"].append(arrival_b - t_dec)
    peak = max(x[1] for x in agent.samples)
    return {"stable": stable, "style": style, "metrics": m, "counts": counts, "load": (load0, load1),
            "rss_peak_mb": peak, "log_problems": log_problems(agent.log)}


def print_latency(r: dict, settle: float) -> None:
    m, c = r["metrics"], r["counts"]
    print(f"\nLatency — ingest.stable_seconds={r['stable']:g}, {r['style']} writes, settle={settle:g} s "
          f"(load avg before {r['load'][0][0]:.2f}, after {r['load'][1][0]:.2f}; agent RSS peak "
          f"{r['rss_peak_mb']:.0f} MB)")
    print(f"  series {c['series']} ({c['ich']} ICH phantoms, {c['decisive']} reach the preliminary rule offline); "
          f"streaming alerts on ICH {c['stream_alerts']} {c['states']}, missed {c['missed_stream']}, "
          f"false {c['false_stream']}; baseline positive {c['base_positive']}, false {c['false_base']}")
    print(f"  {'ms':<46} {'n':>5} {'p50':>8} {'p90':>8} {'p99':>8} {'max':>8}")
    print(row("decisive slice → alert, streaming agent", m["stream_alert"]))
    print(row("decisive slice → decision, baseline", m["base_alert"]))
    print(row("last slice → final result, streaming agent", m["stream_final"]))
    print(row("last slice → decision, baseline", m["base_final"]))
    print(row("  of which baseline read+analyse", m["base_analyse"]))
    print(row("  streaming: file complete → handed to pipeline", m["payload_ingest"]))
    print(row("  streaming: handed → alert raised (outbox)", m["payload_pipeline"]))
    print(row("  streaming: raised → at subscriber", m["payload_publish"]))
    print(row("  guards' wait (scores-only → agent's rule)", m["guard_wait"]))
    for line in r["log_problems"][:5]:
        print(f"  agent log: {line[:160]}")


# --- soak ---------------------------------------------------------------------------------------------
def soak_run(args, broker: MosquittoBroker, sub: Recorder, templates: list[Template], work: Path,
             replay_base: int) -> dict:
    root = work / "soak"
    agent = start_agent(root, broker.url, args.settle, {}, args.engines)
    time.sleep(2.0)
    agent.sample()
    rss_start = agent.samples[-1]
    load0 = os.getloadavg()
    stop = threading.Event()
    sent: list[Sent] = []
    lock = threading.Lock()
    queue_samples: list[tuple[float, int, int, int, int]] = []  # t, pipeline queue, pending, decoding, open

    def record(s: Sent) -> None:
        with lock:
            sent.append(s)

    def scanner(k: int) -> None:
        n = 0
        while not stop.is_set():
            ti = (k + n) % len(templates)
            replay(templates[ti], ti, replay_base + 1000 * k + n, agent.watch / f"scanner{k}", args.soak_rate,
                   args.soak_style, stop, root / f"staging{k}", on_start=record)
            n += 1

    def watch_queues() -> None:
        cleaned: set[str] = set()
        while not stop_watch.wait(1.0):
            st = sub.status.get("counters", {})
            files = st.get("files", {})
            queue_samples.append((time.time(), st.get("pipeline_queue", 0), files.get("pending", 0),
                                  files.get("decoding", 0), st.get("open_series", 0)))
            done = {p["result"]["series_instance_uid"] for _, p in sub.timed("results")}
            with lock:
                finished = [s for s in sent if s.series_uid in done and s.series_uid not in cleaned]
            for s in finished:  # keep the disk bounded: a finished series' files go (as a PACS forwarder would)
                shutil.rmtree(s.folder, ignore_errors=True)
                cleaned.add(s.series_uid)

    stop_watch = threading.Event()
    watcher = threading.Thread(target=watch_queues, name="queue-watch", daemon=True)
    watcher.start()
    threads = [threading.Thread(target=scanner, args=(k,), name=f"scanner-{k}") for k in range(args.soak_scanners)]
    t0 = time.time()
    for th in threads:
        th.start()
    time.sleep(args.soak_seconds)
    stop.set()
    for th in threads:
        th.join()
    t_end = time.time()
    uids = {s.series_uid for s in sent if s.done_at}
    results_uids = lambda: {p["result"]["series_instance_uid"] for _, p in sub.timed("results")}  # noqa: E731
    drained = wait_until(lambda: uids <= results_uids(), args.settle + 120)
    t_drain = time.time() - t_end
    time.sleep(1.5)
    stop_watch.set()
    watcher.join()
    agent.sample()
    status = dict(sub.status.get("counters", {}))
    agent.stop()
    load1 = os.getloadavg()
    lags = []
    for s in sent:
        res = sub.first("results", s.series_uid)
        if res and s.done_at:
            lags.append((max(s.done_at), res[0] - max(s.done_at)))
    files = sum(len(s.done_at) for s in sent)
    alerted = {p["study"]["series_instance_uid"] for _, p in sub.timed("alerts")}
    whole = [s for s in sent if len(s.done_at) == len(templates[s.template].paths)]
    alerts = {"ich_complete": sum(1 for s in whole if s.kind == "ich"),
              "ich_alerted": sum(1 for s in whole if s.kind == "ich" and s.series_uid in alerted),
              "normal_complete": sum(1 for s in whole if s.kind == "normal"),
              "normal_alerted": sum(1 for s in whole if s.kind == "normal" and s.series_uid in alerted)}
    in_window = [q for q in queue_samples if t0 <= q[0] <= t_end]
    return {"seconds": t_end - t0, "files": files, "series": len(uids), "finalised": len(uids & results_uids()),
            "alerts": alerts, "drained": drained, "drain_s": t_drain, "rss_start": rss_start,
            "samples": agent.samples, "queues": in_window, "lags": lags, "status": status, "load": (load0, load1),
            "t0": t0, "t_end": t_end, "ich": sum(1 for s in sent if s.kind == "ich"),
            "log_problems": log_problems(agent.log)}


def print_soak(r: dict, args) -> None:
    samples = [x for x in r["samples"] if x[0] >= r["t0"] - 5]
    rss = [x[1] for x in samples]
    main = [x[2] for x in samples]
    cpu = (samples[-1][3] - samples[0][3]) / max(1e-9, samples[-1][0] - samples[0][0])
    q = r["queues"] or [(0, 0, 0, 0, 0)]
    third = max(1, len(q) // 3)
    lags = r["lags"]
    early = [lag for t, lag in lags if t < r["t0"] + 60]
    late = [lag for t, lag in lags if t > r["t_end"] - 60]
    print(f"\nSoak — {args.soak_scanners} scanners × {args.soak_rate:g} slices/s for {r['seconds']:.0f} s, "
          f"{args.soak_style} writes, settle={args.settle:g} s (load avg before {r['load'][0][0]:.2f}, "
          f"after {r['load'][1][0]:.2f})")
    accepted = r["status"].get("files", {}).get("accepted", 0)
    print(f"  files written {r['files']} ({r['files'] / r['seconds']:.1f}/s); agent accepted {accepted} "
          f"({accepted / (r['seconds'] + r['drain_s']):.1f}/s incl. drain); series {r['series']} ({r['ich']} ICH), "
          f"finalised {r['finalised']}; complete ICH series alerted {r['alerts']['ich_alerted']}/"
          f"{r['alerts']['ich_complete']}, complete normal series alerted {r['alerts']['normal_alerted']}/"
          f"{r['alerts']['normal_complete']}; "
          f"drained {'yes' if r['drained'] else 'NO'} {r['drain_s']:.1f} s after the scanners stopped")
    print(f"  agent RSS (process tree) start {r['rss_start'][1]:.0f} MB, max {max(rss):.0f} MB, end {rss[-1]:.0f} MB;"
          f" main process start {r['rss_start'][2]:.0f}, max {max(main):.0f}, end {main[-1]:.0f} MB; "
          f"agent CPU {cpu:.2f} cores")
    late_rss = [(x[0], x[1]) for x in samples if x[0] >= r["t0"] + 60]
    if len(late_rss) > 10:
        slope = np.polyfit([t for t, _ in late_rss], [v for _, v in late_rss], 1)[0] * 60
        at60 = late_rss[0][1]
        print(f"  RSS after the first minute: {at60:.0f} MB at +60 s, trend {slope:+.2f} MB/min "
              f"(least squares over the rest of the run)")
    print(f"  pipeline queue max {max(x[1] for x in q)} (mean first third {np.mean([x[1] for x in q[:third]]):.1f}, "
          f"last third {np.mean([x[1] for x in q[-third:]]):.1f}); ingest waiting max {max(x[2] for x in q)}, "
          f"decoding max {max(x[3] for x in q)}; open series max {max(x[4] for x in q)}")
    print(f"  {'ms':<46} {'n':>5} {'p50':>8} {'p90':>8} {'p99':>8} {'max':>8}")
    print(row("last slice → final result, first 60 s", early))
    print(row("last slice → final result, last 60 s", late))
    print(row("last slice → final result, all", [lag for _, lag in lags]))
    for line in r["log_problems"][:5]:
        print(f"  agent log: {line[:160]}")


# --- main --------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--series", type=int, default=20, help="series per latency run (1 in 5 without a bleed)")
    ap.add_argument("--rate", type=float, default=4.0, help="slices/s in the latency runs")
    ap.add_argument("--settle", type=float, default=2.0, help="series.settle of the agent and the baseline")
    ap.add_argument("--slices", type=int, default=24, help="slices per phantom series")
    ap.add_argument("--configs", default="inplace:0.5,movein:0.5,movein:0.1",
                    help="latency runs, each STYLE:STABLE: how files are written (inplace | rename | movein) and the "
                         "agent's ingest.stable_seconds")
    ap.add_argument("--soak-style", choices=("inplace", "rename", "movein"), default="inplace")
    ap.add_argument("--soak-seconds", type=float, default=300.0)
    ap.add_argument("--soak-scanners", type=int, default=4)
    ap.add_argument("--soak-rate", type=float, default=10.0)
    ap.add_argument("--skip-soak", action="store_true")
    ap.add_argument("--skip-latency", action="store_true")
    ap.add_argument("--engines", type=Path, help="model folder for the agent and the baseline (default: shipped)")
    ap.add_argument("--work", type=Path, help="working folder (default: a temp folder, removed at the end)")
    ap.add_argument("--json", type=Path, help="write the raw figures here")
    args = ap.parse_args(argv)

    work = args.work or Path(tempfile.mkdtemp(prefix="edge-agent-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), "?")
    print(f"bench_latency: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPUs ({cpu}), "
          f"load avg {os.getloadavg()[0]:.2f}; synthetic phantoms, demo models (not medical devices)")
    print(f"  {model_line(args.engines)}")
    t_start = time.monotonic()
    kinds = [("ich", 101 + i) for i in range(8)] + [("normal", 201 + i) for i in range(2)]
    templates = make_templates(work / "templates", kinds, args.slices)
    rule = score_templates(templates, args.engines)
    for t in templates:
        print(f"  template {t.kind}-{t.seed}: {len(t.paths)} slices, {sum(t.labels)} labelled positive, "
              f"max p={t.probs.max():.3f}, slices ≥ preliminary threshold: "
              f"{int((t.probs >= rule.preliminary.threshold).sum())}"
              + (f"; refused by its header: {t.refused}" if getattr(t, "refused", None) else ""))
    print(f"  rendered and scored in {time.monotonic() - t_start:.0f} s; ICH rule {rule}")
    broker = MosquittoBroker(work / "mqtt", persistence=False).start()
    sub = subscriber(broker.url, topics=("edge-agent/#", "bench-baseline/#"))
    out: dict = {"latency": [], "soak": None}
    try:
        if not args.skip_latency:
            for n, config in enumerate(args.configs.split(",")):
                style, stable = config.split(":")
                r = latency_run(args, broker, sub, templates, rule, style, float(stable), work, 10000 * (n + 1))
                print_latency(r, args.settle)
                out["latency"].append(r)
        if not args.skip_soak:
            r = soak_run(args, broker, sub, templates, work, 90000)
            print_soak(r, args)
            out["soak"] = {k: v for k, v in r.items() if k != "samples"} | {"rss": [x[:3] for x in r["samples"]]}
    finally:
        sub.close()
        broker.stop()
        if args.json:
            args.json.write_text(json.dumps(out, default=str, indent=1))
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\n{model_line(args.engines)}\ntotal {time.monotonic() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
