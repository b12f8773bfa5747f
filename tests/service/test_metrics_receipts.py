"""``edge_agent_alerts_total{state="confirmed"}`` counts consumers' receipts, read from ``/metrics`` over HTTP.

The real agent (its publisher, outbox and metrics server, wired as ``edge-agent run`` wires them), a real
Mosquitto, and the reference consumer sending the receipt. Before the receipt the alert sits ``acked`` in the
outbox and the counter is 0; after it the row is ``done`` and the counter is 1 — the outbox says so
independently of the counter.
"""

from __future__ import annotations

import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from edge_agent.alerts import MqttSettings, build_alert, utc_now
from edge_agent.alerts.consumer import AlertListener
from edge_agent.alerts.outbox import read_rows
from edge_agent.service.app import Agent
from edge_agent.service.demo import demo_config
from edge_agent.testing.mosquitto import MosquittoBroker, free_port

pytestmark = pytest.mark.timeout(120)


def alerts_total(url: str) -> dict[str, float]:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return {s.labels["state"]: s.value for family in text_string_to_metric_families(text)
            for s in family.samples if s.name == "edge_agent_alerts_total"}


def wait(predicate, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("timed out")


def an_alert(site: str, device: str) -> dict:
    series = {"study_instance_uid": "1.2.826.0.1.3680043.8.498.71",
              "series_instance_uid": "1.2.826.0.1.3680043.8.498.72", "accession_number": "", "modality": "CT",
              "body_part": "HEAD", "series_description": "HEAD 5mm"}
    finding = {"code": "ich", "label": "Intracranial haemorrhage", "probability": 0.93, "positive": True,
               "severity": "critical", "key_slices": []}
    return build_alert(site=site, device=device, series=series,
                       model={"name": "ich", "version": "2.0.0", "synthetic_training": True}, finding=finding,
                       state="final", revision=1, timestamps={"first_slice_received": utc_now(), "raised": utc_now()})


def test_a_receipt_moves_the_confirmed_counter_on_metrics(tmp_path, broker):
    (tmp_path / "incoming").mkdir()
    cfg = demo_config(tmp_path, settle=1.0)
    cfg.mqtt.broker = broker.url
    cfg.mqtt.receipt_timeout = 1.0        # republished every second until a receipt comes
    cfg.metrics.port = free_port()
    agent = Agent(cfg)
    agent.start()
    listener = None
    try:
        url = agent.metrics_server.url
        outbox = cfg.state_dir / "outbox.sqlite3"
        before = alerts_total(url)
        assert before["confirmed"] == 0 and before["rejected"] == 0
        # What the pipeline does with a positive finding (app._Outputs.raise_alert).
        alert_id = agent.publisher.raise_alert(an_alert(cfg.agent.site, cfg.agent.device))
        wait(lambda: [r for r in read_rows(outbox) if r["message_key"] == alert_id and r["state"] == "acked"])
        assert alerts_total(url)["confirmed"] == 0      # the broker has it; no consumer has confirmed it

        listener = AlertListener(MqttSettings(url=broker.url), on_alert=lambda *a: None, consumer="pager",
                                 site=cfg.agent.site, device=cfg.agent.device)
        listener.start()                                # gets the next republication and sends its receipt
        wait(lambda: alerts_total(url)["confirmed"] == 1)
        row = next(r for r in read_rows(outbox) if r["message_key"] == alert_id)
        assert row["state"] == "done" and listener.counts["receipts"] >= 1
        after = alerts_total(url)
        assert after["confirmed"] == 1 and after["rejected"] == 0   # one row confirmed: counted once
    finally:
        if listener is not None:
            listener.stop()
        agent.stop()
