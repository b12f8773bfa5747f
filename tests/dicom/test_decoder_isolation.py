"""Decoders that can take the process down run where that costs one file (issue 16 §1), in `scan`/`infer` too.

gdcm is the only decoder here for JPEG baseline/extended/lossless, and it aborts the process on some
damaged data (an uncaught C++ exception). `scan` therefore reads such files in worker processes
however few there are; when a worker dies, the file it was reading is left out with a sentence and the
rest is decoded in a rebuilt pool. The worker's death here is a real SIGKILL of a real worker process.
"""

from __future__ import annotations

import os
import shutil
import signal

import numpy as np
import pydicom

from .conftest import data_file, independent_hu
from edge_agent.dicom import parallel
from edge_agent.dicom.assembly import plan
from edge_agent.dicom.reader import read_file
from edge_agent.dicom.synth import write_series

JPEG_LOSSLESS = "JPGLosslessP14SV1_1s_1f_8b.dcm"


def test_few_gdcm_files_are_read_in_worker_processes(tmp_path):
    src = data_file(JPEG_LOSSLESS)
    assert str(pydicom.dcmread(src, stop_before_pixels=True).file_meta.TransferSyntaxUID) in parallel.ABORT_PRONE
    files = []
    for k in range(3):
        files.append(str(tmp_path / f"jll{k}.dcm"))
        shutil.copy(src, files[-1])
    assert parallel.choose_mode(files, workers=1) == "process"
    assert parallel.choose_mode(files, workers=4) == "process"
    assert parallel.choose_mode(files, workers=4, executor="thread") == "serial"  # asked for: in-process
    native = write_series(np.zeros((3, 16, 16), np.float32), tmp_path / "native", spacing=(5.0, 1.0, 1.0))
    assert parallel.choose_mode([str(p) for p in native], workers=4) == "serial"  # no pool for these


def test_a_worker_that_dies_costs_its_file_and_the_rest_is_decoded(tmp_path):
    rng = np.random.default_rng(3)
    vol = rng.normal(40, 10, (4, 24, 24)).astype(np.float32)
    files = [str(p) for p in write_series(vol, tmp_path / "s", spacing=(5.0, 1.0, 1.0))]
    slices = [read_file(f, decode=False)[0] for f in files]
    ordered = plan(slices, [], [])
    shape = (len(ordered), ordered[0].rows, ordered[0].columns)
    volume_path, volume = parallel.shared_volume(shape)
    pools = parallel._Pools(1)
    try:
        tasks = [(s.path, volume_path, shape, {s.frame: k}) for k, s in enumerate(ordered)]
        pool = pools.get()
        assert pool.submit(abs, -1).result() == 1  # the worker is up
        (worker_pid,) = list(pool._processes)
        os.kill(worker_pid, signal.SIGKILL)  # it dies, as a gdcm abort or an OOM kill would end it
        results = parallel._decode_isolated(pools, tasks, ordered[0].series_instance_uid)
    finally:
        pools.close()
        os.unlink(volume_path)
    assert results[0] is not None and results[0].path == ordered[0].path
    assert "made the decoder process crash" in results[0].reason
    assert results[1:] == [None] * 3  # the pool was rebuilt: the other files decoded
    for k in range(1, 4):  # into their slots, as an independent decode says
        np.testing.assert_allclose(volume[k], independent_hu(ordered[k].path), atol=0.5)
