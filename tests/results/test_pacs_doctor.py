"""``edge-agent doctor`` on the PACS queue and destinations; ``run --retry-dead-letters``."""

from __future__ import annotations

import hashlib
import socket
import subprocess
import sys
import time

import pytest

from edge_agent.cli.doctor import pacs_echo_check, pacs_queue_check
from edge_agent.cli.run import _retry_dead_letters
from edge_agent.config import load_config
from edge_agent.results.queue import PacsQueue, QueuedObject, read_deliveries
from edge_agent.testing.dcmtk import dcmtk


def _queue(tmp_path, dead: bool) -> None:
    queue = PacsQueue(tmp_path / "pacs.sqlite3")
    objects = [QueuedObject(f"2.25.{i}", "1.2.840.10008.5.1.4.1.1.88.34", "sr", b"x%d" % i,
                            hashlib.sha256(b"x%d" % i).hexdigest()) for i in range(3)]
    queue.add(series_instance_uid="1.2", model="ich", model_version="2", revision=1, digest="d", objects=objects,
              destinations=["PACS@10.0.0.5:104"])
    due = queue.due("PACS@10.0.0.5:104", 10)
    queue.mark_done("PACS@10.0.0.5:104", due[0].sop_instance_uid)
    queue.mark_retry("PACS@10.0.0.5:104", due[1].sop_instance_uid, time.time() + 60, "did not answer")
    if dead:
        queue.mark_dead("PACS@10.0.0.5:104", due[2].sop_instance_uid, "answered status 0xA900")
    else:
        queue.mark_done("PACS@10.0.0.5:104", due[2].sop_instance_uid)
    queue.close()


def test_doctor_reports_each_destination(tmp_path):
    assert pacs_queue_check(tmp_path)[0][0] == "OK"  # no queue: nothing configured
    _queue(tmp_path, dead=False)
    [(level, subject, text)] = pacs_queue_check(tmp_path)
    assert (level, subject) == ("OK", "PACS PACS@10.0.0.5:104")
    assert "2 delivered, 1 waiting" in text and "did not answer" in text


def test_dead_letters_fail_the_doctor_and_are_retried_on_request(tmp_path):
    _queue(tmp_path, dead=True)
    [(level, _, text)] = pacs_queue_check(tmp_path)
    assert level == "FAIL" and "1 dead letters" in text and "--retry-dead-letters" in text
    cfg = load_config(overrides={"agent": {"state_dir": str(tmp_path)}}, environ={})
    _retry_dead_letters(cfg)
    assert [r["state"] for r in read_deliveries(tmp_path / "pacs.sqlite3")].count("dead") == 0
    assert pacs_queue_check(tmp_path)[0][0] == "OK"


@pytest.mark.refused_dicom_connection
def test_echo_a_real_storage_scp_and_a_closed_port(tmp_path):
    storescp = dcmtk("storescp")
    if storescp is None:
        pytest.skip("DCMTK storescp is not installed")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    scp = subprocess.Popen([storescp, "-aet", "ECHOSCP", "-od", str(tmp_path), str(port)])
    try:
        time.sleep(0.5)
        assert pacs_echo_check(f"ECHOSCP@127.0.0.1:{port}")[0] == "OK"
    finally:
        scp.terminate()
        scp.wait(10)
    level, _, text = pacs_echo_check(f"ECHOSCP@127.0.0.1:{port}", timeout=2)
    assert level == "FAIL" and "did not answer" in text
    assert pacs_echo_check("no-port")[0] == "FAIL"


def test_run_refuses_a_malformed_pacs_flag(tmp_path):
    out = subprocess.run([sys.executable, "-m", "edge_agent", "run", "--watch", str(tmp_path), "--state-dir",
                          str(tmp_path), "--pacs", "PACS", "--check"], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "is not AET@host:port" in out.stderr
    assert "Traceback" not in out.stderr
