"""The end-to-end tests use the fixtures of tests/conftest.py: ``broker``, ``collector``, ``agent_factory``."""
