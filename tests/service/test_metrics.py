"""Metrics, heartbeats and the HTTP server, scraped over real HTTP."""

from __future__ import annotations

import json
import socket
import threading
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from edge_agent.errors import ConfigError, EdgeAgentError
from edge_agent.service.metrics import ALERT_STATES, PREVIEW_OUTCOMES, STAGES, Heartbeats, Metrics, MetricsServer


def get(url: str) -> tuple[int, dict, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} from a Prometheus text exposition."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


@pytest.fixture
def served():
    metrics, beats = Metrics(), Heartbeats()
    server = MetricsServer(metrics, beats, port=0, max_stage_age=0.4)
    server.start()
    yield metrics, beats, server
    server.stop()


def test_scrape_shows_every_metric_with_its_value(served):
    metrics, beats, server = served
    metrics.files_seen.inc(7)
    metrics.files_quarantined.inc()
    metrics.series_analysed.inc(3)
    metrics.series_rejected.inc(2)
    metrics.series_skipped.inc(4)
    metrics.alerts.labels(state="raised_preliminary").inc()
    metrics.alerts.labels(state="raised_final").inc(2)
    metrics.previews.labels(outcome="published").inc(3)
    metrics.set_outbox(5, 12.5)
    metrics.set_queue("pipeline", 9)
    metrics.observe("inference", 0.03)
    metrics.observe("inference", 0.2)
    metrics.observe("end_to_end", 42.0)
    beats.beat("pipeline")

    status, headers, body = get(server.url + "/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain")
    s = samples(body.decode())
    assert s[("edge_agent_files_seen_total", ())] == 7
    assert s[("edge_agent_files_quarantined_total", ())] == 1
    assert s[("edge_agent_series_analysed_total", ())] == 3
    assert s[("edge_agent_series_rejected_total", ())] == 2
    assert s[("edge_agent_series_skipped_total", ())] == 4
    assert s[("edge_agent_alerts_total", (("state", "raised_final"),))] == 2
    assert s[("edge_agent_alerts_total", (("state", "raised_preliminary"),))] == 1
    for state in ALERT_STATES:  # zeros are present, not missing
        assert ("edge_agent_alerts_total", (("state", state),)) in s
    assert s[("edge_agent_previews_total", (("outcome", "published"),))] == 3
    for outcome in PREVIEW_OUTCOMES:
        assert ("edge_agent_previews_total", (("outcome", outcome),)) in s
    assert s[("edge_agent_outbox_depth", ())] == 5
    assert s[("edge_agent_outbox_oldest_pending_age_seconds", ())] == 12.5
    assert s[("edge_agent_queue_depth", (("queue", "pipeline"),))] == 9
    assert s[("edge_agent_stage_latency_seconds_count", (("stage", "inference"),))] == 2
    assert s[("edge_agent_stage_latency_seconds_sum", (("stage", "inference"),))] == pytest.approx(0.23)
    assert s[("edge_agent_stage_latency_seconds_bucket", (("le", "0.05"), ("stage", "inference")))] == 1
    assert s[("edge_agent_stage_latency_seconds_bucket", (("le", "60.0"), ("stage", "end_to_end")))] == 1
    assert s[("edge_agent_stage_latency_seconds_bucket", (("le", "30.0"), ("stage", "end_to_end")))] == 0
    for stage in STAGES:
        assert ("edge_agent_stage_latency_seconds_count", (("stage", stage),)) in s
    assert 0 <= s[("edge_agent_stage_heartbeat_age_seconds", (("stage", "pipeline"),))] < 5
    assert s[("edge_agent_process_resident_memory_bytes", ())] > 0


def test_set_outbox_empty_means_zero_age(served):
    metrics, _, server = served
    metrics.set_outbox(3, 60.0)
    metrics.set_outbox(0, None)
    s = samples(get(server.url + "/metrics")[2].decode())
    assert s[("edge_agent_outbox_depth", ())] == 0
    assert s[("edge_agent_outbox_oldest_pending_age_seconds", ())] == 0


def test_two_registries_do_not_collide():
    a, b = Metrics(process_metrics=False), Metrics(process_metrics=False)
    a.files_seen.inc(2)
    assert samples(a.render().decode())[("edge_agent_files_seen_total", ())] == 2
    assert samples(b.render().decode())[("edge_agent_files_seen_total", ())] == 0


def test_healthz_turns_503_when_a_stage_stops_beating(served):
    _, beats, server = served
    stop = threading.Event()

    def pipeline_loop():
        while not stop.wait(0.05):
            beats.beat("pipeline")

    beats.beat("ingest")
    beats.beat("pipeline")
    worker = threading.Thread(target=pipeline_loop, name="test-pipeline-loop")
    worker.start()
    try:
        status, headers, body = get(server.url + "/healthz")
        assert status == 200
        assert headers["Content-Type"] == "application/json"
        payload = json.loads(body)
        assert payload["status"] == "ok" and set(payload["stages"]) == {"ingest", "pipeline"}

        stop.wait(0.6)  # ingest stops beating; pipeline keeps going
        status, _, body = get(server.url + "/healthz")
        payload = json.loads(body)
        assert status == 503
        assert payload["status"] == "stuck" and payload["stuck"] == ["ingest"]
        assert payload["stages"]["ingest"] > 0.4 > payload["stages"]["pipeline"]

        beats.beat("ingest")  # it recovers
        assert get(server.url + "/healthz")[0] == 200
    finally:
        stop.set()
        worker.join()


def test_expected_stage_that_never_beats_goes_stale():
    now = [100.0]
    beats = Heartbeats(clock=lambda: now[0])
    beats.expect("receiver", "pipeline")
    beats.beat("pipeline")
    now[0] = 161.0
    beats.beat("pipeline")
    assert beats.stale(60.0) == ["receiver"]
    assert beats.stuck("receiver", 60.0) and not beats.stuck("pipeline", 60.0)
    assert not beats.stuck("never-registered", 60.0)
    beats.forget("receiver")
    assert beats.stale(60.0) == []


def test_unknown_path_is_404_and_head_works(served):
    _, _, server = served
    assert get(server.url + "/nope")[0] == 404
    req = urllib.request.Request(server.url + "/healthz", method="HEAD")
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert resp.status == 200 and resp.read() == b""


def test_port_in_use_is_one_sentence():
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        server = MetricsServer(Metrics(process_metrics=False), Heartbeats(), port=port)
        with pytest.raises(EdgeAgentError) as err:
            server.start()
    assert "already in use" in str(err.value) and str(port) in str(err.value)
    assert "\n" not in str(err.value)


def test_bad_settings_are_config_errors():
    with pytest.raises(ConfigError, match="max_stage_age"):
        MetricsServer(Metrics(process_metrics=False), Heartbeats(), port=0, max_stage_age=0)
    with pytest.raises(ConfigError, match="TCP port"):
        MetricsServer(Metrics(process_metrics=False), Heartbeats(), port=70000)


def test_stop_releases_the_port():
    server = MetricsServer(Metrics(process_metrics=False), Heartbeats(), port=0)
    server.start()
    port = server.port
    server.stop()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", port))  # would raise EADDRINUSE if still listening
