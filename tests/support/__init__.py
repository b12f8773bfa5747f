"""Helpers shared by the test suites (a real Mosquitto broker, TLS material)."""
