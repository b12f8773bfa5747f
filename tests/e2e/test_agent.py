"""The agent end to end: real files written like a scanner, the real daemon process, a real Mosquitto.

These use the shipped ICH model on synthetic head phantoms (a bleed of 3-40 mL
or none), so the assertions are about the pipeline, not about model accuracy
at the margin.
"""

from __future__ import annotations

import base64
import io
import shutil
import subprocess
import threading
import time

import numpy as np
import pytest
from PIL import Image

from edge_agent.testing.agent import PHI
from edge_agent.testing.dcmtk import dcmtk
from edge_agent.service.simulator import Scanner, render

# A routine head series (5 mm, standard kernel, no motion or metal): what these tests send must be a scan
# the ICH model applies to (thin or sharp-kernel heads are skipped by its applicability rules, by design).
from edge_agent.service.simulator import ROUTINE_HEAD as ROUTINE  # noqa: E402

pytestmark = pytest.mark.timeout(240)


def final_result(collector, uid, slices, timeout=90):
    """The result that covers all ``slices``: under load a pause longer than ``settle`` may finalise a
    series early; it then reopens when the rest arrives and is decided again with every slice."""
    return collector.wait(lambda c: [r for r in c.results_for(uid) if r["slices"] == slices], timeout)[-1]


def test_positive_and_negative_series_arrive_slice_by_slice(broker, collector, agent_factory):
    agent = agent_factory(broker.url).start()
    scanner = Scanner(agent.watch, ["ich", "normal"], rate=25, style="inplace", seed=11)
    scanner.run()
    ich, normal = scanner.series

    # The bleed: a preliminary alert while/after slices arrive, then the final one, same alert_id.
    alerts = collector.wait(lambda c: [a for a in c.alerts_for(ich.series_instance_uid) if a["state"] == "final"])
    every = collector.alerts_for(ich.series_instance_uid)
    assert {a["alert_id"] for a in every} == {alerts[0]["alert_id"]}
    # (whether a preliminary alert precedes the final one depends on the model's scores; the
    # preliminary path itself is tested deterministically in tests/service/test_pipeline.py)
    assert every[0]["revision"] == 1 and every[0]["state"] in ("preliminary", "final")
    revisions = [a["revision"] for a in every]
    assert revisions == sorted(revisions)
    assert alerts[-1]["finding"]["code"] == "ich" and alerts[-1]["finding"]["positive"] is True
    assert alerts[-1]["study"]["accession_number"] == "ACC0001" or alerts[-1]["study"]["accession_number"]
    for stage in ("first_slice_received", "decisive_slice_received", "raised"):
        assert stage in alerts[-1]["timestamps"], stage

    result = final_result(collector, ich.series_instance_uid, len(ich.delivered))
    assert result["status"] == "analysed"
    assert result["findings"][0]["positive"] is True

    # Its key-image preview (on by default): for the final revision, a PNG/JPEG within the default caps.
    preview = collector.wait(lambda c: [p for p in c.of("previews") if p.get("alert_id") == alerts[-1]["alert_id"]
                                        and p.get("revision") == alerts[-1]["revision"]])[-1]
    assert preview["sop_instance_uid"] in {k["sop_instance_uid"] for k in alerts[-1]["finding"]["key_slices"]}
    image = base64.b64decode(preview["data"])
    with Image.open(io.BytesIO(image)) as im:
        assert im.size == (preview["width"], preview["height"]) and max(im.size) <= 256 and len(image) <= 65536
        assert np.asarray(im).std() > 5   # a picture of a head, not a blank

    # The normal head: a negative result and no alert.
    result = final_result(collector, normal.series_instance_uid, len(normal.delivered))
    assert result["status"] == "analysed" and result["findings"][0]["positive"] is False
    assert collector.alerts_for(normal.series_instance_uid) == []

    # Status: retained birth with counters; no payload failed its schema; no PHI anywhere.
    assert any(s.get("state") == "online" for s in collector.of("status"))
    assert collector.invalid == []
    assert agent.stop() == 0
    everything = collector.raw().decode() + agent.log_text()
    for marker in PHI:
        assert marker not in everything, marker
    assert any(s.get("state") == "offline" for s in collector.of("status"))


def test_rename_style_restart_mid_series_loses_nothing(broker, collector, agent_factory):
    agent = agent_factory(broker.url).start()
    staging = agent.root / "staging"
    phantom, paths = render("ich", 23, staging)
    uid = phantom.headers.series_instance_uid
    half = len(paths) // 2
    target = agent.watch / "series"
    target.mkdir()
    for p in paths[:half]:
        tmp = target / f".{p.name}.part"
        shutil.copyfile(p, tmp)
        tmp.rename(target / p.name)
    time.sleep(2.0)
    agent.kill()                                  # SIGKILL mid-series
    for p in paths[half:]:                        # the scanner goes on while the agent is down
        tmp = target / f".{p.name}.part"
        shutil.copyfile(p, tmp)
        tmp.rename(target / p.name)
    agent.start()
    result = final_result(collector, uid, len(paths))
    assert result["status"] == "analysed"
    finals = collector.wait(lambda c: [a for a in c.alerts_for(uid) if a["state"] == "final"])
    assert finals[-1]["finding"]["positive"] is True
    assert agent.stop() == 0


def test_broker_down_during_the_series(broker, collector, agent_factory):
    agent = agent_factory(broker.url).start()
    broker.stop()
    scanner = Scanner(agent.watch, ["ich"], rate=40, style="rename", seed=31)
    scanner.run()
    time.sleep(3.0)                               # the series goes final while the broker is down
    broker.start()
    uid = scanner.series[0].series_instance_uid
    result = final_result(collector, uid, len(scanner.series[0].delivered))
    assert result["findings"][0]["positive"] is True
    assert collector.wait(lambda c: [a for a in c.alerts_for(uid) if a["state"] == "final"])
    assert agent.stop() == 0


