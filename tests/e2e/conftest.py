"""Fixtures for the end-to-end tests: a real Mosquitto, the agent as a process, an MQTT collector."""

from __future__ import annotations

import sys
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agent_fixtures import agent_factory, broker, collector  # noqa: E402,F401 (fixtures)
