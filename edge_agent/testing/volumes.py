"""Small CT-like volumes (HU, float32, ``(slices, rows, columns)``) and DICOM series made of them, for tests.

Each maker is deterministic for its arguments (``seed``): the tests compare against values they wrote.

* :func:`tiny_model_volume`: flat 30 HU slices, the ``hot`` ones 70 HU — what the tiny model of
  :mod:`edge_agent.testing.models` scores about 0.0067 and 0.99.
* :func:`random_hu`: uniform integer HU noise (decoder, receiver and limit tests: content does not matter).
* :func:`water_disc`: air around a water disc with some noise (ingest tests), :func:`dicom_bytes` its files.
* :func:`head_volume`: integer-valued air, skull, brain with noise and a bright spot that marks each slice.
* :func:`phantom_series`: a head-like series written to DICOM, a bright blob when ``bright`` (TensorRT,
  calibration and preprocessing tests).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def tiny_model_volume(n: int, hot=(), size: int | tuple[int, int] = 32, base_hu: float = 30.0,
                      hot_hu: float = 70.0) -> np.ndarray:
    """``n`` slices filled with ``base_hu``; the slices in ``hot`` with ``hot_hu``."""
    rows, cols = (size, size) if isinstance(size, int) else size
    vol = np.full((n, rows, cols), base_hu, np.float32)
    for i in hot:
        vol[i] = hot_hu
    return vol


def random_hu(n: int = 3, size: int = 32, seed: int = 0, low: int = -1000, high: int = 1500) -> np.ndarray:
    """Uniform integer HU in [low, high), as float32."""
    return np.random.default_rng(seed).integers(low, high, (n, size, size)).astype(np.float32)


def water_disc(n: int = 3, size: int = 32, seed: int = 0) -> np.ndarray:
    """A small CT-like volume in HU (air around a water disc with some noise)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    disc = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2) < (size / 3) ** 2
    vol = np.where(disc, 40.0, -1000.0)[None].repeat(n, 0)
    return (vol + rng.normal(0, 5, vol.shape)).astype(np.float32)


def dicom_bytes(n: int = 3, *, seed: int = 0, headers=None, tmp: Path,
                sop_instance_uids: list[str] | None = None) -> list[bytes]:
    """Encode a :func:`water_disc` series and return each file's bytes (written through synth.save in ``tmp``)."""
    from edge_agent.dicom.synth import SeriesHeaders, save, slice_datasets

    headers = headers or SeriesHeaders()
    out = []
    for k, ds in enumerate(slice_datasets(water_disc(n, seed=seed), (5.0, 0.5, 0.5), headers,
                                          sop_instance_uids=sop_instance_uids)):
        p = save(ds, tmp / f"enc-{seed}-{k}.dcm")
        out.append(p.read_bytes())
        p.unlink()
    return out


def head_volume(slices: int = 6, size: int = 48, seed: int = 1) -> np.ndarray:
    """Integer-valued HU phantom: air, skull, brain with noise, a bright spot per slice."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    c = (size - 1) / 2
    r2 = ((yy - c) / (0.42 * size)) ** 2 + ((xx - c) / (0.36 * size)) ** 2
    vol = np.full((slices, size, size), -1000.0, np.float32)
    vol[:, r2 < 1.0] = 1200.0
    vol[:, r2 < 0.8] = 40.0
    vol += rng.integers(-20, 20, vol.shape).astype(np.float32)
    for k in range(slices):
        vol[k, (10 + k) % size, 12] = 2000.0 + 10 * k  # marks each slice
    return np.round(vol)


def phantom_series(out_dir: Path, *, seed: int, bright: bool, slices: int = 6, matrix: int = 48,
                   signed: bool = False, padding: bool = True) -> list[Path]:
    """A small head-like CT series: water ellipse in air, with a bright blob when ``bright``."""
    from edge_agent.dicom.synth import SeriesHeaders, write_series

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:matrix, :matrix]
    c = (matrix - 1) / 2
    inside = ((yy - c) / (0.42 * matrix)) ** 2 + ((xx - c) / (0.36 * matrix)) ** 2 <= 1
    vol = np.full((slices, matrix, matrix), -1000.0, np.float32)
    vol[:, inside] = 35.0
    vol += rng.normal(0, 4, vol.shape).astype(np.float32)
    if bright:
        blob = ((yy - c - 5) ** 2 + (xx - c + 4) ** 2) <= (matrix // 6) ** 2
        vol[1:-1, blob] = 75.0
    outside = np.broadcast_to(((yy - c) ** 2 + (xx - c) ** 2) > (0.49 * matrix) ** 2, vol.shape)
    headers = SeriesHeaders(signed=signed, padding_value=(-2000 if signed else 0) if padding else None,
                            rescale_intercept=-1024.0)
    if padding and not signed:
        vol = np.maximum(vol, -1023.0)  # keep stored value 0 reserved for padding
    return write_series(vol, out_dir, spacing=(5.0, 4.0, 4.0), headers=headers,
                        outside_mask=outside if padding else None)
