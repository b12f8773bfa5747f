#!/usr/bin/env python3
"""Benchmark: alerts/s through outbox -> Mosquitto, and the latency the outbox adds.

Runs, in one process and against one broker (a fresh local Mosquitto unless --broker):

* bare paho: QoS 1 publishes of a typical alert payload, 10 in flight, publish() -> PUBACK latency;
* outbox (durable): AlertPublisher.raise_alert() -> SQLite commit (WAL, synchronous=FULL, fsync) ->
  publish -> PUBACK processed by the publisher thread, delivery mode "broker"; latency = commit -> PUBACK
  (outbox columns committed_at / acked_at).

Each is measured twice: saturated (throughput, messages/s) and paced at --rate (latency p50/p99 at a
load the system can carry). Prints a Markdown table; docs/perf/alerts.md keeps the figures.

    python scripts/bench_outbox.py [--count 2000] [--rate 200] [--broker mqtt://127.0.0.1:1883]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import threading
import time
from pathlib import Path


import paho.mqtt.client as paho  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

from edge_agent.alerts import AlertPublisher, MqttSettings  # noqa: E402
from edge_agent.alerts.outbox import read_rows  # noqa: E402
from edge_agent.alerts.payloads import encode  # noqa: E402
from edge_agent.testing.alerts import make_alert  # noqa: E402

WINDOW = 10


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def bare_paho(url: str, count: int, rate: float | None) -> tuple[float, list[float]]:
    """Messages/s and publish->PUBACK latencies (ms) for plain paho QoS 1 with a window of 10."""
    host, port = url.split("://")[1].split(":")
    acked: dict[int, float] = {}
    cond = threading.Condition()

    def on_publish(client, userdata, mid, reason_code, properties):
        with cond:
            acked[mid] = time.perf_counter()
            cond.notify_all()

    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-bare", protocol=paho.MQTTv5)
    client.on_publish = on_publish
    client.max_inflight_messages_set(WINDOW + 5)
    client.connect(host, int(port))
    client.loop_start()
    payload = encode(make_alert(0))
    sent: dict[int, float] = {}
    start = time.perf_counter()
    for i in range(count):
        if rate:
            time.sleep(max(0.0, start + i / rate - time.perf_counter()))
        with cond:
            cond.wait_for(lambda: len(sent) - len(acked.keys() & sent.keys()) < WINDOW)
        t = time.perf_counter()
        info = client.publish("bench/bare/alerts", payload, qos=1)
        sent[info.mid] = t
    with cond:
        cond.wait_for(lambda: sent.keys() <= acked.keys(), timeout=60)
    elapsed = time.perf_counter() - start
    client.disconnect()
    client.loop_stop()
    return count / elapsed, [(acked[m] - t) * 1000 for m, t in sent.items()]


def outbox(url: str, count: int, rate: float | None, directory: Path,
           threads: int = 1) -> tuple[float, list[float], list[float]]:
    """Alerts/s (raise -> all PUBACKed), commit->PUBACK latencies (ms), raise_alert() call times (ms)."""
    path = directory / f"outbox-{'paced' if rate else 'sat'}-{threads}.db"
    settings = MqttSettings(url=url, delivery="broker", inflight_window=WINDOW, client_id="bench-outbox",
                            prefix="bench", heartbeat_interval=3600)
    publisher = AlertPublisher(settings, path)
    publisher.start()
    if not _wait(lambda: publisher.stats()["connected"], 10):
        raise SystemExit(f"cannot connect to {url}")
    alerts = [make_alert(i) for i in range(count)]
    calls: list[float] = []

    def raiser(part: list[dict]) -> None:
        for i, alert in enumerate(part):
            if rate:
                time.sleep(max(0.0, start + i / rate - time.perf_counter()))
            t = time.perf_counter()
            publisher.raise_alert(alert)
            calls.append((time.perf_counter() - t) * 1000)

    start = time.perf_counter()
    workers = [threading.Thread(target=raiser, args=(alerts[k::threads],), name=f"bench-raiser-{k}")
               for k in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    if not publisher.wait_idle(120):
        raise SystemExit("outbox did not drain")
    elapsed = time.perf_counter() - start
    publisher.stop()
    rows = read_rows(path)
    return count / elapsed, [(r["acked_at"] - r["committed_at"]) * 1000 for r in rows], calls


def raw_commits(directory: Path, count: int = 300) -> list[float]:
    """Latencies (ms) of bare SQLite WAL synchronous=FULL commits of one row: the disk's fsync floor."""
    import sqlite3

    conn = sqlite3.connect(directory / "raw.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE IF NOT EXISTS t (payload BLOB)")
    payload = encode(make_alert(0))
    times = []
    for _ in range(count):
        t = time.perf_counter()
        conn.execute("BEGIN")
        conn.execute("INSERT INTO t VALUES (?)", (payload,))
        conn.execute("COMMIT")
        times.append((time.perf_counter() - t) * 1000)
    conn.close()
    return times


