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
class ContextSpec:
    """Neighbour slices a 2.5-D model sees beside the slice it scores (the manifest's ``preprocessing.context``).

    offset_mm: distance along the slice normal at which each neighbour is taken, one below and one above
        (the nearest slice to that distance; see :func:`neighbour_indices`).
    windows: (centre, width) pairs in HU, one channel per window per neighbour.

    The model input is ``[centre windows..., below windows..., above windows...]``: ``len(windows)`` of the
    slice itself, then ``len(context.windows)`` of the neighbour below (smaller position along the normal),
    then as many of the neighbour above.
    """

    offset_mm: float
    windows: tuple[tuple[float, float], ...]

    @classmethod
    def from_dict(cls, d: dict) -> "ContextSpec":
        return cls(offset_mm=float(d["offset_mm"]), windows=tuple((float(c), float(w)) for c, w in d["windows"]))

    def to_dict(self) -> dict:
        return {"offset_mm": self.offset_mm, "windows": [list(w) for w in self.windows]}


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
    context: neighbour slices for a 2.5-D model (:class:`ContextSpec`), or ``None`` for one slice alone.
    """

    windows: tuple[tuple[float, float], ...] = ((40.0, 80.0), (80.0, 200.0), (600.0, 2800.0))
    size: tuple[int, int] = (128, 128)
    pixel_spacing_mm: float | None = None
    dtype: str = "float32"
    context: ContextSpec | None = None

    @property
    def channels(self) -> int:
        """Channels of the model input: the slice's windows plus, with context, two neighbours' windows."""
        return len(self.windows) + (2 * len(self.context.windows) if self.context else 0)

    @classmethod
    def from_dict(cls, d: dict) -> "PreprocessSpec":
        return cls(
            windows=tuple((float(c), float(w)) for c, w in d.get("windows", cls.windows)),
            size=tuple(int(v) for v in d.get("size", cls.size)),
            pixel_spacing_mm=None if d.get("pixel_spacing_mm") is None else float(d["pixel_spacing_mm"]),
            dtype=str(d.get("dtype", "float32")),
            context=ContextSpec.from_dict(d["context"]) if d.get("context") else None,
        )

    def to_dict(self) -> dict:
        out = {"windows": [list(w) for w in self.windows], "size": list(self.size),
               "pixel_spacing_mm": self.pixel_spacing_mm, "dtype": self.dtype}
        if self.context is not None:
            out["context"] = self.context.to_dict()
        return out


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


def _windowed(hu: np.ndarray, pixel_spacing: tuple[float, float], spec: PreprocessSpec,
              windows: tuple[tuple[float, float], ...]) -> np.ndarray:
    hu = np.asarray(hu, dtype=np.float32)
    if hu.ndim == 2:
        hu = hu[None]
    h, w = hu.shape[-2:]
    if spec.pixel_spacing_mm is None:
        scale = (h / spec.size[0], w / spec.size[1])
    else:
        scale = (spec.pixel_spacing_mm / float(pixel_spacing[0]), spec.pixel_spacing_mm / float(pixel_spacing[1]))
    resized = resample(hu, spec.size, scale)
    channels = [window(resized, c, w_) for c, w_ in windows]
    return np.stack(channels, axis=1).astype(spec.dtype, copy=False)


def prepare_slices(hu: np.ndarray, pixel_spacing: tuple[float, float], spec: PreprocessSpec) -> np.ndarray:
    """HU slices ``(N, H, W)`` (or one ``(H, W)``) → the slices' own channels ``(N, len(windows), rows, cols)``.

    Air (-1024) fills anything outside the field; each window becomes a channel. For a model without
    ``context`` this is its whole input; a 2.5-D model's input adds two neighbours' :func:`context_planes`
    (:func:`stack_context`, or :func:`prepare_volume` for a whole series).
    """
    return _windowed(hu, pixel_spacing, spec, spec.windows)


def context_planes(hu: np.ndarray, pixel_spacing: tuple[float, float], spec: PreprocessSpec) -> np.ndarray:
    """HU slices → the channels each contributes as a neighbour: ``(N, len(context.windows), rows, cols)``."""
    if spec.context is None:
        raise ValueError("this preprocessing has no context (neighbour slices)")
    return _windowed(hu, pixel_spacing, spec, spec.context.windows)


def stack_context(own: np.ndarray, below: np.ndarray, above: np.ndarray) -> np.ndarray:
    """The 2.5-D model input: each slice's own channels, then its neighbour below's, then above's."""
    return np.concatenate([own, below, above], axis=1)


