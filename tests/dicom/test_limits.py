"""Boundaries at the edge: absurd headers, decoder panics, hostile file-system entries (issue 16 §1)."""

from __future__ import annotations

import os
import random
import time
import tracemalloc
from pathlib import Path

import pydicom
import pytest

from edge_agent.dicom import BadFile, read_file, scan
from edge_agent.dicom import reader as reader_module
from edge_agent.dicom.mutate import nest
from edge_agent.dicom.synth import SeriesHeaders, write_series
from edge_agent.testing.volumes import random_hu

from .conftest import data_file


def _one_sentence(reason: str) -> None:
    assert reason and "\n" not in reason and "Traceback" not in reason
    for internal in ("RecursionError", "PicklingError", "PanicException", "pyo3", "maximum recursion"):
        assert internal not in reason


def _series(tmp_path: Path, n: int = 2, size: int = 32, syntax: str = "explicit", name: str = "s") -> list[Path]:
    vol = random_hu(n, size, seed=3, high=1000)
    return write_series(vol, tmp_path / name, (2.0, 0.5, 0.5), SeriesHeaders(), transfer_syntax=syntax)


def _with(path: Path, out: Path, **values) -> Path:
    """A copy with header values changed (None deletes); NumberOfFrames is written as raw text, valid or not."""
    ds = pydicom.dcmread(path)
    frames = values.pop("NumberOfFrames", None)
    for keyword, value in values.items():
        if value is None:
            del ds[keyword]
        else:
            setattr(ds, keyword, value)
    if frames is not None:
        ds.NumberOfFrames = 9
    ds.save_as(out)
    if frames is not None:
        text = frames.encode() + b" " * (len(frames) % 2)
        explicit = b"\x28\x00\x08\x00IS\x02\x009 "
        data = out.read_bytes()
        if explicit in data:
            data = data.replace(explicit, b"\x28\x00\x08\x00IS" + len(text).to_bytes(2, "little") + text)
        else:  # implicit VR
            data = data.replace(b"\x28\x00\x08\x00\x02\x00\x00\x009 ",
                                b"\x28\x00\x08\x00" + len(text).to_bytes(4, "little") + text)
        out.write_bytes(data)
    return out


@pytest.mark.parametrize("frames", ["99999999", "40000", "3"])
def test_absurd_number_of_frames_is_refused_before_any_per_frame_work(tmp_path, frames):
    """A 39 KB file claiming 99,999,999 frames drove infer past 4.8 GB; now: refused at once, cheaply."""
    source = _series(tmp_path, 1, size=138)[0]  # 138 x 138 x 2 bytes: a 39 KB file
    bomb = _with(source, tmp_path / "bomb.dcm", NumberOfFrames=frames)
    assert 36_000 < bomb.stat().st_size < 42_000
    for fast in (True, False):
        reader_module.FAST_HEADERS = fast
        try:
            tracemalloc.start()
            t0 = time.perf_counter()
            with pytest.raises(BadFile) as info:
                read_file(bomb)
            elapsed = time.perf_counter() - t0
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
            reader_module.FAST_HEADERS = True
        assert elapsed < 0.5 and peak < 2 * 1024 ** 2, (elapsed, peak)
        _one_sentence(info.value.reason)
        assert "frames" in info.value.reason and "damaged" in info.value.reason or "holds only" in info.value.reason


def test_absurd_frames_in_compressed_pixel_data(tmp_path):
    source = _series(tmp_path, 1, syntax="j2k-lossless")[0]
    bomb = _with(source, tmp_path / "bomb.dcm", NumberOfFrames="40000")
    with pytest.raises(BadFile, match="room for fewer fragments"):
        read_file(bomb)


def test_extreme_rows_and_columns_in_compressed_data_are_refused(tmp_path):
    source = _series(tmp_path, 1, syntax="rle")[0]
    huge = _with(source, tmp_path / "huge.dcm", Rows=65535, Columns=65535, NumberOfFrames="2")
    with pytest.raises(BadFile) as info:
        read_file(huge)
    assert "declares" in info.value.reason
    _one_sentence(info.value.reason)


