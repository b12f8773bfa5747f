"""StorageReceiver against real DICOM clients: DCMTK's storescu/echoscu and
pynetdicom's SCU, each a separate process, over loopback."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from edge_agent.dicom.synth import SeriesHeaders, write_series
from edge_agent.errors import ConfigError, EdgeAgentError
from edge_agent.ingest.receiver import StorageReceiver
from edge_agent.testing.dcmtk import dcmtk
from edge_agent.testing.volumes import random_hu as volume

STORESCU = dcmtk("storescu")
ECHOSCU = dcmtk("echoscu")
pytestmark = pytest.mark.skipif(STORESCU is None, reason="DCMTK storescu is not installed (apt install dcmtk)")

# short transfer-syntax name -> storescu flag that proposes it (storescu --help)
PROPOSE = {
    "implicit": "-xi",
    "explicit": "-xe",
    "deflated": "-xd",
    "rle": "-xr",
    "jpegls": "-xt",
    "jpegls-near": "-xu",
    "j2k-lossless": "-xv",
    "j2k": "-xw",
}


def storescu(port: int, files, *flags: str, aet: str = "SCANNER", aec: str = "EDGE_AGENT"):
    cmd = [STORESCU, "-aet", aet, "-aec", aec, "-ta", "10", "-td", "20", *flags, "127.0.0.1", str(port),
           *map(str, files)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def landed(watch: Path) -> list[Path]:
    return sorted(p for p in watch.rglob("*") if p.is_file())


@pytest.fixture
def receiver(tmp_path):
    stored: list[Path] = []
    rx = StorageReceiver(tmp_path / "watch", port=0, on_stored=stored.append)
    rx.stored_paths = stored  # test-only attribute: what on_stored saw
    rx.start()
    yield rx
    rx.stop()


@pytest.mark.parametrize("syntax", list(PROPOSE))
def test_series_lands_with_identical_pixels(receiver, tmp_path, syntax):
    headers = SeriesHeaders()
    sources = write_series(volume(), tmp_path / "src", headers=headers, transfer_syntax=syntax)
    proc = storescu(receiver.port, sources, PROPOSE[syntax])
    assert proc.returncode == 0, proc.stderr

    files = landed(receiver.watch_dir)
    assert len(files) == len(sources)
    assert not [f for f in files if f.name.startswith(".")], "a temp file was left behind"
    assert sorted(receiver.stored_paths) == files
    for src_path in sources:
        src = pydicom.dcmread(src_path)
        dst_path = (receiver.watch_dir / headers.study_instance_uid / headers.series_instance_uid
                    / f"{src.SOPInstanceUID}.dcm")
        dst = pydicom.dcmread(dst_path)
        assert dst.file_meta.TransferSyntaxUID == src.file_meta.TransferSyntaxUID
        assert dst.PixelData == src.PixelData  # the bytes as sent: no re-encoding
        np.testing.assert_array_equal(dst.pixel_array, src.pixel_array)
    assert receiver.stats()["stored"] == len(sources)
    assert receiver.stats()["failed"] == 0


@pytest.mark.parametrize("name, flag", [("eCT_Supplemental.dcm", "-xe"), ("JPEG-LL.dcm", "-xs")])
def test_enhanced_ct_and_jpeg_lossless_secondary_capture_are_accepted(receiver, name, flag):
    # eCT_Supplemental: Enhanced CT Image Storage, 2 frames; JPEG-LL: Secondary
    # Capture in JPEG Lossless SV1, both from pydicom-data, sent as they are.
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip("pydicom-data is not installed")
    src = pydicom.dcmread(path)
    proc = storescu(receiver.port, [path], flag)
    assert proc.returncode == 0, proc.stderr
    [dst_path] = landed(receiver.watch_dir)
    assert dst_path.relative_to(receiver.watch_dir).parts == (
        src.StudyInstanceUID, src.SeriesInstanceUID, f"{src.SOPInstanceUID}.dcm")
    dst = pydicom.dcmread(dst_path)
    assert dst.SOPClassUID == src.SOPClassUID
    assert dst.file_meta.TransferSyntaxUID == src.file_meta.TransferSyntaxUID
    np.testing.assert_array_equal(dst.pixel_array, src.pixel_array)


def test_non_ct_sop_class_is_refused(receiver):
    mr = get_testdata_file("MR_small.dcm", download=False)
    proc = storescu(receiver.port, [mr])
    assert proc.returncode != 0
    assert "No presentation context" in proc.stderr
    assert landed(receiver.watch_dir) == []
    assert receiver.stats()["stored"] == 0


def test_files_appear_only_by_atomic_rename(receiver, tmp_path):
    from watchdog.events import FileSystemEventHandler
    from watchdog.observers.inotify import InotifyObserver

    events: list[tuple[str, str]] = []

    class Record(FileSystemEventHandler):
        def on_any_event(self, event):
            if not event.is_directory:
                events.append((event.event_type, event.src_path, getattr(event, "dest_path", "")))

    headers = SeriesHeaders()
    sources = write_series(volume(n=4), tmp_path / "src", headers=headers, transfer_syntax="explicit")
    # The folders exist before watching: this test is about files (watchdog
    # warns when it races to add watches for folders created under it).
    receiver.watch_dir.joinpath(headers.study_instance_uid, headers.series_instance_uid).mkdir(parents=True)
    observer = InotifyObserver()
    observer.schedule(Record(), str(receiver.watch_dir), recursive=True)
    observer.start()
    try:
        assert storescu(receiver.port, sources).returncode == 0
        assert storescu(receiver.port, sources).returncode == 0  # a resend
        threading.Event().wait(0.5)  # let inotify deliver the last events
    finally:
        observer.stop()
        observer.join()
    finals = {str(p) for p in landed(receiver.watch_dir)}
    assert len(finals) == 4  # the resend replaced the same names
    for kind, src, dest in events:
        if kind in ("created", "modified", "closed", "opened", "closed_no_write"):
            assert Path(src).name.startswith("."), f"{kind} seen on a final name: {src}"
    moved_to = [dest for kind, _, dest in events if kind == "moved"]
    assert set(moved_to) == finals
    assert len(moved_to) == 8  # 4 files, each written twice, each by one rename
    assert receiver.stats()["stored"] == 8


def test_disk_error_answers_out_of_resources_and_keeps_serving(receiver, tmp_path):
    bad = SeriesHeaders()
    # A plain file where the study folder must go: mkdir fails with a real OSError.
    receiver.watch_dir.joinpath(bad.study_instance_uid).write_bytes(b"in the way")
    proc = storescu(receiver.port, write_series(volume(n=1), tmp_path / "bad", headers=bad), "-v")
    assert proc.returncode != 0
    assert "Refused: OutOfResources" in proc.stdout + proc.stderr  # status 0xA700
    assert receiver.stats()["failed"] == 1

    good = write_series(volume(n=2), tmp_path / "good")
    assert storescu(receiver.port, good).returncode == 0
    assert receiver.stats()["stored"] == 2
    assert not [p for p in receiver.watch_dir.rglob(".*")]


def test_unknown_calling_ae_is_rejected(tmp_path):
    with StorageReceiver(tmp_path / "watch", port=0, allowed_calling_aets=["CT_SCANNER1"]) as rx:
        sources = write_series(volume(n=1), tmp_path / "src")
        refused = storescu(rx.port, sources, aet="INTRUDER")
        accepted = storescu(rx.port, sources, aet="CT_SCANNER1")
        stats = rx.stats()
    assert refused.returncode != 0
    assert "Rejected" in refused.stderr or "rejected" in refused.stderr
    assert accepted.returncode == 0, accepted.stderr
    assert stats["rejected"] == 1 and stats["stored"] == 1


@pytest.mark.skipif(ECHOSCU is None, reason="DCMTK echoscu is not installed")
def test_c_echo(receiver):
    proc = subprocess.run([ECHOSCU, "-aec", "EDGE_AGENT", "127.0.0.1", str(receiver.port)],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert receiver.stats()["echoes"] == 1


def test_pynetdicom_client_in_a_subprocess(receiver, tmp_path):
    headers = SeriesHeaders()
    [src] = write_series(volume(n=1), tmp_path / "src", headers=headers, transfer_syntax="rle")
    script = textwrap.dedent(f"""
        import sys
        from pydicom import dcmread
        from pynetdicom import AE
        ae = AE(ae_title="PYSCU")
        ds = dcmread({str(src)!r})
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
        assoc = ae.associate("127.0.0.1", {receiver.port}, ae_title="EDGE_AGENT")
        if not assoc.is_established:
            sys.exit(2)
        status = assoc.send_c_store(ds)
        assoc.release()
        print(hex(status.Status))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "0x0"
    [dst] = landed(receiver.watch_dir)
    np.testing.assert_array_equal(pydicom.dcmread(dst).pixel_array, pydicom.dcmread(src).pixel_array)


