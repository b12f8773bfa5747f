"""The agent is SIGKILLed between the outbox commit and the PUBACK: the alert still arrives after restart."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from edge_agent.testing.alerts import fast_settings, make_alert
from edge_agent.testing.wait import wait_until
from edge_agent.alerts import AlertListener
from edge_agent.alerts.outbox import read_rows

AGENT = Path(__file__).with_name("agent_proc.py")


def _agent(url: str, outbox: Path, count: int, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(AGENT), url, str(outbox), str(count), *extra],
                            stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _read_until(proc: subprocess.Popen, prefix: str) -> list[str]:
    lines = []
    for line in proc.stdout:
        lines.append(line.strip())
        if line.startswith(prefix):
            return lines
    raise AssertionError(f"agent exited before printing {prefix!r}: {lines}")


def test_agent_sigkill_between_commit_and_puback_delivers_after_restart(mosquitto, recorder_factory, tmp_path):
    outbox = tmp_path / "state" / "outbox.db"
    go = tmp_path / "go"
    got: list[str] = []
    listener = AlertListener(fast_settings(mosquitto.url), on_alert=lambda p, s: got.append(p["alert_id"]),
                             store_path=tmp_path / "pager.db", consumer="pager")
    listener.start()
    status = recorder_factory(mosquitto.url, "edge-agent/site/device/status")
    try:
        expected = _crash_agent_with_alerts_in_flight(mosquitto, outbox, go)
        # The broker publishes the agent's last will for it.
        status.wait_for(lambda t, p: p["state"] == "offline" and p["reason"] == "last_will", 20)
        restarted = _agent(mosquitto.url, outbox, 5, "--exit-when-idle")
        try:
            _read_until(restarted, "idle")                 # every alert confirmed by a receipt
            assert restarted.wait(15) == 0
        finally:
            if restarted.poll() is None:
                restarted.kill()
                restarted.wait()
            restarted.stdout.close()
    finally:
        listener.stop()
    assert sorted(set(got)) == sorted(expected)
    rows = read_rows(outbox)
    assert [r["state"] for r in rows] == ["done"] * 5
    assert all(r["attempts"] >= 2 for r in rows)       # published again by the restarted agent


def _crash_agent_with_alerts_in_flight(mosquitto, outbox: Path, go: Path) -> list[str]:
    agent = _agent(mosquitto.url, outbox, 5, "--go", str(go))
    try:
        _read_until(agent, "connected")
        mosquitto.proc.send_signal(signal.SIGSTOP)     # the broker hangs: no PUBACK can come back
        go.touch()
        lines = _read_until(agent, "committed 4")
        expected = [line.split()[2] for line in lines if line.startswith("committed")]
        assert expected == [make_alert(i)["alert_id"] for i in range(5)]
        # Committed before raise_alert returned, and published (in flight) but never acknowledged:
        assert wait_until(lambda: all(r["state"] == "inflight" for r in read_rows(outbox)), 10), read_rows(outbox)
        agent.kill()                                   # SIGKILL: paho's in-memory queue is gone
        agent.wait()
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
        agent.stdout.close()
        mosquitto.proc.send_signal(signal.SIGCONT)
    return expected