@pytest.mark.parametrize("frames", ["0", "-1", "abc", "1.5"])
def test_bad_number_of_frames_is_left_out_with_a_reason_alone_and_in_a_batch(tmp_path, frames):
    """0 frames made files vanish from infer: no 'left out' line, in no series (alone or in a batch of 16+)."""
    files = _series(tmp_path, 20, size=16)
    bad = _with(files[7], files[7], NumberOfFrames=frames)
    with pytest.raises(BadFile, match="Number of Frames"):
        read_file(bad)
    for batch in ([bad], files):
        report = scan(batch, workers=2, executor="thread")
        reasons = {r.path: r.reason for r in report.rejected}
        assert str(bad) in reasons and "Number of Frames" in reasons[str(bad)]
        assert sum(s.hu.shape[0] for s in report.series) == len(batch) - 1


def test_zero_frames_in_a_batch_read_by_worker_processes(tmp_path):
    files = _series(tmp_path, 17, size=32, syntax="j2k-lossless")
    bad = _with(files[3], files[3], NumberOfFrames="0")
    report = scan(files, workers=2, executor="process")
    assert [r.path for r in report.rejected] == [str(bad)]
    assert report.series[0].hu.shape[0] == 16


@pytest.mark.parametrize("keyword", ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"])
@pytest.mark.parametrize("value", [None, "", " "])
def test_missing_or_empty_uids_are_refused_at_read_time(tmp_path, keyword, value):
    """A file without a Study Instance UID killed the pipeline at the payload; it is refused here instead."""
    source = _series(tmp_path, 1)[0]
    bad = _with(source, tmp_path / "bad.dcm", **{keyword: value})
    for fast in (True, False):
        reader_module.FAST_HEADERS = fast
        try:
            with pytest.raises(BadFile) as info:
                read_file(bad, decode=False)
        finally:
            reader_module.FAST_HEADERS = True
        words = keyword.replace("InstanceUID", " Instance UID")
        assert f"has no {words}" in info.value.reason
        _one_sentence(info.value.reason)


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("depth", [65, 5000])
def test_deeply_nested_sequences_are_a_sentence(tmp_path, fast, depth):
    source = _series(tmp_path, 1)[0]
    deep = tmp_path / "deep.dcm"
    deep.write_bytes(nest(source.read_bytes(), depth))
    reader_module.FAST_HEADERS = fast
    try:
        if depth == 65 and not fast:
            assert read_file(deep)  # pydicom reads 65 levels; only the fast path stops there
            return
        with pytest.raises(BadFile) as info:
            read_file(deep)
    finally:
        reader_module.FAST_HEADERS = True
    assert "nested too deeply to read (over 64 levels)" in info.value.reason
    _one_sentence(info.value.reason)


def _panicking_rle(tmp_path: Path) -> Path:
    """A real RLE file whose flipped bits make pylibjpeg-rle panic (Rust 'index out of bounds')."""
    pytest.importorskip("rle")
    source = _series(tmp_path, 1, size=64, syntax="rle", name="rle")[0]
    data = source.read_bytes()
    start = data.find(b"\xe0\x7f\x10\x00") + 12
    rng = random.Random(16)
    for _ in range(400):
        mutated = bytearray(data)
        for _ in range(rng.randint(1, 15)):
            pos = rng.randrange(start, len(mutated))
            mutated[pos] ^= 1 << rng.randrange(8)
        path = tmp_path / "panic.dcm"
        path.write_bytes(bytes(mutated))
        ds = pydicom.dcmread(path)
        ds.pixel_array_options(decoding_plugin="pylibjpeg")
        try:
            ds.pixel_array
        except Exception:
            continue
        except BaseException as exc:  # the real pyo3 PanicException
            assert not isinstance(exc, (KeyboardInterrupt, SystemExit))
            return path
    pytest.skip("no mutation made pylibjpeg-rle panic (a fixed decoder?)")


def test_rle_decoder_panic_is_a_bad_file_with_a_sentence(tmp_path):
    path = _panicking_rle(tmp_path)
    with pytest.raises(BadFile) as info:
        read_file(path)
    assert "crashed the decoder" in info.value.reason
    _one_sentence(info.value.reason)


def test_rle_decoder_panic_in_worker_processes_loses_one_file_not_the_batch(tmp_path):
    """The panic crossed the process boundary as a PicklingError and lost all 20 files."""
    bad = _panicking_rle(tmp_path)
    files = _series(tmp_path, 19, size=64, syntax="rle", name="batch")
    os.replace(bad, files[0].parent / "IM99999.dcm")
    report = scan([files[0].parent], workers=2, executor="process")
    assert report.series and report.series[0].hu.shape[0] == 19
    (rejected,) = report.rejected
    assert rejected.path.endswith("IM99999.dcm") and "crashed the decoder" in rejected.reason


class FakeDecoderPanic(BaseException):
    """A fake: stands for pyo3_runtime.PanicException (it derives from BaseException, not Exception)."""


def test_any_base_exception_from_a_decoder_becomes_a_sentence(tmp_path, monkeypatch):
    files = _series(tmp_path, 3, syntax="rle")

    def panicking(*args, **kwargs):
        raise FakeDecoderPanic("index out of bounds: the len is 8192 but the index is 8192")

    monkeypatch.setattr(reader_module, "_stored_pixels", panicking)
    with pytest.raises(BadFile) as info:
        read_file(files[0])
    _one_sentence(info.value.reason)
    report = scan(files, workers=1)
    assert len(report.rejected) == 3 and all("crashed the decoder" in r.reason for r in report.rejected)


def test_interrupts_are_not_swallowed(tmp_path, monkeypatch):
    files = _series(tmp_path, 1)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(reader_module, "_stored_pixels", interrupted)
    with pytest.raises(KeyboardInterrupt):
        read_file(files[0])


def test_fifo_socket_and_folder_are_refused_without_opening(tmp_path):
    """A FIFO blocked `infer DIR` forever in open()."""
    import socket

    files = _series(tmp_path, 3)
    folder = files[0].parent
    fifo = folder / "IM00009.dcm"
    os.mkfifo(fifo)
    (folder / "IM00010.dcm").mkdir()  # a folder named like a file: walked, empty
    sock_path = folder / "IM00011.dcm"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(sock_path))
    try:
        for path, kind in ((fifo, "named pipe"), (sock_path, "socket"), (folder / "IM00010.dcm", "folder")):
            with pytest.raises(BadFile, match=kind):
                read_file(path)
        t0 = time.monotonic()
        report = scan([folder], workers=2)
        assert time.monotonic() - t0 < 20
    finally:
        sock.close()
    assert report.series[0].hu.shape[0] == 3
    reasons = {Path(r.path).name: r.reason for r in report.rejected}
    assert "named pipe" in reasons["IM00009.dcm"] and "socket" in reasons["IM00011.dcm"]


