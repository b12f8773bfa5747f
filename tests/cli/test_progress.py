"""Progress bars (edge_agent.progress): drawn on stderr when it is a terminal, never into stdout, silent elsewhere.

The terminal is a real pseudo-terminal (``pty``) given a window size; stdout stays a pipe, so what a script
reads there (``bench --json``) must parse whatever the bar does.
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import pty
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

from cli_helpers import run_cli
from edge_agent import progress as progress_mod

from edge_agent.testing.volumes import phantom_series  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def on_a_terminal(*args: str, timeout: float = 240) -> tuple[int, str, str]:
    """Run ``edge-agent ARGS`` with stderr on a 120-column pseudo-terminal: (exit code, stdout, terminal text)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    env = {k: v for k, v in os.environ.items() if not k.startswith("TQDM_")}
    proc = subprocess.Popen([sys.executable, "-m", "edge_agent", *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=slave, stdin=subprocess.DEVNULL, env=env)
    os.close(slave)
    seen = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        seen.append(chunk)
    out, _ = proc.communicate(timeout=timeout)
    os.close(master)
    return proc.returncode, out.decode(), b"".join(seen).decode(errors="replace")


def test_bench_json_is_clean_and_nothing_is_drawn_off_a_terminal(capsys, model_dir):
    code, out, err = run_cli(capsys, "bench", "--model", str(model_dir), "--backend", "onnxrt", "--slices", "2",
                             "--repeat", "3", "--warmup", "1", "--json")
    assert code == 0, err
    assert json.loads(out)["rows"]
    assert err == ""                                            # no bar, no carriage returns, nothing


def test_bench_draws_a_bar_on_a_terminal_and_stdout_stays_json(model_dir):
    code, out, terminal = on_a_terminal("bench", "--model", str(model_dir), "--backend", "onnxrt", "--slices", "2",
                                        "--repeat", "40", "--warmup", "1", "--json")
    assert code == 0, terminal
    report = json.loads(out)                                    # the bar never reached stdout
    assert any(r["stage"] == "inference" and r["backend"] == "onnxruntime cpu" for r in report["rows"])
    assert "bench:" in terminal and "run/s" in terminal and "%|" in terminal
    assert "\r" in terminal                                     # redrawn in place


def test_calibrate_draws_its_stages_on_a_terminal(model_dir, tmp_path):
    data = tmp_path / "dicom"
    for i in range(2):
        phantom_series(data / f"s{i}", seed=20 + i, bright=i % 2 == 0)
    code, out, terminal = on_a_terminal("calibrate", str(model_dir / "model.onnx"), "--data", str(data),
                                        "--output", str(tmp_path / "q.onnx"), "--tolerance", "1.0")
    assert code == 0, terminal
    assert "calibrate: calibrating" in terminal and "batch" in terminal
    assert "calibrate: comparing FP32 and INT8" in terminal
    assert "calibrate: 2 calibration series" in terminal        # the plain lines are still there
    assert "calibrate:" not in out and "wrote" in out


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_helper_draws_only_on_a_terminal_and_echo_writes_above_the_bar(monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    fake_err, fake_out = FakeTerminal(), io.StringIO()
    monkeypatch.setattr(sys, "stderr", fake_err)
    monkeypatch.setattr(sys, "stdout", fake_out)
    with progress_mod.progress(4, "work", "item") as bar:
        assert bar.enabled
        bar.describe("first")
        bar.update(2)
        progress_mod.echo("a result line")
    assert "work:" in fake_err.getvalue() and "item" in fake_err.getvalue()
    assert fake_out.getvalue() == "a result line\n"             # whole, on stdout, not in the bar

    plain = io.StringIO()                                       # not a terminal: nothing at all
    monkeypatch.setattr(sys, "stderr", plain)
    assert list(progress_mod.track(range(3), "quiet")) == [0, 1, 2]
    with progress_mod.progress(2, "quiet") as bar:
        assert not bar.enabled
        bar.update()
    assert plain.getvalue() == ""


@pytest.mark.parametrize("enabled", [True, False])
def test_bars_are_closed_and_forgotten(monkeypatch, enabled):
    monkeypatch.setattr(sys, "stderr", FakeTerminal() if enabled else io.StringIO())
    with progress_mod.progress(1, "x"):
        pass
    assert progress_mod._drawn == []                            # echo() prints plainly again afterwards
