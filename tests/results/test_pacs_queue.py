"""The PACS queue and its sender: one UID one content, revisions only on change, back-off, dead letters."""

from __future__ import annotations

import hashlib
import logging
import socket
import time

import pytest

from edge_agent.config import load_config
from edge_agent.errors import ConfigError
from edge_agent.results.destination import parse_destination
from edge_agent.results.queue import PacsQueue, PacsQueueError, QueuedObject, read_deliveries, read_stats
from edge_agent.results.sender import DestinationSender, SenderSettings, backoff


def _object(uid: str, data: bytes, kind: str = "sr") -> QueuedObject:
    return QueuedObject(uid, "1.2.840.10008.5.1.4.1.1.88.34", kind, data, hashlib.sha256(data).hexdigest())


def _add(queue, objects, revision=1, destinations=("A@h:1",)):
    return queue.add(series_instance_uid="1.2.3", model="ich", model_version="2", revision=revision,
                     digest=f"d{revision}", objects=objects, destinations=list(destinations))


def test_a_uid_keeps_its_first_content(tmp_path):
    queue = PacsQueue(tmp_path / "pacs.sqlite3")
    assert _add(queue, [_object("2.25.1", b"one")], destinations=("A@h:1", "B@h:2")) == 2
    assert _add(queue, [_object("2.25.1", b"one")], destinations=("A@h:1", "B@h:2")) == 0  # a resend: harmless
    with pytest.raises(PacsQueueError, match="already queued with other content"):
        _add(queue, [_object("2.25.1", b"two")], revision=2)
    rows = read_deliveries(tmp_path / "pacs.sqlite3")
    assert {r["destination"] for r in rows} == {"A@h:1", "B@h:2"}
    assert {r["sha256"] for r in rows} == {hashlib.sha256(b"one").hexdigest()}
    assert queue.latest("1.2.3", "ich", "2") == (1, "d1")  # the refused revision left nothing behind
    queue.close()


def test_each_destination_is_its_own_queue_and_sending_resumes_after_a_crash(tmp_path):
    queue = PacsQueue(tmp_path / "pacs.sqlite3")
    _add(queue, [_object("2.25.1", b"one"), _object("2.25.2", b"two", "kos")], destinations=("A@h:1", "B@h:2"))
    due = queue.due("A@h:1", 10)
    assert [d.kind for d in due] == ["sr", "kos"] and due[0].dataset == b"one"
    assert queue.due("A@h:1", 10) == []            # taken: sending
    assert len(queue.due("B@h:2", 10)) == 2        # B is not held up by A
    queue.mark_done("A@h:1", "2.25.1")
    # killed here: 2.25.2 is left "sending" for A, both for B; at start they go back to pending
    assert queue.reset_sending("A@h:1") == 1
    assert [d.sop_instance_uid for d in queue.due("A@h:1", 10)] == ["2.25.2"]
    stats = read_stats(tmp_path / "pacs.sqlite3")
    assert stats["A@h:1"]["done"] == 1 and stats["B@h:2"]["sending"] == 2
    queue.close()


def test_retry_dead_restarts_the_clock(tmp_path):
    queue = PacsQueue(tmp_path / "pacs.sqlite3")
    _add(queue, [_object("2.25.1", b"one")])
    [due] = queue.due("A@h:1", 10)
    queue.mark_dead("A@h:1", due.sop_instance_uid, "rejected")
    assert queue.due("A@h:1", 10, now=time.time() + 10) == []
    assert queue.retry_dead() == 1
    [again] = queue.due("A@h:1", 10)
    assert again.attempts == 1 and again.created_at > due.created_at - 1
    queue.close()


def test_backoff_doubles_up_to_the_cap():
    settings = SenderSettings(retry_min=5, retry_max=60)
    waits = [backoff(n, settings) for n in range(1, 8)]
    assert 5 <= waits[0] <= 6.25 and 10 <= waits[1] <= 12.5 and all(60 <= w <= 75 for w in waits[4:])


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.refused_dicom_connection
def test_a_destination_that_never_answers_becomes_a_dead_letter(tmp_path, caplog):
    destination = parse_destination(f"NOBODY@127.0.0.1:{_closed_port()}")
    path = tmp_path / "pacs.sqlite3"
    queue = PacsQueue(path)
    _add(queue, [_object("2.25.9", b"x")], destinations=(str(destination),))
    queue.close()
    events = []
    sender = DestinationSender(path, destination, SenderSettings(dead_after=1.5, retry_min=0.2, retry_max=0.4,
                                                                  timeout=2), on_event=lambda d, e: events.append(e))
    with caplog.at_level(logging.WARNING, logger="edge_agent.results"):
        sender.start()
        deadline = time.monotonic() + 20
        while "dead" not in events and time.monotonic() < deadline:
            time.sleep(0.1)
        sender.stop()
    [row] = read_deliveries(path)
    assert row["state"] == "dead" and row["attempts"] >= 2 and "did not answer" in row["last_error"]
    assert "retry" in events and events[-1] == "dead"
    assert any("dead letter" in r.getMessage() and r.levelno == logging.ERROR for r in caplog.records)


def test_destinations_from_file_env_and_flag(tmp_path):
    cfg = load_config(environ={"EDGE_AGENT_PACS_DESTINATIONS": "PACS@10.0.0.5:104, ARCHIVE@[::1]:11112"})
    assert [str(parse_destination(d)) for d in cfg.pacs.destinations] == ["PACS@10.0.0.5:104", "ARCHIVE@::1:11112"]
    toml = tmp_path / "agent.toml"
    toml.write_text('[pacs]\ndestinations = ["A@h:104"]\nae_title = "EDGE1"\ndead_after = 3600\n')
    cfg = load_config(toml, overrides={"pacs": {"destinations": ["B@h:105"]}}, environ={})
    assert cfg.pacs.destinations == ["B@h:105"] and cfg.pacs.ae_title == "EDGE1" and cfg.pacs.dead_after == 3600
    for bad in ("PACS", "PACS@host", "@host:104", "WAY_TOO_LONG_AE_TITLE@h:104", "P@h:0"):
        with pytest.raises(ConfigError, match="is not AET@host:port"):
            load_config(overrides={"pacs": {"destinations": [bad]}}, environ={})