def test_port_in_use_is_one_sentence(tmp_path):
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        rx = StorageReceiver(tmp_path / "watch", port=port, bind="127.0.0.1")
        with pytest.raises(EdgeAgentError) as err:
            rx.start()
    message = str(err.value)
    assert "already in use" in message and str(port) in message and "--dicom-port" in message
    assert message.count(". ") == 0 and "\n" not in message


def test_bad_ae_title_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="not a valid DICOM AE title"):
        StorageReceiver(tmp_path, port=0, ae_title="THIS_TITLE_IS_FAR_TOO_LONG")


def test_no_phi_in_logs(receiver, tmp_path, caplog):
    headers = SeriesHeaders(patient_name="DOE^JANE", patient_id="MRN-998877", patient_birth_date="19610203")
    sources = write_series(volume(n=2), tmp_path / "src", headers=headers)
    with caplog.at_level(logging.DEBUG, logger="edge_agent"):
        assert storescu(receiver.port, sources).returncode == 0
        receiver.stop()
    assert "stored SOP Instance" in caplog.text  # the log was captured at all
    for phi in ("DOE", "JANE", "MRN-998877", "19610203"):
        assert phi not in caplog.text


def test_parallel_associations_all_land(receiver, tmp_path):
    series = [write_series(volume(n=3, seed=k), tmp_path / f"src{k}", headers=SeriesHeaders(),
                           transfer_syntax=syntax)
              for k, syntax in enumerate(("explicit", "rle", "jpegls"))]
    # storescu takes one proposal option; each process gets the one its files need.
    cmds = [[STORESCU, "-aec", "EDGE_AGENT", flag, "127.0.0.1", str(receiver.port), *map(str, s)]
            for flag, s in zip(("-xe", "-xr", "-xt"), series)]
    procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in cmds]
    for p in procs:
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
    assert len(landed(receiver.watch_dir)) == 9
    assert receiver.stats()["associations"] == 3 and receiver.stats()["stored"] == 9


