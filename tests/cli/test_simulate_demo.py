"""`simulate` writes real series like a scanner; `demo` shows a real alert end to end."""

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from edge_agent.dicom import read_series


def test_simulate_writes_readable_series_in_both_styles(tmp_path):
    for style in ("inplace", "rename", "movein"):
        out = tmp_path / style
        proc = subprocess.run([sys.executable, "-m", "edge_agent", "simulate", "--to", str(out), "--kind", "normal",
                               "--kind", "chest", "--rate", "0", "--slices", "12", "--style", style,
                               "--transfer-syntax", "rle"], capture_output=True, text=True, timeout=180)
        assert proc.returncode == 0, proc.stderr
        series = read_series([out])
        assert sorted(s.body_part for s in series) == ["CHEST", "HEAD"]
        assert all(s.hu.shape[0] == 12 for s in series)
        assert not list(out.rglob(".*"))          # no temp files left behind
        assert "SeriesInstanceUID" in proc.stdout


def test_simulate_bad_target_is_one_sentence(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    proc = subprocess.run([sys.executable, "-m", "edge_agent", "simulate", "--to", str(blocker / "sub"),
                           "--rate", "0", "--slices", "4"], capture_output=True, text=True, timeout=180)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") <= 2


def test_demo_shows_an_alert_its_timing_and_its_key_image_preview(tmp_path):
    previews = tmp_path / "previews"
    proc = subprocess.run([sys.executable, "-m", "edge_agent", "demo", "--rate", "20", "--save-previews",
                           str(previews)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    # the final alert's preview line names the file it wrote: <alert_id>-r<revision>.png
    lines = out.splitlines()
    final = next(i for i, line in enumerate(lines) if "FINAL alert ich" in line)
    revision = re.search(r"rev (\d+) at the listener", lines[final]).group(1)
    shown = [m for line in lines if (m := re.search(rf"key-image preview rev {revision}: (\d+)x(\d+) PNG, "
                                                    r"[0-9.]+ KiB, the evidence framed in red -> (\S+)", line))]
    assert shown, out
    width, height, path = int(shown[0].group(1)), int(shown[0].group(2)), Path(shown[0].group(3))
    assert path.parent == previews and path.name.endswith(f"-r{revision}.png")
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == (width, height) and max(im.size) <= 256
        rgb = np.asarray(im.convert("RGB"), np.int16)
        assert rgb.std() > 5                           # a picture of a head, not a blank
        red = (rgb[..., 0] > 200) & (rgb[..., 1] < 80)
        assert 20 < red.sum() < 2000                   # and a frame round the evidence, not a red picture
    assert "first slice written" in out and "decisive slice" in out
    assert "FINAL alert ich" in out
    assert "final result: analysed (ich POSITIVE" in out
    assert "final result: analysed (ich negative" in out
    # a positive finding has slices the model calls (its slice threshold is at most the series threshold)
    called = re.search(r"ich POSITIVE p=[0-9.]+, (\d+)/(\d+) slices called at ≥ ([0-9.]+)", out)
    assert called and 1 <= int(called.group(1)) <= int(called.group(2)), out
    assert "not medical devices" in out
    assert "Traceback" not in proc.stderr


def test_demo_in_shadow_mode_says_what_would_have_alerted_and_raises_nothing():
    proc = subprocess.run([sys.executable, "-m", "edge_agent", "demo", "--rate", "20", "--mode", "shadow"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "shadow (silent trial)" in out
    assert "would alert, none raised (shadow)" in out
    assert "alert ich" not in out  # no PRELIMINARY/FINAL alert line reached the listener
    assert "final result: analysed (ich negative" in out
