"""Fixtures for the end-to-end tests: a real Mosquitto, the agent as a process, an MQTT collector."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent_helpers import AgentProcess, Collector  # noqa: E402
from support.mosquitto import MosquittoBroker  # noqa: E402


@pytest.fixture
def broker(tmp_path):
    b = MosquittoBroker(tmp_path / "broker").start()
    yield b
    b.crash()


@pytest.fixture
def collector(broker):
    c = Collector(broker.url)
    yield c
    c.close()


@pytest.fixture
def agent_factory(tmp_path):
    made: list[AgentProcess] = []

    def make(broker_url: str, *extra: str, name: str = "agent", **kw) -> AgentProcess:
        a = AgentProcess(tmp_path / name, broker_url, *extra, **kw)
        made.append(a)
        return a

    yield make
    for a in made:
        a.kill()
