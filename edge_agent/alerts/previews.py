"""Key-image previews: a small windowed image of an alert's key slice, on ``{prefix}/{site}/{device}/previews``.

A preview is made from the slice's Hounsfield units only — the Pixel Data,
never overlay planes, burnt-in header text or anything else from the original
file — so it carries no PHI and no overlays of the original. The steps:

1. window the HU with the model's first preprocessing window (the brain window
   40/80 for ``ich``; 40/400 for a model without one) to [0, 255];
2. downscale (area average, Pillow's BOX filter on the float image) so that the
   longer side is at most ``size`` pixels, keeping the physical aspect ratio
   (pixel spacing); this thumbnail is all the pipeline keeps in memory, for a
   few best-scoring slices per open series and model (:class:`PreviewCache`);
3. where the finding's evidence lies on the slice (its key slice's ``region_px``), frame
   that region in red (the image becomes RGB; ``regions`` in the payload says where);
4. encode: PNG when it fits ``max_bytes``, else JPEG at falling quality, then
   smaller sizes, until it does.

The payload (``edge-agent/preview/1``, :func:`build_preview`) names the alert by
``alert_id`` and ``revision`` and goes through the outbox like a result
(delivery ``broker``: done at PUBACK; it never waits for, or holds up, receipts).
docs/ALERTS.md describes the topic and how a consumer shows it.
"""

from __future__ import annotations

import base64
import io
import re
from dataclasses import dataclass

import numpy as np

from edge_agent.alerts.payloads import SCHEMA_IDS, validate_payload
from edge_agent.config import PREVIEW_FORMATS, check_between, check_one_of

#: Window (centre, width HU) for a model without preprocessing windows (a plug-in such as coronary_calcium).
DEFAULT_WINDOW = (40.0, 400.0)
#: The brain window, always used for ich (a bleed is shown the way a radiologist first looks at it).
BRAIN_WINDOW = (40.0, 80.0)
FORMATS = PREVIEW_FORMATS
MIME_EXT = {"image/png": "png", "image/jpeg": "jpg"}
_JPEG_QUALITIES = (90, 80, 70, 60, 50, 40)
_MIN_SIDE = 16


@dataclass(frozen=True)
class PreviewSettings:
    """``[alerts]`` preview settings: longest side (px), byte cap of the encoded image, format."""

    size: int = 256
    max_bytes: int = 65536
    format: str = "auto"
    keep: int = 4   # best-scoring slices whose thumbnails are kept per open series and model (beyond key_slices)

    def __post_init__(self) -> None:
        # The config's rules and sentences (config.validate checks [alerts] with the same functions).
        check_between("alerts.preview_size", int(self.size), 16, 1024, " pixels")
        check_between("alerts.preview_max_bytes", int(self.max_bytes), 1024, 1 << 20)
        check_one_of("alerts.preview_format", self.format, FORMATS)


def window_for(manifest) -> tuple[float, float]:
    """The preview window of a model: brain 40/80 for ich, else its first preprocessing window, else 40/400."""
    if any(getattr(f, "code", None) == "ich" for f in getattr(manifest, "findings", ())):
        return BRAIN_WINDOW
    pp = getattr(manifest, "preprocessing", None)
    windows = getattr(pp, "windows", None) if pp is not None else None
    if windows:
        centre, width = windows[0]
        return float(centre), float(width)
    return DEFAULT_WINDOW


