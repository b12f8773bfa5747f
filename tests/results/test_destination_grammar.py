"""The destination grammar (C-STORE, DICOM TLS, STOW-RS) and the [pacs] TLS and credential settings."""

from __future__ import annotations

import subprocess
import sys

import pytest

from edge_agent.config import config_hash, load_config
from edge_agent.errors import ConfigError
from edge_agent.results.destination import parse_destination
from edge_agent.results.sender import SenderSettings


@pytest.mark.parametrize("text, kind, key, host, port", [
    ("PACS@10.0.0.5:104", "dimse", "PACS@10.0.0.5:104", "10.0.0.5", 104),          # exactly as before
    (" ARCHIVE@[::1]:11112 ", "dimse", "ARCHIVE@::1:11112", "::1", 11112),
    ("tls:PACS@pacs.example:2762", "dimse-tls", "tls:PACS@pacs.example:2762", "pacs.example", 2762),
    ("TLS:PACS@pacs.example:2762", "dimse-tls", "tls:PACS@pacs.example:2762", "pacs.example", 2762),
    ("https://pacs.example/dicom-web", "stow", "https://pacs.example/dicom-web", "pacs.example", 443),
    ("https://PACS.example/dicom-web/", "stow", "https://pacs.example/dicom-web", "pacs.example", 443),
    ("HTTP://127.0.0.1:8042/dicom-web", "stow", "http://127.0.0.1:8042/dicom-web", "127.0.0.1", 8042),
    ("http://[::1]:8080", "stow", "http://[::1]:8080", "::1", 8080),
])
def test_three_forms_and_their_queue_keys(text, kind, key, host, port):
    d = parse_destination(text)
    assert (d.kind, str(d), d.host, d.port) == (kind, key, host, port)
    if ":" not in host:  # an IPv6 C-STORE key stays as it always was (AET@::1:port), without its brackets
        assert str(parse_destination(str(d))) == key              # the key parses back to itself
    assert d.tls == (kind == "dimse-tls" or key.startswith("https://"))


@pytest.mark.parametrize("bad", ["PACS", "PACS@host", "@host:104", "WAY_TOO_LONG_AE_TITLE@h:104", "P@h:0",
                                 "tls:PACS", "tls:P@h:70000", "tls://PACS@h:104", "dicom://PACS@h:104",
                                 "ftp://pacs/dicom-web", "https://", "https://h:0/x", "https://h:99999/x",
                                 "https://pacs example/x"])
def test_anything_else_is_one_sentence(bad):
    with pytest.raises(ConfigError) as caught:
        parse_destination(bad)
    message = str(caught.value)
    assert "is not AET@host:port" in message and "tls:AET@host:port" in message and "https://" in message
    assert message.replace("e.g. ", "").count(". ") == 0 and message.endswith(".")


def test_a_url_with_credentials_or_a_query_is_refused_without_showing_them():
    with pytest.raises(ConfigError) as caught:
        parse_destination("https://edge:Secret-Pw@pacs.example/dicom-web")
    assert "Secret-Pw" not in str(caught.value) and "edge" not in str(caught.value)
    assert "pacs.stow_user" in str(caught.value)
    with pytest.raises(ConfigError, match="query or fragment"):
        parse_destination("https://pacs.example/dicom-web?token=x")


def test_tls_and_stow_settings_from_file_and_environment(tmp_path, pki):
    toml = tmp_path / "agent.toml"
    toml.write_text(f'[pacs]\ndestinations = ["tls:PACS@h:2762", "https://pacs/dicom-web"]\ntls_ca = "{pki.ca_cert}"\n'
                    f'tls_cert = "{pki.client_cert}"\ntls_key = "{pki.client_key}"\nstow_user = "edge"\n')
    cfg = load_config(toml, environ={"EDGE_AGENT_PACS_STOW_PASSWORD": "pw-from-env"})
    assert (cfg.pacs.tls_ca, cfg.pacs.tls_cert, cfg.pacs.tls_key) == tuple(map(str, (pki.ca_cert, pki.client_cert,
                                                                                      pki.client_key)))
    assert (cfg.pacs.stow_user, cfg.pacs.stow_password) == ("edge", "pw-from-env")
    settings = SenderSettings.from_config(cfg.pacs)
    assert settings.stow_password == "pw-from-env" and "pw-from-env" not in repr(settings)
    cfg = load_config(environ={"EDGE_AGENT_PACS_DESTINATIONS": "https://pacs/dicom-web",
                               "EDGE_AGENT_PACS_STOW_TOKEN": "tok", "EDGE_AGENT_PACS_TLS_CA": str(pki.ca_cert)})
    assert cfg.pacs.stow_token == "tok" and cfg.pacs.tls_ca == str(pki.ca_cert)
    assert "tok" not in repr(SenderSettings.from_config(cfg.pacs))


def test_credentials_and_tls_paths_do_not_change_the_config_hash(pki):
    plain = load_config(overrides={"pacs": {"destinations": ["https://pacs/dicom-web"]}}, environ={})
    secret = load_config(overrides={"pacs": {"destinations": ["https://pacs/dicom-web"]}},
                         environ={"EDGE_AGENT_PACS_STOW_USER": "edge", "EDGE_AGENT_PACS_STOW_PASSWORD": "pw",
                                  "EDGE_AGENT_PACS_TLS_CA": str(pki.ca_cert)})
    assert config_hash(plain) == config_hash(secret)


@pytest.mark.parametrize("settings, words", [
    ({"tls_cert": "CERT"}, "pacs.tls_cert and pacs.tls_key go together"),
    ({"tls_key": "KEY"}, "pacs.tls_cert and pacs.tls_key go together"),
    ({"tls_ca": "MISSING"}, "pacs.tls_ca"),
    ({"tls_ca": "FOLDER"}, "Is a directory"),
    ({"stow_user": "edge"}, "pacs.stow_user and pacs.stow_password go together"),
    ({"stow_password": "Pw-Secret"}, "pacs.stow_user and pacs.stow_password go together"),
    ({"stow_token": "Tok-Secret", "stow_user": "edge", "stow_password": "Pw-Secret"}, "set one of them"),
])
def test_bad_tls_or_credential_settings_are_one_sentence(tmp_path, pki, settings, words):
    names = {"CERT": str(pki.client_cert), "KEY": str(pki.client_key), "MISSING": str(tmp_path / "nope.pem"),
             "FOLDER": str(tmp_path)}
    pacs = {k: names.get(v, v) for k, v in settings.items()}
    with pytest.raises(ConfigError) as caught:
        load_config(overrides={"pacs": pacs}, environ={})
    message = str(caught.value)
    assert words in message and message.count(". ") == 0, message
    assert "Pw-Secret" not in message and "Tok-Secret" not in message
    if "MISSING" in settings.values():
        assert "cannot be read (No such file or directory)" in message


def test_a_secret_of_the_wrong_type_is_not_echoed(tmp_path):
    toml = tmp_path / "agent.toml"
    toml.write_text('[pacs]\nstow_password = ["Pw-Secret"]\n')
    with pytest.raises(ConfigError) as caught:
        load_config(toml, environ={})
    assert "pacs.stow_password" in str(caught.value) and "Pw-Secret" not in str(caught.value)


def test_run_refuses_a_destination_of_no_known_form_in_one_sentence(tmp_path):
    out = subprocess.run([sys.executable, "-m", "edge_agent", "run", "--watch", str(tmp_path), "--state-dir",
                          str(tmp_path), "--pacs", "dicomweb://pacs/x", "--check"], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode != 0 and "is not AET@host:port" in out.stderr and "Traceback" not in out.stderr
