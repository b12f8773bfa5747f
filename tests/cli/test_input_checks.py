"""Bad input to simulate, listen, inspect and infer: one clear sentence and a non-zero exit, nothing created."""

from __future__ import annotations

import importlib.util
import sqlite3
import subprocess
import sys

import pytest

from edge_agent.testing import fake_trt  # noqa: E402
from cli_helpers import run_cli  # noqa: E402

NO_TRT = importlib.util.find_spec("tensorrt") is None


def _one_sentence(err: str, *words: str) -> None:
    assert "Traceback" not in err and "unexpected error" not in err, err
    lines = [line for line in err.strip().splitlines() if line.startswith(("Error:", "edge-agent:"))]
    assert len(lines) == 1, err
    for word in words:
        assert word in lines[0], err


@pytest.mark.parametrize("args, words", [
    (["--slices", "-5"], ["--slices", "-5"]),
    (["--slices", "0"], ["--slices", "0"]),
    (["--slices", "100000"], ["--slices", "100000"]),
    (["--rate", "-1"], ["--rate", "-1"]),
    (["--rate", "nan"], ["--rate", "nan"]),
    (["--rate", "inf"], ["--rate", "inf"]),
    (["--rate", "1e-300"], ["--rate", "1e-300"]),
    (["--count", "0"], ["--count", "0"]),
    (["--seed", "-1"], ["--seed", "-1"]),
])
def test_simulate_refuses_bad_numbers_and_writes_nothing(capsys, tmp_path, args, words):
    target = tmp_path / "out"
    code, out, err = run_cli(capsys, "simulate", "--to", str(target), *args)
    assert code == 2, err
    _one_sentence(err, *words)
    assert not target.exists()


@pytest.mark.parametrize("args", [["--rate", "-1"], ["--settle", "0"], ["--seed", "-1"]])
def test_demo_refuses_bad_numbers_before_starting_anything(capsys, tmp_path, args):
    keep = tmp_path / "demo"
    code, _, err = run_cli(capsys, "demo", "--keep", str(keep), *args)
    assert code == 2
    _one_sentence(err, args[0], args[1])
    assert not keep.exists()


