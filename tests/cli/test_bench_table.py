"""`edge-agent bench`: a table whose columns fit any model name, with units, and a non-zero exit when nothing ran."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from cli_helpers import run_cli  # noqa: E402
from edge_agent.cli import bench as bench_mod  # noqa: E402
from edge_agent.inference.manifest import load_manifest  # noqa: E402


def _renamed(model_dir: Path, tmp_path: Path, name: str, version: str) -> Path:
    folder = tmp_path / name
    shutil.copytree(model_dir, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest.update(name=name, version=version)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def test_columns_fit_a_long_model_name_and_say_their_units(capsys, model_dir, tmp_path):
    long_one = _renamed(model_dir, tmp_path, "a_rather_long_model_name", "10.20.30")
    code, out, err = run_cli(capsys, "bench", "--model", str(model_dir), "--model", str(long_one), "--backend",
                             "onnxrt", "--slices", "3", "--repeat", "2", "--warmup", "0")
    assert code == 0, err
    lines = out.splitlines()
    header = next(line for line in lines if line.startswith("model "))
    rows = [line for line in lines if "onnxruntime cpu" in line]
    assert [r.split()[0] for r in rows] == ["tiny@0.0.1", "a_rather_long_model_name@10.20.30"]
    # every column ends where its header ends, for the short name and the long one alike
    for column in ("batch", "slices/s", "ms/series"):
        end = header.index(column) + len(column)
        for row in rows:
            assert row[end - 1] != " " and (len(row) == end or row[end] == " "), (column, header, row)
    assert header.index("backend") == rows[0].index("onnxruntime cpu") == rows[1].index("onnxruntime cpu")
    assert "per series, ms" in out and "per slice, ms" in out and "end to end" in out
    assert "per series = all 3 slices" in out and "per slice = one slice alone" in out
    assert "Preprocessing, per series of 3 slices" in out


def test_no_requested_backend_could_run_exits_non_zero_with_one_sentence(capsys, model_dir):
    # TensorRT missing here, or (where it is installed) the tiny model has no engine: either way nothing runs
    code, out, err = run_cli(capsys, "bench", "--model", str(model_dir), "--backend", "tensorrt", "--slices", "2",
                             "--repeat", "2", "--warmup", "0")
    assert code == 3
    assert "tiny@0.0.1" in out and "unavailable:" in out               # the rows still say why
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err
    assert lines[0].startswith("edge-agent: None of the requested backends (tensorrt) could run")
    code, out, err = run_cli(capsys, "bench", "--model", str(model_dir), "--backend", "tensorrt", "--slices", "2",
                             "--repeat", "2", "--warmup", "0", "--json")
    assert code == 3
    assert all("unavailable" in r for r in json.loads(out)["rows"] if r["stage"] == "inference")


class Counter:
    """Stands in for the bar: counts what bench reports."""

    def __init__(self) -> None:
        self.n = 0
        self.said: list[str] = []

    def update(self, n: int = 1) -> None:
        self.n += n

    def describe(self, text: str) -> None:
        self.said.append(text)


def test_the_bar_ends_exactly_at_its_total(model_dir):
    """Skipped backends advance the bar too, so it reaches 100 % whatever this machine has."""
    manifest = load_manifest(model_dir)
    backends = ("onnxrt", "onnxrt-gpu", "tensorrt")
    bar = Counter()
    bench_mod.preprocess_rows(manifest.preprocessing, 2, 3, 1, bar)
    bench_mod.model_rows(manifest, backends, 2, 3, 1, 1, bar)
    assert bar.n == bench_mod.planned_runs(backends, 1, 3, 1)
    assert "tiny@0.0.1 onnxruntime cpu" in bar.said