def test_stop_aborts_an_open_association(tmp_path):
    import time

    rx = StorageReceiver(tmp_path / "watch", port=0)
    rx.start()
    script = textwrap.dedent(f"""
        import sys, time
        from pynetdicom import AE
        ae = AE(ae_title="IDLE")
        ae.add_requested_context("1.2.840.10008.1.1")
        assoc = ae.associate("127.0.0.1", {rx.port}, ae_title="EDGE_AGENT")
        print("established" if assoc.is_established else "refused", flush=True)
        deadline = time.time() + 30
        while assoc.is_established and time.time() < deadline:
            time.sleep(0.05)
        print("aborted" if assoc.is_aborted else "still open", flush=True)
    """)
    client = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert client.stdout.readline().strip() == "established"
        started = time.monotonic()
        rx.stop()
        assert time.monotonic() - started < 5
        out, _ = client.communicate(timeout=30)
    finally:
        rx.stop()
        if client.poll() is None:
            client.kill()
            client.wait()
    assert out.strip() == "aborted"
    assert rx.stats()["associations"] == 1


def test_a_large_instance_streams_through_a_file_not_memory(receiver, tmp_path):
    """pynetdicom writes the data set to a temporary file as it arrives; we copy it in 1 MiB pieces."""
    import tracemalloc

    big = np.full((1, 3072, 3072), 40.0, np.float32)                 # one 18 MiB slice
    [src] = write_series(big, tmp_path / "big", headers=SeriesHeaders())
    size = src.stat().st_size
    tracemalloc.start()
    try:
        proc = storescu(receiver.port, [src])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert proc.returncode == 0, proc.stderr
    [dst] = landed(receiver.watch_dir)
    assert dst.stat().st_size >= size - 256                         # same data set (file meta may differ)
    np.testing.assert_array_equal(pydicom.dcmread(dst).pixel_array, pydicom.dcmread(src).pixel_array)
    assert peak < size / 4, f"{peak / 2**20:.1f} MiB held in memory for a {size / 2**20:.1f} MiB instance"


def test_spool_files_of_aborted_transfers_are_swept(tmp_path):
    import os
    import time

    from edge_agent.ingest.receiver import SPOOL_MAX_AGE

    spool = tmp_path / "spool"
    spool.mkdir()
    stale, fresh = spool / "rx-stale.dcm", spool / "rx-fresh.dcm"
    stale.write_bytes(b"\0" * 100)
    fresh.write_bytes(b"\0" * 100)
    old = time.time() - SPOOL_MAX_AGE - 5
    os.utime(stale, (old, old))
    seen = []
    rx = StorageReceiver(tmp_path / "watch", port=0, spool_dir=spool)
    real = rx._store

    def spy(event):
        seen.append(event.dataset_path.parent)     # where pynetdicom streamed this data set
        return real(event)

    rx._store = spy
    with rx:
        assert not stale.exists() and fresh.exists(), "swept at start: only files nobody wrote to for 10 min"
        assert storescu(rx.port, write_series(volume(n=1), tmp_path / "src")).returncode == 0
        os.utime(fresh, (old, old))
        rx._server._swept_at = 0.0                  # the next poll of the serving loop sweeps again
        deadline = time.monotonic() + 5
        while fresh.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    assert seen == [spool] and not fresh.exists()
    assert list(spool.iterdir()) == [], "the received data set's spool file is gone after it landed"
    assert len(landed(rx.watch_dir)) == 1
