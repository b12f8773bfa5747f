"""Fixtures for the alert tests: real Mosquitto brokers, TLS material, a raw MQTT recorder."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from edge_agent.testing.mqtt import Recorder
from edge_agent.testing.mosquitto import MosquittoBroker, make_pki


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def broker_factory(tmp_path):
    """Make MosquittoBroker variants; every one is stopped at the end of the test."""
    made: list[MosquittoBroker] = []

    def make(name: str = "broker", **kwargs) -> MosquittoBroker:
        broker = MosquittoBroker(tmp_path / name, **kwargs)
        made.append(broker)
        return broker

    yield make
    for broker in made:
        broker.crash()


@pytest.fixture
def mosquitto(broker_factory) -> MosquittoBroker:
    """A plain, anonymous, persistent Mosquitto on a free port (started)."""
    return broker_factory().start()


@pytest.fixture
def recorder_factory():
    made: list[Recorder] = []

    def make(url: str, topic: str = "#", **tls) -> Recorder:
        rec = Recorder(url, topic, **tls)
        made.append(rec)
        return rec

    yield make
    for rec in made:
        rec.close()   # fails the test if any recorded message did not match its schema


@pytest.fixture
def state_dir(tmp_path) -> Path:
    path = tmp_path / "state"
    path.mkdir()
    return path


class _Crashes(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info:
            self.records.append(record)


@pytest.fixture(autouse=True)
def no_thread_crashes():
    """Fail any test in which a publisher/listener thread logged an exception (their last error boundary)."""
    handler = _Crashes()
    logger = logging.getLogger("edge_agent.alerts")
    logger.addHandler(handler)
    yield
    logger.removeHandler(handler)
    assert not handler.records, [r.getMessage() + " " + str(r.exc_info[1]) for r in handler.records]
