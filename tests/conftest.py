"""Test-wide fixtures and checks.

Leak checks (watchdog's habit): a test fails when it leaves behind a thread still alive, a child
process still running, or — through ``filterwarnings`` in pyproject.toml — an unraisable exception,
an unhandled exception in a thread or a ResourceWarning (an unclosed file, socket or subprocess; the one
exception: ``refused_dicom_connection``, below).
Module-scoped fixtures are set up before, and torn down after, a test's own checks, so what they own
is compared at the module's end instead (``no_module_leaks``). Logging set up by a CLI run in-process
(handlers bound to that test's captured stderr) is put back after each test.

The end-to-end fixtures (a real Mosquitto, an MQTT recorder of everything the agent publishes, agents
as processes) are here for every folder that needs them, importing what they need when used (the GPU
machine has neither paho nor psutil); the harness itself is ``edge_agent.testing``.
"""

from __future__ import annotations

import gc
import logging

import pytest

from edge_agent.testing.leaks import Snapshot, leaks_since

#: Loggers that edge_agent.logs.setup_logging points at sys.stderr (a test's capture, when run in-process).
CONFIGURED_LOGGERS = ("edge_agent", "edge_agent.agent", "edge_agent.series", "edge_agent.broker", "amqtt",
                      "transitions", "pynetdicom", "highdicom", "dicomweb_client")


#: pynetdicom 3 (AssociationSocket.connect) calls close() on a socket that did not connect only if shutdown()
#: succeeds first, which it never does: the plain socket of a refused connection is left to the garbage collector,
#: in pynetdicom's frame. Not ours to close (our TLS sockets close themselves, edge_agent/results/tls.py), so a
#: test that makes such a connection on purpose is marked ``refused_dicom_connection`` and ignores that warning.
REFUSED_DICOM_SOCKET = r"ignore:unclosed <socket\.socket:ResourceWarning:pynetdicom\.transport"


def pytest_collection_modifyitems(items):
    for item in items:
        if item.get_closest_marker("refused_dicom_connection"):
            item.add_marker(pytest.mark.filterwarnings(REFUSED_DICOM_SOCKET))


@pytest.fixture(autouse=True, scope="module")
def no_module_leaks():
    """What module-scoped fixtures start must be gone when the module's tests are done."""
    before = Snapshot()
    yield
    gc.collect()   # unclosed objects in reference cycles warn now, in this module, not in a later one
    leaked = leaks_since(before)
    assert not leaked, f"the tests of this module (or its fixtures) left behind: {leaked}"


@pytest.fixture(autouse=True)
def no_leaks():
    """A test (with its function-scoped fixtures) leaves no thread, child process or logging handler behind."""
    before = Snapshot()
    loggers = {name: logging.getLogger(name) for name in CONFIGURED_LOGGERS}
    saved = {name: (list(lg.handlers), lg.level, lg.propagate) for name, lg in loggers.items()}
    yield
    for name, (handlers, level, propagate) in saved.items():
        lg = loggers[name]
        lg.handlers[:], lg.level, lg.propagate = handlers, level, propagate
    leaked = leaks_since(before)
    assert not leaked, f"test leaked: {leaked}"


# --- end-to-end: a real broker, what it carries, the agent as a process ------------------------------------
@pytest.fixture
def broker(tmp_path):
    from edge_agent.testing.mosquitto import MosquittoBroker

    b = MosquittoBroker(tmp_path / "broker").start()
    yield b
    b.crash()


@pytest.fixture
def collector(broker):
    """Everything under ``edge-agent/#``, each payload checked against its schema (``collector.invalid``)."""
    from edge_agent.testing.mqtt import Recorder

    c = Recorder(broker.url, "edge-agent/#", client_id="e2e-collector")
    yield c
    c.close(check=False)


@pytest.fixture
def agent_factory(tmp_path):
    """``make(broker_url, *run_args, name="agent", settle=1.5, env={...})``: an agent process (fast timers), killed after."""
    from edge_agent.testing.agent import FAST_ENV, AgentProcess

    made: list[AgentProcess] = []

    def make(broker_url: str, *extra: str, name: str = "agent", env: dict | None = None, **kw) -> AgentProcess:
        a = AgentProcess(tmp_path / name, broker_url, *extra, env={**FAST_ENV, **(env or {})}, **kw)
        made.append(a)
        return a

    yield make
    for a in made:
        a.kill()
