"""Config: file < environment < flags, unknown keys and bad values rejected with one sentence."""

import pytest

from edge_agent.config import ConfigError, load_config, reference_markdown


def test_precedence_file_env_flags(tmp_path):
    conf = tmp_path / "c.toml"
    conf.write_text('[agent]\nsite = "file-site"\ndevice = "file-dev"\n[series]\nsettle = 7\n')
    cfg = load_config(conf, environ={"EDGE_AGENT_AGENT_DEVICE": "env-dev", "EDGE_AGENT_SERIES_SETTLE": "3.5"},
                      overrides={"agent": {"device": None, "site": "flag-site"}})
    assert cfg.agent.site == "flag-site"      # flag beats file
    assert cfg.agent.device == "env-dev"      # env beats file, absent flag does not override
    assert cfg.series.settle == 3.5


def test_yaml_file(tmp_path):
    conf = tmp_path / "c.yaml"
    conf.write_text("ingest:\n  poll: true\n  poll_interval: 2\ndicom:\n  allowed_calling_aets: [CT1, CT2]\n")
    cfg = load_config(conf, environ={})
    assert cfg.ingest.poll is True and cfg.ingest.poll_interval == 2.0
    assert cfg.dicom.allowed_calling_aets == ["CT1", "CT2"]


@pytest.mark.parametrize("text, fragment", [
    ("[agent]\nsitee = 'x'\n", "unknown setting agent.sitee"),
    ("[nope]\na = 1\n", "unknown section [nope]"),
    ("[series]\nsettle = 'soon'\n", "series.settle"),
    ("[series]\nsettle = -1\n", "series.settle must be greater than 0"),
    ("[mqtt]\nbroker = 'http://x'\n", "mqtt.broker must start with mqtt://"),
    ("[mqtt]\ndelivery = 'maybe'\n", "must be one of receipt, broker"),
    ("[agent]\nsite = 'a/b'\n", "agent.site"),
    ("[agent\n", "not valid TOML"),
    ("[dicom]\ntls_cert = '/etc/c.pem'\n", "dicom.tls_cert and dicom.tls_key go together"),
    ("[dicom]\ntls_ca = '/etc/ca.pem'\n", "dicom.tls_ca needs dicom.tls_cert"),
    ("[inference]\nzero_copy = 'sometimes'\n", "must be one of auto, on, off"),
])
def test_bad_config_is_one_sentence(tmp_path, text, fragment):
    conf = tmp_path / "c.toml"
    conf.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(conf, environ={})
    message = str(err.value)
    assert fragment in message
    assert "\n" not in message and "Traceback" not in message


def test_missing_file_and_unreadable_password(tmp_path):
    with pytest.raises(ConfigError, match="cannot be read"):
        load_config(tmp_path / "missing.toml", environ={})
    cfg = load_config(overrides={"mqtt": {"password_file": str(tmp_path / "nope")}}, environ={})
    with pytest.raises(ConfigError, match="password_file"):
        cfg.mqtt_password()


def test_password_from_file_or_env(tmp_path, monkeypatch):
    pw = tmp_path / "pw"
    pw.write_text("s3cret\n")
    cfg = load_config(overrides={"mqtt": {"password_file": str(pw)}}, environ={})
    monkeypatch.delenv("EDGE_AGENT_MQTT_PASSWORD", raising=False)
    assert cfg.mqtt_password() == "s3cret"
    monkeypatch.setenv("EDGE_AGENT_MQTT_PASSWORD", "from-env")
    assert cfg.mqtt_password() == "from-env"


def test_reference_lists_every_field():
    ref = reference_markdown()
    for key in ("`watch`", "`settle`", "`broker`", "`delivery`", "`ae_title`", "EDGE_AGENT_MQTT_BROKER"):
        assert key in ref


def test_log_json_from_config_switches_the_log_format(tmp_path):
    import json
    import signal
    import subprocess
    import sys
    import time

    (tmp_path / "in").mkdir()
    conf = tmp_path / "c.toml"
    conf.write_text(f'[agent]\nlog_json = true\nstate_dir = "{tmp_path / "s"}"\n'
                    f'[ingest]\nwatch = "{tmp_path / "in"}"\n[mqtt]\nembedded_port = 0\n')
    log = tmp_path / "err.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "edge_agent", "-v", "run", "--config", str(conf)],
                                stderr=fh, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while "edge-agent running" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    lines = [line for line in log.read_text().splitlines() if line.startswith("{")]
    assert len(lines) >= 2, log.read_text()
    for line in lines:
        assert {"ts", "level", "logger", "msg"} <= set(json.loads(line))