def test_the_real_ct_test_file_still_reads(tmp_path):
    assert read_file(data_file("CT_small.dcm"))


def test_infer_dir_with_a_fifo_and_a_zero_frame_file_finishes(tmp_path):
    """`infer DIR` blocked forever on a FIFO, and a 0-frame file vanished without a 'left out' line."""
    import subprocess
    import sys

    files = _series(tmp_path, 3, size=32)
    folder = files[0].parent
    os.mkfifo(folder / "IM00008.dcm")
    _with(files[0], folder / "IM00009.dcm", NumberOfFrames="0", SOPInstanceUID="1.2.3.4.5.6.7.8.9")
    proc = subprocess.run([sys.executable, "-m", "edge_agent", "infer", str(folder)], capture_output=True,
                          text=True, timeout=120, cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 0, proc.stderr
    assert f"left out {folder / 'IM00008.dcm'}: is a named pipe (FIFO)" in proc.stderr
    assert f"left out {folder / 'IM00009.dcm'}: has Number of Frames '0'" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert '"slices": 3' in proc.stdout


def test_header_text_quoted_in_a_reason_is_made_printable(tmp_path):
    """The fuzzer found a damaged SOP Class UID (binary bytes, newlines) quoted verbatim in the reason."""
    from edge_agent.dicom import NotAnImage

    source = _series(tmp_path, 1)[0]
    data = source.read_bytes()
    old = b"1.2.840.10008.5.1.4.1.1.2\x00"
    at = data.index(old, 200)  # the dataset's SOP Class UID, not the file meta's
    bad = tmp_path / "bad.dcm"
    damaged = b"1.2.840\n\x01\x02.99.9".ljust(len(old) - 1, b"9") + b"\x00"
    bad.write_bytes(data[:at] + damaged + data[at + len(old):])
    for fast in (True, False):
        reader_module.FAST_HEADERS = fast
        try:
            with pytest.raises(NotAnImage) as info:
                read_file(bad)
        finally:
            reader_module.FAST_HEADERS = True
        assert info.value.reason.isprintable() and len(info.value.reason) <= 400
        assert "damaged SOP Class UID" in info.value.reason or "?" in info.value.reason


def test_damaged_j2k_that_made_gdcm_abort_the_process_is_a_bad_file(tmp_path):
    """Found by scripts/fuzz_ingest.py: gdcm threw an uncaught C++ exception on this J2K file and the whole
    process aborted (std::terminate). OpenJPEG decodes JPEG 2000 now; run in a child so an abort fails the test
    instead of killing pytest."""
    import subprocess
    import sys

    sample = Path(__file__).parent / "data" / "j2k_gdcm_abort.dcm"
    code = ("import sys; from edge_agent.dicom import BadFile, read_file\n"
            "try:\n    read_file(sys.argv[1])\nexcept BadFile as e:\n    print(e.reason)\n")
    proc = subprocess.run([sys.executable, "-W", "ignore", "-c", code, str(sample)], capture_output=True,
                          text=True, timeout=60, cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "could not be decoded" in proc.stdout


@pytest.mark.parametrize("syntax, marker, offset", [("j2k-lossless", b"\xff\x4f\xff\x51", 12),
                                                     ("jpegls", b"\xff\xf7", 5)])
def test_codestream_larger_than_the_header_is_refused_before_decoding(tmp_path, syntax, marker, offset):
    """Found by the fuzzer: one flipped bit in a JPEG 2000 SIZ marker (Ysiz 1024 → 1,049,600) made OpenJPEG
    allocate 1.6 GB for a 3 KB file. The frame's own header is compared with Rows x Columns first."""
    source = _series(tmp_path, 1, size=32, syntax=syntax)[0]
    data = bytearray(source.read_bytes())
    at = data.index(marker, data.index(b"\xe0\x7f\x10\x00")) + offset  # the height field of the frame header
    data[at:at + 2] = (0x4000).to_bytes(2, "big")  # 32 rows → 16,384 (x 4 for J2K's 32-bit field)
    bomb = tmp_path / "bomb.dcm"
    bomb.write_bytes(bytes(data))
    tracemalloc.start()
    try:
        with pytest.raises(BadFile, match="compressed pixel data of 32x"):
            read_file(bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * 1024 ** 2
    assert read_file(source)  # the undamaged file still decodes


def test_deflated_file_with_absurd_frames_is_refused_quickly():
    """Found by the fuzzer: a 2.5 KB deflated file claiming 40,000 frames spent 7 s in the per-frame loop."""
    sample = Path(__file__).parent / "data" / "deflated_40000_frames.dcm"
    t0 = time.perf_counter()
    with pytest.raises(BadFile, match="declares 40,000 frame"):
        read_file(sample)
    assert time.perf_counter() - t0 < 0.5
