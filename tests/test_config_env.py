"""EDGE_AGENT_ variables that name no config key are errors with a "did you mean", like unknown file keys."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent.config import ENV_EXTRAS, ConfigError, env_keys, load_config

ROOT = Path(__file__).resolve().parents[1]
NAME = r"EDGE_AGENT_[A-Z0-9_]*[A-Z0-9](?![A-Z0-9_<*])"  # a whole name, not a prefix like EDGE_AGENT_MQTT_<NAME>


@pytest.mark.parametrize("name, suggestion", [
    ("EDGE_AGENT_SERIES_SETLE", "did you mean EDGE_AGENT_SERIES_SETTLE?"),
    ("EDGE_AGENT_INGEST_RETRY", "did you mean EDGE_AGENT_INGEST_RETRY_TIMEOUT?"),
    ("EDGE_AGENT_MQTT_PASWORD", "did you mean EDGE_AGENT_MQTT_PASSWORD?"),
    ("EDGE_AGENT_MQTT_BROKR", "did you mean EDGE_AGENT_MQTT_BROKER?"),
    ("EDGE_AGENT_NOTHING_LIKE_ANY", ""),
])
def test_unknown_variable_is_one_sentence_with_a_suggestion(name, suggestion):
    with pytest.raises(ConfigError) as err:
        load_config(environ={name: "3"})
    message = str(err.value)
    assert message.startswith(f"unknown environment variable {name};")
    assert suggestion in message and "\n" not in message
    if not suggestion:
        assert "did you mean" not in message


def test_file_typos_get_the_same_suggestion(tmp_path):
    conf = tmp_path / "c.toml"
    conf.write_text("[series]\nsetle = 3\n")
    with pytest.raises(ConfigError, match=r"unknown setting series\.setle in .*; did you mean series\.settle\?"):
        load_config(conf, environ={})
    conf.write_text("[serise]\nsettle = 3\n")
    with pytest.raises(ConfigError, match=r"unknown section \[serise\] .*; did you mean series\?"):
        load_config(conf, environ={})


def test_every_key_secrets_and_project_knobs_are_accepted():
    environ = {name: "1" for name in ENV_EXTRAS}
    cfg = load_config(environ={**environ, "EDGE_AGENT_SERIES_SETTLE": "3.5", "PATH": "/usr/bin",
                               "EDGE_AGENT": "not a key (no trailing underscore)"})
    assert cfg.series.settle == 3.5
    assert "EDGE_AGENT_INGEST_RETRY_TIMEOUT" in env_keys()


def test_every_edge_agent_variable_the_project_uses_is_allowed():
    """Tests, scripts, CI, jetson/ files and docs name only keys or allow-listed variables (no false alarms)."""
    used: set[str] = set()
    for folder in ("edge_agent", "tests", "scripts", "jetson", "docs", ".ci"):
        for path in (ROOT / folder).rglob("*"):
            if path.is_file() and path.suffix in ("", ".py", ".sh", ".md", ".toml", ".service", ".env", ".yaml"):
                used.update(re.findall(NAME, path.read_text(errors="replace")))
    used.update(re.findall(NAME, (ROOT / "README.md").read_text()))
    allowed = set(env_keys()) | ENV_EXTRAS
    typos = {"EDGE_AGENT_SERIES_SETLE", "EDGE_AGENT_INGEST_RETRY", "EDGE_AGENT_MQTT_PASWORD",
             "EDGE_AGENT_MQTT_BROKR", "EDGE_AGENT_NOTHING_LIKE_ANY", "EDGE_AGENT_MQTT_PASSWORD_FIL"}  # this file's own
    assert "EDGE_AGENT_CHAOS_SEED" in used and "EDGE_AGENT_MQTT_PASSWORD" in used
    assert sorted(used - allowed - typos) == []


def test_run_refuses_a_misspelt_variable_before_starting(tmp_path):
    env = dict(os.environ, EDGE_AGENT_SERIES_SETLE="3")
    proc = subprocess.run([sys.executable, "-m", "edge_agent", "run", "--watch", str(tmp_path), "--state-dir",
                           str(tmp_path / "state"), "--check"], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("edge-agent: unknown environment variable EDGE_AGENT_SERIES_SETLE; did you mean "
                                   "EDGE_AGENT_SERIES_SETTLE? an EDGE_AGENT_ variable must name a config key as "
                                   "EDGE_AGENT_<SECTION>_<KEY> (README, Configuration); rename or unset it.")
    assert not (tmp_path / "state").exists()
