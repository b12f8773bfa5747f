"""What an operator reads at the default verbosity (no -v): the start-up banner, each series' story, the
periodic summary and broker trouble — from the real daemon process, a real Mosquitto and real DICOM files.

The series carry invented patient data (name, ID, birth date, sex, accession, and a name typed into the
series description); none of it may reach the log. Each line is compared against independent facts: the
files written, their headers (read back with pydicom), the shipped manifests, the MQTT results and alerts.
"""

from __future__ import annotations

import json
import logging
import re
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from edge_agent.logs import OPERATOR_LOGGERS, header_text
from edge_agent.service.simulator import render
from edge_agent.testing.agent import AgentProcess
from edge_agent.testing.mosquitto import MosquittoBroker, free_port
from edge_agent.testing.mqtt import Recorder

pytestmark = pytest.mark.timeout(240)

ROOT = Path(__file__).resolve().parents[2]
PHI = {"PatientName": "DOE^JANE^Q", "PatientID": "MRN4455661", "PatientBirthDate": "19510317",
       "PatientSex": "F", "AccessionNumber": "ACC98765"}
# Values that must not appear anywhere in the log (the sex, one letter, is checked by its keyword instead).
FORBIDDEN = ("DOE", "JANE", "MRN4455661", "19510317", "ACC98765", "PatientName", "PatientID",
             "PatientBirthDate", "PatientSex", "PHANTOM^")
# A CT series no shipped model is for (the ingest excludes non-CT modalities before any model sees them).
KNEE = {"BodyPartExamined": "KNEE", "SeriesDescription": "KNEE 2mm", "StudyDescription": "KNEE", "ProtocolName": "KNEE"}
from edge_agent.service.simulator import ROUTINE_HEAD as ROUTINE  # noqa: E402


def manifest_version(name: str) -> str:
    return json.loads((ROOT / "engines" / name / "manifest.json").read_text())["version"]


def Daemon(root: Path, broker_url: str, *extra: str, env: dict | None = None) -> AgentProcess:
    """``edge-agent run`` with no -v, its stderr in a file."""
    return AgentProcess(root, broker_url, *extra, site="ops", device="ct9", verbose=False, start_timeout=90,
                        stop_timeout=60, env={"EDGE_AGENT_INGEST_STABLE_SECONDS": "0.2",
                                              "EDGE_AGENT_INGEST_RETRY_TIMEOUT": "2",
                                              "EDGE_AGENT_MQTT_HEARTBEAT_INTERVAL": "2", **(env or {})})


def Subscriber(url: str) -> Recorder:
    """Every alert and result the agent publishes (raw paho, MQTT 5)."""
    return Recorder(url, "edge-agent/#")


def with_patient(paths: list[Path], out: Path, *, new_series: bool = False, slices: int | None = None,
                 **attributes) -> tuple[str, list[Path]]:
    """Copies of ``paths`` with the invented patient data (and ``attributes``) set; a new series UID if asked."""
    out.mkdir(parents=True, exist_ok=True)
    series_uid = generate_uid() if new_series else None
    written = []
    for path in paths[:slices] if slices else paths:
        ds = pydicom.dcmread(path)
        for keyword, value in {**PHI, **attributes}.items():
            setattr(ds, keyword, value)
        if series_uid:
            ds.SeriesInstanceUID = series_uid
            ds.SOPInstanceUID = generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        target = out / path.name
        ds.save_as(target, enforce_file_format=True)
        written.append(target)
    return str(pydicom.dcmread(written[0]).SeriesInstanceUID), written


def deliver(paths: list[Path], folder: Path) -> None:
    """Into the watch folder the way scanners do it safely: a temp name, then a rename."""
    folder.mkdir(parents=True, exist_ok=True)
    for path in paths:
        tmp = folder / f".{path.name}.part"
        tmp.write_bytes(path.read_bytes())
        tmp.rename(folder / path.name)


def line_of(text: str, pattern: str, last: bool = False) -> str:
    """The one line matching ``pattern`` (``last``: the last of several)."""
    found = [line for line in text.splitlines() if re.search(pattern, line)]
    assert found if last else len(found) == 1, f"expected one line matching {pattern!r}, got {found}"
    return found[-1]



