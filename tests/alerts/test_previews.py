"""Key-image previews: the pipeline → the outbox → a real Mosquitto → a raw subscriber and `edge-agent listen`.

The series is real DICOM (edge_agent.dicom.synth) with a patient name and ID in its headers, scored by a real
tiny ONNX model (edge_agent/testing/models.py) in the real SeriesPipeline; alerts and previews go through a
real AlertPublisher (its SQLite outbox) to a real Mosquitto. The test windows and downscales the key slice's HU
itself (numpy, 2x2 block means) and compares with the decoded image.
"""

from __future__ import annotations

import base64
import io
import signal
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from edge_agent.testing.models import write_model_folder  # noqa: E402

from edge_agent.testing.mqtt import Recorder
from edge_agent.testing.alerts import fast_settings, make_alert
from edge_agent.testing.wait import wait_until  # noqa: E402
from edge_agent.alerts import AlertPublisher, validate_payload  # noqa: E402
from edge_agent.alerts.outbox import read_rows  # noqa: E402
from edge_agent.alerts.payloads import PayloadError  # noqa: E402
from edge_agent.alerts.previews import (  # noqa: E402
    BRAIN_WINDOW, DEFAULT_WINDOW, PreviewCache, PreviewSettings, build_preview, encode_image, preview_file_name,
    target_shape, thumbnail, window_for,
)
from edge_agent.dicom import read_file  # noqa: E402
from edge_agent.dicom.synth import SeriesHeaders, write_series  # noqa: E402
from edge_agent.errors import ConfigError  # noqa: E402
from edge_agent.inference.models import ModelSet  # noqa: E402
from edge_agent.ingest import IngestedFile  # noqa: E402
from edge_agent.service.pipeline import SeriesPipeline  # noqa: E402

LISTEN = [sys.executable, "-c", "from edge_agent.cli import main; main()", "listen"]
PHI = ("SECRETSURNAME", "SECRETGIVEN", "PID-SECRET-4242", "19450317")


# ------------------------------------------------------------------ units
def test_window_is_brain_for_ich_else_the_first_preprocessing_window():
    ich = SimpleNamespace(findings=[SimpleNamespace(code="ich")], preprocessing=SimpleNamespace(windows=[(80, 200)]))
    lung = SimpleNamespace(findings=[SimpleNamespace(code="lung_nodule")],
                           preprocessing=SimpleNamespace(windows=[(-600.0, 1500.0), (40, 400)]))
    plugin = SimpleNamespace(findings=[SimpleNamespace(code="coronary_calcium")], preprocessing=None)
    assert window_for(ich) == BRAIN_WINDOW == (40.0, 80.0)
    assert window_for(lung) == (-600.0, 1500.0)
    assert window_for(plugin) == DEFAULT_WINDOW


def test_thumbnail_keeps_the_physical_aspect_and_never_upscales():
    assert target_shape(512, 512, (0.5, 0.5), 256) == (256, 256)
    assert target_shape(512, 256, (0.5, 1.0), 256) == (256, 256)     # anisotropic pixels: square in mm
    assert target_shape(100, 80, (1.0, 1.0), 256) == (100, 80)       # smaller than the cap: as it is
    img = thumbnail(np.full((512, 400), 40.0, np.float32), BRAIN_WINDOW, (0.5, 0.5), 128)
    assert img.dtype == np.uint8 and img.shape == (128, 100) and int(img.mean()) == 128


def test_encoding_fits_the_byte_cap_by_jpeg_then_smaller():
    rng = np.random.default_rng(7)
    noise = rng.integers(0, 256, (256, 256), dtype=np.uint8)   # incompressible: PNG ~64 KiB
    data, mime, w, h = encode_image(noise, 40000)
    assert len(data) <= 40000 and mime == "image/jpeg" and (w, h) == (256, 256)
    data, mime, w, h = encode_image(noise, 8192)
    assert len(data) <= 8192 and mime == "image/jpeg" and w < 256
    data, mime, w, h = encode_image(noise, 4096, "png")
    assert len(data) <= 4096 and mime == "image/png" and w < 256
    with Image.open(io.BytesIO(data)) as im:
        assert im.size == (w, h) and im.mode == "L" and not getattr(im, "text", {})
    smooth = np.tile(np.arange(256, dtype=np.uint8), (256, 1))
    data, mime, _, _ = encode_image(smooth, 65536)
    assert mime == "image/png"


