"""Pure preprocessing: Hounsfield units → model input tensors.

Nothing here does I/O or imports a model runtime; the same functions feed
training, calibration and inference, so a model always sees exactly what it
was trained on. The GPU kernel in ``inference/trt`` reproduces
:func:`prepare_slices` and is tested against it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge_agent.hu import AIR_HU  # noqa: E402,F401 - one definition of air


@dataclass(frozen=True)
class PreprocessSpec:
    """How one model wants its input (the manifest's ``preprocessing``).

    windows: (centre, width) pairs in HU, one output channel each, scaled to [0, 1].
    size: (rows, cols) of the model input.
    pixel_spacing_mm: physical size of one input pixel; the slice is resampled
        to it and centre-cropped/padded to ``size`` so that a finding has the
        same size in pixels whatever the scanner's field of view.
        ``None`` resizes the whole field of view to ``size`` instead.
    dtype: the model input dtype.
    """

    windows: tuple[tuple[float, float], ...] = ((40.0, 80.0), (80.0, 200.0), (600.0, 2800.0))
    size: tuple[int, int] = (128, 128)
    pixel_spacing_mm: float | None = None
    dtype: str = "float32"

    @classmethod
    def from_dict(cls, d: dict) -> "PreprocessSpec":
        return cls(
            windows=tuple((float(c), float(w)) for c, w in d.get("windows", cls.windows)),
            size=tuple(int(v) for v in d.get("size", cls.size)),
            pixel_spacing_mm=None if d.get("pixel_spacing_mm") is None else float(d["pixel_spacing_mm"]),
            dtype=str(d.get("dtype", "float32")),
        )

    def to_dict(self) -> dict:
        return {"windows": [list(w) for w in self.windows], "size": list(self.size),
                "pixel_spacing_mm": self.pixel_spacing_mm, "dtype": self.dtype}


def window(hu: np.ndarray, centre: float, width: float) -> np.ndarray:
    """Linear window (PS3.3 C.11.2.1.2, simplified): [c - w/2, c + w/2] → [0, 1]."""
    lo = centre - width / 2.0
    return np.clip((hu - lo) * (1.0 / width), 0.0, 1.0)


def _resample_indices(n_in: int, n_out: int, scale: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source coordinates for ``n_out`` samples spaced ``scale`` input pixels apart, centred."""
    centre_in = (n_in - 1) / 2.0
    coords = centre_in + (np.arange(n_out) - (n_out - 1) / 2.0) * scale
    i0 = np.floor(coords).astype(np.int64)
    frac = (coords - i0).astype(np.float32)
    return i0, frac, coords


def resample(image: np.ndarray, size: tuple[int, int], scale: tuple[float, float], fill: float = AIR_HU) -> np.ndarray:
    """Bilinear resampling of a 2-D or stacked (N, H, W) image about its centre.

    ``scale`` is the step in input pixels per output pixel along (rows, cols);
    samples outside the image are ``fill``.
    """
    img = np.asarray(image, dtype=np.float32)
    squeeze = img.ndim == 2
    if squeeze:
        img = img[None]
    h, w = img.shape[-2:]
    padded = np.pad(img, ((0, 0), (1, 2), (1, 2)), constant_values=fill)
    r0, rf, rc = _resample_indices(h, size[0], scale[0])
    c0, cf, cc = _resample_indices(w, size[1], scale[1])
    r0 = np.clip(r0, -1, h) + 1
    c0 = np.clip(c0, -1, w) + 1
    top = padded[:, r0][:, :, c0] * (1 - cf) + padded[:, r0][:, :, c0 + 1] * cf
    bot = padded[:, r0 + 1][:, :, c0] * (1 - cf) + padded[:, r0 + 1][:, :, c0 + 1] * cf
    out = top * (1 - rf)[:, None] + bot * rf[:, None]
    outside = (rc < -0.5) | (rc > h - 0.5)
    out[:, outside, :] = fill
    outside = (cc < -0.5) | (cc > w - 0.5)
    out[:, :, outside] = fill
    return out[0] if squeeze else out


def prepare_slices(hu: np.ndarray, pixel_spacing: tuple[float, float], spec: PreprocessSpec) -> np.ndarray:
    """HU slices ``(N, H, W)`` (or one ``(H, W)``) → model input ``(N, C, rows, cols)``.

    Air (-1024) fills anything outside the field; each window becomes a channel.
    """
    hu = np.asarray(hu, dtype=np.float32)
    if hu.ndim == 2:
        hu = hu[None]
    h, w = hu.shape[-2:]
    if spec.pixel_spacing_mm is None:
        scale = (h / spec.size[0], w / spec.size[1])
    else:
        scale = (spec.pixel_spacing_mm / float(pixel_spacing[0]), spec.pixel_spacing_mm / float(pixel_spacing[1]))
    resized = resample(hu, spec.size, scale)
    channels = [window(resized, c, w_) for c, w_ in spec.windows]
    return np.stack(channels, axis=1).astype(spec.dtype, copy=False)