def _wait(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=2000, help="messages per saturated run")
    parser.add_argument("--rate", type=float, default=200.0, help="offered load for the latency runs (msg/s)")
    parser.add_argument("--broker", default=None, help="existing broker URL (default: start a local Mosquitto)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; the table shows the median round")
    parser.add_argument("--outbox-dir", type=Path, default=None,
                        help="where the outbox lives (default: a temp dir; /dev/shm isolates the code from the disk)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        broker = None
        url = args.broker
        if url is None:
            from edge_agent.testing.mosquitto import MosquittoBroker

            # set_tcp_nodelay: without it Mosquitto's small PUBACKs wait for Nagle's algorithm, and a paced
            # publisher sees ~one pacing interval of extra latency.
            broker = MosquittoBroker(directory / "mosquitto", autosave_interval=1800,
                                     extra_config=["set_tcp_nodelay true"]).start()
            url = broker.url
        paced = max(200, args.count // 2)
        rounds = []
        try:
            for k in range(args.repeat):
                round_dir = (args.outbox_dir or directory) / f"bench-outbox-round{k}"
                round_dir.mkdir(parents=True, exist_ok=True)
                bare_rate, _ = bare_paho(url, args.count, None)
                box_rate, _, box_calls_sat = outbox(url, args.count, None, round_dir)
                box_rate4, _, _ = outbox(url, args.count, None, round_dir, threads=4)
                _, bare_lat = bare_paho(url, paced, args.rate)
                _, box_lat, box_calls = outbox(url, paced, args.rate, round_dir)
                raw = raw_commits(round_dir)
                rounds.append(dict(bare_rate=bare_rate, box_rate=box_rate, box_rate4=box_rate4,
                                   bare_p50=statistics.median(bare_lat), bare_p99=percentile(bare_lat, 99),
                                   box_p50=statistics.median(box_lat), box_p99=percentile(box_lat, 99),
                                   call_p50=statistics.median(box_calls), call_p99=percentile(box_calls, 99),
                                   call_sat_p50=statistics.median(box_calls_sat),
                                   raw_p50=statistics.median(raw), raw_p99=percentile(raw, 99)))
        finally:
            if broker is not None:
                broker.stop()
            if args.outbox_dir is not None:
                import shutil

                for k in range(args.repeat):
                    shutil.rmtree(args.outbox_dir / f"bench-outbox-round{k}", ignore_errors=True)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"# bench_outbox  {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}  {platform.machine()}  "
          f"{os.cpu_count()} CPUs  load {load:.1f}  python {platform.python_version()}")
    print(f"saturated runs: {args.count} messages; latency runs: {paced} messages at {args.rate:.0f}/s; "
          f"window {WINDOW}; broker {url}; median of {len(rounds)} rounds; outbox in "
          f"{args.outbox_dir or tempfile.gettempdir()}")
    m = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
    print()
    print("| path | throughput (msg/s, saturated) | latency p50 (ms) | latency p99 (ms) |")
    print("|---|---:|---:|---:|")
    print(f"| bare paho publish -> PUBACK | {m['bare_rate']:,.0f} | {m['bare_p50']:.2f} | {m['bare_p99']:.2f} |")
    print(f"| outbox commit -> PUBACK (durable), 1 raising thread | {m['box_rate']:,.0f} | {m['box_p50']:.2f} | "
          f"{m['box_p99']:.2f} |")
    print(f"| outbox, 4 raising threads (group commit) | {m['box_rate4']:,.0f} | | |")
    print(f"| **outbox overhead** (outbox - bare) | | {m['box_p50'] - m['bare_p50']:+.2f} | "
          f"{m['box_p99'] - m['bare_p99']:+.2f} |")
    print()
    print(f"raise_alert() call (commit, fsync'd): p50 {m['call_p50']:.2f} ms, p99 {m['call_p99']:.2f} ms paced; "
          f"p50 {m['call_sat_p50']:.2f} ms saturated")
    print(f"disk floor: a bare SQLite WAL synchronous=FULL commit takes p50 {m['raw_p50']:.2f} ms, "
          f"p99 {m['raw_p99']:.2f} ms here")
    print("per round:", "; ".join(f"{r['box_rate']:.0f}/{r['box_rate4']:.0f} alerts/s, overhead p99 "
                                  f"{r['box_p99'] - r['bare_p99']:+.1f} ms" for r in rounds))


if __name__ == "__main__":
    main()
