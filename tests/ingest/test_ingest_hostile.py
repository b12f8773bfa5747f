"""A hostile watch folder (issue 16 §1): FIFOs, unreadable files, long and non-UTF-8 names, bad headers,
decoder panics. Every file is analysed or quarantined with a sentence; nothing hangs or stays "decoding"."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pydicom
import pytest

from ingest_helpers import Collector, settle
from edge_agent.testing.volumes import dicom_bytes
from edge_agent.ingest import SIDECAR_SUFFIX
from edge_agent.ingest import decode as ingest_decode
from edge_agent.ingest import ledger as L
from edge_agent.ingest import quarantine as Q
from edge_agent.ingest.decode import Decoder

ROOT = Path(__file__).resolve().parents[2]


def _sidecars(quarantine_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in quarantine_dir.rglob("*" + SIDECAR_SUFFIX)]


def _sentence(reason: str) -> None:
    assert reason and "\n" not in reason
    for internal in ("Traceback", "RecursionError", "PicklingError", "PanicException", "UnicodeEncodeError"):
        assert internal not in reason


def _edited(data: bytes, tmp: Path, **values) -> bytes:
    path = tmp / "edit.dcm"
    path.write_bytes(data)
    ds = pydicom.dcmread(path)
    for keyword, value in values.items():
        if value is None:
            del ds[keyword]
        else:
            setattr(ds, keyword, value)
    ds.save_as(path)
    return path.read_bytes()


def test_fifo_socket_and_folder_named_like_files_are_never_opened(make_ingest, dirs, tmp_path):
    """A FIFO parked a decode thread in open() forever, and then the agent did not stop."""
    import socket

    watch, state = dirs
    c = Collector()
    ing = make_ingest(c)
    os.mkfifo(watch / "IM0000.dcm")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(watch / "IM0001.dcm"))
    (watch / "IM0002.dcm").mkdir()
    for k, data in enumerate(dicom_bytes(2, tmp=tmp_path)):
        (watch / f"IM{k + 3:04d}.dcm").write_bytes(data)
    try:
        assert c.wait(files=2, timeout=10)
        ing.rescan_now()
        settle(ing)
    finally:
        sock.close()
    assert ing.stats()["quarantined"] == 0 and c.rejected == []
    t0 = time.monotonic()
    ing.stop()
    assert time.monotonic() - t0 < 5


def test_agent_with_a_fifo_in_the_watch_folder_stops_on_sigterm(tmp_path):
    watch = tmp_path / "in"
    watch.mkdir()
    os.mkfifo(watch / "IM0001.dcm")
    conf = tmp_path / "c.toml"
    conf.write_text(f'[agent]\nstate_dir = "{tmp_path / "s"}"\n[ingest]\nwatch = "{watch}"\n'
                    "[mqtt]\nembedded_port = 0\n")
    log = tmp_path / "err.log"
    env = dict(os.environ, EDGE_AGENT_INGEST_STABLE_SECONDS="0.1")
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "edge_agent", "-v", "run", "--config", str(conf)],
                                stderr=fh, stdout=subprocess.DEVNULL, env=env, cwd=ROOT)
    try:
        deadline = time.monotonic() + 90
        while "edge-agent running" not in log.read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            time.sleep(0.1)
        os.mkfifo(watch / "IM0002.dcm")  # one announced by an event, too
        time.sleep(1.5)
    finally:
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError(f"agent did not stop on SIGTERM:\n{log.read_text()}")
    assert code == 0 and time.monotonic() - t0 < 15, log.read_text()
    assert "not a regular file" in log.read_text()


def test_unreadable_file_is_quarantined_by_reference(make_ingest, dirs, tmp_path, monkeypatch):
    """Tests run as root, who can copy a mode-000 file: the copy is monkeypatched to raise PermissionError
    the way it does for the systemd unit's user (the next test checks it for real as a non-root user)."""
    watch, state = dirs
    real_copy = shutil.copy2

    def copy_denied(src, dst, *args, **kwargs):
        if Path(src).name == "IM1.dcm":
            raise PermissionError(13, "Permission denied", str(src))
        return real_copy(src, dst, *args, **kwargs)

    monkeypatch.setattr(Q.shutil, "copy2", copy_denied)
    c = Collector()
    ing = make_ingest(c)
    (watch / "IM1.dcm").write_bytes(b"not dicom at all" * 20)
    assert c.wait(rejected=1, timeout=8)
    settle(ing)
    (entry,) = _sidecars(state / "quarantine")
    assert entry["copied"] is False and "Permission denied" in entry["copy_error"]
    assert "by reference" in entry["copy_error"] and entry["original_path"] == str(watch / "IM1.dcm")
    assert not (state / "quarantine" / "IM1.dcm").exists()
    ing.rescan_now()
    time.sleep(0.5)
    assert ing.stats()["quarantined"] == 1  # not retried at every rescan


