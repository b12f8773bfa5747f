"""Run the CLI in-process the way the console script does (``main`` exits)."""

from __future__ import annotations

import pytest

from edge_agent.cli import main


def run_cli(capsys, *args) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(list(args))
    out = capsys.readouterr()
    return info.value.code, out.out, out.err
