"""Seeded chaos: random SIGKILLs of broker, agent and consumer; receipt mode must lose nothing.

~30 s by default (EDGE_AGENT_CHAOS_SECONDS changes the chaos phase, EDGE_AGENT_CHAOS_SEED the seed).
The duplicate count is printed and recorded as a test property; duplicates are expected
(at-least-once) and are all removed by the consumer's (alert_id, revision) store.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edge_agent.testing.alerts import make_alert
from edge_agent.testing.wait import wait_until

AGENT = Path(__file__).with_name("agent_proc.py")
LISTEN = [sys.executable, "-c", "from edge_agent.cli import main; main()", "listen"]
CHAOS_SECONDS = float(os.environ.get("EDGE_AGENT_CHAOS_SECONDS", "20"))
SEED = int(os.environ.get("EDGE_AGENT_CHAOS_SEED", "20261126"))
ALERTS = 150


class _Proc:
    """A restartable child process whose stdout is appended to a file."""

    def __init__(self, argv: list[str], out: Path) -> None:
        self.argv, self.out, self.proc = argv, out, None
        self.kills = 0

    def start(self) -> None:
        with open(self.out, "a") as sink:
            self.proc = subprocess.Popen(self.argv, stdout=sink, stderr=subprocess.DEVNULL)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
            self.kills += 1

    def terminate(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


def _received_ids(path: Path) -> list[str]:
    ids = []
    for line in path.read_text().splitlines():
        try:
            ids.append(json.loads(line)["alert_id"])
        except (ValueError, KeyError):
            pass   # a line cut by SIGKILL; that alert was not recorded and is delivered again
    return ids


@pytest.mark.slow
def test_chaos_receipt_mode_loses_nothing(broker_factory, tmp_path, record_property):
    rng = random.Random(SEED)
    broker = broker_factory(autosave_interval=1).start()
    rate = ALERTS / (CHAOS_SECONDS * 0.8)
    agent = _Proc([sys.executable, str(AGENT), broker.url, str(tmp_path / "outbox.db"), str(ALERTS),
                   "--rate", f"{rate:.3f}", "--t0", f"{time.time() + 1:.3f}", "--receipt-timeout", "1.0"],
                  tmp_path / "agent.out")
    consumer = _Proc([*LISTEN, "--broker", broker.url, "--json", "--store", str(tmp_path / "consumer.db"),
                      "--consumer", "chaos"], tmp_path / "consumer.out")
    consumer.start()
    agent.start()
    broker_kills = 0
    try:
        deadline = time.monotonic() + CHAOS_SECONDS
        while time.monotonic() < deadline:
            time.sleep(rng.uniform(0.8, 2.5))
            victim = rng.choice(["broker", "agent", "consumer"])
            if victim == "broker":
                broker.crash()
                broker_kills += 1
            else:
                (agent if victim == "agent" else consumer).kill()
            time.sleep(rng.uniform(0.2, 1.0))
            if victim == "broker":
                broker.start()
            else:
                (agent if victim == "agent" else consumer).start()
        expected = {make_alert(i)["alert_id"] for i in range(ALERTS)}
        done = wait_until(lambda: expected <= set(_received_ids(tmp_path / "consumer.out")), 60, 0.5)
        received = _received_ids(tmp_path / "consumer.out")
        missing = expected - set(received)
    finally:
        consumer.terminate()
        agent.kill()
    with sqlite3.connect(tmp_path / "consumer.db") as store:
        store_duplicates = store.execute("SELECT coalesce(sum(deliveries - 1), 0) FROM seen").fetchone()[0]
    shown_twice = len(received) - len(set(received))
    summary = (f"chaos seed={SEED} {CHAOS_SECONDS:.0f}s: {ALERTS} alerts, kills broker={broker_kills} "
               f"agent={agent.kills} consumer={consumer.kills}; missing={len(missing)}; duplicates removed by "
               f"the store={store_duplicates}; shown twice (consumer killed between print and record)={shown_twice}")
    print(summary)
    record_property("chaos", summary)
    assert done and not missing, summary
    assert broker_kills + agent.kills + consumer.kills >= 5, summary