def test_the_default_log_tells_each_series_story_without_phi(tmp_path, broker):
    metrics_port = free_port()
    sub = Subscriber(broker.url)
    daemon = Daemon(tmp_path / "agent", broker.url, "--metrics-port", str(metrics_port),
                    env={"EDGE_AGENT_AGENT_SUMMARY_INTERVAL": "2"})
    try:
        daemon.start()
        _, ich_paths = render("ich", 7, tmp_path / "r-ich", **ROUTINE, volume_ml=12.0)
        _, normal_paths = render("normal", 12, tmp_path / "r-normal")
        ich, ich_files = with_patient(ich_paths, tmp_path / "ich", SeriesDescription="HEAD 5mm DOE^JANE 19510317")
        normal, normal_files = with_patient(normal_paths, tmp_path / "normal")
        knee, knee_files = with_patient(normal_paths, tmp_path / "knee", new_series=True, slices=3, **KNEE)
        bone, bone_files = with_patient(normal_paths, tmp_path / "bone", new_series=True, slices=3,
                                        ConvolutionKernel="BONE")
        every = (ich_files, normal_files, knee_files, bone_files)
        for files, name in zip(every, ("ich", "normal", "knee", "bone")):
            deliver(files, daemon.watch / name)
        sizes = {uid: len(files) for uid, files in zip((ich, normal, knee, bone), every)}

        def complete():  # under load a series may go final early, reopen and be decided again: the last counts
            return all((sub.result_for(u) or {}).get("slices") == n for u, n in sizes.items())

        deadline = time.monotonic() + 150
        while not complete() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert complete(), daemon.log_text()
        # The summaries together count every decision (each "decided" line) and every file written.
        files_written = sum(sizes.values())

        def totals(text):
            summaries = re.findall(r"INFO stats edge_agent\.agent: last 2 s: (\d+) series decided[^;]*?, (\d+) "
                                   r"files?[ ,]", text)
            decisions = len(re.findall(r"edge_agent\.series: series \S+ decided: ", text))
            counted = (sum(int(n) for n, _ in summaries), sum(int(f) for _, f in summaries))
            return counted == (decisions, files_written) and decisions >= 4

        daemon.wait_log(totals, timeout=30)
    finally:
        assert daemon.stop() == 0
        sub.close()
    text = daemon.log_text()

    # Start-up banner: every endpoint, the folders, the mode and the models with their versions.
    line_of(text, rf"start-up: MQTT broker: {re.escape(broker.url)} \(no TLS, no username")
    line_of(text, rf"start-up: metrics: http://127\.0\.0\.1:{metrics_port}/metrics, health: "
                  rf"http://127\.0\.0\.1:{metrics_port}/healthz")
    line_of(text, r"start-up: DICOM receiver: off")
    line_of(text, rf"start-up: watch folder: {re.escape(str(daemon.watch))} \(inotify")
    line_of(text, rf"start-up: state folder: {re.escape(str(daemon.state))}; a summary every 2 s")
    models = line_of(text, r"start-up: inference: live; models: ")
    for name in ("ich", "lung_nodule"):
        assert f"{name} {manifest_version(name)} (" in models, models
    assert text.index("start-up: ") < text.index("edge-agent running")

    # Opened: scanner, description, modality, and which model applies or why none does.
    header = pydicom.dcmread(ich_files[0])
    opened = line_of(text, rf"series {re.escape(ich)} opened: ")
    assert f"scanner {header.Manufacturer}" in opened and '"HEAD 5mm <name?> <number?>"' in opened
    assert " CT " in opened and f"ich {manifest_version('ich')} applies" in opened
    assert "no model applies to this series (modality CT, body part KNEE)" in \
        line_of(text, rf"series {re.escape(knee)} opened: ")
    refused = line_of(text, rf"series {re.escape(bone)} opened: ")
    assert f"ich {manifest_version('ich')} refused: " in refused and "BONE" in refused

    # Decided: per model status, probability, alert or not — as the MQTT result and alerts say.
    for uid in (ich, normal):
        result, alerts = sub.result_for(uid), sub.alerts_for(uid)
        decided = line_of(text, rf"series {re.escape(uid)} decided: ", last=True)
        finding = next(f for f in result["findings"] if f["code"] == "ich")
        assert decided.split(": ", 2)[2].startswith(f"{result['status']}, {result['slices']} slices, ")
        assert re.search(r"\d+\.\d s after its last slice", decided), decided
        assert f"ich p={finding['probability']:.3f} {'positive' if finding['positive'] else 'negative'}" in decided
        if alerts:
            last = max(alerts, key=lambda a: a["revision"])
            assert f"alert {last['state']} sent (revision {last['revision']})" in decided, decided
        else:
            assert "no alert" in decided, decided
    assert sub.alerts_for(ich), "the 12 mL bleed raised no alert: the story test needs one"
    skipped = line_of(text, rf"series {re.escape(knee)} decided: ")
    assert "skipped (no model applies to this series (modality CT, body part KNEE)), 3 slices" in skipped
    assert f"ich {manifest_version('ich')} [synthetic-trained]: skipped (" in \
        line_of(text, rf"series {re.escape(bone)} decided: ")

    # At the default verbosity only the operator's loggers speak at INFO.
    for line in text.splitlines():
        if " INFO " in line:
            assert any(f" {name}: " in line for name in OPERATOR_LOGGERS), line
    for marker in FORBIDDEN:
        assert marker not in text, marker


