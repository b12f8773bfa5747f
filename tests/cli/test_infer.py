"""`edge-agent infer` on DICOM written by edge_agent.dicom.synth, with tiny real ONNX models.

Through click's CliRunner and once as a real subprocess (the venv's `edge-agent`).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from edge_agent.testing.models import write_model_folder  # noqa: E402

from edge_agent.cli import cli, main  # noqa: E402
from edge_agent.dicom.synth import SeriesHeaders, write_series  # noqa: E402
from edge_agent.testing.volumes import tiny_model_volume as volume  # noqa: E402

PHI = ("PHANTOM^HEAD", "PH0001", "19700101", "PHANTOM^CHEST")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("infer")
    engines = root / "engines"
    write_model_folder(engines / "tiny_ich")
    dicom = root / "dicom"
    head = SeriesHeaders()
    write_series(volume(8, hot=(3, 4)), dicom / "head", (5.0, 0.5, 0.5), head)
    normal = SeriesHeaders()
    write_series(volume(8), dicom / "normal", (5.0, 0.5, 0.5), normal, transfer_syntax="implicit")
    chest = SeriesHeaders(patient_name="PHANTOM^CHEST", body_part="CHEST", study_description="CT CHEST",
                          series_description="THORAX 5mm")
    write_series(volume(8), dicom / "chest", (5.0, 0.5, 0.5), chest)
    short = SeriesHeaders()
    write_series(volume(3), dicom / "short", (5.0, 0.5, 0.5), short)
    (dicom / "notes.txt").write_text("not a DICOM file")
    uids = {"head": head.series_instance_uid, "normal": normal.series_instance_uid,
            "chest": chest.series_instance_uid, "short": short.series_instance_uid}
    return root, engines, dicom, uids


def by_series(stdout: str, uids: dict) -> dict:
    lines = [json.loads(line) for line in stdout.splitlines() if line.strip()]
    names = {v: k for k, v in uids.items()}
    return {names[obj["series_instance_uid"]]: obj for obj in lines}


def check_results(results: dict) -> None:
    assert set(results) == {"head", "normal", "chest", "short"}
    head = results["head"]
    assert head["status"] == "analysed" and head["slices"] == 8
    assert head["findings"][0]["code"] == "ich" and head["findings"][0]["positive"] is True
    assert {k["index"] for k in head["findings"][0]["key_slices"][:2]} == {3, 4}
    assert results["normal"]["status"] == "analysed" and results["normal"]["findings"][0]["positive"] is False
    assert results["chest"]["status"] == "skipped" and "body part CHEST" in results["chest"]["reason"]
    assert results["short"]["status"] == "rejected" and "3 slices is fewer than the 4" in results["short"]["reason"]
    for obj in results.values():
        assert {"series_instance_uid", "study_instance_uid", "slices", "status", "findings"} <= set(obj)


def test_infer_with_clirunner(data):
    root, engines, dicom, uids = data
    result = CliRunner().invoke(cli, ["infer", str(dicom), "--engines", str(engines), "--backend", "onnxrt",
                                      "--threads", "1"])
    assert result.exit_code == 0, result.output
    check_results(by_series(result.stdout, uids))
    assert "left out" in result.stderr and "notes.txt" in result.stderr
    assert not any(p in result.stdout + result.stderr for p in PHI)


def test_infer_pretty_and_single_file(data):
    root, engines, dicom, uids = data
    one = sorted((dicom / "head").iterdir())[0]
    result = CliRunner().invoke(cli, ["infer", str(one), "--engines", str(engines), "--pretty"])
    assert result.exit_code == 0, result.output
    obj = json.loads(result.stdout)
    assert obj["status"] == "rejected" and obj["slices"] == 1  # one slice is too few for the model


def run_main(capsys, *args):
    with pytest.raises(SystemExit) as info:
        main(list(args))
    return info.value.code, capsys.readouterr()


def test_user_errors_are_one_sentence(data, tmp_path, capsys):
    root, engines, dicom, uids = data
    code, out = run_main(capsys, "infer", str(tmp_path / "nope"), "--engines", str(engines))
    assert code != 0 and "does not exist" in out.err and "Traceback" not in out.err
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "a.txt").write_text("x")
    code, out = run_main(capsys, "infer", str(tmp_path / "empty"), "--engines", str(engines))
    assert code != 0 and "No DICOM image series found" in out.err and out.out == ""
    code, out = run_main(capsys, "infer", str(dicom), "--engines", str(tmp_path / "no-engines"))
    assert code != 0 and "Engines folder" in out.err and "does not exist" in out.err
    code, out = run_main(capsys, "infer", str(dicom), "--engines", str(engines), "--backend", "tensorrt")
    assert code != 0 and "has no TensorRT engine" in out.err


def test_infer_as_a_real_subprocess(data):
    root, engines, dicom, uids = data
    exe = Path(sys.executable).with_name("edge-agent")
    env = {**os.environ, "PATH": f"{exe.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run(["edge-agent", "infer", str(dicom), "--engines", str(engines), "--threads", "1"],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    check_results(by_series(proc.stdout, uids))
    assert "Traceback" not in proc.stderr