def test_bad_files_are_quarantined_and_the_series_still_analysed(broker, collector, agent_factory):
    agent = agent_factory(broker.url).start()
    phantom, paths = render("normal", 41, agent.root / "staging")
    target = agent.watch / "mixed"
    target.mkdir()
    (target / "notes.txt").write_text("not a DICOM file")
    data = paths[3].read_bytes()
    (target / "TRUNCATED").write_bytes(data[: len(data) // 3])
    for p in paths:
        shutil.copyfile(p, target / p.name)
    uid = phantom.headers.series_instance_uid
    result = final_result(collector, uid, len(paths))
    assert result["status"] == "analysed"
    deadline = time.monotonic() + 30
    quarantine = agent.state / "quarantine"
    while time.monotonic() < deadline:
        names = {p.name for p in quarantine.rglob("*")} if quarantine.exists() else set()
        if {"notes.txt", "TRUNCATED"} <= names:
            break
        time.sleep(0.2)
    sidecars = [p for p in quarantine.rglob("*.json")]
    assert {"notes.txt", "TRUNCATED"} <= names, names
    assert len(sidecars) >= 2
    assert (target / "TRUNCATED").exists()        # input files are never modified or moved
    assert agent.proc.poll() is None              # and the agent is alive
    assert agent.stop() == 0


def test_two_scanners_at_once(broker, collector, agent_factory):
    agent = agent_factory(broker.url).start()
    # the demo's clearly visible 12 mL bleed (seed 7): this test is about two scanners at once, not about the
    # model's sensitivity (the seed-51 bleed it used, 6 mL of IPH at 50 HU, is one ich v3.0.0 misses; at 12 mL
    # it reads 47.8 HU, below the ich_blood evidence's 50 HU window: docs/MODELS.md)
    kwargs = {"ich": {**ROUTINE, "volume_ml": 12.0}}
    scanners = [Scanner(agent.watch / name, [kind], rate=20, style=style, seed=seed, phantom_kwargs=kwargs)
                for name, kind, style, seed in (("ct-a", "ich", "inplace", 7), ("ct-b", "normal", "rename", 52))]
    threads = [threading.Thread(target=s.run, name=f"scanner-{n}") for n, s in enumerate(scanners)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ich, normal = scanners[0].series[0], scanners[1].series[0]
    result = final_result(collector, ich.series_instance_uid, len(ich.delivered))
    assert result["findings"][0]["positive"] is True, result["findings"]
    assert final_result(collector, normal.series_instance_uid,
                        len(normal.delivered))["findings"][0]["positive"] is False
    assert agent.stop() == 0


@pytest.mark.skipif(dcmtk("storescu") is None, reason="DCMTK storescu is installed by .ci/run")
@pytest.mark.parametrize("tls", [False, True], ids=["plain", "dicom-tls"])
def test_c_store_from_a_real_dicom_client(broker, collector, agent_factory, tmp_path, tls):
    from edge_agent.testing.mosquitto import free_port, make_pki

    port = free_port()
    env, tls_flags = {}, []
    if tls:
        pki = make_pki(tmp_path / "pki")
        env = {"EDGE_AGENT_DICOM_TLS_CERT": str(pki.server_cert), "EDGE_AGENT_DICOM_TLS_KEY": str(pki.server_key),
               "EDGE_AGENT_DICOM_TLS_CA": str(pki.ca_cert)}
        tls_flags = ["+tls", str(pki.client_key), str(pki.client_cert), "+cf", str(pki.ca_cert)]
    agent = agent_factory(broker.url, "--dicom-port", str(port), "--ae-title", "EDGE_TEST", env=env).start()
    phantom, paths = render("ich", 61, tmp_path / "send", **ROUTINE)
    proc = subprocess.run([dcmtk("storescu"), "-aec", "EDGE_TEST", "-aet", "SCANNER", *tls_flags, "127.0.0.1",
                           str(port), *map(str, paths)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert list((agent.state / "receiving").iterdir()) == [], "spool emptied as instances landed"
    uid = phantom.headers.series_instance_uid
    result = final_result(collector, uid, len(paths))
    assert result["status"] == "analysed"
    assert result["findings"][0]["positive"] is True
    assert agent.stop() == 0


def test_metrics_and_healthz_of_a_running_agent(broker, collector, agent_factory):
    import json
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families
    from edge_agent.testing.mosquitto import free_port

    port = free_port()
    agent = agent_factory(broker.url, "--metrics-port", str(port)).start()
    # the demo's clearly visible 12 mL bleed: this test is about metrics, not about the model's sensitivity
    scanner = Scanner(agent.watch, ["ich"], rate=40, style="rename", seed=7,
                      phantom_kwargs={"ich": {**ROUTINE, "volume_ml": 12.0}})
    scanner.run()
    sim = scanner.series[0]
    final_result(collector, sim.series_instance_uid, len(sim.delivered))
    time.sleep(1.5)  # the stats loop refreshes gauges every second
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    assert samples[("edge_agent_files_seen_total", ())] == len(sim.delivered)
    assert samples[("edge_agent_series_analysed_total", ())] == 1
    assert samples[("edge_agent_alerts_total", (("state", "raised_final"),))] >= 1
    counted = {dict(labels).get("stage") for (name, labels), value in samples.items()
               if name == "edge_agent_stage_latency_seconds_count" and value > 0}
    assert {"decode", "preprocess", "inference", "decision", "outbox", "end_to_end"} <= counted, counted
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as resp:
        assert resp.status == 200
        assert json.loads(resp.read())["status"] == "ok"
    assert agent.stop() == 0
