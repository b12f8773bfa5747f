"""Shared parts of the daemon harnesses (bench_latency, soak, fault_inject, fleet, fuzz_ingest).

Everything here drives real parts, from the installed package: a real Mosquitto
(:mod:`edge_agent.testing.mosquitto`), ``edge-agent run`` started as a user starts it (the venv's
console script, a real process that can be SIGKILLed and restarted on the same state folder,
:mod:`edge_agent.testing.agent`), phantom series rendered once and replayed with fresh UIDs into its
watch folder the way scanners write (:mod:`edge_agent.service.replay`), and paho clients on the
broker (:mod:`edge_agent.testing.mqtt`: a recorder that stamps every message, a consumer that sends
receipts). This module only fixes the harnesses' defaults: site and device names, the agent's
console script with a sampled RSS, a recorder that keeps the last status instead of every one.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import psutil

from edge_agent.service.replay import Sent, Template, decide_templates, make_templates, patch, replay  # noqa: F401
from edge_agent.service.simulator import ROUTINE_HEAD, write_bytes  # noqa: F401
from edge_agent.testing.agent import (AgentProcess, edge_agent_command, integrity, ledger_files,  # noqa: F401
                                      ledger_series_done, log_problems, outbox_rows)
from edge_agent.testing.mosquitto import MosquittoBroker, free_port  # noqa: F401
from edge_agent.testing.mqtt import Consumer, Delivery, Recorder  # noqa: F401
from edge_agent.testing.wait import wait_until  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
SITE, DEVICE = "bench", "ct1"


def machine_line() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "?")
    mem = psutil.virtual_memory().total / 2**30
    return (f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPUs ({cpu}), "
            f"{mem:.0f} GiB RAM, load avg {os.getloadavg()[0]:.2f}, Python {sys.version.split()[0]}")


def start_agent(root: Path, broker_url: str, settle: float, env: dict[str, str], engines: Path | None, *,
                site: str = SITE, device: str = DEVICE, delivery: str = "broker", extra: tuple = (),
                start: bool = True, state: Path | None = None, period: float = 1.0, start_timeout: float = 120.0,
                verbose: bool = False) -> AgentProcess:
    """The agent as a user starts it (console script), RSS sampled every ``period`` s, heartbeat every second.

    Started unless ``start=False``; ``stop`` kills quietly after 60 s and returns the exit status.
    """
    agent = AgentProcess(root, broker_url, *extra, settle=settle, engines=engines, site=site, device=device,
                         delivery=delivery, state=state, command=edge_agent_command(), verbose=verbose,
                         env={"EDGE_AGENT_MQTT_HEARTBEAT_INTERVAL": "1", **env}, start_timeout=start_timeout,
                         stop_timeout=60.0, sample_every=period, strict_stop=False)
    return agent.start() if start else agent


def subscriber(url: str, topics: tuple[str, ...] = ("edge-agent/#",), client_id: str = "bench-latency") -> Recorder:
    """A recorder that stamps the arrival of every message on ``topics`` and keeps only the last status."""
    return Recorder(url, topics, client_id=client_id, validate=False, keep_status=False)
