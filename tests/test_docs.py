"""Docs stay true to the code: the README's configuration reference is the generated one."""

from pathlib import Path

from edge_agent.config import reference_markdown

ROOT = Path(__file__).resolve().parents[1]


def test_readme_config_reference_matches_code():
    readme = (ROOT / "README.md").read_text()
    for line in reference_markdown().strip().splitlines():
        assert line in readme, f"README configuration reference is stale: {line!r}"


def test_config_reference_rows_have_four_cells():
    import re

    for line in reference_markdown().splitlines():
        if line.startswith("| `"):
            cells = re.split(r"(?<!\\)\|", line.strip())[1:-1]
            assert len(cells) == 4, f"a bare | splits this row: {line!r}"


def test_readme_shows_install_demo_and_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "pip install ." in readme and "edge-agent demo" in readme
    ci = (ROOT / ".ci" / "run").read_text()
    assert 'python -m pytest -m "not gpu" -q' in ci and 'python -m pytest -m "not gpu" -q' in readme
