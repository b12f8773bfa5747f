"""Alert payloads and publisher settings for tests and benchmarks: a valid alert per index, short timers."""

from __future__ import annotations

from edge_agent.alerts import MqttSettings, build_alert, utc_now

SERIES = {"study_instance_uid": "1.2.826.0.1.3680043.8.498.1", "series_instance_uid": "1.2.826.0.1.3680043.8.498.2",
          "accession_number": "ACC0001", "modality": "CT", "body_part": "HEAD",
          "series_description": "HEAD 5mm STND"}
MODEL = {"name": "ich", "version": "1.0.0", "synthetic_training": True}


def make_alert(index: int = 0, *, revision: int = 1, state: str = "final", probability: float = 0.91,
               site: str = "site", device: str = "device") -> dict:
    """A valid alert for series number ``index`` (so each index has its own alert_id)."""
    series = dict(SERIES, series_instance_uid=f"{SERIES['series_instance_uid']}.{index}")
    finding = {"code": "ich", "label": "Intracranial haemorrhage", "probability": probability, "positive": True,
               "severity": "critical",
               "key_slices": [{"sop_instance_uid": f"{series['series_instance_uid']}.7", "position_mm": 42.5,
                               "probability": probability}]}
    return build_alert(site=site, device=device, series=series, model=MODEL, finding=finding, state=state,
                       revision=revision, timestamps={"first_slice_received": utc_now(), "raised": utc_now()})


def fast_settings(url: str, **overrides) -> MqttSettings:
    """Settings with short timers so tests finish quickly."""
    values = dict(url=url, receipt_timeout=1.0, heartbeat_interval=0.5, retry_max_delay=2.0,
                  reconnect_min_delay=1, reconnect_max_delay=1)
    values.update(overrides)
    return MqttSettings(**values)
