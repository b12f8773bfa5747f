"""The end-to-end fixtures (a real Mosquitto, an MQTT collector, agents as processes), for every folder that needs them.

A conftest imports them by name: ``from agent_fixtures import agent_factory, broker, collector``.
"""

from __future__ import annotations

import pytest

from agent_helpers import AgentProcess, Collector
from support.mosquitto import MosquittoBroker


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
