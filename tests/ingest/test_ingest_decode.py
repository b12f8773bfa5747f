"""Compressed series decode in worker processes (every core), with the same result as in-thread."""

from __future__ import annotations

import numpy as np
import psutil
import pytest

from ingest_helpers import Collector, settle
from edge_agent.testing.volumes import water_disc as phantom
from edge_agent.dicom import BadFile, read_file
from edge_agent.dicom.synth import SeriesHeaders, write_series
from edge_agent.ingest.decode import Decoder


def test_decoder_processes_match_in_thread_and_leave_nothing_behind(tmp_path):
    paths = write_series(phantom(2), tmp_path / "j2k", transfer_syntax="j2k-lossless")
    decoder = Decoder(2)
    try:
        slices = decoder.read(paths[0])
        # multiprocessing's resource tracker and forkserver (started by edge_agent.dicom's parallel scan
        # earlier in the session) live as long as this process; they are not decode workers.
        workers = [p for p in psutil.Process().children(recursive=True)
                   if not any(k in " ".join(p.cmdline()) for k in ("resource_tracker", "forkserver"))]
        assert workers, "decoding should run in worker processes"
        with pytest.raises(BadFile):
            decoder.read(tmp_path / "j2k")  # a folder: the worker's error comes back as is
    finally:
        decoder.close()
    reference = read_file(paths[0])
    assert slices[0].sop_instance_uid == reference[0].sop_instance_uid
    np.testing.assert_array_equal(slices[0].hu, reference[0].hu)
    gone, alive = psutil.wait_procs(workers, timeout=5)
    assert not alive


def test_decoder_can_hand_over_stored_values(tmp_path):
    """The agent's mode: stored values (half the bytes of HU) come back from the worker processes."""
    headers = SeriesHeaders(signed=True)
    paths = write_series(phantom(2), tmp_path / "j2k", transfer_syntax="j2k-lossless", headers=headers)
    decoder = Decoder(2, stored_only=True)
    try:
        compressed = decoder.read(paths[0])
    finally:
        decoder.close()
    native = Decoder(0, stored_only=True).read(write_series(phantom(1), tmp_path / "raw", headers=headers)[0])
    reference = read_file(paths[0])
    for s in (compressed[0], native[0]):
        assert s.hu is None and s.stored.dtype == np.int16 and s.rescale is not None
    np.testing.assert_array_equal(compressed[0].hu_pixels(), reference[0].hu)


@pytest.mark.parametrize("syntax", ["rle", "jpegls", "j2k-lossless"])
def test_compressed_series_are_ingested(make_ingest, dirs, syntax):
    watch, _ = dirs
    c = Collector()
    ing = make_ingest(c, decode_processes=True, workers=2)
    headers = SeriesHeaders()
    volume = phantom(3)
    write_series(volume, watch / syntax, headers=headers, transfer_syntax=syntax)
    assert c.wait(files=3, timeout=20)
    settle(ing)
    by_name = {f.path.name: f for f in c.files}
    for k in range(3):
        hu = by_name[f"IM{k + 1:05d}.dcm"].slices[0].hu
        np.testing.assert_allclose(hu, volume[k], atol=0.51)  # lossless, up to the stored integer rounding
    assert {f.series_instance_uid for f in c.files} == {headers.series_instance_uid}


def test_a_dead_worker_fails_one_file_and_the_pool_comes_back(tmp_path):
    paths = write_series(phantom(2), tmp_path / "rle", transfer_syntax="rle")
    decoder = Decoder(1)
    try:
        decoder.read(paths[0])
        workers = [p for p in psutil.Process().children(recursive=True)  # not the forkserver of scan()
                   if not any(k in " ".join(p.cmdline()) for k in ("resource_tracker", "forkserver"))]
        for worker in workers:
            worker.kill()  # as the kernel's OOM killer would
        psutil.wait_procs(workers, timeout=5)
        with pytest.raises(BadFile, match="worker process died"):
            decoder.read(paths[1])
        again = decoder.read(paths[1])  # a fresh pool
    finally:
        decoder.close()
    np.testing.assert_array_equal(again[0].hu, read_file(paths[1])[0].hu)


@pytest.mark.parametrize("fast_headers", [True, False], ids=["fast-header", "pydicom"])
def test_a_native_file_is_parsed_once(tmp_path, monkeypatch, fast_headers):
    """The decoder tells native from compressed on the one parse it then reads the slices from."""
    from edge_agent.dicom import fastpath, reader

    parses = []

    def counted(parse):
        def wrapper(*args, **kwargs):
            parses.append(parse.__name__)
            return parse(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(reader, "FAST_HEADERS", fast_headers)
    monkeypatch.setattr(reader, "dcmread", counted(reader.dcmread))
    monkeypatch.setattr(fastpath, "read_header", counted(fastpath.read_header))
    path = write_series(phantom(1), tmp_path / "raw")[0]
    decoder = Decoder(1)
    try:
        slices = decoder.read(path)
    finally:
        decoder.close()
    assert parses == (["read_header"] if fast_headers else ["dcmread"])
    np.testing.assert_array_equal(slices[0].hu, read_file(path)[0].hu)
