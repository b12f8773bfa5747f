"""Stored pixel values → Hounsfield units: the one definition of air and of the rescale (PS3.3 C.11.1.1.2).

Its own module, outside :mod:`edge_agent.dicom` (whose package imports pydicom), so that the data model,
the reader, the preprocessing (which a GPU machine without pydicom imports) and the phantoms share it
without importing each other.
"""

from __future__ import annotations

import numpy as np

#: Air, and the floor of every HU image here: padding and anything below air become this.
AIR_HU = -1024.0


def to_hu(stored: np.ndarray, slope: float, intercept: float, padding: tuple[int, int] | None,
          out: np.ndarray | None = None) -> np.ndarray:
    """Stored values → float32 HU; padding and anything below air → -1024 (written into ``out`` if given)."""
    if out is None:
        out = np.empty(stored.shape, dtype=np.float32)
    if slope == 1.0:
        np.add(stored, np.float32(intercept), out=out, dtype=np.float32)
    else:
        np.multiply(stored, np.float32(slope), out=out, dtype=np.float32)
        out += np.float32(intercept)
    if padding is not None:
        lo, hi = padding
        # Padding that maps to air or below is handled by the clamp; only padding
        # that would land above air (e.g. unsigned 0 with intercept 0) needs a mask.
        if max(lo * slope, hi * slope) + intercept > AIR_HU:
            mask = stored == lo if lo == hi else (stored >= lo) & (stored <= hi)
            out[mask] = AIR_HU
    np.maximum(out, np.float32(AIR_HU), out=out)
    return out