def test_simulate_bad_slices_as_the_console_script_sees_it(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "edge_agent", "simulate", "--to", str(tmp_path / "out"),
                           "--slices", "-5"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    _one_sentence(proc.stderr, "--slices", "-5 is not in the range")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("value", ["-1", "nan", "inf", "1e300"])
def test_listen_timeout_must_be_a_number_of_seconds_it_can_wait(capsys, value):
    code, _, err = run_cli(capsys, "listen", "--broker", "mqtt://127.0.0.1:9", "--timeout", value)
    assert code == 2
    _one_sentence(err, "--timeout")


def test_listen_store_must_be_a_sqlite_database(capsys, tmp_path):
    store = tmp_path / "notes.txt"
    store.write_text("not a database, somebody's notes\n")
    code, _, err = run_cli(capsys, "listen", "--broker", "mqtt://127.0.0.1:9", "--store", str(store), "--timeout", "1")
    assert code == 1
    _one_sentence(err, str(store), "is not a SQLite database")
    assert store.read_text() == "not a database, somebody's notes\n"   # untouched


def test_listen_store_with_a_damaged_database_is_one_sentence(capsys, tmp_path):
    store = tmp_path / "seen.sqlite3"
    store.write_bytes(b"SQLite format 3\x00" + b"\xff" * 200)         # the header, then garbage
    code, _, err = run_cli(capsys, "listen", "--broker", "mqtt://127.0.0.1:9", "--store", str(store), "--timeout", "1")
    assert code == 1
    _one_sentence(err, str(store), "cannot be used as the deduplication store")


def test_listen_store_folder_must_exist_and_is_not_created(capsys, tmp_path):
    store = tmp_path / "nonexistent" / "dir" / "x"
    code, _, err = run_cli(capsys, "listen", "--broker", "mqtt://127.0.0.1:9", "--store", str(store), "--timeout", "1")
    assert code == 1
    _one_sentence(err, "does not exist", "create it first")
    assert not (tmp_path / "nonexistent").exists()


def test_listen_store_accepts_a_store_an_earlier_listener_wrote(tmp_path):
    from edge_agent.alerts.consumer import DedupeStore
    from edge_agent.cli.listen import check_store

    store = tmp_path / "seen.sqlite3"
    DedupeStore(store).close()
    check_store(store)                        # a real store passes
    empty = tmp_path / "empty.sqlite3"
    empty.touch()
    check_store(empty)                        # so does an empty file (SQLite makes it a database)
    check_store(tmp_path / "new.sqlite3")     # and a new name in an existing folder
    assert sqlite3.connect(store).execute("SELECT count(*) FROM seen").fetchone() == (0,)


def test_listen_refuses_a_misspelt_secret_variable(capsys, monkeypatch):
    monkeypatch.setenv("EDGE_AGENT_MQTT_PASWORD", "s3cret")
    code, out, err = run_cli(capsys, "listen", "--broker", "mqtt://127.0.0.1:9", "--timeout", "1")
    assert code == 2
    _one_sentence(err, "EDGE_AGENT_MQTT_PASWORD", "did you mean EDGE_AGENT_MQTT_PASSWORD?")
    assert "s3cret" not in out + err


@pytest.mark.skipif(not NO_TRT, reason="TensorRT is installed here")
def test_inspect_random_bytes_named_engine_without_tensorrt(capsys, tmp_path):
    engine = tmp_path / "x.engine"
    engine.write_bytes(bytes(range(256)) * 40)
    code, out, err = run_cli(capsys, "inspect", str(engine))
    assert code == 1 and out == ""
    _one_sentence(err, "cannot be inspected", "no fingerprint x.engine.json", "TensorRT is not installed")
    code, out, err = run_cli(capsys, "inspect", str(engine), "--json")
    assert code == 1 and out == ""
    (tmp_path / "x.engine.json").write_text("{not json")
    code, _, err = run_cli(capsys, "inspect", str(engine))
    assert code == 1
    _one_sentence(err, "cannot be inspected", "is unreadable")


def test_inspect_random_bytes_named_engine_with_tensorrt(monkeypatch, capsys, tmp_path):
    fake_trt.install(monkeypatch)             # TensorRT + pycuda stand-ins: TensorRT is asked about the bytes
    engine = tmp_path / "x.engine"
    engine.write_bytes(bytes(range(256)) * 40)
    code, out, err = run_cli(capsys, "inspect", str(engine))
    assert code == 1 and out == ""
    _one_sentence(err, "is not a TensorRT engine this machine can read", "could not load engine x.engine")


def test_inspect_engine_replaced_behind_its_fingerprint(monkeypatch, capsys, model_dir):
    fake_trt.install(monkeypatch)
    engine = model_dir / "model.engine"
    assert run_cli(capsys, "convert", str(model_dir / "model.onnx"), "-o", str(engine))[0] == 0
    assert run_cli(capsys, "inspect", str(engine))[0] == 0
    engine.write_bytes(b"random bytes where the engine was" * 10)
    code, out, err = run_cli(capsys, "inspect", str(engine))
    assert code == 1 and out == ""
    _one_sentence(err, "is not the engine its fingerprint model.engine.json describes")


def test_infer_on_an_empty_folder_says_it_holds_no_files(capsys, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / ".hidden").write_text("skipped")
    code, out, err = run_cli(capsys, "infer", str(empty))
    assert code == 1 and out == ""
    _one_sentence(err, "holds no files to read")
    assert "listed above" not in err and "left out" not in err


def test_infer_with_only_junk_points_at_the_left_out_lines(capsys, tmp_path):
    folder = tmp_path / "junk"
    folder.mkdir()
    (folder / "notes.txt").write_text("not DICOM\n")
    code, out, err = run_cli(capsys, "infer", str(folder))
    assert code == 1 and out == ""
    assert "left out" in err and "notes.txt" in err and "listed above" in err
