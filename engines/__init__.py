"""Shipped model artefacts (installed as ``edge_agent.engines``).

Each sub-folder holds one model: ``manifest.json`` and its artefacts.
"""
from pathlib import Path

ENGINES_DIR = Path(__file__).resolve().parent
