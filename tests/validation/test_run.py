"""How one analyse_series result becomes a case: statuses per model, thumbnails, display windows."""

from types import SimpleNamespace

import numpy as np

from edge_agent.validation.run import BRAIN_WINDOW, LUNG_WINDOW, _status_for, display_window, thumbnail


def fake_model(name="ich", body=("HEAD",), words=()):
    rule = SimpleNamespace(body_part=body, description_keywords=words)
    manifest = SimpleNamespace(applies_to=rule, preprocessing=SimpleNamespace(windows=((10.0, 20.0),)))
    return SimpleNamespace(name=name, manifest=manifest)


def test_status_per_model():
    m = fake_model()
    for given, expected in (("analysed", "analysed"), ("failed", "rejected"), ("rejected", "rejected"),
                            ("not_assessable", "not_assessable"), ("skipped", "skipped")):
        result = {"status": "x", "models": [{"name": "ich", "status": given, "reason": "why"}]}
        assert _status_for(m, result) == (expected, "why")
    skipped = {"status": "skipped", "reason": "no model applies to this series (modality CT, body part CHEST)",
               "models": []}
    assert _status_for(m, skipped) == ("skipped", skipped["reason"])
    other = {"status": "analysed", "models": [{"name": "lung", "status": "analysed"}], "modality": "CT",
             "body_part": "CHEST"}
    status, reason = _status_for(m, other)
    assert status == "skipped" and "does not apply" in reason and "CHEST" in reason


def test_display_window():
    assert display_window(fake_model(body=("HEAD",))) == BRAIN_WINDOW
    assert display_window(fake_model(body=(), words=("THORAX",))) == LUNG_WINDOW
    assert display_window(fake_model(body=("KNEE",))) == (10.0, 20.0)


def test_thumbnail_crops_to_anatomy_and_windows():
    hu = np.full((512, 512), -1024.0, np.float32)
    hu[200:300, 220:300] = 40.0        # brain-ish block at the window centre
    hu[240:250, 250:260] = 1000.0      # bone: white
    img = thumbnail(hu, BRAIN_WINDOW, size=192)
    assert img.dtype == np.uint8 and max(img.shape) <= 192
    assert img.shape[0] == img.shape[1]
    assert img.max() == 255 and img.min() == 0
    assert (np.abs(img.astype(int) - 128) <= 1).mean() > 0.3   # the anatomy fills much of the crop