def apply_window(hu: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """HU → float32 grey levels in [0, 255]: (hu - (centre - width/2)) / width, clipped."""
    centre, width = window
    low = centre - width / 2.0
    return (np.clip((np.asarray(hu, np.float32) - np.float32(low)) / np.float32(width), 0.0, 1.0)
            * np.float32(255.0)).astype(np.float32)


def target_shape(rows: int, cols: int, pixel_spacing=(1.0, 1.0), size: int = 256) -> tuple[int, int]:
    """(height, width) of the thumbnail: the physical aspect ratio, the longer side at most ``size``."""
    sy, sx = (float(v) if v else 1.0 for v in (tuple(pixel_spacing) + (1.0, 1.0))[:2])
    height_mm, width_mm = rows * sy, cols * sx
    # at most one output pixel per input pixel along the finer axis: never upscale
    scale = min(size / max(height_mm, width_mm), 1.0 / min(sy, sx))
    return max(1, min(rows, round(height_mm * scale))), max(1, min(cols, round(width_mm * scale)))


def _resize(grey: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    if grey.shape == shape:
        return grey
    image = Image.fromarray(np.ascontiguousarray(grey, np.float32), mode="F")
    return np.asarray(image.resize((shape[1], shape[0]), Image.Resampling.BOX), np.float32)


def thumbnail(hu: np.ndarray, window: tuple[float, float], pixel_spacing=(1.0, 1.0), size: int = 256) -> np.ndarray:
    """The uint8 preview image of one slice's HU (windowed, then area-downscaled)."""
    grey = apply_window(hu, window)
    grey = _resize(grey, target_shape(grey.shape[0], grey.shape[1], pixel_spacing, size))
    return np.clip(np.rint(grey), 0, 255).astype(np.uint8)


def encode_image(image: np.ndarray, max_bytes: int = 65536, fmt: str = "auto") -> tuple[bytes, str, int, int]:
    """(bytes, mime, width, height) of ``image`` (uint8, grey 2-D or RGB rows × columns × 3) in at most ``max_bytes``.

    PNG first (lossless) unless ``fmt`` is jpeg; then JPEG at qualities 90 … 40 unless ``fmt`` is png;
    then the image at 3/4 of its size, and so on. Only pixel values are written: no text chunks, no EXIF.
    """
    from PIL import Image

    current = Image.fromarray(np.ascontiguousarray(image, np.uint8), mode="RGB" if image.ndim == 3 else "L")
    while True:
        if fmt in ("auto", "png"):
            buf = io.BytesIO()
            current.save(buf, format="PNG", optimize=True)
            if buf.tell() <= max_bytes:
                return buf.getvalue(), "image/png", current.width, current.height
        if fmt in ("auto", "jpeg"):
            for quality in _JPEG_QUALITIES:
                buf = io.BytesIO()
                current.save(buf, format="JPEG", quality=quality)
                if buf.tell() <= max_bytes:
                    return buf.getvalue(), "image/jpeg", current.width, current.height
        if max(current.width, current.height) <= _MIN_SIDE:
            raise ValueError(f"a preview does not fit in {max_bytes} bytes even at {current.width}x{current.height}")
        current = current.resize((max(1, current.width * 3 // 4), max(1, current.height * 3 // 4)),
                                 Image.Resampling.BOX)


#: The frame around an evidence region: red, which no grey level of the window can be mistaken for.
FRAME_RGB = (230, 30, 30)


def framed(image: np.ndarray, boxes) -> np.ndarray:
    """``image`` (grey uint8) as RGB with each box ``(r0, c0, r1, c1)`` (its pixels) framed in red, the frame
    drawn two pixels outside the box so the region itself stays as the window shows it."""
    from PIL import Image, ImageDraw

    h, w = image.shape
    picture = Image.fromarray(np.ascontiguousarray(image, np.uint8), mode="L").convert("RGB")
    draw = ImageDraw.Draw(picture)
    for r0, c0, r1, c1 in boxes:
        x0, y0 = max(0, round(c0) - 2), max(0, round(r0) - 2)
        x1, y1 = min(w - 1, round(c1) + 2), min(h - 1, round(r1) + 2)
        if x1 > x0 and y1 > y0:
            draw.rectangle([x0, y0, x1, y1], outline=FRAME_RGB, width=1)
    return np.asarray(picture, np.uint8)


def build_preview(alert: dict, *, sop_instance_uid: str, image: np.ndarray, window: tuple[float, float],
                  settings: PreviewSettings = PreviewSettings(), boxes=()) -> dict:
    """The preview payload (``edge-agent/preview/1``) of ``alert``'s key slice ``image`` (a :func:`thumbnail`);
    ``boxes`` (the evidence region on that slice, in ``image``'s pixels) are framed in red (:func:`framed`) and
    listed as ``regions``."""
    boxes = [tuple(float(v) for v in b) for b in boxes]
    data, mime, width, height = encode_image(framed(image, boxes) if boxes else image, settings.max_bytes,
                                             settings.format)
    payload = {
        "schema": SCHEMA_IDS["preview"],
        "alert_id": alert["alert_id"],
        "revision": int(alert["revision"]),
        "state": alert["state"],
        "site": alert["site"],
        "device": alert["device"],
        "sop_instance_uid": str(sop_instance_uid),
        "mime": mime,
        "width": int(width),
        "height": int(height),
        "bytes": len(data),
        "window": {"centre": float(window[0]), "width": float(window[1])},
        "data": base64.b64encode(data).decode("ascii"),
    }
    if boxes:   # in the encoded image's pixels (it may have been made smaller to fit max_bytes)
        sy, sx = height / image.shape[0], width / image.shape[1]
        payload["regions"] = [[round(r0 * sy, 1), round(c0 * sx, 1), round(r1 * sy, 1), round(c1 * sx, 1)]
                              for r0, c0, r1, c1 in boxes]
    if alert.get("disclaimer"):
        payload["disclaimer"] = alert["disclaimer"]
    return validate_payload("preview", payload)


def decode_preview(payload: dict) -> bytes:
    """The image bytes of a (validated) preview payload."""
    return base64.b64decode(payload["data"], validate=True)


_SAFE = re.compile(r"^[0-9a-f-]{36}$")


def preview_file_name(payload: dict) -> str:
    """``<alert_id>-r<revision>.<png|jpg>``; refuses anything that is not a uuid, an int and a known mime."""
    alert = str(payload["alert_id"]).lower()
    if not _SAFE.match(alert):
        raise ValueError(f"alert_id {alert!r} is not a uuid")
    return f"{alert}-r{int(payload['revision'])}.{MIME_EXT[payload['mime']]}"


class PreviewCache:
    """Thumbnails of the best-scoring slices of one open series for one model (memory bounded).

    ``offer(sop, score, hu_fn, spacing)`` keeps the slice when it is among the ``keep`` best by score;
    ``hu_fn`` is only called then (the HU of a stored-only slice are computed for candidates only).
    """

    def __init__(self, window: tuple[float, float], settings: PreviewSettings, keep: int) -> None:
        self.window = window
        self.settings = settings
        self.keep = max(1, keep)
        self._best: dict[str, tuple[float, np.ndarray]] = {}
        # what changed since the last drain(): kept thumbnails (uid -> (score, image)) and evicted uids, so the
        # pipeline can mirror the cache in its state DB (previews after a restart or a reopen)
        self._added: dict[str, tuple[float, np.ndarray]] = {}
        self._dropped: set[str] = set()

    def load(self, items) -> None:
        """Seed the cache with thumbnails kept before (``(uid, score, image)``, from the state DB); not a change."""
        for uid, score, image in items:
            self._best[uid] = (float(score), image)
        while len(self._best) > self.keep:
            del self._best[min(self._best, key=lambda k: self._best[k][0])]

    def drain(self) -> tuple[list[tuple[str, float, np.ndarray]], list[str]]:
        """(thumbnails kept, uids evicted) since the last call."""
        added = [(uid, score, image) for uid, (score, image) in self._added.items()]
        dropped = sorted(self._dropped)
        self._added, self._dropped = {}, set()
        return added, dropped

    def wants(self, score: float) -> bool:
        return len(self._best) < self.keep or score > min(s for s, _ in self._best.values())

    def offer(self, sop_instance_uid: str, score: float, hu_fn, pixel_spacing) -> None:
        def image():
            hu = hu_fn()
            return None if hu is None else thumbnail(hu, self.window, pixel_spacing, self.settings.size)

        self.offer_image(sop_instance_uid, score, image)

    def offer_image(self, sop_instance_uid: str, score: float, image_fn) -> None:
        """Like :meth:`offer` with the thumbnail itself (``image_fn()``: uint8, or None): a slice scored after
        its pixels went (a 2.5-D model's, once its neighbours landed) had its thumbnail made on arrival."""
        if sop_instance_uid in self._best or not self.wants(score):
            return
        image = image_fn()
        if image is None:
            return
        self._best[sop_instance_uid] = self._added[sop_instance_uid] = (score, image)
        self._dropped.discard(sop_instance_uid)
        if len(self._best) > self.keep:
            worst = min(self._best, key=lambda k: self._best[k][0])
            del self._best[worst]
            if self._added.pop(worst, None) is None:
                self._dropped.add(worst)

    def image_for(self, sop_instance_uids) -> tuple[str, np.ndarray] | None:
        """The first of ``sop_instance_uids`` (key slices, best first) that has a thumbnail."""
        for uid in sop_instance_uids:
            if uid in self._best:
                return uid, self._best[uid][1]
        return None

    def __len__(self) -> int:
        return len(self._best)


def save_preview(directory, payload: dict):
    """Write a preview's image as ``<alert_id>-r<revision>.<png|jpg>`` in ``directory`` (atomically); its path."""
    import os
    from pathlib import Path

    target = Path(directory) / preview_file_name(payload)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.write_bytes(decode_preview(payload))
    os.replace(tmp, target)
    return target
