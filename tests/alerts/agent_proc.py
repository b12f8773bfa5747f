"""A stand-alone agent process for crash tests: raise alerts 0..N-1 (idempotent), then keep delivering.

    python agent_proc.py URL OUTBOX COUNT [--rate PER_S] [--t0 EPOCH] [--receipt-timeout S] [--exit-when-idle] [--go FILE]

Prints ``committed <index> <alert_id>`` after each raise_alert() returns (the outbox commit is
fsync'd by then), ``idle`` once everything is delivered, and runs until killed unless
--exit-when-idle. Re-running it after a kill re-raises the same alerts: the outbox ignores
revisions it already has, and the pending ones are delivered.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from edge_agent.testing.alerts import fast_settings, make_alert  # noqa: E402
from edge_agent.alerts import AlertPublisher  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("outbox", type=Path)
    parser.add_argument("count", type=int)
    parser.add_argument("--rate", type=float, default=0.0, help="alert i is due at T0 + i / rate")
    parser.add_argument("--t0", type=float, default=None, help="epoch of alert 0 (default: now)")
    parser.add_argument("--receipt-timeout", type=float, default=1.0)
    parser.add_argument("--exit-when-idle", action="store_true")
    parser.add_argument("--go", type=Path, default=None, help="wait until this file exists before raising")
    args = parser.parse_args()
    publisher = AlertPublisher(fast_settings(args.url, receipt_timeout=args.receipt_timeout, retry_max_delay=3.0,
                                             client_id="edge-agent-crash-test"), args.outbox)
    publisher.start()
    print("started", flush=True)
    if args.go is not None:
        while not publisher.stats()["connected"]:
            time.sleep(0.02)
        print("connected", flush=True)
    while args.go is not None and not args.go.exists():
        time.sleep(0.02)
    t0 = time.time() if args.t0 is None else args.t0
    for index in range(args.count):
        if args.rate:  # a restarted agent catches up at once with what it should have raised already
            time.sleep(max(0.0, t0 + index / args.rate - time.time()))
        alert_id = publisher.raise_alert(make_alert(index))
        print(f"committed {index} {alert_id}", flush=True)
    while not publisher.wait_idle(1.0):
        pass
    print("idle", flush=True)
    if not args.exit_when_idle:
        while True:
            time.sleep(1)
    publisher.stop()


if __name__ == "__main__":
    main()