#: Two slices closer than this along the normal are the same position (a resend, a second reconstruction):
#: the value the series assembly uses (edge_agent.dicom.geometry.SAME_POSITION_MM, which imports pydicom's
#: package and so cannot be imported here, where a GPU machine without pydicom imports; a test holds the two
#: equal), so that the neighbours a 2.5-D model sees and the slices assembly keeps agree.
SAME_POSITION_MM = 0.01


def neighbour_of(positions: np.ndarray, i: int, offset_mm: float, side: int) -> int:
    """Index of slice ``i``'s neighbour ``offset_mm`` below (``side`` -1) or above (+1) along the normal.

    The slice on that side (strictly beyond ``i``'s position) nearest to ``position ± offset``; ``i`` itself
    when there is none within ``2 × offset`` of slice ``i`` (the end of the series or a gap): the model
    then sees the slice repeated, as it did at the ends of its training series.
    """
    p = np.asarray(positions, dtype=np.float64)
    target = p[i] + side * offset_mm
    beyond = (p - p[i]) * side > SAME_POSITION_MM
    if not beyond.any():
        return i
    cand = np.flatnonzero(beyond)
    j = int(cand[np.argmin(np.abs(p[cand] - target))])
    return j if abs(p[j] - p[i]) <= 2.0 * offset_mm else i


def neighbour_indices(positions: np.ndarray, offset_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """For slices at ``positions`` (mm along the normal, any order): (index below, index above) of each."""
    n = len(positions)
    below = np.array([neighbour_of(positions, i, offset_mm, -1) for i in range(n)], dtype=np.int64)
    above = np.array([neighbour_of(positions, i, offset_mm, +1) for i in range(n)], dtype=np.int64)
    return below, above


def volume_batches(hu: np.ndarray, pixel_spacing: tuple[float, float], spec: PreprocessSpec,
                   positions: np.ndarray | None = None, batch: int | None = None):
    """A series' model input in batches of ``batch`` slices (all at once when None): yields ``(start, x)``.

    Without ``context`` each batch is :func:`prepare_slices`. With it, ``positions`` (mm along the normal;
    None: equally spaced, ``offset_mm`` apart) pick each slice's neighbours (:func:`neighbour_indices`);
    every slice's context planes are prepared first (small), the own channels one batch at a time, so
    memory stays flat for long series.
    """
    hu = np.asarray(hu)   # converted to float32 one batch at a time (prepare_slices)
    if hu.ndim == 2:
        hu = hu[None]
    n = hu.shape[0]
    step = max(1, int(batch or n or 1))
    if spec.context is None:
        for start in range(0, n, step):
            yield start, prepare_slices(hu[start:start + step], pixel_spacing, spec)
        return
    positions = np.arange(n, dtype=np.float64) * spec.context.offset_mm if positions is None \
        else np.asarray(positions, dtype=np.float64)
    if positions.shape != (n,):
        raise ValueError(f"{positions.size} slice positions for {n} slices")
    below, above = neighbour_indices(positions, spec.context.offset_mm)
    planes = np.concatenate([context_planes(hu[i:i + step], pixel_spacing, spec) for i in range(0, n, step)]) \
        if n else None
    for start in range(0, n, step):
        part = slice(start, start + step)
        yield start, stack_context(prepare_slices(hu[part], pixel_spacing, spec), planes[below[part]],
                                   planes[above[part]])


def prepare_volume(hu: np.ndarray, pixel_spacing: tuple[float, float], spec: PreprocessSpec,
                   positions: np.ndarray | None = None) -> np.ndarray:
    """A series' HU ``(N, H, W)`` → the model input ``(N, spec.channels, rows, cols)``.

    Without ``context`` this is :func:`prepare_slices`. With it, ``positions`` (mm along the normal) pick
    each slice's neighbours (:func:`neighbour_indices`); when ``positions`` is None the slices are taken as
    equally spaced, ``offset_mm`` apart (one slice each side).
    """
    if spec.context is None:
        return prepare_slices(hu, pixel_spacing, spec)
    return next(volume_batches(hu, pixel_spacing, spec, positions))[1]