@pytest.fixture
def request_cleanup():
    folders: list[Path] = []
    yield folders
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)


_AS_NOBODY = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    # Import first (the interpreter's own files may not be readable by nobody), then drop root.
    import json, logging, sqlite3, shutil, hashlib, concurrent.futures, pydicom, pydicom.pixels
    from edge_agent.ingest import Ingest, IngestSettings
    from edge_agent.ingest import quarantine, verdict, ledger
    os.setgroups([]); os.setgid(65534); os.setuid(65534)
    assert os.geteuid() == 65534
    watch, state = Path(sys.argv[1]), Path(sys.argv[2])
    rejected = []
    ing = Ingest(IngestSettings(watch, state, stable_seconds=0.1, retry_timeout=0.5, workers=1,
                                decode_processes=False), on_file=lambda f: None,
                 on_rejected=lambda p, r: rejected.append(r))
    ing.start()
    deadline = time.monotonic() + 15
    while not rejected and time.monotonic() < deadline:
        time.sleep(0.05)
    ing.stop()
    print(rejected[0] if rejected else "NOTHING")
""")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to an unprivileged user")
def test_unreadable_file_for_real_as_an_unprivileged_user(tmp_path, request_cleanup):
    """The real thing: the ingest runs as uid 65534 (nobody) in a child process; the file has mode 000."""
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="edge-agent-nobody-"))  # pytest's tmp_path is root-only (0700)
    request_cleanup.append(base)
    watch, state = base / "watch", base / "state"
    watch.mkdir()
    state.mkdir()
    for folder in (base, watch, state):
        folder.chmod(0o777)
    secret = watch / "IM1.dcm"
    secret.write_bytes(dicom_bytes(1, tmp=tmp_path)[0])
    secret.chmod(0)
    proc = subprocess.run([sys.executable, "-c", _AS_NOBODY, str(watch), str(state)], capture_output=True,
                          text=True, timeout=60, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    if "ModuleNotFoundError" in proc.stderr or "ImportError" in proc.stderr:
        pytest.skip(f"Python's files are not readable by an unprivileged user: {proc.stderr[-300:]}")
    assert proc.returncode == 0, proc.stderr
    reason = proc.stdout.strip()
    assert "could not be" in reason and "permission" in reason.lower(), (reason, proc.stderr)
    (entry,) = _sidecars(state / "quarantine")
    assert entry["copied"] is False and "Permission denied" in entry["copy_error"]
    assert entry["original_path"] == str(secret)


def test_255_byte_name_is_quarantined_with_a_bounded_sidecar_name(make_ingest, dirs):
    watch, state = dirs
    c = Collector()
    ing = make_ingest(c)
    name = "IM" + "7" * 249 + ".dcm"
    assert len(name.encode()) == 255
    (watch / name).write_bytes(b"junk" * 100)
    assert c.wait(rejected=1, timeout=8)
    settle(ing)
    (sidecar,) = (state / "quarantine").rglob("*" + SIDECAR_SUFFIX)
    assert len(os.fsencode(sidecar.name)) <= 255
    entry = json.loads(sidecar.read_text())
    assert entry["original_path"] == str(watch / name)
    copy = sidecar.with_name(sidecar.name[: -len(SIDECAR_SUFFIX)])
    assert copy.read_bytes() == b"junk" * 100


def test_non_utf8_names_are_analysed_or_quarantined_never_stuck(make_ingest, dirs, tmp_path):
    """is_known raised UnicodeEncodeError for each such file: they stayed "decoding" forever."""
    watch, state = dirs
    c = Collector()
    ing = make_ingest(c)
    good = watch / os.fsdecode(b"IM\xe9\xff01.dcm")  # Latin-1 bytes, not UTF-8
    bad = watch / os.fsdecode(b"IM\xe9\xff02.dcm")
    good.write_bytes(dicom_bytes(1, tmp=tmp_path)[0])
    bad.write_bytes(b"junk" * 50)
    assert c.wait(files=1, rejected=1, timeout=8)
    settle(ing)
    assert c.files[0].path == good and c.rejected[0][0] == bad
    (entry,) = _sidecars(state / "quarantine")
    assert bytes.fromhex(entry["original_path_hex"]) == os.fsencode(bad)
    assert list((state / "quarantine").rglob("*" + SIDECAR_SUFFIX))[0].name.encode("utf-8")  # UTF-8 name
    found_before = ing.stats()["rescan_found"]  # the start-up rescan may have raced the watcher to the files
    ing.rescan_now()  # the ledger knows both: nothing is queued again
    time.sleep(0.4)
    settle(ing)
    assert len(c.files) == 1 and ing.stats()["quarantined"] == 1
    assert ing.stats()["rescan_found"] == found_before


def test_ledger_keys_are_bytes_safe(tmp_path):
    ledger = L.Ledger(tmp_path / "l.sqlite3")
    odd = Path(os.fsdecode(b"/x/IM\xff.dcm"))
    plain = Path("/x/IM\u00e9.dcm")
    ledger.record(odd, 1, 2, L.QUARANTINED, "why")
    ledger.record(plain, 3, 4, L.EXCLUDED, "why")
    assert ledger.is_known(odd, 1, 2) and ledger.is_known(plain, 3, 4) and not ledger.is_known(odd, 1, 3)
    assert ledger.identities() == {str(odd): (1, 2), str(plain): (3, 4)}
    assert ledger.mark_gone([str(odd)]) == 1
    ledger.close()


@pytest.mark.parametrize("values, words", [
    ({"NumberOfFrames": 0}, "Number of Frames"),
    ({"StudyInstanceUID": None}, "has no Study Instance UID"),
    ({"SeriesInstanceUID": ""}, "has no Series Instance UID"),
])
def test_bad_headers_are_quarantined_with_a_sentence(make_ingest, dirs, tmp_path, values, words):
    watch, state = dirs
    c = Collector()
    ing = make_ingest(c)
    data = dicom_bytes(1, tmp=tmp_path)[0]
    if "NumberOfFrames" in values:  # written as "0", which pydicom reads back as 0
        data = _edited(data, tmp_path, NumberOfFrames=1).replace(b"(\x00\x08\x00IS\x02\x001 ",
                                                                  b"(\x00\x08\x00IS\x02\x000 ")
    else:
        data = _edited(data, tmp_path, **values)
    (watch / "IM1.dcm").write_bytes(data)
    assert c.wait(rejected=1, timeout=8)
    settle(ing)
    assert c.files == [] and words in c.rejected[0][1]
    _sentence(c.rejected[0][1])


class FakeDecoderPanic(BaseException):
    """A fake: stands for pyo3_runtime.PanicException (a BaseException, so `except Exception` misses it)."""


def test_decoder_panic_is_quarantined_and_ingest_goes_on(make_ingest, dirs, tmp_path, monkeypatch):
    watch, state = dirs
    real_read = Decoder.read

    def read(self, path):
        if path.name == "IM1.dcm":
            raise FakeDecoderPanic("index out of bounds: the len is 524288 but the index is 524288")
        return real_read(self, path)

    monkeypatch.setattr(Decoder, "read", read)
    c = Collector()
    ing = make_ingest(c)
    first, second = dicom_bytes(2, tmp=tmp_path)
    (watch / "IM1.dcm").write_bytes(first)
    assert c.wait(rejected=1, timeout=8)
    (watch / "IM2.dcm").write_bytes(second)
    assert c.wait(files=1, timeout=8)
    assert "crashed the decoder" in c.rejected[0][1]
    _sentence(c.rejected[0][1])
    assert all(t.is_alive() for t in ing._threads)


def test_real_rle_panic_in_a_worker_process_crosses_back_as_a_sentence(tmp_path):
    """With worker processes the panic became `PicklingError: Can't pickle PanicException` as the reason."""
    from dicom.test_limits import _panicking_rle

    path = _panicking_rle(tmp_path)
    decoder = Decoder(1)
    try:
        with pytest.raises(ingest_decode.BadFile) as info:
            decoder.read(path)
    finally:
        decoder.close()
    assert "crashed the decoder" in info.value.reason
    _sentence(info.value.reason)
