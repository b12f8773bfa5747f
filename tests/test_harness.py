"""The harness (edge_agent.testing) is tooling: the agent never imports it, and importing it costs nothing."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import edge_agent

PACKAGE = Path(edge_agent.__file__).resolve().parent
TESTING = PACKAGE / "testing"
ROOT = PACKAGE.parent


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return found


def test_nothing_in_the_agent_imports_the_harness():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if TESTING in path.parents:
            continue
        bad = sorted(m for m in _imports(path) if m == "edge_agent.testing" or m.startswith("edge_agent.testing."))
        if bad:
            offenders.append(f"{path.relative_to(PACKAGE.parent)}: {', '.join(bad)}")
    assert not offenders, offenders


def test_the_harness_package_imports_nothing_heavy():
    code = ("import sys, edge_agent, edge_agent.testing; "
            "heavy = [m for m in ('paho', 'onnx', 'psutil', 'pytest', 'numpy', 'pydicom') if m in sys.modules]; "
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_scripts_and_tests_do_not_reach_into_each_other_or_sys_path():
    offenders = []
    for folder in ("scripts", "tests"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path == Path(__file__).resolve():
                continue
            if "sys.path.insert" in path.read_text():
                offenders.append(f"{folder}/{path.relative_to(ROOT / folder)}: sys.path.insert")
            if folder == "scripts" and any(m.split(".")[0] in ("support", "tests") for m in _imports(path)):
                offenders.append(f"scripts/{path.name}: imports from tests/")
    assert not offenders, offenders