def test_a_broker_where_nothing_listens_is_one_warning_then_one_line_when_it_is_back(tmp_path):
    """The issue's case: nothing listens at the broker URL. Loud at once, not per retry, and the recovery."""
    port = free_port()
    url = f"mqtt://127.0.0.1:{port}"
    daemon = Daemon(tmp_path / "agent", url, env={"EDGE_AGENT_MQTT_DELIVERY": "broker"})
    broker = MosquittoBroker(tmp_path / "broker", port=port)
    try:
        daemon.start()
        warning = daemon.wait_log(lambda t: [l for l in t.splitlines() if "Cannot reach the MQTT broker" in l])
        assert len(warning) == 1 and " WARNING " in warning[0] and url in warning[0]
        for what in ("connection refused", "host and port", "TLS", "credentials"):
            assert what in warning[0], what
        # While it is down a series is decided: its result waits in the outbox (the backlog).
        _, paths = render("normal", 3, tmp_path / "r")
        uid, files = with_patient(paths, tmp_path / "knee", new_series=True, slices=3, **KNEE)
        deliver(files, daemon.watch / "knee")
        daemon.wait_log(f"series {uid} decided: skipped")
        broker.start()
        back = daemon.wait_log(lambda t: [l for l in t.splitlines() if "is reachable again" in l], timeout=60)
        assert len(back) == 1 and " INFO " in back[0] and url in back[0]
        assert "outbox backlog: 1 message(s)" in back[0], back[0]   # the one result, nothing else
    finally:
        assert daemon.stop() == 0
        broker.crash()
    text = daemon.log_text()
    assert text.count("Cannot reach the MQTT broker") == 1   # later ones, if any, say "Still cannot reach"
    for marker in FORBIDDEN:
        assert marker not in text, marker


# -- in-process: the JSON form, and the summary setting -------------------------------------------------------

@pytest.fixture
def restore_logging():
    names = ("edge_agent", "amqtt", "transitions", "pynetdicom", *OPERATOR_LOGGERS)
    saved = {n: (logging.getLogger(n).handlers[:], logging.getLogger(n).level, logging.getLogger(n).propagate)
             for n in names}
    yield
    for n, (handlers, level, propagate) in saved.items():
        logger = logging.getLogger(n)
        logger.handlers[:], logger.level, logger.propagate = handlers, level, propagate


def test_json_lines_carry_the_banner_with_the_embedded_broker_port(tmp_path, capsys, restore_logging):
    from edge_agent.logs import setup_logging
    from edge_agent.service.app import Agent
    from edge_agent.service.demo import demo_config

    setup_logging(verbose=0, json_lines=True)
    (tmp_path / "incoming").mkdir()
    cfg = demo_config(tmp_path, settle=1.0)
    agent = Agent(cfg)
    agent.start()
    try:
        port = agent.broker.port
    finally:
        agent.stop()
    entries = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    startup = [e for e in entries if e.get("event") == "startup"]
    assert all(e["level"] == "info" and e["logger"] == "edge_agent.agent" for e in startup)
    merged = {k: v for e in startup for k, v in e["data"].items()}
    assert port > 0 and merged["embedded_port"] == port and merged["broker"] == f"mqtt://127.0.0.1:{port}"
    assert merged["watch"] == cfg.ingest.watch and merged["state_dir"] == cfg.agent.state_dir
    assert merged["metrics_port"] is None and merged["dicom_port"] is None
    shipped = {json.loads(p.read_text())["name"] for p in (ROOT / "engines").glob("*/manifest.json")}
    assert shipped and {m.split(" ")[0] for m in merged["models"]} == shipped  # every shipped model, by name


def test_a_negative_summary_interval_is_one_sentence_before_anything_starts(tmp_path):
    import threading as _threading

    from edge_agent.errors import ConfigError
    from edge_agent.service.app import Agent
    from edge_agent.service.demo import demo_config

    (tmp_path / "incoming").mkdir()
    cfg = demo_config(tmp_path, settle=1.0)
    cfg.agent.summary_interval = -5
    before = {t.name for t in _threading.enumerate()}
    with pytest.raises(ConfigError, match=r"^agent\.summary_interval must be 0 \(no summary\) or a number of "
                                          r"seconds, got -5\.$"):
        Agent(cfg).start()
    assert {t.name for t in _threading.enumerate()} == before


@pytest.mark.parametrize("raw, shown", [
    ("HEAD 5mm STND", "HEAD 5mm STND"),
    ("HEAD DOE^JANE", "HEAD <name?>"),
    ("CHEST 19510317 MRN4455661x 1951-03-17", "CHEST <number?> <number?> <number?>"),
    ("HEAD 1.25mm B30f 120kV 0.5s", "HEAD 1.25mm B30f 120kV 0.5s"),
    ("HEAD\nINFO forged line\r", "HEAD INFO forged line"),
    ("", ""),
    (None, ""),
    ("X" * 80, "X" * 63 + "…"),
])
def test_header_text_keeps_names_numbers_and_newlines_out(raw, shown):
    assert header_text(raw) == shown