def test_preview_payload_validates_and_file_names_are_safe():
    alert = make_alert(3)
    preview = build_preview(alert, sop_instance_uid="1.2.3.4", image=np.zeros((20, 30), np.uint8),
                            window=BRAIN_WINDOW)
    assert validate_payload("preview", preview) is preview
    assert (preview["width"], preview["height"], preview["mime"]) == (30, 20, "image/png")
    assert preview_file_name(preview) == f"{alert['alert_id']}-r1.png"
    with pytest.raises(PayloadError):
        validate_payload("preview", {**preview, "data": "not base64!"})
    with pytest.raises(PayloadError):
        validate_payload("preview", {**preview, "alert_id": "../../etc/passwd"})
    with pytest.raises(ValueError):
        preview_file_name({**preview, "alert_id": "../x"})
    with pytest.raises(ConfigError):
        PreviewSettings(size=4)


def test_cache_keeps_only_the_best_slices():
    cache = PreviewCache(BRAIN_WINDOW, PreviewSettings(size=16), keep=2)
    calls = []

    def hu(v):
        return lambda: calls.append(v) or np.full((32, 32), v, np.float32)

    for uid, score in (("a", 0.1), ("b", 0.9), ("c", 0.5), ("d", 0.05), ("e", 0.95)):
        cache.offer(uid, score, hu(score), (1.0, 1.0))
    assert len(cache) == 2 and cache.image_for(["c", "b", "e"])[0] == "b"
    assert cache.image_for(["a", "c", "d"]) is None
    assert 0.05 not in calls      # HU never computed for a slice that could not be kept


# ------------------------------------------------------------------ the pipeline, the outbox and a real broker
class PublisherOutputs:
    """The agent's wiring (service/app.py _Outputs) without the rest of the agent."""

    def __init__(self, publisher):
        self.publisher, self.results, self.previews = publisher, [], []

    def raise_alert(self, payload):
        self.publisher.raise_alert(payload)

    def publish_preview(self, payload):
        self.previews.append(payload)
        self.publisher.publish_preview(payload)

    def publish_result(self, payload):
        self.results.append(payload)

    def series_done(self, uid):
        pass

    def observe(self, stage, seconds):
        pass

    def count(self, name, state=None):
        pass


def bleed_volume() -> np.ndarray:
    """8 slices of 64x64: six at 30 HU (negative), two with a gradient 40..110 HU, one with a 'bleed' disc."""
    yy, xx = np.mgrid[0:64, 0:64]
    gradient = np.rint(40 + 70 * xx / 63.0).astype(np.float32)
    bleed = gradient.copy()
    bleed[(yy - 30) ** 2 + (xx - 20) ** 2 < 12 ** 2] = 75.0
    bleed[5:9, 50:60] = -100.0     # something below the window: black
    flat = np.full((64, 64), 30.0, np.float32)
    return np.stack([flat, flat, gradient, bleed, flat, flat, flat, flat])


def ingested(path):
    slices = read_file(path, stored_only=True)   # as the agent's ingest hands them over
    now = time.time()
    return IngestedFile(path=path, slices=slices, sop_instance_uids=[s.sop_instance_uid for s in slices],
                        series_instance_uid=slices[0].series_instance_uid, received_at=now, complete_at=now)


