"""`edge-agent run --check`: real folders, real ports, a real Mosquitto (plain, TLS, passwords), real models.

Each check is one line, ``OK  <what>: ...`` on stdout or ``FAIL <what>: <what to fix>`` on stderr, and
any FAIL makes the exit status non-zero. The check changes nothing: no folder is created, no thread stays.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from cli_helpers import run_cli
from edge_agent.config import load_config
from edge_agent.service.preflight import state_check, watch_check
from edge_agent.testing.mosquitto import MosquittoBroker, free_port, make_pki

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def mosquitto(tmp_path_factory):
    broker = MosquittoBroker(tmp_path_factory.mktemp("mqtt"), persistence=False).start()
    yield broker
    broker.stop()


@pytest.fixture
def watch(tmp_path) -> Path:
    folder = tmp_path / "incoming"
    folder.mkdir()
    return folder


def check(capsys, tmp_path, watch, model_dir, *args):
    """``run --check`` in-process: (exit code, {what: line}, stdout, stderr)."""
    code, out, err = run_cli(capsys, "run", "--check", "--watch", str(watch), "--engines", str(model_dir),
                             *(("--state-dir", str(tmp_path / "state")) if "--state-dir" not in args else ()), *args)
    rows = {}
    for line in (out + err).splitlines():
        if line.startswith(("OK  ", "FAIL ")):
            what = line.split(None, 1)[1].split(": ", 1)[0]
            rows[what] = line
    assert "Traceback" not in err
    return code, rows, out, err


def failed_sentence(err: str) -> str:
    last = [line for line in err.splitlines() if line.strip()][-1]
    assert last.startswith("edge-agent: ") and "checks failed" in last and last.endswith("."), err
    return last


def test_all_good_with_a_real_broker_and_nothing_created(capsys, tmp_path, watch, model_dir, mosquitto):
    state = tmp_path / "state"
    code, rows, out, err = check(capsys, tmp_path, watch, model_dir, "--broker", mosquitto.url,
                                 "--metrics-port", str(free_port()), "--dicom-port", str(free_port()))
    assert code == 0, err
    assert err == ""
    assert rows[f"watch folder {watch}"].startswith("OK  ")
    assert "does not exist yet; the agent will create it" in rows[f"state folder {state}"]
    assert not state.exists()                                              # a check creates nothing
    assert "tiny 0.0.1 (files match their sha256)" in rows["models"]
    assert "starts on onnxrt" in rows["model tiny 0.0.1"]
    assert rows[f"broker {mosquitto.url}"].startswith("OK  ") and "accepted an MQTT" in rows[f"broker {mosquitto.url}"]
    assert any(w.startswith("DICOM port 0.0.0.0:") and line.endswith(": free") for w, line in rows.items())
    assert any(w.startswith("metrics port 127.0.0.1:") and line.endswith(": free") for w, line in rows.items())
    assert out.splitlines()[-1].startswith("configuration OK")
    # the broker saw a CONNECT and a clean DISCONNECT from a client id of its own (not the agent's)
    deadline = time.monotonic() + 10
    while "edge-agent-check-site-ct1-" not in mosquitto.log_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    log = mosquitto.log_text()
    assert "edge-agent-check-site-ct1-" in log and "edge-agent-site-ct1 " not in log


def test_nothing_listening_at_the_broker_fails(capsys, tmp_path, watch, model_dir):
    url = f"mqtt://127.0.0.1:{free_port()}"
    code, rows, out, err = check(capsys, tmp_path, watch, model_dir, "--broker", url)
    assert code != 0
    line = rows[f"broker {url}"]
    assert line.startswith("FAIL ") and "connection refused" in line and "start the broker" in line
    assert line in err and line not in out                                # FAIL lines go to stderr
    assert f"broker {url}" in failed_sentence(err)
    assert "configuration OK" not in out


def test_broker_port_out_of_range_fails(capsys, tmp_path, watch, model_dir):
    # config.validate's sentence (mqtt.broker, as for the other ports), not a FAIL line of the broker check
    code, _, _, err = check(capsys, tmp_path, watch, model_dir, "--broker", "mqtt://127.0.0.1:99999")
    assert code != 0
    assert err.strip() == ("edge-agent: mqtt.broker 'mqtt://127.0.0.1:99999' is malformed (Port out of range "
                           "0-65535); use mqtt://host:port or mqtts://host:port.")


def test_listener_port_out_of_range_is_one_sentence(capsys, tmp_path, watch, model_dir):
    code, _, _, err = check(capsys, tmp_path, watch, model_dir, "--metrics-port", "99999")
    assert code == 2
    assert err.strip() == "edge-agent: metrics.port must be a TCP port (0-65535), got 99999."


def test_credentials_and_tls_are_the_configured_ones(capsys, tmp_path, watch, model_dir, pki, monkeypatch):
    broker = MosquittoBroker(tmp_path / "tls", tls="tls", pki=pki, users={"agent": "s3cret"},
                             persistence=False).start()
    try:
        conf = tmp_path / "agent.toml"
        conf.write_text(f"[mqtt]\nbroker = '{broker.url}'\nusername = 'agent'\nca_file = '{pki.ca_cert}'\n")
        what = f"broker {broker.url}"
        monkeypatch.setenv("EDGE_AGENT_MQTT_PASSWORD", "s3cret")
        code, rows, _, err = check(capsys, tmp_path, watch, model_dir, "--config", str(conf))
        assert code == 0, err
        assert "as agent over TLS" in rows[what]

        monkeypatch.setenv("EDGE_AGENT_MQTT_PASSWORD", "wrong")
        code, rows, _, err = check(capsys, tmp_path, watch, model_dir, "--config", str(conf))
        assert code != 0
        assert rows[what].startswith("FAIL ") and "refused the connection as agent" in rows[what]
        assert "password" in rows[what]

        conf.write_text(f"[mqtt]\nbroker = '{broker.url}'\nusername = 'agent'\nca_file = '{pki.other_ca_cert}'\n")
        monkeypatch.setenv("EDGE_AGENT_MQTT_PASSWORD", "s3cret")
        code, rows, _, err = check(capsys, tmp_path, watch, model_dir, "--config", str(conf))
        assert code != 0
        assert rows[what].startswith("FAIL ") and "not trusted" in rows[what] and "mqtt.ca_file" in rows[what]
    finally:
        broker.stop()


def test_metrics_port_taken_fails(capsys, tmp_path, watch, model_dir, mosquitto):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, rows, _, err = check(capsys, tmp_path, watch, model_dir, "--broker", mosquitto.url,
                                   "--metrics-port", str(port))
    assert code != 0
    line = rows[f"metrics port 127.0.0.1:{port}"]
    assert line.startswith("FAIL ") and "already in use" in line and "--metrics-port" in line
    assert f"metrics port 127.0.0.1:{port}" in failed_sentence(err)


def test_dicom_and_embedded_broker_ports_taken_fail(capsys, tmp_path, watch, model_dir):
    with socket.socket() as dicom, socket.socket() as mqtt:
        for sock in (dicom, mqtt):
            sock.bind(("127.0.0.1", 0))
            sock.listen()
        dport, mport = dicom.getsockname()[1], mqtt.getsockname()[1]
        conf = tmp_path / "agent.toml"
        conf.write_text(f"[mqtt]\nembedded_port = {mport}\n[dicom]\nport = {dport}\nbind = '127.0.0.1'\n")
        code, rows, _, err = check(capsys, tmp_path, watch, model_dir, "--config", str(conf))
    assert code != 0
    assert "an embedded broker will be started on 127.0.0.1" in rows["broker"]
    assert rows[f"embedded broker port 127.0.0.1:{mport}"].startswith("FAIL ")
    assert rows[f"DICOM port 127.0.0.1:{dport}"].startswith("FAIL ")
    assert "2 of" in failed_sentence(err)


def test_state_folder_under_a_file_fails(capsys, tmp_path, watch, model_dir, mosquitto):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    state = blocker / "state"
    code, rows, _, err = check(capsys, tmp_path, watch, model_dir, "--broker", mosquitto.url, "--state-dir", str(state))
    assert code != 0
    line = rows[f"state folder {state}"]
    assert line.startswith("FAIL ") and "is not a folder" in line and "--state-dir" in line
    failed_sentence(err)


def _as_nobody(fn, *args) -> tuple[bool, str]:
    """Run ``fn(*args)`` (a Check) in a forked child as uid/gid 65534; its (ok, line) comes back over a pipe."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: drop to nobody, check, report, exit without running any pytest code
        try:
            os.setgid(65534)
            os.setuid(65534)
            result = fn(*args)
            os.write(write, (("1" if result.ok else "0") + result.line).encode())
        except BaseException as exc:  # noqa: BLE001 - reported to the parent, which fails the test
            os.write(write, f"0raised {type(exc).__name__}: {exc}".encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        data = pipe.read().decode()
    os.waitpid(pid, 0)
    return data[:1] == "1", data[1:]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to another uid (as a non-root user the CLI "
                    "tests above already meet folders this user cannot write)")
def test_folders_another_user_cannot_write_fail():
    top = Path(tempfile.mkdtemp(prefix="preflight-"))                     # pytest's own tree is root-only
    try:
        top.chmod(0o755)
        hidden = top / "hidden"
        hidden.mkdir(mode=0o700)
        ok, line = _as_nobody(state_check, hidden / "state", "state folder", "agent.state_dir / --state-dir")
        assert not ok and "cannot be looked at by this user (Permission denied)" in line, line
        root_only = top / "root-only"
        root_only.mkdir(mode=0o755)
        ok, line = _as_nobody(state_check, root_only, "state folder", "agent.state_dir / --state-dir")
        assert not ok and line.startswith(f"FAIL state folder {root_only}: is not writable by this user"), line
        ok, line = _as_nobody(state_check, root_only / "new", "state folder", "agent.state_dir / --state-dir")
        assert not ok and "this user cannot create it" in line, line
        shared = top / "shared"
        shared.mkdir()
        shared.chmod(0o777)
        ok, line = _as_nobody(state_check, shared, "state folder", "agent.state_dir / --state-dir")
        assert ok and line.endswith(": writable"), line               # a folder nobody may write is fine
        cfg = load_config(overrides={"ingest": {"watch": str(root_only)}, "dicom": {"port": 11112}})
        ok, line = _as_nobody(watch_check, cfg)
        assert not ok and "is not writable by this user (the DICOM receiver writes into it)" in line, line
        cfg = load_config(overrides={"ingest": {"watch": str(root_only)}})
        ok, line = _as_nobody(watch_check, cfg)
        assert ok and line.endswith(": readable"), line                 # only read without the receiver
    finally:
        shutil.rmtree(top)


def test_model_whose_sha256_does_not_match_fails(capsys, tmp_path, watch, model_dir, mosquitto):
    with open(model_dir / "model.onnx", "ab") as f:
        f.write(b"\0")                                                   # one byte more: another file
    code, rows, _, err = check(capsys, tmp_path, watch, model_dir, "--broker", mosquitto.url)
    assert code != 0
    assert rows["models"].startswith("FAIL ") and "does not match the sha256" in rows["models"]
    assert "models" in failed_sentence(err)


def test_port_of_the_agent_already_running_is_not_a_failure(capsys, tmp_path, watch, model_dir, mosquitto):
    """The installer checks the new config while the old agent runs: its own ports are not 'taken'."""
    port = free_port()
    agent = subprocess.Popen([sys.executable, "-m", "edge_agent", "run", "--watch", str(watch), "--state-dir",
                              str(tmp_path / "running"), "--engines", str(model_dir), "--broker", mosquitto.url,
                              "--metrics-port", str(port)], cwd=REPO, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and agent.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                time.sleep(0.2)
        assert agent.poll() is None, agent.stderr.read()
        code, rows, _, err = check(capsys, tmp_path, watch, model_dir, "--broker", mosquitto.url,
                                   "--metrics-port", str(port))
    finally:
        agent.terminate()
        agent.communicate(timeout=60)
    assert code == 0, err
    assert f"in use by the edge-agent already running (pid {agent.pid})" in rows[f"metrics port 127.0.0.1:{port}"]


def test_run_creates_only_the_last_state_folder(tmp_path, caplog):
    from edge_agent.cli.run import _state_folder
    from edge_agent.errors import EdgeAgentError

    cfg = load_config(overrides={"agent": {"state_dir": str(tmp_path / "missing" / "state")}})
    with pytest.raises(EdgeAgentError, match="neither does its parent"):
        _state_folder(cfg)
    assert not (tmp_path / "missing").exists()
    cfg = load_config(overrides={"agent": {"state_dir": str(tmp_path / "state")}})
    seen = []
    logger = logging.getLogger("edge_agent")
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    logger.addHandler(handler)
    try:
        _state_folder(cfg)
    finally:
        logger.removeHandler(handler)
    assert (tmp_path / "state").is_dir()
    assert any(f"created the state folder {tmp_path / 'state'}" in m for m in seen), seen
