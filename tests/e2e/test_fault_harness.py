"""The fault-injection and fleet harnesses, short: real Mosquitto, real ``edge-agent run`` processes, SIGKILLs.

``scripts/fault_inject.py --quick`` (2 seeded runs: broker SIGKILL during delivery, an agent SIGKILL at a
seeded moment, a bleed series at the end) and ``scripts/fleet.py --quick`` (3 agents, a consumer group of
two and a dashboard, one agent and the broker SIGKILLed mid-run) run as a user runs them; each must exit 0,
and the figures they write (``--json``) must add up: every file accounted for, every alert receipted and
received, every bleed alerted. The full runs and their figures: docs/RELIABILITY.md.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def run_script(name: str, *args: str, tmp_path: Path) -> tuple[subprocess.CompletedProcess, object]:
    out = tmp_path / f"{name}.json"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / f"{name}.py"), *args, "--json", str(out),
                           "--work", str(tmp_path / name)], capture_output=True, text=True, timeout=280)
    print(proc.stdout[-4000:])
    assert proc.returncode == 0, f"{name} exited {proc.returncode}:\n{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}"
    return proc, json.loads(out.read_text())


def test_fault_inject_quick_accounts_for_everything(tmp_path):
    proc, runs = run_script("fault_inject", "--quick", "--seed", "7", tmp_path=tmp_path)
    assert len(runs) == 2
    for r in runs:
        assert r["violations"] == [], r["violations"]
        assert r["faults"].get("broker SIGKILL", 0) >= 1 and r["faults"].get("agent SIGKILL", 0) >= 1, r["faults"]
        assert r["files"] > 0 and r["outcome"].get("unaccounted", 0) == 0
        assert sum(r["outcome"].values()) == r["files"], r["outcome"]
        assert r["bleeds"] >= 2 and r["bleeds_alerted"] == r["bleeds"]
        assert r["alerts_raised"] >= r["bleeds"] and r["receipted"] == r["alerts_raised"]
        assert r["integrity"] and set(r["integrity"].values()) == {"ok"}, r["integrity"]
        assert r["exits"] == []
    # Two runs cycle through two of the seeded kill moments.
    assert {r["moments"][0].split(" (")[0] for r in runs} == {"commit→publish", "mid-series"}
    assert "violations 0" in proc.stdout and "unaccounted 0" in proc.stdout


def test_fleet_quick_delivers_every_alert_to_the_group_and_the_dashboard(tmp_path):
    proc, result = run_script("fleet", "--quick", "--seed", "7", tmp_path=tmp_path)
    assert result["violations"] == [], result["violations"]
    agents = result["agents"]
    assert len(agents) == 3 and len({(a["site"], a["device"]) for a in agents}) == 3
    assert sum(a["killed"] for a in agents) == 1
    assert any("SIGKILL broker" in e for e in result["events"])
    for a in agents:
        assert sum(a["outcome"].values()) == a["files"] and a["outcome"].get("analysed", 0) == a["files"]
        assert a["bleeds_alerted"] == a["bleeds"] >= 1
        assert a["receipted"] == a["alerts"] == a["to_group"] == a["to_dashboard"]
        assert set(a["integrity"].values()) == {"ok"}
    # The group shares the load: what its two members received adds up to every alert at least once.
    total = sum(a["alerts"] for a in agents)
    assert sum(a["to_pager1"] + a["to_pager2"] for a in agents) >= total
    assert "violations 0" in proc.stdout