def test_bleed_series_gives_a_preview_of_its_key_slice_and_listen_saves_it(mosquitto, tmp_path):
    engines = tmp_path / "engines"
    write_model_folder(engines / "tiny_ich", decision={
        "rule": "top_k_mean", "k": 2, "threshold": 0.9, "preliminary": {"min_slices": 1, "threshold": 0.6}})
    volume = bleed_volume()
    headers = SeriesHeaders(patient_name="SECRETSURNAME^SECRETGIVEN", patient_id="PID-SECRET-4242",
                            patient_birth_date="19450317")
    paths = write_series(volume, tmp_path / "series", spacing=(5.0, 1.0, 1.0), headers=headers)
    sops = [read_file(p)[0].sop_instance_uid for p in paths]
    saved = tmp_path / "previews"
    saved.mkdir()

    recorder = Recorder(mosquitto.url)
    listen = subprocess.Popen([*LISTEN, "--broker", mosquitto.url, "--save-previews", str(saved), "--timeout", "60",
                               "--consumer", "viewer"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    err_lines: list[str] = []
    reader = threading.Thread(target=lambda: err_lines.extend(iter(listen.stderr.readline, "")), daemon=True)
    reader.start()
    publisher = AlertPublisher(fast_settings(mosquitto.url, delivery="receipt"), tmp_path / "outbox.sqlite3")
    publisher.start()
    settings = PreviewSettings(size=32, max_bytes=8192)
    out = PublisherOutputs(publisher)
    pipeline = SeriesPipeline(lambda: ModelSet.load(engines), tmp_path / "series.sqlite3", out, site="site",
                              device="device", settle=0.5, batch=4, previews=settings)
    try:
        assert wait_until(lambda: any("listening on" in line for line in err_lines), 20), err_lines
        pipeline.start()
        for p in paths:
            pipeline.submit(ingested(p))
        assert wait_until(lambda: out.results, 30)
        final = [p for p in out.previews if p["state"] == "final"]
        assert final, out.previews
        _, preview, msg = recorder.wait_for(lambda t, p: t.endswith("/previews") and p["state"] == "final", 20)
        assert wait_until(lambda: any(a["revision"] == preview["revision"] for a in recorder.payloads("alerts")))
        alert = [a for a in recorder.payloads("alerts") if a["revision"] == preview["revision"]][0]
        assert msg.topic == "edge-agent/site/device/previews" and not msg.retain
        assert dict(msg.properties.UserProperty) == {"alert_id": alert["alert_id"],
                                                     "revision": str(alert["revision"])}
        assert preview["alert_id"] == alert["alert_id"] and alert["state"] == "final"
        key = alert["finding"]["key_slices"][0]["sop_instance_uid"]
        assert preview["sop_instance_uid"] == key == sops[3]          # the bleed slice leads the key slices
        assert preview["window"] == {"centre": 40.0, "width": 80.0}

        image = base64.b64decode(preview["data"])
        assert len(image) <= settings.max_bytes and preview["bytes"] == len(image)
        with Image.open(io.BytesIO(image)) as im:
            assert im.format == "PNG" and im.mode == "L" and im.size == (preview["width"], preview["height"])
            assert max(im.size) <= settings.size
            pixels = np.asarray(im, np.float64)
        # independent: window 40/80 (0..80 HU → 0..255) of the HU written, then 2x2 area means
        windowed = np.clip(volume[3] / 80.0, 0.0, 1.0) * 255.0
        expected = windowed.reshape(32, 2, 32, 2).mean(axis=(1, 3))
        assert pixels.shape == expected.shape
        assert np.abs(pixels - expected).max() <= 1.0
        assert pixels[3, 27] == 0 and pixels[15, 10] == round(75 / 80 * 255)

        raw = b"".join(m.payload for _, _, m in recorder.all)
        for needle in PHI:
            assert needle.encode() not in raw and needle.encode() not in image
        rows = [r for r in read_rows(tmp_path / "outbox.sqlite3") if r["kind"] == "preview"]
        assert len(rows) == 1 and rows[0]["delivery"] == "broker"
        assert rows[0]["message_key"] == f"preview:{alert['alert_id']}"

        target = saved / f"{alert['alert_id']}-r{preview['revision']}.png"
        assert wait_until(target.exists, 20), sorted(saved.iterdir())
        assert target.read_bytes() == image
    finally:
        pipeline.stop()
        publisher.stop()
        listen.send_signal(signal.SIGTERM)
        listen.wait(timeout=20)
        reader.join(5)
        listen.stdout.close()
        listen.stderr.close()
        recorder.close()
    err = "".join(err_lines)
    assert listen.returncode == 0, err
    assert "previews received" in err and str(saved) in err
    assert not [p for p in saved.iterdir() if p.name.startswith(".")]   # no temporary files left


def test_previews_off_when_outputs_cannot_take_them(tmp_path):
    class Plain:
        def raise_alert(self, p): ...
        def publish_result(self, p): ...
        def series_done(self, u): ...
        def observe(self, s, v): ...
        def count(self, n, s=None): ...

    p = SeriesPipeline(lambda: None, tmp_path / "s.sqlite3", Plain(), site="s", device="d",
                       previews=PreviewSettings())
    assert p.previews is None
